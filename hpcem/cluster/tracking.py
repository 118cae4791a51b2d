"""Following many jobs with one status call per interval; outcomes from exit-code files.

A job's final state comes from the exit-code file its script writes. The scheduler's word
is used only for what the file cannot say: a job killed before it could write (SIGKILL,
walltime, node failure) or one the scheduler ended with a signal (cancel, walltime).
A failed status query is counted; jobs are declared lost only past ``failure_threshold``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from hpcem.cluster import submit
from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.site import Site
from hpcem.errors import HpcemError

log = logging.getLogger("hpcem.cluster.tracking")

# the scheduler's reason wins over a signal-like exit code (128+N) written by the trap
_SCHEDULER_REASONS = {
    JobState.TIMEOUT,
    JobState.CANCELLED,
    JobState.OUT_OF_MEMORY,
    JobState.NODE_FAIL,
}


def read_exit_code(path: str | Path) -> int | None:
    """The integer in an exit-code file, or None if it is missing or not (yet) complete."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def final_status(job_id: str, exit_code: int | None, native: JobStatus | None) -> JobStatus | None:
    """Combine the exit-code file and the scheduler's last word into a final status.

    Returns None when nothing final can be said yet (no file, no final scheduler state).
    """
    nstate = native.state if native else None
    reason = native.reason if native else ""
    nodes = native.nodes if native else ""
    nname = native.native_state if native else ""
    if exit_code is not None:
        if exit_code == 0:
            return JobStatus(job_id, JobState.COMPLETED, nname, "", 0, nodes)
        if exit_code >= 128 and nstate in _SCHEDULER_REASONS:
            return JobStatus(job_id, nstate, nname, reason, exit_code, nodes)
        return JobStatus(
            job_id, JobState.FAILED, nname, reason or f"exit code {exit_code}", exit_code, nodes
        )
    if nstate is None or not nstate.final:
        return None
    if nstate is JobState.COMPLETED or nstate is JobState.FAILED:
        why = f"scheduler says {nname or nstate.value}" + (f" ({reason})" if reason else "")
        return JobStatus(
            job_id,
            JobState.FAILED,
            nname,
            f"job ended without writing its exit-code file; {why}",
            native.exit_code,
            nodes,
        )
    return JobStatus(
        job_id,
        nstate,
        nname,
        reason or "killed before writing its exit-code file",
        native.exit_code,
        nodes,
    )


@dataclasses.dataclass
class _Tracked:
    exit_code_file: str
    status: JobStatus
    missing_polls: int = 0


