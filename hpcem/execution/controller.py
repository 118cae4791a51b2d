"""The controller of one attempt of a run: plans steps, dispatches them, records results.

One controller process per attempt is the only writer of the run's progress, and every
write it makes names its attempt: once a later attempt exists (or ``hpcem stop`` ended
the run) the store refuses (``FencedError``) and this controller stops without writing
more. It skips steps that already finished with the same identity (function +
arguments) when every step they depend on is skipped too, so ``continue`` redoes only
what is missing or changed, and what consumed it. It waits on futures
with a timeout (no fixed sleeps) and commits step records in batches: at most every
``COMMIT_INTERVAL_S`` while steps stream in, and at once when nothing else is running.

Step outcomes: ``finished``; ``rejected`` (the step raised ``ItemRejected`` for its own
item, or its result cannot be stored: the run goes on without it); ``failed`` (the run
fails); a step whose worker was lost is run again up to the protocol's ``retries``.

Run it as ``python -P -m hpcem.execution.controller PROJECT RUN_ID --attempt N``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import os
import signal
import socket
import sys
import time
import traceback

from hpcem.errors import (
    FencedError,
    HpcemError,
    ItemRejected,
    StorageFullError,
    WorkerLostError,
)
from hpcem.execution.graph import StepGraph
from hpcem.execution.log import RunLog
from hpcem.protocol.context import RunContext
from hpcem.protocol.declare import step_identity
from hpcem.protocol.registry import get_protocol

COMMIT_INTERVAL_S = 0.5
HEARTBEAT_S = 5.0
FINISHED = "finished"
REJECTED = "rejected"
DONE_STATES = (FINISHED, REJECTED)  # a dependency is satisfied by either


class _Stop(Exception):
    """Raised inside the controller when it is asked to stop (SIGTERM/SIGINT)."""


def _new_record(step, identity: str) -> dict:
    return {
        "id": identity,
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


def _node() -> str:
    from hpcem.cluster.schedulers import node_name

    return node_name()


class Controller:
    """Runs one attempt of a run to its end (finished, failed, aborted or fenced)."""

    def __init__(
        self, project, run_id: int, attempt: int, executor, *, commit_interval_s=COMMIT_INTERVAL_S
    ):
        self.project = project
        self.run_id = run_id
        self.attempt = attempt
        self.executor = executor
        self.commit_interval_s = commit_interval_s
        self.log = RunLog(project.run_dir(run_id))
        self._stop_requested = False
        self._signal = 0
        self._waiting = False
        self._blocks: tuple[str, ...] = ()
        self._dirty: set[str] = set()
        self._ready: collections.deque = collections.deque()
        self._done_set: set[str] = set()

    # --- planning ------------------------------------------------------------------------
    def plan(self):
        """Build the step graph and merge it with the stored step records."""
        run = self.project.run(self.run_id)
        self.protocol = get_protocol(run.protocol)
        self.ctx = RunContext(
            self.project, self.run_id, run.params, run.inputs, attempt=self.attempt
        )
        self.graph = StepGraph(self.protocol().steps(self.ctx), self.protocol.name)
        stored = {r["id"]: r for r in self.project.read_steps(self.run_id).to_records()}
        self.records: dict[str, dict] = {}
        results, rejections = {}, {}
        version = str(self.protocol.version)
        self.ids = {name: step_identity(s, version) for name, s in self.graph.steps.items()}
        kept: set[str] = set()
        for name in self.graph.order:  # dependencies first
            step = self.graph.steps[name]
            old = stored.get(self.ids[name])
            # a finished step is kept only when every step it depends on is kept: one that
            # runs again may write other files or results than this step consumed
            if (
                old is not None
                and old["state"] in DONE_STATES
                and all(d in kept for d in step.deps)
            ):
                kept.add(name)
                rec = dict(old, name=name)
                if rec["state"] == FINISHED:
                    results[name] = rec["result"]
                else:
                    rejections[name] = rec["error"]
            else:
                rec = _new_record(step, self.ids[name])
                if old is not None:
                    rec["attempts"] = int(old["attempts"])
            self.records[name] = rec
        self.ctx.set_results(results, rejections)
        self._position = {n: i for i, n in enumerate(self.graph.order)}
        return self.graph

    # --- running -------------------------------------------------------------------------
    def run(self) -> str:
        """Execute the plan; return the final run state (or "fenced")."""
        self.plan()
        done = self._done_set = {n for n, r in self.records.items() if r["state"] in DONE_STATES}
        self.log.event(
            "run", f"attempt {self.attempt}: {len(self.graph)} steps ({len(done)} already done)"
        )
        self._commit(force=True, whole=True)  # the plan replaces what an older plan stored
        running: dict[concurrent.futures.Future, str] = {}
        failed: list[str] = []
        # the ready queue is driven by in-degrees: O(out-degree) per finished step
        self._ready = collections.deque(self.graph.start(done))
        # steps handed to the executor at once: enough to keep every slot busy, few enough
        # that waiting on them stays cheap (the rest wait in the ready queue)
        self._max_in_flight = getattr(self.executor, "max_in_flight", None) or len(self.graph) or 1
        last_commit = last_beat = time.monotonic()
        dirty = False
        try:
            while True:
                if self._stop_requested:
                    raise _Stop()
                while self._ready and not failed and len(running) < self._max_in_flight:
                    name = self._ready.popleft()
                    dirty = True
                    if self.graph.steps[name].controller:
                        self._fence()
                        self._run_inline(name, done, failed)
                    else:
                        running[self._submit(name)] = name
                if not running:
                    break
                self._waiting = True
                try:
                    finished_now, _ = concurrent.futures.wait(
                        running, timeout=HEARTBEAT_S, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                finally:
                    self._waiting = False
                for future in finished_now:
                    name = running.pop(future)
                    retry = self._collect(name, future, done, failed)
                    if retry:
                        running[self._submit(name)] = name
                    dirty = True
                now = time.monotonic()
                if dirty and (not running or now - last_commit >= self.commit_interval_s):
                    self._commit()
                    last_commit, dirty = now, False
                elif now - last_beat >= HEARTBEAT_S:
                    self._commit(force=True)
                    last_beat = now
        except _Stop:
            return self._stopped(running)
        self.executor.shutdown()
        if failed:
            first = self.records[failed[0]]
            return self._end("failed", f"step {failed[0]} failed: {first['error']}")
        rejected = [n for n, r in self.records.items() if r["state"] == REJECTED]
        reason = ""
        if rejected:
            reason = (
                f"{len(rejected)} of {len(self.records)} steps rejected their item "
                f"(first: {self.records[rejected[0]]['error']})"
            )
        return self._end("finished", reason)

    def _stopped(self, running) -> str:
        self.executor.shutdown(cancel=True)
        sig = signal.Signals(self._signal).name if self._signal else "a signal"
        in_job = bool(self.project.run(self.run_id).attempt.job_id)
        for name in running.values():
            self.records[name]["state"] = "aborted"
            self.records[name]["error"] = f"terminated by {sig}"
            self._dirty.add(name)
        if in_job:  # the scheduler's final state (TIMEOUT, PREEMPTED ...) refines this
            return self._end(
                "failed",
                f"terminated by {sig} (waiting for the scheduler's "
                "final state: walltime, preemption or scancel?)",
                provisional=True,
            )
        return self._end("aborted", f"terminated by {sig}")

    def _end(self, state: str, reason: str, provisional: bool = False) -> str:
        level = {"finished": "info", "failed": "error"}.get(state, "warning")
        self.log.event("run", f"{state}" + (f": {reason}" if reason else ""), level=level)
        self._commit(
            state=state,
            reason=reason,
            force=True,
            attempt_fields={
                "ended": time.time(),
                "outcome": state,
                "outcome_reason": reason,
                "provisional": provisional,
            },
        )
        return state

    def _submit(self, name: str):
        step = self.graph.steps[name]
        rec = self.records[name]
        self._dirty.add(name)
        rec.update(state="running", started=time.time(), attempts=int(rec["attempts"]) + 1)
        self.log.event(name, "submitted")
        resources = {"mpi": [step.mpi.ranks, step.mpi.threads_per_rank]} if step.mpi else {}
        return self.executor.submit(step.func, step.args, resources)

    def _collect(self, name, future, done, failed) -> bool:
        """Record a worker step's outcome; True when the step must be submitted again."""
        try:
            out = future.result()
        except WorkerLostError as exc:
            rec = self.records[name]
            if int(rec["attempts"]) <= int(self.protocol.retries):
                self.log.event(
                    name,
                    f"{exc}; running it again (attempt {int(rec['attempts']) + 1})",
                    level="warning",
                )
                return True
            self._record(name, None, exc, done, failed)
            return False
        except Exception as exc:  # noqa: BLE001 - a step's own error is recorded, never fatal
            self._record(name, None, exc, done, failed)
            return False
        self._record(name, out, None, done, failed)
        return False

    def _run_inline(self, name, done, failed) -> None:
        from hpcem.execution.worker import resolve

        step = self.graph.steps[name]
        rec = self.records[name]
        rec.update(state="running", started=time.time(), attempts=int(rec["attempts"]) + 1)
        self.ctx.step_name = name
        try:
            result = resolve(step.func)(self.ctx, **step.args)
        except (FencedError, StorageFullError):
            raise
        except Exception as exc:  # noqa: BLE001 - a step's own error is recorded, never fatal
            self._record(name, None, exc, done, failed)
            return
        finally:
            self.ctx.step_name = None
        out = {"result": result, "host": _node(), "started": rec["started"], "ended": time.time()}
        self._record(name, out, None, done, failed)

    def _record(self, name, out, exc, done, failed) -> None:
        """Store a step's outcome: its result (which must be JSON), a rejection or an error."""
        rec = self.records[name]
        self._dirty.add(name)
        if exc is None:
            why = unstorable(out["result"])
            if why:
                exc = ItemRejected(f"{name}: its result cannot be stored ({why})")
        if isinstance(exc, ItemRejected):
            rec.update(
                state=REJECTED, ended=time.time(), exit_code=0, error=_one_line(exc), result=None
            )
            self.ctx._rejections[name] = rec["error"]
            done.add(name)
            self._ready.extend(self.graph.done(name))
            self.log.event(name, f"rejected: {rec['error']}", level="warning")
            return
        if exc is not None:
            rec.update(state="failed", ended=time.time(), exit_code=1, error=_one_line(exc))
            self.log.event(
                name,
                f"failed: {_one_line(exc)}",
                level="error",
                detail="".join(traceback.format_exception(exc)),
            )
            failed.append(name)
            return
        rec.update(
            state=FINISHED,
            started=out["started"],
            ended=out["ended"],
            host=out["host"],
            exit_code=0,
            error="",
            result=out["result"],
        )
        self.ctx._results[name] = out["result"]
        done.add(name)
        self._ready.extend(self.graph.done(name))
        self.log.event(name, f"finished on {out['host']} in {out['ended'] - out['started']:.3f} s")

    def _fence(self) -> None:
        """FencedError now if this attempt no longer holds the run (before side effects)."""
        from hpcem.store.project import _fence

        _fence(self.project.run(self.run_id), self.attempt)

    def _commit(
        self, state=None, reason=None, force=False, attempt_fields=None, whole=False
    ) -> None:
        """One fenced commit: the step records that changed since the last commit (the
        whole table with ``whole``), progress, and with ``state`` the transition.
        O(changed steps): the done count is kept as steps finish, not recounted."""
        from hpcem.store import StepTable

        if whole:
            steps = StepTable.from_records([self.records[n] for n in self.graph.order])
            changed = None
        else:
            steps = None
            changed = (
                [self.records[n] for n in self.graph.order if n in self._dirty]
                if len(self._dirty) * 8 > len(self.records)
                else [self.records[n] for n in sorted(self._dirty, key=self._position.__getitem__)]
            )
        self._dirty = set()
        fields = {
            "steps_done": len(self._done_names()),
            "steps_total": len(self.records),
            "heartbeat": time.time(),
        }
        # the live Parsl blocks; a clean end shut them down. Those of a controller that
        # died stay listed, and `hpcem status`/`continue`/`stop` cancel them.
        blocks = () if state else tuple(self.executor.job_ids())
        if blocks != self._blocks:
            if blocks:
                self.log.event("run", f"Parsl blocks (batch jobs): {', '.join(blocks)}")
            self._blocks = blocks
            fields["blocks"] = blocks
        self.project.controller_commit(
            self.run_id,
            self.attempt,
            steps=steps,
            changed_steps=changed,
            state=state,
            reason=reason,
            attempt_fields=attempt_fields,
            **fields,
        )

    def _done_names(self) -> set:
        return self._done_set

    def request_stop(self, signum, _frame=None) -> None:
        """Signal handler: stop at once while waiting, else at the next loop turn."""
        self._stop_requested = True
        self._signal = signum
        if self._waiting:
            raise _Stop()


