"""``hpcem run | status | log | continue | restart | stop | copy``.

Imports of heavy modules stay inside the commands: ``hpcem status`` must answer fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import click

from hpcem.cli.status_table import fmt_elapsed as _fmt_elapsed
from hpcem.cli.status_table import (
    live_records,
    print_status,
    print_table,
    refresh_batch_jobs,
    safe,
)
from hpcem.errors import HpcemError, RunError, ValidationError

EXECUTION_OPTIONS = ("site", "queue", "walltime", "cores", "nodes", "dispatch", "max_blocks")


def _open(path: str):
    from hpcem.store import Project

    return Project.open(path)


def _run_ref(project, ref: str):
    """A run by id or by (unique) label."""
    from hpcem.store.project import find_run

    try:
        return find_run(project.runs, ref)
    except RunError as exc:
        raise RunError(
            f"{exc} ({project.path}; 'hpcem status {project.path}' lists them)"
        ) from None


# --- hpcem run -----------------------------------------------------------------------------
class ProtocolGroup(click.Group):
    """Subcommands are the registered protocols, built from their declarations."""

    def list_commands(self, ctx):
        from hpcem.protocol.registry import registry

        return registry().names()

    def get_command(self, ctx, name):
        from hpcem.protocol.registry import get_protocol

        return _protocol_command(get_protocol(name))

    def resolve_command(self, ctx, args):
        # Let an unknown protocol raise our ProtocolError (with suggestions).
        name = args[0]
        return name, self.get_command(ctx, name), args[1:]

    def format_commands(self, ctx, formatter):
        from hpcem.protocol.registry import registry

        reg = registry()
        rows = [(n, reg.protocols[n].label) for n in reg.names()]
        with formatter.section("Protocols"):
            formatter.write_dl(rows)


def _execution_options() -> list[click.Option]:
    return [
        click.Option(
            ["--input", "inputs"],
            multiple=True,
            metavar="NAME=RUN:OUTPUT",
            help="Input pointer to an output of another run (repeatable).",
        ),
        click.Option(
            ["--label"], default="", help="A label for the run (default: the protocol's)."
        ),
        click.Option(["--wait"], is_flag=True, help="Wait for the run to end, showing progress."),
        click.Option(
            ["--workers"],
            type=click.IntRange(min=1),
            default=None,
            help="Local worker processes (default: the number of cores).",
        ),
        click.Option(
            ["--site"], default=None, help="Site config to run on (see 'hpcem site list')."
        ),
        click.Option(
            ["--queue"], default=None, help="Queue/partition: sends the whole run as one batch job."
        ),
        click.Option(["--walltime"], default=None, help="Walltime of the batch job, e.g. 2:00:00."),
        click.Option(
            ["--cores"], type=click.IntRange(min=1), default=None, help="Cores of the batch job."
        ),
        click.Option(
            ["--nodes"], type=click.IntRange(min=1), default=None, help="Nodes of the batch job."
        ),
        click.Option(
            ["--dispatch"],
            type=click.Choice(["local", "job", "parsl"]),
            default=None,
            help="local: this machine; job: whole run as one batch job; "
            "parsl: steps dispatched to cluster nodes by Parsl.",
        ),
        click.Option(
            ["--max-blocks", "max_blocks"],
            type=click.IntRange(min=1),
            default=None,
            help="With --dispatch parsl: most batch jobs (blocks) at once.",
        ),
        click.Option(
            ["--save-only"], is_flag=True, help="Store the run (state saved) without launching it."
        ),
    ]


def _protocol_command(protocol) -> click.Command:
    from hpcem.cli.forms import protocol_options

    param_names = [p.name for p in protocol.params]

    def callback(inputs, label, wait, workers, save_only, **kwargs):
        project = click.get_current_context().parent.params["project"]
        params = {n: kwargs.pop(n) for n in param_names if kwargs.get(n) is not None}
        execution_opts = {k: kwargs.pop(k) for k in EXECUTION_OPTIONS}
        _do_run(
            project, protocol.name, params, inputs, label, wait, workers, save_only, execution_opts
        )

    cites = "; ".join(c.short for c in protocol.citations)
    help_text = f"{protocol.label}.\n\n{protocol.help}".strip()
    if cites:
        help_text += f"\n\nCite: {cites}"
    return click.Command(
        protocol.name,
        params=protocol_options(protocol) + _execution_options(),
        callback=callback,
        help=help_text,
        short_help=protocol.label,
    )


def _parse_inputs(values) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in values:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise HpcemError(
                f"--input {item!r}: expected NAME=RUN:OUTPUT, e.g. micrographs=1:micrographs"
            )
        out.setdefault(name, []).append(ref)
    return out


def _do_run(project_path, protocol_name, params, inputs, label, wait, workers, save_only, opts):
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.placement import execution_request

    project = _open(project_path)
    placement = execution_request(project, opts)
    run = lifecycle.create_run(
        project, protocol_name, params, _parse_inputs(inputs), label, placement
    )
    if save_only:
        click.echo(f"run {run.id} ({safe(run.label)}) saved")
        return
    lifecycle.launch(project, run.id, workers)
    click.echo(f"run {run.id} ({safe(run.label)}) launched")
    if wait:
        _wait(project, run.id)


def _wait(project, run_id: int) -> None:
    """Show progress until the run ends. Ctrl-C stops a local run (and says so); for a
    batch-job run it only stops waiting and says how to stop the job."""
    try:
        _wait_loop(project, run_id)
    except KeyboardInterrupt:
        from hpcem.execution.runs import stop_run

        click.echo("", err=True)
        run = project.run(run_id)
        if run.placement.mode == "job":
            job = run.attempt.job_id if run.attempt else ""
            raise RunError(
                f"stopped waiting; run {run_id} goes on as batch job {job or '(queued)'}"
                f" ('hpcem stop {project.path} {run_id}' cancels it)"
            ) from None
        try:
            said = stop_run(project, run_id, reason="interrupted (Ctrl-C)")
        except RunError as exc:
            said = str(exc)
        raise RunError(f"interrupted: {said}") from None


def _wait_loop(project, run_id: int) -> None:
    from hpcem.execution.runs import ACTIVE_STATES, diagnose

    tty = sys.stderr.isatty()
    last = None
    last_refresh = time.monotonic()
    while True:
        if time.monotonic() - last_refresh > 2.0:
            refresh_batch_jobs(project)
            last_refresh = time.monotonic()
        run = project.run(run_id)
        state, reason = diagnose(run)
        line = f"run {run_id}: {state} {_bar(run.steps_done, run.steps_total)}"
        if tty:
            click.echo("\r" + line.ljust(70), nl=False, err=True)
        elif line != last:
            click.echo(line, err=True)
        last = line
        if state not in ACTIVE_STATES:
            break
        time.sleep(0.2)
    if tty:
        click.echo("", err=True)
    if state != "finished":
        raise RunError(f"run {run_id} {state}: {safe(reason or run.error)}")
    if run.error:
        click.echo(f"run {run_id} finished: {safe(run.error)}", err=True)


def _bar(done: int, total: int, width: int = 30) -> str:
    if total <= 0:
        return "[" + " " * width + "]   0/?"
    filled = int(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} steps"


@click.group(
    "run",
    cls=ProtocolGroup,
    invoke_without_command=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("project")
def run_cmd(project):
    """Run PROTOCOL in PROJECT: hpcem run PROJECT PROTOCOL [--param value ...].

    Each protocol has its own options: 'hpcem run PROJECT PROTOCOL --help' lists them and
    'hpcem protocols PROTOCOL' shows its full form. Examples:

    \b
      hpcem run ./proj import.micrographs --files 'raw/*.mrc' --pixel-size-A 1.0 --wait
      hpcem run ./proj ctf.estimate --input micrographs=1:micrographs --wait
    """


# --- hpcem status ----------------------------------------------------------------------------
@click.command("status")
@click.argument("project")
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--log-lines", default=10, show_default=True, help="Log lines shown for one run.")
def status_cmd(project, run, as_json, log_lines):
    """Where is my project at? One row per run, or the details of RUN (id or label)."""
    if run is None and not as_json:
        print_status(project)  # the table (hpcem.cli.main also calls it without click)
        return
    from hpcem.execution.runs import summarize
    from hpcem.execution.status import classify_rows

    proj = _open(project)
    cols = proj.summary_columns()
    quiet, live_at, problems = classify_rows(proj.index_path, cols)
    live = live_records(proj, cols, live_at, problems)  # jobs asked about, blocks reaped
    if run is None:  # scripts get every output with its type: summaries of the records
        records = {r.id: r for r in live_records(proj, cols, quiet, problems, refresh=False)}
        records.update({r.id: r for r in live})
    for problem in problems:
        click.echo(f"hpcem: warning: {safe(problem)}", err=True)
    if run is not None:
        _print_run(proj, _run_ref(proj, run), as_json, log_lines)
        return
    rows = [summarize(records[i]) for i in sorted(records)]
    click.echo(
        json.dumps({"project": str(proj.path), "runs": [r.to_json() for r in rows]}, indent=1)
    )


def _print_table(project, rows) -> None:
    """The status table of these summaries (also used by ``hpcem demo``)."""
    print_table(project.path, rows)


def _print_run(project, run, as_json, log_lines) -> None:
    from hpcem.execution.runs import summarize

    summary = summarize(run)
    steps = project.read_steps(run.id).to_records()
    log_path = project.run_dir(run.id) / "run.log"
    tail = _tail(log_path, log_lines)
    if as_json:
        click.echo(
            json.dumps(
                {
                    **summary.to_json(),
                    "params": run.params,
                    "inputs": run.inputs,
                    "placement": run.placement.to_json(),
                    "attempts": [a.to_json() for a in run.attempts],
                    "blocks": list(run.blocks),
                    "steps": [
                        {k: _jsonable(v) for k, v in s.items() if k not in ("args", "result")}
                        for s in steps
                    ],
                    "rejected_items": _rejected_in_results(steps),
                    "log_tail": tail,
                },
                indent=1,
            )
        )
        return
    click.echo(f"run {run.id}: {safe(run.label)}  [{run.protocol}]")
    click.echo(
        f"  state    {summary.state}" + (f"  ({safe(summary.reason)})" if summary.reason else "")
    )
    click.echo(
        f"  steps    {summary.steps_done}/{summary.steps_total}"
        f"   elapsed {_fmt_elapsed(summary.elapsed_s)}"
    )
    for a in run.attempts[-5:]:
        where = (
            f"job {a.job_id} on {a.site}/{a.queue}"
            if a.job_id
            else f"pid {a.pid} on {a.host or a.launcher_host}"
        )
        said = f" [{a.scheduler_state}]" if a.scheduler_state else ""
        end = (
            f": {a.outcome}" + (f" ({safe(a.outcome_reason)})" if a.outcome_reason else "")
            if a.outcome
            else ""
        )
        click.echo(f"  attempt  {a.number}: {where}{said}{end}")
    if run.blocks:
        click.echo(
            f"  parsl    blocks (batch jobs) on {run.placement.site}: " + ", ".join(run.blocks)
        )
    click.echo("  params")
    for k, v in run.params.items():
        click.echo(f"    {k} = {v!r}")
    click.echo("  inputs")
    for k, v in run.inputs.items():
        click.echo(f"    {k} = {', '.join(v)}")
    click.echo("  outputs")
    for name, o in summary.outputs.items():
        click.echo(f"    {name}: {o['type']} ({o['size']} items)")
    click.echo("  steps")
    for s in steps[:50]:
        took = s["ended"] - s["started"]
        took_s = f"{took:.2f}s" if not math.isnan(took) else ""
        err = f"  {safe(s['error'])}" if s["error"] else ""
        state = s["state"]
        if state == "running" and summary.state not in ("launched", "running"):
            state = "interrupted"  # its controller ended before the step did
        click.echo(f"    {safe(s['name']):32s} {state:11s} {s['host']:10s} {took_s}{err}")
    if len(steps) > 50:
        click.echo(f"    ... {len(steps) - 50} more")
    rejected = _rejected_in_results(steps)
    if rejected:
        click.echo(f"  rejected items ({len(rejected)}, reported by a step of the run)")
        for reason in rejected[:20]:
            click.echo(f"    {safe(reason)}")
        if len(rejected) > 20:
            click.echo(f"    ... {len(rejected) - 20} more")
    click.echo("  log")
    for line in tail:
        click.echo(f"    {safe(line)}")


def _rejected_in_results(steps: list[dict]) -> list[str]:
    """Reasons of items a step rejected inside its own work (e.g. a consensus step's
    ``result["rejected"]``), other than those already shown as a rejected step."""
    shown = {s["error"] for s in steps if s["error"]}
    reasons = []
    for s in steps:
        result = s.get("result")
        items = result.get("rejected") if isinstance(result, dict) else None
        for item in items if isinstance(items, list) else ():
            reason = item.get("reason") if isinstance(item, dict) else item
            if isinstance(reason, str) and reason not in shown:
                reasons.append(reason)
    return reasons


def _jsonable(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def _tail(path, n: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return lines[-n:] if n > 0 else []


# --- hpcem log -------------------------------------------------------------------------------
@click.command("log")
@click.argument("project")
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option(
    "--file",
    "log_name",
    default="run.log",
    show_default=True,
    help="Another log of the run folder, e.g. relion.log (what external programs printed).",
)
def log_cmd(project, run, follow, log_name):
    """Print the log of RUN (id or label). Other logs of the run (external programs'
    output, e.g. relion.log) are named at the end; show one with --file NAME."""
    from hpcem.execution.runs import ACTIVE_STATES, effective_state

    proj = _open(project)
    rec = _run_ref(proj, run)
    if "/" in log_name or not log_name.endswith(".log") or log_name.startswith("."):
        raise click.BadParameter(f"{log_name!r}: give a .log file name of the run folder")
    run_dir = proj.run_dir(rec.id)
    path = run_dir / log_name
    if log_name != "run.log" and not path.is_file():
        raise HpcemError(f"run {rec.id} has no {log_name} (in {run_dir})")
    pos = 0
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            text = chunk.decode(errors="replace")
            click.echo("\n".join(safe(line) for line in text.split("\n")), nl=False)
        if not follow:
            break
        if not chunk and effective_state(proj.run(rec.id)) not in ACTIVE_STATES:
            break  # the run has ended and everything it wrote was printed
        time.sleep(0.3)
    others = sorted(
        p.name
        for p in run_dir.glob("*.log")
        if p.name not in (log_name, "stdout.log", "stderr.log") and p.is_file()
    )
    if others and log_name == "run.log":
        click.echo(
            f"(other logs of run {rec.id}: {', '.join(others)}; "
            f"hpcem log {project} {rec.id} --file NAME)",
            err=True,
        )


# --- continue / restart / stop / copy ----------------------------------------------------------
def _lifecycle_command(name: str, doc: str, action):
    @click.command(name, help=doc)
    @click.argument("project")
    @click.argument("run")
    @click.option("--wait", is_flag=True, help="Wait for the run to end, showing progress.")
    @click.option(
        "--workers", type=click.IntRange(min=1), default=None, help="Local worker processes."
    )
    def command(project, run, wait, workers):
        proj = _open(project)
        rec = _run_ref(proj, run)
        message = action(proj, rec, workers)
        click.echo(safe(message))
        if wait and name in ("continue", "restart"):
            _wait(proj, rec.id)

    return command


def _continue(proj, rec, workers):
    from hpcem.execution.runs import continue_run

    run = continue_run(proj, rec.id, workers)
    return f"run {rec.id} ({rec.label}) continued (attempt {run.attempt.number})"


def _restart(proj, rec, workers):
    from hpcem.execution.runs import restart_run

    run = restart_run(proj, rec.id, workers)
    return f"run {rec.id} ({rec.label}) restarted from scratch (attempt {run.attempt.number})"


def _stop(proj, rec, workers):
    from hpcem.execution.runs import stop_run

    return stop_run(proj, rec.id)


@click.command("copy", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("project")
@click.argument("run")
@click.option("--label", default=None, help="Label of the copy (default: 'LABEL (copy N)').")
@click.pass_context
def copy_cmd(ctx, project, run, label):
    """Copy RUN: a new saved run with the same inputs and parameters, except the
    protocol parameters given after RUN (the same options as 'hpcem run ... PROTOCOL',
    validated the same way), e.g. hpcem copy ./proj 2 --defocus-max-A 40000."""
    from hpcem.cli.forms import protocol_options
    from hpcem.execution.runs import copy_run
    from hpcem.protocol.registry import get_protocol

    proj = _open(project)
    rec = _run_ref(proj, run)
    protocol = get_protocol(rec.protocol)
    form = click.Command(protocol.name, params=protocol_options(protocol))
    try:
        parsed = form.make_context(f"hpcem copy {project} {run}", list(ctx.args))
    except click.UsageError as exc:
        raise ValidationError(
            f"copy of run {rec.id} ({protocol.name}): {exc.format_message()}"
        ) from None
    params = {
        p.name: parsed.params[p.name]
        for p in protocol.params
        if parsed.params.get(p.name) is not None
    }
    new = copy_run(proj, rec.id, label=label, params=params)
    changed = ", ".join(
        f"{k}={new.params[k]!r}" for k in params if rec.params.get(k) != new.params.get(k)
    )
    click.echo(
        safe(
            f"run {new.id} ({new.label}) saved as a copy of run {rec.id}"
            + (f" with {changed}" if changed else "")
            + f"; launch it with 'hpcem continue {proj.path} {new.id}'"
        )
    )


COMMANDS = [
    run_cmd,
    status_cmd,
    log_cmd,
    _lifecycle_command(
        "continue", "Continue RUN: redo only steps that did not finish or changed.", _continue
    ),
    _lifecycle_command(
        "restart", "Restart RUN from scratch: its outputs and step records are wiped.", _restart
    ),
    _lifecycle_command(
        "stop",
        "Stop RUN: mark it aborted and end its processes (or cancel its "
        "jobs); on a run that already ended, end any process it left behind.",
        _stop,
    ),
    copy_cmd,
]
