"""A Parsl ExecutionProvider whose blocks are jobs built from hpcem's site template.

Parsl's own providers carry their own templates and directives; this one renders
``queue_templates/<scheduler>.sh.j2`` with the site config, submits through the
scheduler modules and polls all blocks with one status call (:class:`JobTracker`).
Only Parsl's public provider interface (submit / status / cancel) is used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from parsl.jobs.states import JobState as ParslState
from parsl.jobs.states import JobStatus as ParslStatus
from parsl.launchers import SingleNodeLauncher
from parsl.launchers.base import Launcher
from parsl.providers.base import ExecutionProvider
from parsl.providers.errors import SubmitException

from hpcem.cluster.job import JobSpec, JobState
from hpcem.cluster.site import Site
from hpcem.cluster.submit import submit_job
from hpcem.cluster.tracking import JobTracker
from hpcem.errors import HpcemError

_TO_PARSL = {
    JobState.QUEUED: ParslState.PENDING,
    JobState.PREEMPTED: ParslState.PENDING,
    JobState.RUNNING: ParslState.RUNNING,
    JobState.COMPLETED: ParslState.COMPLETED,
    JobState.FAILED: ParslState.FAILED,
    JobState.CANCELLED: ParslState.CANCELLED,
    JobState.TIMEOUT: ParslState.TIMEOUT,
    JobState.OUT_OF_MEMORY: ParslState.FAILED,
    JobState.NODE_FAIL: ParslState.FAILED,
    JobState.UNKNOWN: ParslState.UNKNOWN,
}


class HpcemProvider(ExecutionProvider):
    """Blocks of ``nodes_per_block`` nodes on ``site``/``queue``; constructing does no I/O.

    Parameters
    ----------
    site, queue : where blocks run (queue defaults to the site's default queue).
    script_dir : folder for block job scripts, exit-code files and block output.
    cores_per_node : cores each block asks for per node (default: the queue's cores).
    walltime_s : block walltime (default: the site default).
    """

    def __init__(
        self,
        site: Site,
        *,
        script_dir: str,
        queue: str | None = None,
        nodes_per_block: int = 1,
        init_blocks: int = 0,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1.0,
        cores_per_node: int | None = None,
        walltime_s: int | None = None,
        launcher: Launcher | None = None,
        status_interval_s: float | None = None,
    ):
        self.site = site
        self.queue = queue or site.default_queue
        self.script_dir = script_dir
        self.nodes_per_block = nodes_per_block
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.parallelism = parallelism
        self.cores_per_node = cores_per_node or site.queues[self.queue].cores_per_node
        self.mem_per_node = None
        self.walltime_s = walltime_s
        self.launcher = launcher or SingleNodeLauncher()
        self.resources: dict = {}
        self.tracker = JobTracker(site)
        self._status_interval = status_interval_s or site.poll_interval_s
        self._lock = threading.Lock()
        self._count = 0

    @property
    def label(self) -> str:
        return f"hpcem-{self.site.name}"

    @property
    def status_polling_interval(self) -> int:
        return max(1, int(self._status_interval))

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.auto") -> str:
        """Submit one block running Parsl's worker ``command``; returns the job id."""
        with self._lock:
            self._count += 1
            n = self._count
        folder = Path(self.script_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"hpcem-block-{os.getpid()}-{n}"
        wrapped = self.launcher(command, tasks_per_node, self.nodes_per_block)
        spec = JobSpec(
            command=("bash", "-c", wrapped),
            name=name,
            label=job_name,
            workdir=str(folder),
            exit_code_file=str(folder / f"{name}.exit"),
            stdout=str(folder / f"{name}.out"),
            nodes=self.nodes_per_block,
            tasks_per_node=1,
            cores_per_task=self.cores_per_node,
            walltime_s=self.walltime_s,
            queue=self.queue,
            env={"PARSL_CORES": str(self.cores_per_node)},
        )
        try:
            job_id = submit_job(self.site, spec, folder / f"{name}.sh")
        except HpcemError as exc:
            raise SubmitException(job_name, str(exc)) from exc
        self.tracker.add(job_id, spec.exit_code_file)
        self.resources[job_id] = {"job_name": name, "spec": spec}
        return job_id

    def status(self, job_ids: Sequence[object]) -> list[ParslStatus]:
        """One status call for all blocks (the tracker batches them)."""
        ids = [str(j) for j in job_ids]
        for j in ids:
            if j not in self.tracker.job_ids:  # a block we did not submit: nothing known
                self.tracker.add(j, os.devnull + ".missing")
        statuses = self.tracker.poll(ids)
        out = []
        for j in ids:
            st = statuses[j]
            spec = self.resources.get(j, {}).get("spec")
            out.append(
                ParslStatus(
                    _TO_PARSL[st.state],
                    st.reason or None,
                    st.exit_code,
                    spec.stdout if spec else None,
                    None,
                )
            )
        return out

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        ids = [str(j) for j in job_ids]
        try:
            self.tracker.cancel(ids)
        except HpcemError:
            return [False] * len(ids)
        return [True] * len(ids)

    @property
    def status_calls(self) -> int:
        return self.tracker.status_calls
