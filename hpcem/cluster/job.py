"""What one batch job asks for (:class:`JobSpec`) and the states a job can be in."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

from hpcem.errors import ValidationError


class JobState(enum.Enum):
    """Scheduler-independent job states; every scheduler module maps its codes to these."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"  # preempted or requeued: the job will run again
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        """True when the job will not change state any more."""
        return self in _FINAL


_FINAL = {
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.TIMEOUT,
    JobState.OUT_OF_MEMORY,
    JobState.NODE_FAIL,
}

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def safe_job_name(text: str, limit: int = 60) -> str:
    """A scheduler job name from free text: only ``[A-Za-z0-9_.-]``, at most ``limit`` chars."""
    name = _SAFE_NAME.sub("_", text).strip("_.") or "hpcem"
    if not name[0].isalpha():
        name = "j" + name  # PBS and SGE want a name that starts with a letter
    return name[:limit]


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One job to submit. Unset resources (None) take the site and queue defaults.

    ``command`` is an argv list, quoted word by word in the job script. ``label`` is free
    text (it may contain anything; it only ever appears shell-quoted). ``nodes`` x
    ``tasks_per_node`` tasks, each with ``cores_per_task`` cores; ``memory_mb`` and
    ``gpus`` are per node.
    """

    command: tuple[str, ...]
    name: str
    workdir: str
    exit_code_file: str
    stdout: str = ""
    stderr: str = ""
    label: str = ""
    nodes: int = 1
    tasks_per_node: int = 1
    cores_per_task: int = 1
    memory_mb: int | None = None
    walltime_s: int | None = None
    gpus: int = 0
    queue: str | None = None
    account: str | None = None
    qos: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if not self.command or not all(isinstance(a, str) for a in self.command):
            problems.append("command must be a non-empty list of strings")
        for field in ("nodes", "tasks_per_node", "cores_per_task"):
            if int(getattr(self, field)) < 1:
                problems.append(f"{field} must be >= 1")
        if self.gpus < 0:
            problems.append("gpus must be >= 0")
        if self.walltime_s is not None and self.walltime_s <= 0:
            problems.append("walltime_s must be positive")
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                problems.append(f"environment variable name {key!r} is not valid")
        if not self.exit_code_file:
            problems.append("exit_code_file is required")
        if problems:
            raise ValidationError(f"job {self.name!r}: " + "; ".join(problems), problems)
        object.__setattr__(self, "command", tuple(self.command))

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """What is known about one job: scheduler-independent ``state`` plus native details."""

    job_id: str
    state: JobState
    native_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    nodes: str = ""
