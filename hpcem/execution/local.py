"""The embedded default executor: steps run in a pool of local worker processes.

A small pool of our own instead of :class:`concurrent.futures.ProcessPoolExecutor`,
for two reasons: a pool whose worker is killed (SIGKILL, out of memory) fails every
in-flight and queued future with ``BrokenProcessPool``, and its workers outlive a
SIGKILLed controller. Here a lost worker fails only the step it was running (with
:class:`~hpcem.errors.WorkerLostError`, which the controller retries) and is replaced;
every worker asks the kernel to kill it when the controller dies (``PR_SET_PDEATHSIG``).

Design
------
* ``workers`` long-lived processes, each running one step at a time, each fed through
  its own duplex :func:`multiprocessing.Pipe`.
* One dispatcher thread owns the workers: it starts them, sends queued steps to idle
  ones, reads results, and watches every worker's ``sentinel``
  (:func:`multiprocessing.connection.wait`). :meth:`LocalExecutor.submit` only appends
  to the queue and wakes it. Per step: one pickle each way and one pipe write.
* Workers come from the **spawn** context, not forkserver:

  - a spawned worker is a fresh interpreter that receives only its own pipe, so it
    holds none of the controller's file descriptors (lock files, HDF5 files, sockets);
  - its parent is the controller, so ``PR_SET_PDEATHSIG`` fires when the controller
    dies. A forkserver worker's parent is the fork server, and (Python 3.11) the fork
    server hands every child a copy of its "alive" pipe, so it exits only when the
    controller *and* all workers are gone: after a SIGKILL of the controller the
    server and its workers would wait on each other forever (seen, not guessed);
  - the death signal follows the parent *thread* that started the child, so all
    workers are started by the dispatcher thread, which lives until they are stopped.

  A spawned worker costs a new interpreter (a few hundred ms); it is paid once per
  worker, not per step. As with any spawn start, multiprocessing re-imports the
  controller's main module in each worker, so a controller *script* keeps its work under
  ``if __name__ == "__main__":``; workers that die before they are ready are counted,
  and after ``max(5, 2 * workers)`` in a row the pool fails the queued steps instead of
  starting more.
* ``sys.path`` of the workers is the controller's minus ``''``, relative entries and
  the folder Python put first implicitly (the script's folder, or the current folder
  for ``-m``), unless that folder is also named explicitly: nothing in the user's
  folder is code. Caveat: multiprocessing's own bootstrap in the child (before our
  code runs) still imports with the controller's path, so the controller itself must be
  started with ``-P`` (``python -P -m hpcem.execution.controller``), which spawned
  children inherit.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref

from hpcem.errors import RunError, WorkerLostError
from hpcem.execution.worker import execute_mpi_step, execute_step

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often busy workers are also checked with waitpid (a forked grandchild
# can hold a worker's sentinel open after the worker died)
STOP_GRACE_S = 5.0  # how long a worker may take to exit after being asked to
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_READY = "ready"


def default_workers() -> int:
    """Worker processes by default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# --- what the controller hands to a worker ------------------------------------------------
def worker_sys_path(path: list[str] | None = None) -> list[str]:
    """``sys.path`` for worker processes: ``path`` (default ``sys.path``) without ``''``,
    relative entries, duplicates and the entry Python put first implicitly."""
    implicit = _implicit_path0()
    out: list[str] = []
    for entry in list(sys.path) if path is None else path:  # a copy: other threads may edit it
        if not entry or not os.path.isabs(entry):
            continue
        if implicit is not None and os.path.normpath(entry) == implicit:
            implicit = None  # drop its first occurrence only: a second one was explicit
            continue
        if entry not in out:
            out.append(entry)
    return out


def _implicit_path0() -> str | None:
    """The folder Python prepended to ``sys.path`` at start-up (None for ``''`` or -P)."""
    if sys.flags.safe_path or sys.flags.isolated:
        return None
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):  # python -m MODULE
        return os.path.normpath(multiprocessing.process.ORIGINAL_DIR or os.getcwd())
    main_file = getattr(main, "__file__", None)
    if main_file:  # python SCRIPT: the script's folder, symlinks resolved
        base = multiprocessing.process.ORIGINAL_DIR or os.getcwd()
        return os.path.dirname(os.path.realpath(os.path.join(base, main_file)))
    return None  # -c, stdin, interactive: '' (dropped as relative)


