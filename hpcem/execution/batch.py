"""A whole run as one batch job: submit, reconcile with the scheduler, cancel.

The job script (rendered from the site's queue template) runs the run's controller inside
the allocation with the local executor; the controller writes the project as it would on
this machine. The job id, queue and native state are kept in ``run.execution["jobs"]``.
A job that ends without its controller saying so (walltime, out of memory, node failure,
``scancel``) is recognised from the scheduler's answer and the exit-code file, and the
run is marked failed with that reason; ``hpcem continue`` submits a new job that keeps the
finished steps. A SLURM requeue restarts the same script: the controller resumes too.
"""

from __future__ import annotations

import time

from hpcem.store.record import ACTIVE_STATES

# Final job states the controller did not report: (run state, what to tell the user).
_OUTCOMES = {
    "TIMEOUT": ("failed", "walltime exceeded"),
    "OUT_OF_MEMORY": ("failed", "out of memory"),
    "NODE_FAIL": ("failed", "node failure"),
    "PREEMPTED": ("failed", "preempted by the scheduler"),
    "CANCELLED": ("aborted", "cancelled by a user or an administrator (not hpcem stop)"),
    "FAILED": ("failed", "job failed"),
    "COMPLETED": ("failed", "job ended without its controller finishing the run"),
}


#: Final states only the scheduler can know; they override the job's own exit code.
_AUTHORITATIVE = ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED")


def _site_of(run):
    from hpcem.cluster.site import load_site

    return load_site(run.placement.site)


def job_spec(project, run, site, attempt: int):
    """The JobSpec that runs attempt ``attempt`` of ``run``'s controller in one allocation."""
    from hpcem.cluster.job import JobSpec, safe_job_name
    from hpcem.cluster.site import parse_walltime
    from hpcem.execution.runs import RUN_ENV, controller_argv, run_marker

    res = run.placement.resources
    run_dir = project.run_dir(run.id)
    cores = int(res.get("cores") or 1)
    return JobSpec(
        command=tuple(controller_argv(site.python, str(project.path), run.id, attempt, cores)),
        name=safe_job_name(f"hpcem-{run.id}-{run.protocol}"),
        label=run.label,
        workdir=str(run_dir),
        exit_code_file=str(run_dir / f"job-{attempt}.exit"),
        stdout=str(run_dir / f"job-{attempt}.out"),
        stderr=str(run_dir / f"job-{attempt}.err"),
        nodes=int(res.get("nodes") or 1),
        # one task per core: the controller's workers use them, and an MPI step can
        # `srun -n RANKS` inside the allocation with RANKS up to the cores
        tasks_per_node=cores,
        walltime_s=parse_walltime(res["walltime"]) if res.get("walltime") else None,
        queue=res.get("queue"),
        env={RUN_ENV: run_marker(project, run.id)},
    )


def submit_run_job(project, run_id: int, attempt: int) -> str:
    """Render and submit the job of a launched attempt; record its id. Returns the id."""
    from hpcem.cluster.submit import submit_job

    run = project.run(run_id)
    site = _site_of(run)
    spec = job_spec(project, run, site, attempt)
    script = project.run_dir(run_id) / f"job-{attempt}.sh"
    job_id = submit_job(site, spec, script_path=script)  # the launcher fails the attempt on error
    project.update_attempt(
        run_id,
        attempt,
        job_id=job_id,
        site=site.name,
        scheduler=site.scheduler,
        queue=spec.queue or site.default_queue,
        scheduler_state="QUEUED",
        exit_code_file=spec.exit_code_file,
    )
    return job_id


