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

from hpcem.errors import RunError

# Job outcomes that end a run, and what to tell the user.
_REASONS = {
    "TIMEOUT": "walltime exceeded",
    "OUT_OF_MEMORY": "out of memory",
    "NODE_FAIL": "node failure",
    "CANCELLED": "cancelled",
    "FAILED": "job failed",
    "COMPLETED": "job ended",
    "PREEMPTED": "preempted",
}


def _site_of(run):
    from hpcem.cluster.site import load_site

    return load_site(run.execution["site"])


def job_spec(project, run, site):
    """The JobSpec that runs ``run``'s controller inside one allocation."""
    from hpcem.cluster.job import JobSpec, safe_job_name
    from hpcem.cluster.site import parse_walltime

    res = run.execution.get("resources", {})
    run_dir = project.run_dir(run.id)
    attempt = len(run.execution.get("jobs", [])) + 1
    cores = int(res.get("cores") or 1)
    return JobSpec(
        command=(site.python, "-m", "hpcem.execution.controller", str(project.path), str(run.id),
                 "--workers", str(cores)),
        name=safe_job_name(f"hpcem-{run.id}-{run.protocol}"),
        label=run.label,
        workdir=str(project.path),
        exit_code_file=str(run_dir / f"job-{attempt}.exit"),
        stdout=str(run_dir / f"job-{attempt}.out"),
        stderr=str(run_dir / f"job-{attempt}.err"),
        nodes=int(res.get("nodes") or 1),
        # one task per core: the controller's workers use them, and an MPI step can
        # `srun -n RANKS` inside the allocation with RANKS up to the cores
        tasks_per_node=cores,
        walltime_s=parse_walltime(res["walltime"]) if res.get("walltime") else None,
        queue=res.get("queue"),
    )


def submit_run_job(project, run_id: int) -> str:
    """Render and submit the run's job; record its id. Returns the job id."""
    from hpcem.cluster.submit import submit_job

    run = project.run(run_id)
    site = _site_of(run)
    spec = job_spec(project, run, site)
    script = project.run_dir(run_id) / f"job-{len(run.execution.get('jobs', [])) + 1}.sh"
    try:
        job_id = submit_job(site, spec, script_path=script)
    except Exception as exc:
        project.update_run(run_id, state="failed", error=f"submission failed: {exc}", ended=time.time())
        raise
    jobs = list(run.execution.get("jobs", [])) + [{
        "id": job_id, "site": site.name, "queue": spec.queue or site.default_queue,
        "state": "QUEUED", "exit_code_file": spec.exit_code_file, "submitted": time.time(),
    }]
    project.update_run(run_id, execution={**run.execution, "jobs": jobs}, pid=0)
    return job_id


def refresh_jobs(project, runs) -> dict[int, tuple[str, str]]:
    """One status query per site for the active job runs; update their stored job states.

    Returns ``{run_id: (state, reason)}`` for runs whose job ended without the controller
    reporting an end (those are persisted as failed).
    """
    from hpcem.cluster.submit import query_history, query_status
    from hpcem.cluster.tracking import final_status, read_exit_code

    active = [r for r in runs if r.state in ("launched", "running") and r.execution.get("jobs")]
    by_site: dict[str, list] = {}
    for r in active:
        by_site.setdefault(r.execution["jobs"][-1]["site"], []).append(r)
    ended: dict[int, tuple[str, str]] = {}
    for site_name, site_runs in by_site.items():
        from hpcem.cluster.site import load_site

        site = load_site(site_name)
        ids = [r.execution["jobs"][-1]["id"] for r in site_runs]
        statuses = query_status(site, ids)
        missing = [i for i in ids if i not in statuses]
        if missing:  # gone from the queue: ask the accounting/history once
            statuses.update(query_history(site, missing))
        for r in site_runs:
            job = dict(r.execution["jobs"][-1])
            native = statuses.get(job["id"])
            status = final_status(job["id"], read_exit_code(job["exit_code_file"]), native) or native
            if status is None:
                continue
            job["state"] = status.state.name
            job["native_state"] = status.native_state
            fresh = project.run(r.id)  # the controller may have committed since we read it
            jobs = fresh.execution.get("jobs", [])[:-1] + [job]
            fields = {"execution": {**fresh.execution, "jobs": jobs}}
            if status.state.final and fresh.state in ("launched", "running"):
                reason = _REASONS.get(status.state.name, status.state.name.lower())
                detail = f" ({status.reason})" if status.reason else ""
                error = f"batch job {job['id']} {status.native_state or status.state.name}: {reason}{detail}"
                fields.update(state="failed", error=error, ended=time.time())
                ended[r.id] = ("failed", error)
            project.update_run(r.id, **fields)
    return ended


def cancel_run_jobs(project, run) -> None:
    """Cancel the run's batch jobs (all that may still be queued or running)."""
    from hpcem.cluster.submit import cancel_jobs

    jobs = run.execution.get("jobs", [])
    if not jobs:
        raise RunError(f"run {run.id} has no batch jobs")
    site = _site_of(run)
    cancel_jobs(site, [j["id"] for j in jobs])