#: Set in workers (and so in MPI ranks they launch) to the folder steps run in.
STEP_CWD_ENV = "HPCEM_STEP_CWD"


# --- the worker process -------------------------------------------------------------------
def _worker_main(conn, parent_pid: int, path: list[str], cwd: str | None = None) -> None:
    """Body of one worker process: run the steps sent by ``conn`` until told to stop.

    ``cwd`` (the project folder) is where steps run, so the project-relative paths they
    carry resolve; MPI ranks started from here go there too (``HPCEM_STEP_CWD``)."""
    from hpcem.command import die_with_parent

    die_with_parent(parent_pid)
    sys.path[:] = path
    if cwd:
        os.chdir(cwd)
        os.environ[STEP_CWD_ENV] = cwd
    # Ctrl-C reaches the whole foreground group: the controller handles it (and stops us).
    # A no-op handler rather than SIG_IGN, which programs a step runs would inherit.
    signal.signal(signal.SIGINT, _ignore)
    _close_on_exec()
    conn.send_bytes(pickle.dumps((_READY, os.getpid()), _PROTOCOL))
    while True:
        try:
            task = pickle.loads(conn.recv_bytes())
        except EOFError:  # the controller is gone
            return
        if task is None:
            return
        conn.send_bytes(_run_task(task))


def _ignore(*_unused) -> None:
    pass


def _run_task(task: tuple) -> bytes:
    """Run one task; the pickled ``(ok, value, traceback text)`` to send back."""
    func, args = task
    try:
        out = func(*args)
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the controller
        return _pickled_error(exc, traceback.format_exc())
    try:
        return pickle.dumps((True, out, ""), _PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        return _pickled_error(
            RuntimeError(f"the step's result cannot be sent back: {type(exc).__name__}: {exc}"), ""
        )


def _pickled_error(exc: BaseException, tb: str) -> bytes:
    """The error as the controller will see it: the original exception when it survives a
    pickle round trip, else a RuntimeError with its type name and message."""
    if isinstance(exc, Exception):
        try:
            data = pickle.dumps((False, exc, tb), _PROTOCOL)
            pickle.loads(data)
            return data
        except Exception:  # noqa: BLE001, S110 - unpicklable exceptions are common enough
            pass
    return pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}"), tb), _PROTOCOL)


