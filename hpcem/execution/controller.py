"""The controller of one run: plans steps, dispatches them, records results, resumes.

One controller process per run is the only writer of that run's records (guarded by a
lock file). It skips steps that already finished with the same identity (function +
arguments), so ``continue`` redoes only what is missing or changed. It waits on futures
with a timeout (no fixed sleeps) and commits step records in batches: at most every
``COMMIT_INTERVAL_S`` while steps stream in, and at once when nothing else is running.

Run it as ``python -m hpcem.execution.controller PROJECT RUN_ID [--workers N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import signal
import socket
import sys
import time
import traceback

from hpcem.errors import HpcemError
from hpcem.execution.context import RunContext
from hpcem.execution.graph import StepGraph
from hpcem.execution.log import RunLog
from hpcem.protocol.registry import get_protocol

COMMIT_INTERVAL_S = 0.5
HEARTBEAT_S = 5.0
FINISHED = "finished"
STOP_REQUESTED = "stop requested by user"  # written by `hpcem stop` before it signals us


class _Stop(Exception):
    """Raised inside the controller when it is asked to stop (SIGTERM/SIGINT)."""


def _new_record(step) -> dict:
    return {
        "id": step.id,
        "name": step.name,
        "func": step.func,
        "state": "pending",
        "deps": list(step.deps),
        "args": step.args,
        "started": math.nan,
        "ended": math.nan,
        "host": "",
        "exit_code": None,
        "error": "",
        "job_id": "",
        "attempts": 0,
        "result": None,
    }


class Controller:
    """Runs one run to its end (finished, failed or aborted)."""

    def __init__(self, project, run_id: int, executor, *, commit_interval_s=COMMIT_INTERVAL_S):
        self.project = project
        self.run_id = run_id
        self.executor = executor
        self.commit_interval_s = commit_interval_s
        self.log = RunLog(project.run_dir(run_id))
        self._stop_requested = False
        self._waiting = False
        self._blocks: list[str] = []

    # --- planning ------------------------------------------------------------------------
    def plan(self):
        """Build the step graph and merge it with the stored step records."""
        run = self.project.run(self.run_id)
        protocol = get_protocol(run.protocol)
        self.ctx = RunContext(self.project, self.run_id, run.params, run.inputs)
        self.graph = StepGraph(protocol().steps(self.ctx), protocol.name)
        stored = {r["id"]: r for r in self.project.read_steps(self.run_id).to_records()}
        self.records: dict[str, dict] = {}
        results = {}
        for name in self.graph.order:
            step = self.graph.steps[name]
            old = stored.get(step.id)
            if old is not None and old["state"] == FINISHED:
                rec = dict(old, name=name)
                results[name] = rec["result"]
            else:
                rec = _new_record(step)
                if old is not None:
                    rec["attempts"] = int(old["attempts"])
            self.records[name] = rec
        self.ctx.set_results(results)
        return self.graph

    # --- running -------------------------------------------------------------------------
    def run(self) -> str:
        """Execute the plan; return the final run state."""
        self.plan()
        finished = {n for n, r in self.records.items() if r["state"] == FINISHED}
        reused = len(finished)
        self._commit(state="running", force=True, extra={
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "ended": math.nan, "error": "", "heartbeat": time.time(),
        })
        self.log.event("run", f"running {len(self.graph)} steps ({reused} already finished)")
        running: dict[concurrent.futures.Future, str] = {}
        failed: list[str] = []
        last_commit = last_beat = time.monotonic()
        dirty = False
        try:
            while True:
                if self._stop_requested:
                    raise _Stop()
                if not failed:
                    for name in self.graph.ready(finished, [*running.values(), *self._failed_names()]):
                        dirty = True
                        if self.graph.steps[name].controller:
                            self._run_inline(name, finished, failed)
                        else:
                            running[self._submit(name)] = name
                if not running:
                    break
                self._waiting = True
                try:
                    done, _ = concurrent.futures.wait(
                        running, timeout=HEARTBEAT_S, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                finally:
                    self._waiting = False
                for future in done:
                    name = running.pop(future)
                    self._collect(name, future, finished, failed)
                    dirty = True
                now = time.monotonic()
                if dirty and (not running or now - last_commit >= self.commit_interval_s):
                    self._commit(heartbeat=True)
                    last_commit, dirty = now, False
                elif now - last_beat >= HEARTBEAT_S:
                    self._commit(heartbeat=True, force=True)
                    last_beat = now
        except _Stop:
            self.executor.shutdown(cancel=True)
            by_user = self.project.run(self.run_id).error == STOP_REQUESTED
            reason = "stopped by user" if by_user else (
                "terminated by a signal (walltime, preemption, scancel or kill?)")
            for name in running.values():
                self.records[name]["state"] = "aborted"
                self.records[name]["error"] = reason
            self.log.event("run", f"aborted: {reason}", level="warning")
            self._commit(state="aborted", force=True, extra={"ended": time.time(), "error": reason})
            return "aborted"
        self.executor.shutdown()
        if failed:
            first = self.records[failed[0]]
            error = f"step {failed[0]} failed: {first['error']}"
            self.log.event("run", error, level="error")
            self._commit(state="failed", force=True, extra={"ended": time.time(), "error": error})
            return "failed"
        self.log.event("run", "finished")
        self._commit(state="finished", force=True, extra={"ended": time.time(), "error": ""})
        return "finished"

    def _failed_names(self) -> list[str]:
        return [n for n, r in self.records.items() if r["state"] == "failed"]

    def _submit(self, name: str):
        step = self.graph.steps[name]
        rec = self.records[name]
        rec.update(state="running", started=time.time(), attempts=int(rec["attempts"]) + 1)
        self.log.event(name, "submitted")
        resources = {"mpi": [step.mpi.ranks, step.mpi.threads_per_rank]} if step.mpi else {}
        return self.executor.submit(step.func, step.args, resources)

    def _collect(self, name, future, finished, failed) -> None:
        try:
            out = future.result()
        except Exception as exc:  # noqa: BLE001 - a step's own error is recorded, never fatal
            self._record(name, None, exc, finished, failed)
            return
        self._record(name, out, None, finished, failed)

    def _run_inline(self, name, finished, failed) -> None:
        from hpcem.execution.worker import resolve

        step = self.graph.steps[name]
        rec = self.records[name]
        rec.update(state="running", started=time.time(), attempts=int(rec["attempts"]) + 1)
        self.ctx.step_name = name
        try:
            result = resolve(step.func)(self.ctx, **step.args)
        except Exception as exc:  # noqa: BLE001 - a step's own error is recorded, never fatal
            self._record(name, None, exc, finished, failed)
            return
        finally:
            self.ctx.step_name = None
        out = {"result": result, "host": socket.gethostname(), "started": rec["started"],
               "ended": time.time()}
        self._record(name, out, None, finished, failed)

    def _record(self, name, out, exc, finished, failed) -> None:
        """Store a step's outcome: its result (which must be JSON) or its error."""
        rec = self.records[name]
        if exc is None:
            try:
                json.dumps(out["result"], allow_nan=False)
            except (TypeError, ValueError) as bad:
                exc = bad.__class__(f"step result is not JSON-serialisable: {bad}")
        if exc is not None:
            rec.update(state="failed", ended=time.time(), exit_code=1, error=_one_line(exc))
            self.log.event(name, f"failed: {_one_line(exc)}", level="error",
                           detail="".join(traceback.format_exception(exc)))
            failed.append(name)
            return
        rec.update(state=FINISHED, started=out["started"], ended=out["ended"], host=out["host"],
                   exit_code=0, error="", result=out["result"])
        self.ctx._results[name] = out["result"]
        finished.add(name)
        self.log.event(name, f"finished on {out['host']} in {out['ended'] - out['started']:.3f} s")

    def _commit(self, state=None, force=False, heartbeat=False, extra=None) -> None:
        from hpcem.store import StepTable

        records = [self.records[n] for n in self.graph.order]
        self.project.write_steps(self.run_id, StepTable.from_records(records))
        fields = {
            "steps_done": sum(r["state"] == FINISHED for r in records),
            "steps_total": len(records),
        }
        blocks = list(self.executor.job_ids())
        if blocks != self._blocks:  # Parsl blocks (batch jobs) of this run, for `hpcem status`
            self._blocks = blocks
            run = self.project.run(self.run_id)
            fields["execution"] = {**run.execution, "blocks": blocks}
        if state:
            fields["state"] = state
        if heartbeat or force:
            fields["heartbeat"] = time.time()
        fields.update(extra or {})
        self.project.update_run(self.run_id, **fields)

    def request_stop(self, *_ignored) -> None:
        """Signal handler: stop at once while waiting, else at the next loop turn."""
        self._stop_requested = True
        if self._waiting:
            raise _Stop()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, HpcemError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def make_executor(project, run, workers: int | None):
    """The executor a run asked for (local processes unless it was sent to Parsl)."""
    dispatch = run.execution.get("dispatch", "local")
    if dispatch == "parsl":
        from hpcem.cluster.site import load_site
        from hpcem.execution.parsl_executor import ParslExecutor

        opts = dict(run.execution.get("parsl", {}))
        res = run.execution.get("resources", {})
        return ParslExecutor(load_site(run.execution["site"]), queue=res.get("queue"),
                             run_dir=str(project.run_dir(run.id) / "parsl"), label=f"hpcem-run{run.id}",
                             **opts)
    from hpcem.execution.local import LocalExecutor

    return LocalExecutor(workers or run.execution.get("workers") or None,
                         site=run.execution.get("site", "localhost"),
                         workdir=str(project.run_dir(run.id) / "mpi"))