class JobTracker:
    """Batched polling of many jobs of one site. Constructing it does no I/O.

    ``poll()`` runs ONE status command for all unfinished jobs (plus, rarely, one
    accounting query for jobs that left the queue without an exit-code file).
    """

    def __init__(
        self, site: Site, *, failure_threshold: int = 5, sleep: Callable[[float], None] = time.sleep
    ):
        self.site = site
        self.failure_threshold = failure_threshold
        self.status_calls = 0
        self.poll_failures = 0
        self._jobs: dict[str, _Tracked] = {}
        self._sleep = sleep
        self._interval = site.poll_interval_s

    def add(self, job_id: str, exit_code_file: str) -> None:
        """Follow ``job_id``, whose script writes ``exit_code_file``."""
        self._jobs[str(job_id)] = _Tracked(exit_code_file, JobStatus(str(job_id), JobState.QUEUED))

    def forget(self, job_id: str) -> None:
        self._jobs.pop(str(job_id), None)

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def status(self, job_id: str) -> JobStatus:
        return self._jobs[str(job_id)].status

    def statuses(self) -> dict[str, JobStatus]:
        return {j: t.status for j, t in self._jobs.items()}

    def poll(self, job_ids: Iterable[str] | None = None) -> dict[str, JobStatus]:
        """Update and return the status of the given (default: all) tracked jobs."""
        ids = [str(j) for j in (job_ids if job_ids is not None else self._jobs)]
        active = [j for j in ids if not self._jobs[j].status.state.final]
        changed = False
        if active:
            try:
                self.status_calls += 1
                native = submit.query_status(self.site, active)
                self.poll_failures = 0
            except HpcemError as exc:
                self.poll_failures += 1
                log.warning(
                    "site %s: status query failed (%d in a row): %s",
                    self.site.name,
                    self.poll_failures,
                    exc,
                )
                if self.poll_failures >= self.failure_threshold:
                    # the scheduler cannot be asked: a written exit-code file still says
                    # how a job ended; jobs without one are failed, with the reason
                    for j in active:
                        code = read_exit_code(self._jobs[j].exit_code_file)
                        self._set(
                            j,
                            final_status(j, code, None)
                            if code is not None
                            else JobStatus(
                                j,
                                JobState.FAILED,
                                "",
                                f"scheduler status query failed "
                                f"{self.poll_failures} times in a row: {exc}",
                            ),
                        )
                return {j: self._jobs[j].status for j in ids}
            need_history = []
            for j in active:
                tracked = self._jobs[j]
                ns = native.get(j)
                if ns is not None and not ns.state.final:
                    tracked.missing_polls = 0
                    code = read_exit_code(tracked.exit_code_file)
                    # a zombie/leftover state with the file written: the file decides
                    if code is not None and ns.state is JobState.UNKNOWN:
                        changed |= self._set(j, final_status(j, code, ns))
                    else:
                        changed |= self._set(j, ns)
                    continue
                final = final_status(j, read_exit_code(tracked.exit_code_file), ns)
                if final is not None:
                    changed |= self._set(j, final)
                elif ns is None:
                    need_history.append(j)
            if need_history:
                history = submit.query_history(self.site, need_history)
                for j in need_history:
                    tracked = self._jobs[j]
                    final = final_status(j, read_exit_code(tracked.exit_code_file), history.get(j))
                    if final is not None:
                        changed |= self._set(j, final)
                        continue
                    tracked.missing_polls += 1
                    if tracked.missing_polls >= self.failure_threshold:
                        changed |= self._set(
                            j,
                            JobStatus(
                                j,
                                JobState.FAILED,
                                "",
                                "job left the queue without writing its "
                                f"exit-code file {tracked.exit_code_file} and the scheduler has no "
                                "record of why",
                            ),
                        )
        self._interval = (
            self.site.poll_interval_s
            if changed
            else min(self._interval * 1.5, self.site.poll_max_interval_s)
        )
        return {j: self._jobs[j].status for j in ids}

    def _set(self, job_id: str, status: JobStatus) -> bool:
        tracked = self._jobs[job_id]
        old = tracked.status
        tracked.status = status
        if old.state is not status.state:
            log.info("job %s: %s -> %s", job_id, old.state.value, status.state.value)
            return True
        return False

    @property
    def interval_s(self) -> float:
        """Seconds to wait before the next poll (backs off while nothing changes)."""
        return self._interval

    def wait(
        self, job_ids: Iterable[str] | None = None, timeout_s: float = 3600.0
    ) -> dict[str, JobStatus]:
        """Poll until every given job is final or ``timeout_s`` passes; returns statuses."""
        ids = [str(j) for j in (job_ids if job_ids is not None else self._jobs)]
        end = time.monotonic() + timeout_s
        while True:
            statuses = self.poll(ids)
            if all(s.state.final for s in statuses.values()) or time.monotonic() >= end:
                return statuses
            self._sleep(min(self._interval, max(0.0, end - time.monotonic())))

    def cancel(self, job_ids: Iterable[str] | None = None) -> None:
        """Cancel the given (default: all unfinished) jobs with one scheduler command."""
        ids = [str(j) for j in (job_ids if job_ids is not None else self._jobs)]
        submit.cancel_jobs(self.site, [j for j in ids if not self._jobs[j].status.state.final])