def refresh_jobs(project, runs) -> dict[int, tuple[str, str]]:
    """One status query per site for the runs whose latest attempt is a batch job still
    active, or ended with a provisional outcome; record what the scheduler says.

    A job that ended without its controller saying so fails (or aborts) the run with the
    scheduler's reason; a provisional outcome ("terminated by SIGTERM") is refined by the
    scheduler's final state (TIMEOUT -> walltime exceeded). Returns ``{run_id: (state,
    reason)}`` for runs changed that way.
    """
    from hpcem.cluster.site import load_site
    from hpcem.cluster.submit import query_history, query_status
    from hpcem.cluster.tracking import final_status, read_exit_code
    from hpcem.store.project import StateConflict

    todo = [r for r in runs if needs_refresh(r)]
    by_site: dict[str, list] = {}
    for r in todo:
        by_site.setdefault(r.attempt.site or r.placement.site, []).append(r)
    changed: dict[int, tuple[str, str]] = {}
    for site_name, site_runs in by_site.items():
        site = load_site(site_name)
        ids = [r.attempt.job_id for r in site_runs]
        statuses = query_status(site, ids)
        missing = [i for i in ids if i not in statuses]
        if missing:  # gone from the queue: ask the accounting/history once
            statuses.update(query_history(site, missing))
        for r in site_runs:
            a = r.attempt
            native = statuses.get(a.job_id)
            exit_code = read_exit_code(a.exit_code_file) if a.exit_code_file else None
            if (
                exit_code is not None
                and exit_code >= 128
                and native is not None
                and not native.state.final
            ):
                continue  # ended by a signal: wait for the scheduler's final state to say why
            if native is not None and native.state.name in _AUTHORITATIVE:
                status = native  # the scheduler ended it: its word beats any exit code
            else:
                status = final_status(a.job_id, exit_code, native) or native
            if status is None:
                continue
            words = {
                "scheduler_state": status.native_state or status.state.name,
                "scheduler_reason": status.reason or "",
                "scheduler_final": status.state.final,
            }
            if not status.state.final:
                if r.state in ACTIVE_STATES:
                    project.update_attempt(r.id, a.number, only_active=True, **words)
                continue
            if r.state == "finished":  # the controller finished it; the job's end confirms
                project.update_attempt(r.id, a.number, **words)
                continue
            state, why = _OUTCOMES.get(status.state.name, ("failed", status.state.name.lower()))
            detail = f"; {status.reason}" if status.reason else ""
            reason = f"{why} (batch job {a.job_id} {words['scheduler_state']}{detail})"
            if r.state in ACTIVE_STATES:
                try:
                    project.transition(
                        r.id,
                        ACTIVE_STATES,
                        state,
                        reason,
                        attempt=a.number,
                        outcome=state,
                        outcome_reason=reason,
                        ended=time.time(),
                        **words,
                    )
                except StateConflict:
                    continue  # the controller ended it meanwhile: its word stands
            elif a.provisional and status.state.name in _AUTHORITATIVE:
                project.refine_outcome(
                    r.id, a.number, state, reason, outcome=state, outcome_reason=reason, **words
                )
            elif a.provisional:  # the scheduler confirms what the controller saw
                project.refine_outcome(r.id, a.number, r.state, r.error, **words)
                continue
            else:  # an outcome already final (hpcem stop, ...): record the job's last word
                project.update_attempt(r.id, a.number, **words)
                continue
            changed[r.id] = (state, reason)
    return changed


#: How long after its end a run's job is still reconciled with the scheduler's accounting.
RECONCILE_S = 86400.0


def needs_refresh(run) -> bool:
    """True when the scheduler still has something to tell about the run's latest job:
    the run is active, its outcome is provisional, or the job's final state is unknown."""
    import math

    a = run.attempt
    if a is None or not a.job_id:
        return False
    if run.state in ACTIVE_STATES or a.provisional:
        return True
    recent = not math.isnan(a.ended) and time.time() - a.ended < RECONCILE_S
    return recent and not a.scheduler_final


def cancel_jobs_of(run, job_ids) -> None:
    """Cancel batch jobs (a whole-run job, Parsl blocks) of ``run`` on its site."""
    from hpcem.cluster.submit import cancel_jobs

    if job_ids:
        cancel_jobs(_site_of(run), list(job_ids))
