"""The embedded default executor: steps run in a pool of local worker processes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

from hpcem.execution.worker import execute_mpi_step, execute_step


def default_workers() -> int:
    """Worker processes by default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class LocalExecutor:
    """Runs independent steps concurrently on ``workers`` processes.

    Workers come from a *forkserver*, so they inherit neither the controller's open HDF5
    files nor its lock file descriptors (a lock must die with the controller).
    """

    def __init__(self, workers: int | None = None, site: str = "localhost", workdir: str = ".") -> None:
        self.workers = workers or default_workers()
        self.site = site  # whose MPI command launches MPI steps
        self.workdir = workdir
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._mpi_count = 0

    def start(self) -> LocalExecutor:
        context = multiprocessing.get_context("forkserver")
        self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self

    def submit(self, func_ref: str, args: dict, resources: dict | None = None):
        """Queue one step; the future's result is :func:`execute_step`'s dict.

        A step with ``resources["mpi"] = [ranks, threads]`` is launched from a worker with
        the site's MPI command (the worker waits for it).
        """
        if self._pool is None:
            self.start()
        mpi = (resources or {}).get("mpi")
        if mpi:
            self._mpi_count += 1
            return self._pool.submit(execute_mpi_step, self.site, func_ref, args, int(mpi[0]),
                                     int(mpi[1]), self.workdir, f"mpi-{self._mpi_count:04d}")
        return self._pool.submit(execute_step, func_ref, args)

    def job_ids(self) -> list[str]:
        return []

    def shutdown(self, cancel: bool = False) -> None:
        if self._pool is not None:
            if cancel:
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.kill()
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None
