"""The life of a run: create, launch, continue, restart, stop, copy, and its true state.

A launched run has one controller process (started in its own session, so that ``stop``
can end it and its workers as one process group). The controller's pid, host and a
heartbeat are stored in the run record; a run whose controller died without saying so
(SIGKILL, node crash) shows as failed the next time anyone looks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hpcem.errors import RunError

ACTIVE_STATES = ("launched", "running")
STALE_HEARTBEAT_S = 60.0
STOP_GRACE_S = 10.0


def create_run(
    project,
    protocol_name: str,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Sequence[str] | str] | None = None,
    label: str = "",
    execution: Mapping[str, Any] | None = None,
):
    """Validate and store a new run (state ``saved``); nothing runs yet."""
    # Imported here: `hpcem status` uses this module and must start fast.
    from hpcem.execution.context import RunContext
    from hpcem.protocol.registry import get_protocol
    from hpcem.protocol.validate import validate_request

    protocol = get_protocol(protocol_name)
    request = validate_request(
        protocol,
        params or {},
        inputs or {},
        project,
        make_context=lambda req: RunContext(project, None, req.params, req.inputs),
    )
    return project.create_run(
        protocol=protocol.name,
        label=label or protocol.label or protocol.name,
        params=request.params,
        inputs=request.inputs,
        execution=dict(execution or {}),
    )


def launch(project, run_id: int, workers: int | None = None, foreground: bool = False) -> None:
    """Start the run's controller: a detached local process, or inline with ``foreground``.

    Runs sent to a cluster as one job are submitted by :mod:`hpcem.execution.batch`.
    """
    run = project.run(run_id)
    if effective_state(run) in ACTIVE_STATES:
        raise RunError(f"run {run_id} is already {run.state} (pid {run.pid} on {run.host})")
    execution = dict(run.execution)
    if workers:
        execution["workers"] = workers
    project.update_run(
        run_id, state="launched", execution=execution, error="", heartbeat=time.time(),
        pid=0, host=socket.gethostname(), ended=math.nan,
    )
    if execution.get("mode") == "job":
        from hpcem.execution.batch import submit_run_job

        submit_run_job(project, run_id)
        return
    if foreground:
        from hpcem.execution.controller import run_controller

        run_controller(str(project.path), run_id, workers)
        return
    run_dir = project.run_dir(run_id)
    argv = [sys.executable, "-m", "hpcem.execution.controller", str(project.path), str(run_id)]
    if workers:
        argv += ["--workers", str(workers)]
    with open(run_dir / "stdout.log", "ab") as out, open(run_dir / "stderr.log", "ab") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
            cwd=str(project.path),
        )
    # Record the pid now: a status query before the controller's first commit sees it.
    project.update_run(run_id, pid=proc.pid)


def effective_state(run) -> str:
    """The run's state, with dead or silent controllers shown as failed."""
    return diagnose(run)[0]


def diagnose(run) -> tuple[str, str]:
    """(state, reason) where a stored active state is checked against reality."""
    if run.state not in ACTIVE_STATES:
        return run.state, ""
    if run.execution.get("mode") == "job" and run.pid == 0:
        return run.state, ""  # queued as a batch job; the job tracker knows more
    if run.host == socket.gethostname() and run.pid and not pid_alive(run.pid):
        return "failed", f"controller process {run.pid} died without finishing"
    beat = run.heartbeat
    if run.pid and not math.isnan(beat) and time.time() - beat > STALE_HEARTBEAT_S:
        return "failed", f"no heartbeat from {run.host} since {time.ctime(beat)}"
    return run.state, ""


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def mark_dead(project, run) -> None:
    """Persist 'failed' for a run whose controller is gone (no-op otherwise)."""
    state, reason = diagnose(run)
    if state != run.state:
        project.update_run(run.id, state=state, error=reason, ended=time.time())


def continue_run(project, run_id: int, workers: int | None = None, foreground: bool = False):
    """Re-launch a run: finished steps with unchanged identity are kept."""
    run = project.run(run_id)
    mark_dead(project, run)
    launch(project, run_id, workers, foreground)


def restart_run(project, run_id: int, workers: int | None = None, foreground: bool = False):
    """Wipe the run's outputs and step records, then launch it from scratch."""
    run = project.run(run_id)
    mark_dead(project, run)
    if effective_state(project.run(run_id)) in ACTIVE_STATES:
        raise RunError(f"run {run_id} is active: stop it first (hpcem stop)")
    from hpcem.store import StepTable

    project.write_steps(run_id, StepTable.from_records([]))
    sets_dir = project.run_dir(run_id) / "sets"
    for entry in sorted(sets_dir.iterdir()) if sets_dir.exists() else ():
        if entry.is_dir() and not entry.name.startswith("."):
            project.delete_set(run_id, entry.name)  # under the set's lock, never half-deleted
    execution = dict(project.run(run_id).execution)
    execution.pop("output_sizes", None)
    project.update_run(run_id, output_types={}, execution=execution, steps_done=0)
    launch(project, run_id, workers, foreground)


def stop_run(project, run_id: int) -> str:
    """Stop an active run: its controller and workers (process group), or its batch jobs."""
    run = project.run(run_id)
    if effective_state(run) not in ACTIVE_STATES:
        mark_dead(project, run)
        raise RunError(f"run {run_id} is not active (state {effective_state(run)})")
    from hpcem.execution.controller import STOP_REQUESTED

    project.update_run(run_id, error=STOP_REQUESTED)
    jobs = run.execution.get("jobs", [])
    if jobs:
        from hpcem.execution.batch import cancel_run_jobs

        cancel_run_jobs(project, run)
    if run.pid and run.host == socket.gethostname():
        _kill_group(run.pid)
    elif run.pid and not jobs:
        raise RunError(f"run {run_id} runs on host {run.host}; stop it there")
    run = project.run(run_id)
    if run.state in ACTIVE_STATES or run.error == STOP_REQUESTED:
        project.update_run(run_id, state="aborted", error="stopped by user", ended=time.time())
    return "aborted"


def _kill_group(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever is left of the group (workers)
    except ProcessLookupError:
        pass


def copy_run(project, run_id: int, label: str | None = None):
    """A new saved run with the same protocol, parameters and inputs."""
    run = project.run(run_id)
    execution = {k: v for k, v in run.execution.items() if k in ("mode", "site", "queue", "workers", "dispatch", "resources", "parsl")}
    return project.create_run(
        protocol=run.protocol,
        label=label or f"{run.label} (copy)",
        params=dict(run.params),
        inputs={k: list(v) for k, v in run.inputs.items()},
        execution=execution,
    )


@dataclasses.dataclass
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

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def summarize(run) -> RunSummary:
    state, reason = diagnose(run)
    start = run.started
    end = run.ended if not math.isnan(run.ended) else (time.time() if state in ACTIVE_STATES else math.nan)
    elapsed = end - start if not (math.isnan(start) or math.isnan(end)) else 0.0
    if state in ACTIVE_STATES and run.execution.get("jobs") and not reason:
        job = run.execution["jobs"][-1]
        reason = f"job {job['id']} {job.get('native_state') or job.get('state', '')}".strip()
    sizes = run.execution.get("output_sizes", {})
    outputs = {name: {"type": t, "size": sizes.get(name)} for name, t in run.output_types.items()}
    return RunSummary(run.id, run.label, run.protocol, state, reason or run.error,
                      run.steps_done, run.steps_total, max(elapsed, 0.0), outputs)
