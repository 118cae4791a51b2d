"""``hpcem site`` and ``hpcem queue``: sysadmin and job-watching commands."""

from __future__ import annotations

import os

import click

from hpcem.errors import ConfigError, ValidationError

# The cluster modules are imported inside each command: every `hpcem` invocation
# (e.g. `hpcem status`) loads this file, and it must start fast.


@click.group("site")
def site_group() -> None:
    """List, check and try out site configs (site_configs/*.toml, $HPCEM_SITE_PATH)."""


@site_group.command("list")
def site_list() -> None:
    """List every site config on the search path with its scheduler and queues."""
    from hpcem.cluster.site import list_sites, load_site

    for name, path in list_sites():
        try:
            s = load_site(str(path))
            click.echo(f"{name:20s} {s.scheduler:6s} queues: {', '.join(s.queues):30s} {path}")
        except ConfigError as exc:
            click.echo(f"{name:20s} INVALID  {exc}")


@site_group.command("check")
@click.argument("name")
@click.option(
    "--test",
    is_flag=True,
    help="Also do a scheduler dry run and submit a trivial job, waiting for it.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=300.0,
    show_default=True,
    help="Seconds to wait for the --test job.",
)
def site_check(name: str, test: bool, timeout_s: float) -> None:
    """Check site NAME: schema, the address and ports Parsl's workers connect back to,
    every queue's job script (rendered, bash -n), scheduler commands on PATH, and with
    --test a real trivial job and one running the site's Parsl worker command."""
    from hpcem.cluster.check import check_site

    findings = check_site(name, test=test, test_timeout_s=timeout_s)
    for f in findings:
        mark = "FAIL" if not f.ok else "WARN" if f.warning else "ok  "
        click.echo(f"{mark} {f.check}{': ' + f.detail if f.detail else ''}")
    failed = [f for f in findings if not f.ok]
    if failed:
        raise ConfigError(f"site {name}: {len(failed)} check(s) failed: {failed[0].detail}")


@site_group.command("render")
@click.argument("name")
@click.option("--queue", "-q", default=None, help="Queue/partition (default: the site's).")
@click.option("--nodes", default=1, show_default=True, type=int)
@click.option("--tasks-per-node", default=1, show_default=True, type=int)
@click.option(
    "--cores", "cores_per_task", default=1, show_default=True, type=int, help="Cores per task."
)
@click.option("--memory-mb", default=None, type=int, help="Memory per node, MB.")
@click.option("--walltime", default=None, help="HH:MM:SS or D-HH:MM:SS (default: the site's).")
@click.option("--gpus", default=0, show_default=True, type=int, help="GPUs per node.")
@click.option("--label", default="", help="Free-text label (it is shell-quoted in the script).")
@click.option("--workdir", default=None, help="Job working directory (default: current).")
@click.argument("command", nargs=-1)
def site_render(
    name,
    queue,
    nodes,
    tasks_per_node,
    cores_per_task,
    memory_mb,
    walltime,
    gpus,
    label,
    workdir,
    command,
) -> None:
    """Print the job script that would be submitted on site NAME for COMMAND (after --)."""
    from hpcem.cluster.job import JobSpec
    from hpcem.cluster.site import load_site, parse_walltime
    from hpcem.cluster.templates import render_job_script

    site = load_site(name)
    workdir = os.path.abspath(workdir or os.getcwd())
    try:
        walltime_s = parse_walltime(walltime, "--walltime") if walltime else None
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None
    spec = JobSpec(
        command=tuple(command) or ("true",),
        name=label or "hpcem-render",
        label=label,
        workdir=workdir,
        exit_code_file=os.path.join(workdir, "hpcem-job.exit"),
        stdout=os.path.join(workdir, "hpcem-job.out"),
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        cores_per_task=cores_per_task,
        memory_mb=memory_mb,
        walltime_s=walltime_s,
        gpus=gpus,
        queue=queue,
    )
    click.echo(render_job_script(site, spec), nl=False)


@click.command("queue")
@click.option("--site", "site_name", required=True, help="Site whose scheduler to ask.")
@click.option("--user", default=None, help="User (default: you).")
def queue_command(site_name: str, user: str | None) -> None:
    """Show this user's hpcem jobs on a site (one scheduler query)."""
    from hpcem.cluster.site import load_site
    from hpcem.cluster.submit import list_user_jobs

    site = load_site(site_name)
    rows = list_user_jobs(site, user)
    click.echo(f"{'JOBID':>10}  {'STATE':13s} {'NATIVE':10s} {'QUEUE':10s} {'NODES':12s} NAME")
    for r in rows:
        click.echo(
            f"{r['job_id']:>10}  {r['state']:13s} {r['native_state']:10s} "
            f"{r['queue']:10s} {r['nodes']:12s} {r['name']}"
            + (f"  ({r['reason']})" if r["reason"] else "")
        )


COMMANDS: list = [site_group, queue_command]
