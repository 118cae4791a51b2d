"""``hpcem site check``: every check on a site config, as a list of findings (no printing)."""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from hpcem.cluster.job import JobSpec, JobState
from hpcem.cluster.schedulers import get_scheduler
from hpcem.cluster.site import (
    Site,
    load_site,
    parsl_address_is_loopback,
    resolve_parsl_address,
    worker_command,
)
from hpcem.cluster.submit import submit_job, test_submit
from hpcem.cluster.templates import render_job_script, template_path
from hpcem.cluster.tracking import JobTracker
from hpcem.command import run_command
from hpcem.errors import CommandError, HpcemError


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check: what was checked, whether it passed, and details. A ``warning`` passed
    but deserves a look (the CLI prints it as WARN)."""

    check: str
    ok: bool
    detail: str = ""
    warning: bool = False


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
    the Parsl address workers connect to, and with ``test`` a scheduler dry run, a real
    trivial job and a job running the site's Parsl worker command, each waited for."""
    findings: list[Finding] = []
    try:
        site = load_site(name)
    except HpcemError as exc:
        return [Finding("config", False, str(exc))]
    findings.append(
        Finding("config", True, f"{site.path} ({site.scheduler}, {len(site.queues)} queue(s))")
    )
    findings.extend(parsl_findings(site))
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
        if all(f.ok for f in findings):
            findings.append(_test_worker_command(site, folder, test_timeout_s))
    return findings


def parsl_findings(site: Site) -> list[Finding]:
    """Where Parsl's workers connect back to (resolved on this host), the ports and the
    worker command; a warning when a site with other nodes would use loopback."""
    settings = site.parsl
    try:
        address = resolve_parsl_address(site)
    except HpcemError as exc:
        return [Finding("parsl address", False, str(exc))]
    lo, hi = settings.port_range
    how = "" if settings.address_kind == "ip" else f" ({settings.address})"
    out = [
        Finding(
            "parsl address",
            True,
            f"workers connect to {address}{how}, a port in {lo}-{hi}; "
            f"worker command: {shlex.join(worker_command(site))}",
        )
    ]
    multi = [q.name for q in site.queues.values() if q.max_nodes > 1]
    if parsl_address_is_loopback(address) and (site.scheduler != "local" or multi):
        why = f"scheduler {site.scheduler}" if site.scheduler != "local" else ""
        if multi:
            why += (", " if why else "") + f"queue(s) {', '.join(multi)} with max_nodes > 1"
        out.append(
            Finding(
                "parsl address",
                True,
                f"{address} is loopback ({why}): only workers on this host can reach the "
                "controller; set [parsl] address to an address or interface the compute "
                "nodes reach (docs/sites.md)",
                warning=True,
            )
        )
    elif not parsl_address_is_loopback(address) and address not in _local_addresses():
        out.append(
            Finding(
                "parsl address",
                True,
                f"{address} is not an address of this host: a controller here cannot "
                "listen on it (fine if runs are controlled from the host that has it)",
                warning=True,
            )
        )
    return out


def _local_addresses() -> set[str]:
    import psutil

    return {
        str(ipaddress.ip_address(a.address.split("%")[0]))
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family.name in ("AF_INET", "AF_INET6")
    }


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
    return out + [_run_job(site, spec, Path(folder) / "check-job.sh", "test job", timeout_s)]


def _test_worker_command(site: Site, folder: str, timeout_s: float) -> Finding:
    """Run the site's Parsl worker command (``--help``) as a job: the nodes have the
    interpreter, Parsl and the worker pool module the controller will start there."""
    command = [*worker_command(site), "--help"]
    spec = dataclasses.replace(
        trivial_spec(site, site.default_queue, folder, command=command),
        name=f"hpcem-check-parsl-{site.name}",
        exit_code_file=str(Path(folder) / "check-parsl-worker.exit"),
        stdout=str(Path(folder) / "check-parsl-worker.out"),
    )
    check = "parsl worker command on a node"
    finding = _run_job(site, spec, Path(folder) / "check-parsl-worker.sh", check, timeout_s)
    if not finding.ok:
        return finding
    try:
        text = Path(spec.stdout).read_text(errors="replace")
    except OSError as exc:
        return Finding(check, False, f"cannot read the job's output {spec.stdout}: {exc.strerror}")
    if "usage:" not in text:
        return Finding(
            check, False, f"{shlex.join(command)} printed no usage; output: {text.strip()[-300:]!r}"
        )
    return Finding(check, True, f"{shlex.join(worker_command(site))}: {finding.detail}")


def _run_job(site: Site, spec: JobSpec, script: Path, check: str, timeout_s: float) -> Finding:
    """Submit ``spec``, wait for its end; the finding says how it ended and how fast."""
    t0 = time.monotonic()
    try:
        job_id = submit_job(site, spec, script)
    except HpcemError as exc:
        return Finding(check, False, str(exc))
    tracker = JobTracker(site)
    tracker.add(job_id, spec.exit_code_file)
    try:
        status = tracker.wait([job_id], timeout_s=timeout_s)[job_id]
    except (HpcemError, CommandError) as exc:
        return Finding(check, False, f"job {job_id}: {exc}")
    if not status.state.final:
        tracker.cancel([job_id])
        return Finding(
            check,
            False,
            f"job {job_id} still {status.state.value} after {timeout_s:g} s; cancelled",
        )
    ok = status.state is JobState.COMPLETED
    detail = f"job {job_id} {status.state.value} in {time.monotonic() - t0:.1f} s {status.reason}"
    if not ok and status.exit_code not in (None, 0):
        detail += f" (exit code {status.exit_code}; output in {spec.stdout})"
    return Finding(check, ok, detail.strip())