def run_controller(project_path: str, run_id: int, workers: int | None = None) -> str:
    """Open the project, lock the run, and run its controller to the end."""
    from hpcem.store import Project
    from hpcem.store.locks import FileLock

    project = Project.open(project_path)
    run = project.run(run_id)
    lock = FileLock(project.run_dir(run_id) / "controller.lock", f"run {run_id}")
    lock.acquire(timeout_s=0)
    try:
        _mark_job(project, run_id, "RUNNING")
        executor = make_executor(project, run, workers).start()
        controller = Controller(project, run_id, executor)
        signal.signal(signal.SIGTERM, controller.request_stop)
        signal.signal(signal.SIGINT, controller.request_stop)
        try:
            state = controller.run()
            _mark_job(project, run_id, {"finished": "COMPLETED", "aborted": "CANCELLED"}.get(state, "FAILED"))
            return state
        except HpcemError as exc:
            # A planning error (bad protocol, missing input) fails the run with its reason.
            project.update_run(run_id, state="failed", ended=time.time(), error=str(exc))
            controller.log.event("run", f"failed: {exc}", level="error")
            raise
    finally:
        lock.release()


def _mark_job(project, run_id: int, state: str) -> None:
    """Inside a batch job of this run: record the job's state as the controller sees it."""
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or os.environ.get("JOB_ID")
    run = project.run(run_id)
    jobs = list(run.execution.get("jobs", []))
    if not job_id or not jobs or str(jobs[-1]["id"]).split(".")[0] != job_id.split(".")[0]:
        return
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    jobs[-1] = {**jobs[-1], "state": state, "native_state": state, "node": node}
    project.update_run(run_id, execution={**run.execution, "jobs": jobs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the controller of one hpcem run.")
    parser.add_argument("project")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        state = run_controller(args.project, args.run_id, args.workers)
    except HpcemError as exc:
        print(f"hpcem controller: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if state == FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())
