"""The life of a run: create, launch, continue, restart, stop, copy, and its true state.

Each launch is a new *attempt* in the run record (``hpcem.store.record``), taken by a
compare-and-swap transition, so two ``continue``s at once cannot both win. A local
attempt has one controller process started in its own session (so ``stop`` ends it and
its workers as one process group), with ``HPCEM_RUN`` in its environment so that any
process of the run can be found again. A run is never declared dead while its
controller's pid is alive on its recorded host; a controller that dies without saying
so (SIGKILL, node crash) shows as failed the next time anyone looks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpcem.errors import RunError
from hpcem.store.record import ACTIVE_STATES, FINAL_STATES

STALE_HEARTBEAT_S = 60.0
#: A launched local attempt whose controller has not started after this long never will.
LAUNCH_TIMEOUT_S = 120.0
#: A launch whose launcher died this long ago without starting a controller never will.
LAUNCH_GRACE_S = 5.0
#: How long ``run``/``continue`` wait to see the new controller take the run over.
TAKEOVER_WAIT_S = 60.0
STOP_GRACE_S = 10.0
RUN_ENV = "HPCEM_RUN"  # "<project path>:<run id>" in the environment of every process of a run


def create_run(
    project,
    protocol_name: str,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Sequence[str] | str] | None = None,
    label: str = "",
    placement: Mapping[str, Any] | None = None,
):
    """Validate and store a new run (state ``saved``); nothing runs yet."""
    # Imported here: `hpcem status` uses this module and must start fast.
    from hpcem.protocol.context import RunContext
    from hpcem.protocol.registry import get_protocol
    from hpcem.protocol.validate import validate_request
    from hpcem.store.project import check_label

    protocol = get_protocol(protocol_name)
    label = check_label(label or protocol.label or protocol.name)
    request = validate_request(
        protocol,
        params or {},
        inputs or {},
        project,
        make_context=lambda req: RunContext(
            project, None, req.params, req.inputs, site=(placement or {}).get("site")
        ),
    )
    return project.create_run(
        protocol=protocol.name,
        label=label,
        params=request.params,
        inputs=request.inputs,
        placement=dict(placement or {}),
    )


def run_marker(project, run_id: int) -> str:
    """The value of ``HPCEM_RUN`` for the processes of one run."""
    return f"{project.path}:{int(run_id)}"


def _conflict_message(run, action: str) -> str:
    a = run.attempt
    who = (
        f" (attempt {a.number}, pid {a.pid or a.launcher_pid} on {a.host or a.launcher_host})"
        if a
        else ""
    )
    if run.state == "launched":
        return f"run {run.id} is already being {action}{who}"
    if run.state == "running":
        return f"run {run.id} is already running{who}"
    return f"run {run.id} is {run.state}" + (f" ({run.error})" if run.error else "")


def launch(
    project,
    run_id: int,
    workers: int | None = None,
    foreground: bool = False,
    *,
    from_states: Sequence[str] = ("saved",),
    reset: bool = False,
    prepare: Callable[[], None] | None = None,
    action: str = "launched",
    wait_start: bool = True,
):
    """Take a new attempt of the run and start its controller.

    The attempt is taken by compare-and-swap from ``from_states``; ``prepare`` runs once
    it is held (restart wipes the old outputs there). A local controller is a detached
    process (inline with ``foreground``); with ``wait_start`` this returns once it has
    taken the run over, or raises RunError saying why it could not. Runs sent to a
    cluster as one job are submitted by :mod:`hpcem.execution.batch`.
    """
    from hpcem.store.project import StateConflict

    run = project.run(run_id)
    try:
        run = project.begin_attempt(run_id, from_states, reset=reset, site=run.placement.site)
    except StateConflict as exc:
        raise RunError(_conflict_message(exc.record, action)) from None
    attempt = run.attempt.number
    try:
        if prepare is not None:
            prepare()
        if run.placement.mode == "job":
            from hpcem.execution.batch import submit_run_job

            submit_run_job(project, run_id, attempt)
            return project.run(run_id)
        if not foreground:
            proc = _start_controller(project, run_id, attempt, workers)
    except BaseException as exc:
        fail_launch(project, run_id, attempt, f"launch failed: {exc}")
        raise
    if foreground:
        from hpcem.execution.controller import run_controller

        run_controller(str(project.path), run_id, attempt, workers)
        return project.run(run_id)
    project.update_attempt(run_id, attempt, pid=proc.pid)
    if wait_start:
        return _wait_takeover(project, run_id, attempt, proc)
    return project.run(run_id)


def controller_argv(
    python: str, project_path: str, run_id: int, attempt: int, workers: int | None = None
) -> list[str]:
    """The command that runs one attempt's controller. ``-P``: neither the project nor
    the current folder is ever on its ``sys.path`` (nothing in a project is code)."""
    argv = [
        python,
        "-P",
        "-m",
        "hpcem.execution.controller",
        str(project_path),
        str(run_id),
        "--attempt",
        str(attempt),
    ]
    if workers:
        argv += ["--workers", str(workers)]
    return argv


def safe_env(project, run_id: int) -> dict[str, str]:
    """The environment of a run's processes: ``HPCEM_RUN`` set, and no relative or
    in-project entries in ``PYTHONPATH`` (they would make project files importable)."""
    env = dict(os.environ)
    env[RUN_ENV] = run_marker(project, run_id)
    root = str(project.path)
    keep = [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and os.path.isabs(p) and not (p == root or p.startswith(root + os.sep))
    ]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _start_controller(project, run_id: int, attempt: int, workers: int | None):
    from hpcem.store.safeopen import open_append_nofollow

    run_dir = project.run_dir(run_id)
    argv = controller_argv(sys.executable, str(project.path), run_id, attempt, workers)
    out = open_append_nofollow(run_dir / "stdout.log")
    try:
        err = open_append_nofollow(run_dir / "stderr.log")
    except BaseException:
        os.close(out)
        raise
    try:
        import subprocess  # here: `hpcem status` imports this module and must start fast

        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            cwd=str(run_dir),
            env=safe_env(project, run_id),
            close_fds=True,
        )
    finally:
        os.close(out)
        os.close(err)


def _wait_takeover(project, run_id: int, attempt: int, proc):
    """Wait until the new controller holds the run (state running with our attempt)."""
    deadline = time.monotonic() + TAKEOVER_WAIT_S
    while True:
        run = project.run(run_id)
        a = run.attempt
        if a is None or a.number != attempt:
            raise RunError(
                f"run {run_id}: attempt {attempt} was taken over by attempt "
                f"{a.number if a else 0} before it started"
            )
        if run.state != "launched":
            if run.state == "failed" and math.isnan(a.started):
                raise RunError(f"run {run_id} could not start: {run.error}")
            return run
        code = proc.poll()
        if code is not None:
            time.sleep(0.2)  # its last commit may land just after it exits
            if project.run(run_id).state != "launched":
                continue
            why = last_line(project.run_dir(run_id) / "stderr.log") or f"exit code {code}"
            fail_launch(project, run_id, attempt, f"controller exited before starting: {why}")
            raise RunError(f"run {run_id} could not start: controller exited ({why})")
        if time.monotonic() > deadline:
            raise RunError(
                f"run {run_id}: the controller (pid {proc.pid}) has not started "
                f"after {TAKEOVER_WAIT_S:.0f} s; see {project.run_dir(run_id)}/stderr.log"
            )
        time.sleep(0.05)


def fail_launch(project, run_id: int, attempt: int, reason: str) -> None:
    """Record that a launched attempt never got going (a launch error, a controller that
    exited or could not take the lock). Best effort: failing to record it (another state
    already, a full disk) must not hide the error the caller is about to raise."""
    from hpcem.errors import HpcemError

    try:
        project.transition(
            run_id,
            ("launched",),
            "failed",
            reason,
            attempt=attempt,
            outcome="failed",
            outcome_reason=reason,
            ended=time.time(),
        )
    except HpcemError:  # StateConflict included
        pass


def last_line(path) -> str:
    """The last non-empty line of a small text file ('' if none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# --- the true state ----------------------------------------------------------------------------
def effective_state(run) -> str:
    """The run's state, with dead or never-started controllers shown as failed."""
    return diagnose(run)[0]


def diagnose(run) -> tuple[str, str]:
    """(state, reason) where a stored active state is checked against reality.

    Never says ``failed`` while the controller's pid is alive on its recorded host: a
    frozen or silent controller is reported as such, with its state unchanged.
    """
    from hpcem.store.project import this_host

    if run.state not in ACTIVE_STATES:
        return run.state, run.error
    a = run.attempt
    if a is None:
        return run.state, run.error
    now = time.time()
    here = this_host()
    if not a.pid:
        if a.job_id:
            return run.state, f"batch job {a.job_id} {a.scheduler_state or 'submitted'}"
        if run.placement.mode == "job":
            return run.state, "submitting the batch job"
        launcher_gone = a.launcher_host == here and a.launcher_pid and not pid_alive(a.launcher_pid)
        age = now - a.launched if not math.isnan(a.launched) else 0.0
        if (launcher_gone and age > LAUNCH_GRACE_S) or age > LAUNCH_TIMEOUT_S:
            return "failed", (
                f"never started: no controller {age:.0f} s after the launch by pid "
                f"{a.launcher_pid} on {a.launcher_host}"
            )
        return run.state, ""
    silent = now - run.heartbeat if not math.isnan(run.heartbeat) else 0.0
    if a.host == here:
        status = proc_status(a.pid)
        if status is None:
            why = ""
            if run.project_path is not None:
                from pathlib import Path

                why = last_line(Path(run.project_path) / "runs" / f"{run.id:06d}" / "stderr.log")
            return "failed", f"controller process {a.pid} died without finishing" + (
                f" ({why})" if why else ""
            )
        if status == "T":
            return run.state, (
                f"controller process {a.pid} is stopped (SIGSTOP?), silent for {silent:.0f} s"
            )
        if silent > STALE_HEARTBEAT_S:
            return run.state, f"controller process {a.pid} is alive but silent for {silent:.0f} s"
        return run.state, ""
    if silent > STALE_HEARTBEAT_S:
        return run.state, (
            f"no heartbeat from {a.host} for {silent:.0f} s; its controller "
            f"(pid {a.pid}) cannot be checked from {here}"
        )
    return run.state, ""


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    return proc_status(pid) is not None


def proc_status(pid: int) -> str | None:
    """The process state letter (R, S, T, ...) of ``pid``, or None if it is gone or a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"
    return None if state in ("Z", "X") else state


def mark_dead(project, run) -> str:
    """Persist ``failed`` for an active run whose controller is gone; return the state."""
    from hpcem.store.project import StateConflict

    state, reason = diagnose(run)
    if state != "failed" or run.state not in ACTIVE_STATES:
        return state
    try:
        project.transition(
            run.id,
            (run.state,),
            "failed",
            reason,
            attempt=run.attempt.number,
            outcome="failed",
            outcome_reason=reason,
            ended=time.time(),
        )
    except StateConflict as exc:
        return exc.record.state
    return "failed"


# --- continue / restart / stop / copy ------------------------------------------------------------
def _take_back(project, run_id: int, action: str):
    """The run, ready for a new attempt: a dead controller is marked failed and its
    leftover processes ended; RunError while a controller is alive."""
    run = project.run(run_id)
    if run.state in ACTIVE_STATES:
        if mark_dead(project, run) in ACTIVE_STATES:
            _state, reason = diagnose(project.run(run_id))
            msg = _conflict_message(project.run(run_id), action)
            raise RunError(f"{msg}{': ' + reason if reason else ''}; 'hpcem stop' it first")
        cleanup_processes(project, run_id)
    reap_blocks(project, project.run(run_id))
    return project.run(run_id)


def continue_run(project, run_id: int, workers: int | None = None, foreground: bool = False):
    """Launch a new attempt: finished steps with unchanged identity are kept."""
    from hpcem.store.record import request_digest

    run = _take_back(project, run_id, "continued")
    if run.state == "finished":
        if run.attempt is None or run.attempt.request_digest == request_digest(run):
            raise RunError(
                f"run {run_id} is finished: nothing to continue ('hpcem restart' "
                "runs it again from scratch)"
            )
        # its parameters changed since it finished: run the steps they change
        return launch(
            project, run_id, workers, foreground, action="continued", from_states=("finished",)
        )
    return launch(
        project,
        run_id,
        workers,
        foreground,
        action="continued",
        from_states=("saved", "failed", "aborted"),
    )


def restart_run(project, run_id: int, workers: int | None = None, foreground: bool = False):
    """Wipe the run's outputs and step records, then launch it from scratch."""
    _take_back(project, run_id, "restarted")

    def wipe():
        from hpcem.store import StepTable

        project.write_steps(run_id, StepTable.from_records([]))
        sets_dir = project.run_dir(run_id) / "sets"
        for entry in sorted(sets_dir.iterdir()) if sets_dir.exists() else ():
            if entry.is_dir() and not entry.name.startswith("."):
                project.delete_set(run_id, entry.name)  # under the set's lock

    return launch(
        project,
        run_id,
        workers,
        foreground,
        action="restarted",
        reset=True,
        from_states=("saved", *FINAL_STATES),
        prepare=wipe,
    )


def stop_run(project, run_id: int, reason: str = "stopped by user") -> str:
    """Stop a run: mark it aborted, then end its controller and workers (process group
    and every process carrying its ``HPCEM_RUN``) or cancel its batch jobs and blocks.

    On a run that already ended, leftover processes and blocks are still cleaned up;
    RunError when there was nothing to stop. Returns a sentence saying what was done.
    """
    from hpcem.store.project import StateConflict, this_host

    run = project.run(run_id)
    a = run.attempt
    if run.state in ACTIVE_STATES:
        if a.pid and a.host != this_host() and not a.job_id:
            raise RunError(
                f"run {run_id}'s controller runs on host {a.host} (pid {a.pid}); stop it there"
            )
        try:
            project.transition(
                run_id,
                ACTIVE_STATES,
                "aborted",
                reason,
                attempt=a.number,
                outcome="aborted",
                outcome_reason=reason,
                ended=time.time(),
            )
            done = f"run {run_id} ({run.label}) aborted: {reason}"
        except StateConflict as exc:
            done = f"run {run_id} had just ended ({exc.record.state})"
    else:
        done = ""
    ended = _end_processes(project, run)
    if done:
        return done + (f"; {ended}" if ended else "")
    if ended:
        return f"run {run_id} was already {run.state}; {ended}"
    raise RunError(
        f"run {run_id} is not active ({run.state}"
        + (f": {run.error}" if run.error else "")
        + "); nothing to stop"
    )


def _end_processes(project, run) -> str:
    """Cancel the run's batch jobs/blocks and kill its processes; say what was ended."""
    from hpcem.store.project import this_host

    said = []
    a = run.attempt
    jobs = [a.job_id] if a and a.job_id else []
    if jobs:
        from hpcem.execution.batch import cancel_jobs_of

        cancel_jobs_of(run, jobs)
        said.append(f"cancelled batch job {', '.join(jobs)}")
    reaped = reap_blocks(project, project.run(run.id))
    if reaped:
        said.append(f"cancelled Parsl block(s) {', '.join(reaped)}")
    if a and a.pid and a.host == this_host() and a.pid in run_processes(project, run.id):
        _kill_group(a.pid)  # only a process that carries the run's marker: never a reused pid
    n = cleanup_processes(project, run.id)
    if n:
        said.append(f"ended {n} leftover process{'es' if n != 1 else ''}")
    return "; ".join(said)


def reap_blocks(project, run) -> list[str]:
    """Cancel the Parsl blocks a dead controller left (they would hold nodes until their
    walltime) and drop them from the record; returns their job ids. A no-op while the
    run's controller lives."""
    if not run.blocks or diagnose(run)[0] in ACTIVE_STATES:
        return []
    from hpcem.execution.batch import cancel_jobs_of
    from hpcem.store.project import StateConflict

    if run.state in ACTIVE_STATES:
        mark_dead(project, run)
    blocks = list(run.blocks)
    cancel_jobs_of(run, blocks)
    try:
        project.release_blocks(run.id, blocks)
    except StateConflict:
        return []
    return blocks


def run_processes(project, run_id: int) -> list[int]:
    """Pids on this host whose environment carries this run's ``HPCEM_RUN``."""
    needle = f"{RUN_ENV}={run_marker(project, run_id)}".encode() + b"\0"
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if (b"\0" + env).find(b"\0" + needle) >= 0:
            pids.append(int(entry))
    return pids


def cleanup_processes(project, run_id: int) -> int:
    """SIGKILL every live process of the run on this host; return how many there were."""
    pids = [p for p in run_processes(project, run_id) if pid_alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _kill_group(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):  # a stopped controller must wake to die
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever is left of the group (workers)
    except ProcessLookupError:
        pass


def copy_run(
    project, run_id: int, label: str | None = None, params: Mapping[str, Any] | None = None
):
    """A new saved run with the same protocol, inputs and placement, and the same
    parameters except those in ``params`` (validated exactly as for a new run)."""
    run = project.run(run_id)
    return create_run(
        project,
        run.protocol,
        params={**run.params, **dict(params or {})},
        inputs={k: list(v) for k, v in run.inputs.items()},
        label=label or copy_label(run.label, [r.label for r in project.runs]),
        placement=run.placement.to_json(),
    )


def copy_label(label: str, taken: Sequence[str]) -> str:
    """``"CTF (copy)"``, then ``"CTF (copy 2)"``, ... : the first label not taken."""
    import re

    base = re.sub(r" \(copy(?: \d+)?\)$", "", label)
    candidate, n = f"{base} (copy)", 1
    while candidate in set(taken):
        n += 1
        candidate = f"{base} (copy {n})"
    return candidate


# --- one row of `hpcem status` ---------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class RunSummary:
    """One row of ``hpcem status``."""

    id: int
    label: str
    protocol: str
    state: str
    reason: str
    steps_done: int
    steps_total: int
    elapsed_s: float
    outputs: dict
    job: str = ""  # "slurm 53 PENDING" for a run sent as a batch job

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def summarize(run) -> RunSummary:
    state, reason = diagnose(run)
    start, end = run.started, run.ended
    if math.isnan(end) and state in ACTIVE_STATES:
        end = time.time()
    elapsed = end - start if not (math.isnan(start) or math.isnan(end)) else 0.0
    outputs = {
        name: {"type": t, "size": run.output_sizes.get(name)}
        for name, t in run.output_types.items()
    }
    job = run.job_text
    return RunSummary(
        run.id,
        run.label,
        run.protocol,
        state,
        reason or run.error,
        run.steps_done,
        run.steps_total,
        max(elapsed, 0.0),
        outputs,
        job,
    )
