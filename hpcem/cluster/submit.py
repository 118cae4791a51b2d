"""Submitting, querying and cancelling jobs: the I/O around the pure scheduler modules.

Every external command goes through :func:`hpcem.command.run_command` (argv list, timeout).
Nothing is submitted unless the site config, queue, limits and template all check out.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hpcem.cluster.job import JobSpec, JobStatus
from hpcem.cluster.schedulers import get_scheduler
from hpcem.cluster.site import Site
from hpcem.cluster.templates import render_job_script
from hpcem.command import run_command
from hpcem.errors import (
    CommandError,
    CommandNotFoundError,
    ConfigError,
    SchedulerError,
    SubmitError,
)


def missing_programs(site: Site) -> list[str]:
    """Scheduler commands of ``site`` that are not on PATH."""
    return [p for p in get_scheduler(site.scheduler).PROGRAMS if shutil.which(p) is None]


def write_job_script(site: Site, spec: JobSpec, path: str | os.PathLike | None = None) -> Path:
    """Render the job script and write it (atomically) next to the exit-code file."""
    text = render_job_script(site, spec)
    target = Path(path) if path else Path(spec.exit_code_file).with_suffix(".sh")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".hpcem-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def submit_script(site: Site, script: str | os.PathLike, *, cwd: str | None = None) -> str:
    """Submit an already written job script; returns the scheduler's job id."""
    sched = get_scheduler(site.scheduler)
    argv = sched.submit_argv(str(script))
    try:
        result = run_command(argv, timeout_s=site.command_timeout_s, cwd=cwd)
    except CommandNotFoundError as exc:
        raise SubmitError(f"site {site.name!r}: cannot submit: {exc}") from None
    except CommandError as exc:
        detail = (exc.stderr or exc.stdout).strip() or str(exc)
        raise SubmitError(f"site {site.name!r}: {argv[0]} rejected the job: {detail}") from None
    return sched.parse_submit_output(result.stdout)


def submit_job(site: Site, spec: JobSpec, script_path: str | os.PathLike | None = None) -> str:
    """Render, write and submit the job ``spec`` on ``site``; returns the job id.

    Raises ConfigError/ValidationError/TemplateError before anything is submitted, and
    SubmitError (with the scheduler's stderr) when the scheduler refuses the job.
    """
    if missing := missing_programs(site):
        raise ConfigError(
            f"site {site.name!r} ({site.scheduler}): command(s) not on PATH: {', '.join(missing)}"
        )
    script = write_job_script(site, spec, script_path)
    Path(spec.exit_code_file).parent.mkdir(parents=True, exist_ok=True)
    return submit_script(site, script, cwd=spec.workdir if os.path.isdir(spec.workdir) else None)


def test_submit(site: Site, spec: JobSpec, script_path: str | os.PathLike) -> str:
    """A scheduler dry run of ``spec`` (sbatch --test-only, qsub -w v); returns its message."""
    sched = get_scheduler(site.scheduler)
    script = write_job_script(site, spec, script_path)
    argv = sched.test_submit_argv(str(script))
    if argv is None:
        return f"{site.scheduler}: no dry-run submit available"
    try:
        result = run_command(argv, timeout_s=site.command_timeout_s)
    except CommandError as exc:
        raise SubmitError(
            f"site {site.name!r}: {argv[0]} rejected the test job: "
            f"{(exc.stderr or exc.stdout).strip() or exc}"
        ) from None
    return (result.stdout + result.stderr).strip()


def query_status(site: Site, job_ids: Iterable[str]) -> dict[str, JobStatus]:
    """One status command for all ``job_ids``; jobs the scheduler no longer knows are absent."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    sched = get_scheduler(site.scheduler)
    result = run_command(sched.status_argv(ids), timeout_s=site.command_timeout_s, check=False)
    if result.returncode != 0:
        if sched.status_missing_ok(result.stderr):
            return {}
        raise CommandError(
            f"{result.argv[0]} exited with code {result.returncode}: {result.stderr.strip()}",
            result.argv,
            result.returncode,
            result.stdout,
            result.stderr,
        )
    wanted = set(ids)
    return {j: s for j, s in sched.parse_status_output(result.stdout).items() if j in wanted}


def query_history(site: Site, job_ids: Iterable[str]) -> dict[str, JobStatus]:
    """Accounting records of finished jobs (sacct, qacct); {} where the scheduler has none."""
    ids = [str(j) for j in job_ids]
    sched = get_scheduler(site.scheduler)
    out: dict[str, JobStatus] = {}
    batches = [ids] if sched.history_argv(ids) is not None else [[j] for j in ids]
    for batch in batches:
        argv = sched.history_argv(batch) if batch else None
        if argv is None:
            continue
        try:
            result = run_command(argv, timeout_s=site.command_timeout_s, check=False)
        except CommandError:
            continue
        if result.returncode == 0:
            try:
                out.update(sched.parse_history_output(result.stdout))
            except SchedulerError:
                continue
    return out


def cancel_jobs(site: Site, job_ids: Iterable[str]) -> None:
    """Cancel the jobs (one command). Jobs that already ended are not an error."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return
    sched = get_scheduler(site.scheduler)
    result = run_command(sched.cancel_argv(ids), timeout_s=site.command_timeout_s, check=False)
    text = (result.stderr + result.stdout).lower()
    if result.returncode != 0 and not any(
        s in text
        for s in (
            "invalid job id",
            "does not exist",
            "unknown job",
            "no such process",
            "already completed",
            "finished",
        )
    ):
        raise SchedulerError(
            f"site {site.name!r}: cancelling {', '.join(ids)} failed: {result.stderr.strip()}"
        )


def list_user_jobs(site: Site, user: str | None = None, name_prefix: str = "hpcem") -> list[dict]:
    """Jobs of ``user`` (default: this user) on ``site`` whose name starts with ``name_prefix``."""
    sched = get_scheduler(site.scheduler)
    user = user or getpass.getuser()
    result = run_command(sched.user_jobs_argv(user), timeout_s=site.command_timeout_s, check=False)
    if result.returncode != 0 and site.scheduler != "local":
        raise SchedulerError(
            f"site {site.name!r}: {result.argv[0]} failed: {result.stderr.strip()}"
        )
    rows = sched.parse_user_jobs_output(result.stdout)
    return [r for r in rows if site.scheduler == "local" or r["name"].startswith(name_prefix)]