def unstorable(value, where: str = "result") -> str:
    """Why ``value`` cannot be stored as JSON (e.g. "result['defocus_u'] is nan"), or ''."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{where} has the non-text key {k!r}"
            why = unstorable(v, f"{where}[{k!r}]")
            if why:
                return why
        return ""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            why = unstorable(v, f"{where}[{i}]")
            if why:
                return why
        return ""
    if value is None or isinstance(value, (str, bool, int, float)):
        return ""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return f"{where} is a {type(value).__name__}, not a JSON value"
    return ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, HpcemError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def make_executor(project, run, workers: int | None):
    """The executor a run asked for (local processes unless it was sent to Parsl)."""
    placement = run.placement
    if placement.dispatch == "parsl":
        from hpcem.cluster.site import load_site
        from hpcem.execution.parsl_executor import ParslExecutor

        return ParslExecutor(
            load_site(placement.site),
            queue=placement.resources.get("queue"),
            run_dir=str(project.run_dir(run.id) / "parsl"),
            label=f"hpcem-run{run.id}",
            cwd=str(project.path),
            **dict(placement.parsl),
        )
    from hpcem.execution.local import LocalExecutor

    return LocalExecutor(
        workers or placement.workers or None,
        site=placement.site,
        workdir=str(project.run_dir(run.id) / "mpi"),
        cwd=str(project.path),
    )


def take_over(project, run_id: int, attempt: int) -> int:
    """Turn the launched ``attempt`` into the running one (this process is its controller).

    Inside a batch job that the scheduler requeued, the job's script starts again with
    the attempt it was submitted for: a new attempt of the same job is taken instead.
    Returns the attempt this controller holds; FencedError when it holds none.
    """
    from hpcem.cluster.schedulers import job_environment
    from hpcem.store.project import StateConflict

    job_id = job_environment()[0]
    run = project.run(run_id)
    a = run.attempt
    if (
        a is not None
        and a.number == attempt
        and run.state != "launched"
        and job_id
        and a.job_id
        and a.job_id.split(".")[0] == job_id.split(".")[0]
    ):
        try:  # requeued: the job runs again under a new attempt
            run = project.begin_attempt(
                run_id,
                ("running", "failed", "aborted"),
                job_id=a.job_id,
                site=a.site,
                queue=a.queue,
                exit_code_file=a.exit_code_file,
            )
        except StateConflict as exc:
            raise FencedError(
                f"run {run_id}: requeued job {job_id} cannot take the run over ({exc})"
            ) from None
        attempt = run.attempt.number
    host = socket.gethostname()
    fields = {}
    if run.attempt is not None and host != run.attempt.launcher_host:
        # a batch job on a compute node: record the software the controller runs with
        from hpcem.provenance.software import attempt_software

        fields["software"] = attempt_software(run.protocol)
    try:
        project.transition(
            run_id,
            ("launched",),
            "running",
            attempt=attempt,
            pid=os.getpid(),
            host=host,
            node=_node(),
            started=time.time(),
            **fields,
        )
    except StateConflict as exc:
        raise FencedError(f"run {run_id}: attempt {attempt} cannot start ({exc})") from None
    return attempt


def run_controller(
    project_path: str,
    run_id: int,
    attempt: int,
    workers: int | None = None,
    signals: list | None = None,
) -> str:
    """Open the project, lock the run, take the attempt over and run it to the end."""
    from hpcem.execution.runs import RUN_ENV, run_marker
    from hpcem.store import Project

    project = Project.open(project_path)
    from multiprocessing import resource_tracker

    # the caller's own helper process (inline runs) must not carry this run's marker
    resource_tracker.ensure_running()
    before = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = run_marker(project, run_id)  # inherited by every worker
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        return _run_locked(project, run_id, attempt, workers, signals)
    finally:  # inline (foreground) runs leave the calling process as it was
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
        if before is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = before


def _run_locked(project, run_id: int, attempt: int, workers, signals) -> str:
    from hpcem.store.locks import FileLock

    lock = FileLock(project.run_dir(run_id) / "controller.lock", f"controller of run {run_id}")
    try:
        lock.acquire(timeout_s=0)
    except HpcemError as exc:
        from hpcem.execution.runs import fail_launch

        fail_launch(project, run_id, attempt, f"another controller still holds the run: {exc}")
        raise
    try:
        attempt = take_over(project, run_id, attempt)
        log = RunLog(project.run_dir(run_id))
        executor = None
        try:
            run = project.run(run_id)
            executor = make_executor(project, run, workers).start()
            controller = Controller(project, run_id, attempt, executor)
            signal.signal(signal.SIGTERM, controller.request_stop)
            signal.signal(signal.SIGINT, controller.request_stop)
            try:
                return controller.run()
            finally:
                if controller._signal and signals is not None:
                    signals.append(controller._signal)
        except FencedError as exc:
            if executor is not None:
                executor.shutdown(cancel=True)
            print(f"hpcem controller: {exc}", file=sys.stderr)
            return "fenced"
        except StorageFullError as exc:
            if executor is not None:
                executor.shutdown(cancel=True)
            _fail_running(project, run_id, attempt, str(exc))
            raise
        except Exception as exc:
            if executor is not None:
                executor.shutdown(cancel=True)
            reason = f"planning failed: {_one_line(exc)}"
            log.event("run", reason, level="error", detail="".join(traceback.format_exception(exc)))
            _fail_running(project, run_id, attempt, reason)
            raise HpcemError(reason) from exc
    finally:
        lock.release()


def _fail_running(project, run_id: int, attempt: int, reason: str) -> None:
    """Record the failure if the store can still be written (it may be full)."""
    try:
        project.controller_commit(
            run_id,
            attempt,
            state="failed",
            reason=reason,
            attempt_fields={"ended": time.time(), "outcome": "failed", "outcome_reason": reason},
        )
    except HpcemError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the controller of one hpcem run attempt.")
    parser.add_argument("project")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    got_signal = []
    try:
        state = run_controller(
            args.project, args.run_id, args.attempt, args.workers, signals=got_signal
        )
    except HpcemError as exc:
        print(f"hpcem controller: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"hpcem controller: error: {exc}", file=sys.stderr)
        return 74
    if got_signal:
        return 128 + got_signal[0]  # like a process ended by that signal
    return 0 if state in (FINISHED, "fenced") else 1


if __name__ == "__main__":
    sys.exit(main())
