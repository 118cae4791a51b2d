"""One module per batch scheduler, each made of pure functions and a state table.

Every module has the same names (checked by the contract tests):

``NAME``, ``PROGRAMS`` (commands that must be on PATH),
``submit_argv(script_path)``, ``parse_submit_output(stdout)`` -> job id,
``status_argv(job_ids)`` (one call for many jobs), ``parse_status_output(stdout)`` ->
``{job_id: JobStatus}``, ``history_argv(job_ids)`` / ``parse_history_output(stdout)``
for jobs that left the queue (``history_argv`` may return None), ``cancel_argv(job_ids)``,
``user_jobs_argv(user)`` / ``parse_user_jobs_output(stdout)`` (all jobs of a user),
``STATE_MAP`` and ``map_state(native)`` (unknown -> UNKNOWN with a warning),
``test_submit_argv(script_path)`` (a dry run where the scheduler has one, else None).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from hpcem.cluster.job import JobState
from hpcem.errors import ConfigError

log = logging.getLogger("hpcem.cluster")

SCHEDULER_MODULES = ("slurm", "pbs", "sge", "local")


def get_scheduler(name: str) -> ModuleType:
    """The scheduler module for ``name`` (``slurm``, ``pbs``, ``sge``, ``local``)."""
    if name not in SCHEDULER_MODULES:
        raise ConfigError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_MODULES)}")
    return importlib.import_module(f"hpcem.cluster.schedulers.{name}")


def lookup_state(table: dict[str, JobState], native: str, scheduler: str) -> JobState:
    """Map a native state code; an unknown code gives UNKNOWN and a warning, never an error."""
    state = table.get(native)
    if state is None:
        log.warning("%s: unknown job state %r, treated as UNKNOWN", scheduler, native)
        return JobState.UNKNOWN
    return state
