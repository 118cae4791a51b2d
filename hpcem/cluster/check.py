"""``hpcem site check``: every check on a site config, as a list of findings (no printing)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from hpcem.cluster.job import JobSpec, JobState
from hpcem.cluster.schedulers import get_scheduler
from hpcem.cluster.site import Site, load_site
from hpcem.cluster.submit import submit_job, test_submit
from hpcem.cluster.templates import render_job_script, template_path
from hpcem.cluster.tracking import JobTracker
from hpcem.command import run_command
from hpcem.errors import CommandError, HpcemError


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check: what was checked, whether it passed, and details."""

    check: str
    ok: bool
    detail: str = ""


def trivial_spec(
    site: Site, queue: str, workdir: str, command=("true",), label="site check"
) -> JobSpec:
    """The smallest job on ``queue``: one core, the site's default walltime (capped)."""
    q = site.queue(queue)
    walltime = (
        site.walltime_s if q.max_walltime_s is None else min(site.walltime_s, q.max_walltime_s)
    )
    return JobSpec(
        command=tuple(command),
        name=f"hpcem-check-{site.name}",
        label=label,
        workdir=workdir,
        exit_code_file=str(Path(workdir) / f"check-{queue}.exit"),
        stdout=str(Path(workdir) / f"check-{queue}.out"),
        walltime_s=walltime,
        queue=queue,
    )


def bash_syntax_ok(script_text: str) -> tuple[bool, str]:
    """``bash -n`` on a script text; (ok, bash's message)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script_text)
        path = f.name
    try:
        res = run_command(["bash", "-n", path], timeout_s=30, check=False)
        return res.returncode == 0, res.stderr.strip()
    finally:
        Path(path).unlink(missing_ok=True)


def check_site(
    name: str, *, test: bool = False, test_timeout_s: float = 300.0, workdir: str | None = None
) -> list[Finding]:
    """Schema, template render + ``bash -n`` for every queue, scheduler commands on PATH,
    and with ``test`` a scheduler dry run and a real trivial job waited for to the end."""
    findings: list[Finding] = []
    try:
        site = load_site(name)
    except HpcemError as exc:
        return [Finding("config", False, str(exc))]
    findings.append(
        Finding("config", True, f"{site.path} ({site.scheduler}, {len(site.queues)} queue(s))")
    )
    folder = workdir or tempfile.mkdtemp(prefix=f"hpcem-check-{site.name}-")
    findings.append(Finding("template", True, str(template_path(site))))
    for qname in site.queues:
        try:
            text = render_job_script(site, trivial_spec(site, qname, folder))
        except HpcemError as exc:
            findings.append(Finding(f"render queue {qname}", False, str(exc)))
            continue
        ok, msg = bash_syntax_ok(text)
        findings.append(Finding(f"render queue {qname} + bash -n", ok, msg))
    missing = [p for p in get_scheduler(site.scheduler).PROGRAMS if shutil.which(p) is None]
    findings.append(
        Finding(
            "scheduler commands",
            not missing,
            f"missing from PATH: {', '.join(missing)}"
            if missing
            else ", ".join(get_scheduler(site.scheduler).PROGRAMS),
        )
    )
    if not missing:
        findings.append(_identify(site))
    if test and all(f.ok for f in findings):
        findings.extend(_test_job(site, folder, test_timeout_s))
    return findings


def _identify(site: Site) -> Finding:
    """Is the program answering really this scheduler (not another one's qsub)?"""
    sched = get_scheduler(site.scheduler)
    try:
        res = run_command(sched.IDENTIFY_ARGV, timeout_s=site.command_timeout_s, check=False)
    except HpcemError as exc:
        return Finding("scheduler identity", False, str(exc))
    text = (res.stdout or res.stderr).strip()
    first = text.splitlines()[0] if text else "no output"
    if sched.identify(text):
        return Finding("scheduler identity", True, first)
    return Finding(
        "scheduler identity",
        False,
        f"{' '.join(sched.IDENTIFY_ARGV)} says {first!r}: not {site.scheduler}",
    )


def _test_job(site: Site, folder: str, timeout_s: float) -> list[Finding]:
    out = []
    spec = trivial_spec(site, site.default_queue, folder, command=("echo", "hpcem site check"))
    try:
        msg = test_submit(site, spec, Path(folder) / "check-dry-run.sh")
        out.append(Finding("dry-run submit", True, msg.splitlines()[-1] if msg else ""))
    except HpcemError as exc:
        return out + [Finding("dry-run submit", False, str(exc))]
    t0 = time.monotonic()
    try:
        job_id = submit_job(site, spec, Path(folder) / "check-job.sh")
    except HpcemError as exc:
        return out + [Finding("test job", False, str(exc))]
    tracker = JobTracker(site)
    tracker.add(job_id, spec.exit_code_file)
    try:
        status = tracker.wait([job_id], timeout_s=timeout_s)[job_id]
    except (HpcemError, CommandError) as exc:
        return out + [Finding("test job", False, f"job {job_id}: {exc}")]
    if not status.state.final:
        tracker.cancel([job_id])
        return out + [
            Finding(
                "test job",
                False,
                f"job {job_id} still {status.state.value} after {timeout_s:g} s; cancelled",
            )
        ]
    ok = status.state is JobState.COMPLETED
    return out + [
        Finding(
            "test job",
            ok,
            f"job {job_id} {status.state.value} in "
            f"{time.monotonic() - t0:.1f} s {status.reason}".strip(),
        )
    ]