def _close_on_exec() -> None:
    """Keep the fds multiprocessing handed us (pipe, sentinel) out of programs a step runs."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # pragma: no cover - no /proc
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, already closed


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker, attached as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# --- the controller side ------------------------------------------------------------------
@dataclasses.dataclass
class _Task:
    future: concurrent.futures.Future
    payload: bytes


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    task: _Task | None = None
    ready: bool = False  # it said it is up (its start did not fail)

    @property
    def pid(self) -> int:
        return self.process.pid


_live_executors: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    # Before multiprocessing's own atexit hook joins children (it would wait for ever on
    # workers blocked reading their pipe): an executor never shut down is killed.
    for executor in list(_live_executors):
        executor.shutdown(cancel=True)


class LocalExecutor:
    """Runs independent steps concurrently on ``workers`` local processes.

    ``submit`` returns a :class:`concurrent.futures.Future` whose result is
    :func:`~hpcem.execution.worker.execute_step`'s dict. A step's own exception reaches
    the future as itself (a RuntimeError naming it if it cannot be pickled); a worker
    that dies fails only its step, with :class:`~hpcem.errors.WorkerLostError`.
    """

    def __init__(
        self,
        workers: int | None = None,
        site: str = "localhost",
        workdir: str = ".",
        cwd: str | None = None,
    ) -> None:
        self.workers = workers or default_workers()
        #: how many steps the controller hands over at once (the rest wait in its queue)
        self.max_in_flight = 4 * self.workers + 4
        self.cwd = cwd  # where steps run (the project folder); None: the caller's
        self.site = site  # whose MPI command launches MPI steps
        self.workdir = workdir
        self._mpi_count = 0
        self._lock = threading.RLock()  # guards the queue and the flags below
        self._queue: collections.deque[_Task] = collections.deque()
        self._pids: set[int] = set()  # of live workers, for shutdown(cancel=True)
        self._started = False
        self._closing = False  # no more submits; stop once the queue and workers are idle
        self._cancel = False  # kill everything now
        self._woken = False
        self._broken: BaseException | None = None  # why no worker can be started
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._start_failures = 0  # workers in a row that died before they were ready
        self._last_start_error = ""

    # --- public contract -------------------------------------------------------------------
    def start(self) -> LocalExecutor:
        """Start the dispatcher thread, which starts the workers."""
        with self._lock:
            if self._started:
                return self
            if self._closing:
                raise RunError("this local executor was shut down; create a new one")
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._dispatch, name="hpcem-local-dispatcher", daemon=True
            )
            self._started = True
            _live_executors.add(self)
            self._thread.start()
        return self

    def submit(
        self, func_ref: str, args: dict, resources: dict | None = None
    ) -> concurrent.futures.Future:
        """Queue one step; the future's result is :func:`execute_step`'s dict.

        A step with ``resources["mpi"] = [ranks, threads]`` is launched from a worker with
        the site's MPI command (the worker waits for it).
        """
        if not self._started:
            self.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        mpi = (resources or {}).get("mpi")
        if mpi:
            with self._lock:
                self._mpi_count += 1
                name = f"mpi-{self._mpi_count:04d}"
            task = (
                execute_mpi_step,
                (self.site, func_ref, args, int(mpi[0]), int(mpi[1]), self.workdir, name),
            )
        else:
            task = (execute_step, (func_ref, args))
        try:
            payload = pickle.dumps(task, _PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - the step fails, not the caller
            future.set_exception(exc)
            return future
        with self._lock:
            if self._closing:
                raise RunError("cannot submit a step: the local executor was shut down")
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            self._queue.append(_Task(future, payload))
            self._wake()
        return future

    def job_ids(self) -> list[str]:
        return []

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the workers: after every queued and running step ended, or, with
        ``cancel``, at once (workers killed, queued steps cancelled, running ones failed)."""
        with self._lock:
            if not self._started:
                self._closing = True
                return
            self._closing = True
            if cancel:
                self._cancel = True
                for pid in self._pids:
                    _kill(pid)
            self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # --- dispatcher thread -----------------------------------------------------------------
    def _wake(self) -> None:
        """Wake the dispatcher (caller holds the lock); one byte per wait, not per call."""
        if not self._woken and self._wake_w >= 0:
            self._woken = True
            os.write(self._wake_w, b"x")

    def _dispatch(self) -> None:
        workers: list[_Worker] = []
        try:
            self._loop(workers)
        except BaseException as exc:  # never leave futures hanging
            log.exception("local executor dispatcher failed")
            with self._lock:
                self._broken = RunError(f"the local executor failed: {type(exc).__name__}: {exc}")
                self._cancel = True
        finally:
            self._stop_all(workers)
            with self._lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
            _live_executors.discard(self)

    def _loop(self, workers: list[_Worker]) -> None:
        last_poll = time.monotonic()
        while True:
            with self._lock:
                if self._cancel:
                    return
                if self._closing and not self._queue and all(w.task is None for w in workers):
                    return
            self._top_up(workers)
            self._assign(workers)
            waitables: dict = {self._wake_r: None}
            for w in workers:
                waitables[w.conn] = w
                waitables[w.process.sentinel] = w
            ready = multiprocessing.connection.wait(list(waitables), timeout=POLL_S)
            with self._lock:
                if self._cancel:  # the workers were killed on purpose: not "lost"
                    return
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                    self._woken = False
            dead: list[_Worker] = []
            for obj in ready:
                w = waitables[obj]
                if w is None or w in dead:
                    continue
                if obj is w.conn:
                    if not self._receive(w):
                        dead.append(w)
                else:
                    dead.append(w)
            now = time.monotonic()
            if now - last_poll >= POLL_S:  # also ask waitpid about the busy ones
                last_poll = now
                dead += [
                    w
                    for w in workers
                    if w not in dead and w.task is not None and not w.process.is_alive()
                ]
            for w in dead:
                self._lost(w, workers)
                self._assign(workers)

    def _top_up(self, workers: list[_Worker]) -> None:
        """Start workers until there are ``self.workers`` (unless starts keep failing)."""
        while len(workers) < self.workers:
            with self._lock:
                if self._cancel or self._closing and not self._queue:
                    return
            if self._start_failures >= max(5, 2 * self.workers):
                if not workers:
                    self._give_up(
                        WorkerLostError(
                            f"{self._start_failures} worker processes in a row died or could not "
                            f"start before they were ready (last: {self._last_start_error}); "
                            "not starting more"
                        )
                    )
                return
            try:
                workers.append(self._start_worker())
            except Exception as exc:  # noqa: BLE001 - counted; the limit above ends it
                self._start_failures += 1
                self._last_start_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot start a worker process: %s", self._last_start_error)
                return

    def _start_worker(self) -> _Worker:
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(
            target=_worker_main,
            name="hpcem-worker",
            args=(child_conn, os.getpid(), worker_sys_path(), self.cwd),
        )
        try:
            process.start()
        finally:
            child_conn.close()
        with self._lock:
            self._pids.add(process.pid)
            if self._cancel:
                _kill(process.pid)
        return _Worker(process, conn)

    def _give_up(self, error: BaseException) -> None:
        """No worker is left and none can be started: fail what is queued and what comes."""
        with self._lock:
            self._broken = error
            queued, self._queue = list(self._queue), collections.deque()
        for task in queued:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(error)

    def _assign(self, workers: list[_Worker]) -> None:
        """Send queued steps to idle workers that are up."""
        for w in workers:
            if w.task is not None or not w.ready:
                continue
            while True:
                with self._lock:
                    if self._cancel or not self._queue:
                        return
                    task = self._queue.popleft()
                if task.future.set_running_or_notify_cancel():
                    break  # else it was cancelled while queued: take the next one
            w.task = task
            try:
                w.conn.send_bytes(task.payload)
            except OSError:  # it died: its sentinel says so; the step never ran
                pass

    def _receive(self, w: _Worker) -> bool:
        """Read one message from a worker; False when its pipe is closed (it died)."""
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            return False
        try:
            message = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001
            message = (
                False,
                RuntimeError(
                    f"cannot read the step's outcome from worker "
                    f"{w.pid}: {type(exc).__name__}: {exc}"
                ),
                "",
            )
        if message[0] == _READY:
            w.ready = True
            self._start_failures = 0
            return True
        ok, value, tb = message
        task, w.task = w.task, None
        if task is None:  # pragma: no cover - a worker only answers what it was sent
            log.warning("worker %s sent an unexpected message", w.pid)
            return True
        if ok:
            task.future.set_result(value)
        else:
            if tb:
                value.__cause__ = RemoteTraceback(tb)
            task.future.set_exception(value)
        return True

    def _lost(self, w: _Worker, workers: list[_Worker]) -> None:
        """A worker died: read what it sent before, fail its step, forget it."""
        while _poll(w.conn):
            if not self._receive(w):
                break
        w.process.join(STOP_GRACE_S)
        if w.process.exitcode is None:  # its pipe closed, yet it runs: finish it
            _kill(w.pid)
            w.process.join(STOP_GRACE_S)
        how = _how_it_ended(w.process.exitcode)
        w.conn.close()
        workers.remove(w)
        with self._lock:
            self._pids.discard(w.pid)
        if not w.ready:  # no step was sent to it
            self._start_failures += 1
            self._last_start_error = f"worker process {w.pid} {how}"
            log.warning("worker process %s died before it was ready (%s)", w.pid, how)
        if w.task is not None:
            w.task.future.set_exception(
                WorkerLostError(f"worker process {w.pid} running the step died ({how})")
            )
            w.task = None
        if w.process.exitcode is not None:
            w.process.close()

    def _stop_all(self, workers: list[_Worker]) -> None:
        """End every worker: politely unless cancelled; fail or cancel what is left."""
        with self._lock:
            cancel = self._cancel
            queued, self._queue = list(self._queue), collections.deque()
            error = self._broken
        for w in workers:
            if cancel:
                _kill(w.pid)
            else:
                try:
                    w.conn.send_bytes(pickle.dumps(None, _PROTOCOL))
                except OSError:
                    pass
        for w in workers:
            w.process.join(STOP_GRACE_S)
            if w.process.exitcode is None:
                _kill(w.pid)
                w.process.join(STOP_GRACE_S)
            w.conn.close()
            with self._lock:
                self._pids.discard(w.pid)
            if w.task is not None:
                w.task.future.set_exception(
                    error or RunError("the step was stopped: its executor was shut down")
                )
                w.task = None
        for task in queued:
            if error is not None and task.future.set_running_or_notify_cancel():
                task.future.set_exception(error)
            else:
                task.future.cancel()


def _poll(conn) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running after its pipe closed"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"
