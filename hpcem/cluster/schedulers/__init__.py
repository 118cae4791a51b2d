"""One module per batch scheduler, each made of pure functions and a state table.

Every module has the same names (checked by the contract tests):

``NAME``, ``PROGRAMS`` (commands that must be on PATH),
``submit_argv(script_path)``, ``parse_submit_output(stdout)`` -> job id,
``status_argv(job_ids)`` (one call for many jobs), ``parse_status_output(stdout)`` ->
``{job_id: JobStatus}``, ``history_argv(job_ids)`` / ``parse_history_output(stdout)``
for jobs that left the queue (``history_argv`` may return None), ``cancel_argv(job_ids)``,
``user_jobs_argv(user)`` / ``parse_user_jobs_output(stdout)`` (all jobs of a user),
``STATE_MAP`` and ``map_state(native)`` (unknown -> UNKNOWN with a warning),
``test_submit_argv(script_path)`` (a dry run where the scheduler has one, else None),
``JOB_ID_ENV`` / ``NODE_ENV`` (the variables a job's script sees with its job id and node
name; None where the scheduler sets none), and optionally ``TEMPLATE`` (the path of its
Jinja2 job template; default: the shipped ``queue_templates/<NAME>.sh.j2``).

A new scheduler is one module plus one template: a built-in one here, or a plugin's,
named by an entry point in the ``hpcem.schedulers`` group (``toy = mypkg.toy``).
Nothing else in hpcem lists schedulers.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from hpcem.cluster.job import JobState
from hpcem.errors import ConfigError

log = logging.getLogger("hpcem.cluster")

BUILTIN = ("slurm", "pbs", "sge", "local")
ENTRY_POINT_GROUP = "hpcem.schedulers"


def _plugins() -> dict[str, str]:
    """Scheduler name -> module path of the plugins' entry points."""
    from importlib.metadata import entry_points

    return {
        ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN
    }


def scheduler_names() -> tuple[str, ...]:
    """Every known scheduler: the built-in ones, then plugins."""
    return (*BUILTIN, *sorted(_plugins()))


def get_scheduler(name: str) -> ModuleType:
    """The scheduler module for ``name`` (built-in or a plugin's)."""
    if name in BUILTIN:
        return importlib.import_module(f"hpcem.cluster.schedulers.{name}")
    plugins = _plugins()
    if name not in plugins:
        raise ConfigError(f"unknown scheduler {name!r}; known: {', '.join(scheduler_names())}")
    try:
        return importlib.import_module(plugins[name].partition(":")[0])
    except ImportError as exc:
        raise ConfigError(
            f"scheduler plugin {name!r} ({plugins[name]}) cannot be loaded: {exc}"
        ) from None


def job_environment(environ=None) -> tuple[str, str]:
    """(job id, node name) of the batch job this process runs in, from the variables the
    scheduler modules declare (``JOB_ID_ENV``, ``NODE_ENV``); ``("", "")`` outside a job."""
    import os

    env = os.environ if environ is None else environ
    for job_var, node_var in _env_variables():
        if env.get(job_var):
            return env[job_var], (env.get(node_var, "") if node_var else "")
    return "", ""


def _env_variables() -> list[tuple[str, str | None]]:
    """(JOB_ID_ENV, NODE_ENV) of every scheduler that declares one; looked up once per
    process (workers ask for every step, and plugins are found through entry points)."""
    global _ENV_VARS
    if _ENV_VARS is None:
        pairs = []
        for name in scheduler_names():
            module = get_scheduler(name)
            if getattr(module, "JOB_ID_ENV", None):
                pairs.append((module.JOB_ID_ENV, getattr(module, "NODE_ENV", None)))
        _ENV_VARS = pairs
    return _ENV_VARS


_ENV_VARS: list[tuple[str, str | None]] | None = None


def node_name() -> str:
    """The node this process runs on: the scheduler's name for it inside a job (SLURM's
    logical nodes share one host here), else the host name."""
    import socket

    return job_environment()[1] or socket.gethostname()


def lookup_state(table: dict[str, JobState], native: str, scheduler: str) -> JobState:
    """Map a native state code; an unknown code gives UNKNOWN and a warning, never an error."""
    state = table.get(native)
    if state is None:
        log.warning("%s: unknown job state %r, treated as UNKNOWN", scheduler, native)
        return JobState.UNKNOWN
    return state
