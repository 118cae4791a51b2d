"""``hpcem workflow export | import | show``, ``hpcem branch`` and ``hpcem diff``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpcem.errors import HpcemError


@click.group("workflow")
def workflow_group():
    """Workflow templates: export runs as JSON, show a template, import it elsewhere."""


@workflow_group.command("export")
@click.argument("project")
@click.argument("runs", nargs=-1)
@click.option("--branch", "branch_ref", default=None, help="Export RUN and every run downstream.")
@click.option("-o", "--output", required=True, help="The template file to write (JSON).")
@click.option("--name", default="", help="A name for the workflow.")
@click.option("--notes", default="", help="Free text kept in the template.")
def export_cmd(project, runs, branch_ref, output, name, notes):
    """Write RUNS of PROJECT (all runs when none is named) as a workflow template."""
    from hpcem.cli.commands_runs import _open
    from hpcem.workflow.template import dumps, export_runs, select_runs

    proj = _open(project)
    chosen = select_runs(proj, runs, branch_ref)
    doc = export_runs(proj, chosen, name=name, notes=notes)
    Path(output).write_text(dumps(doc), encoding="utf-8")
    n = len(doc["runs"])
    click.echo(f"{n} run{'s' if n != 1 else ''} written to {output}")


def _values(items) -> dict[str, str]:
    from hpcem.workflow.placeholders import parse_assignments

    try:
        return parse_assignments(items)
    except ValueError as exc:
        raise HpcemError(str(exc)) from None


@workflow_group.command("show")
@click.argument("template")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show_cmd(template, as_json):
    """Show a template's runs and the placeholders it asks for (checked against the
    schema; the semantic checks run on import)."""
    from hpcem.workflow.load import _fail, read_document, schema_problems
    from hpcem.workflow.placeholders import collect

    doc = read_document(template)
    problems = schema_problems(doc)
    if problems:
        _fail(problems)
    holders = collect(doc)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runs": [
                        {k: r.get(k) for k in ("key", "protocol", "label", "inputs")}
                        for r in doc["runs"]
                    ],
                    "placeholders": [p.to_json() for p in holders.values()],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{template}: schema version {doc['schema_version']}, {len(doc['runs'])} runs")
    for r in doc["runs"]:
        ins = ", ".join(
            f"{k}<-{','.join([v] if isinstance(v, str) else v)}"
            for k, v in (r.get("inputs") or {}).items()
        )
        click.echo(f"  {r['key']:>4s}  {r['protocol']:20s} {r.get('label', '')}  {ins}")
    click.echo("placeholders (--set NAME=VALUE on import):" if holders else "no placeholders")
    for p in holders.values():
        default = f" [default: {p.default!r}]" if p.has_default else " [required]"
        click.echo(f"  {p.name} ({p.kind}){default}: {p.help}")
        click.echo(f"      used in: {'; '.join(p.used_in) or '-'}")


@workflow_group.command("import")
@click.argument("project")
@click.argument("template")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A placeholder value.")
@click.option("--run", "run_now", is_flag=True, help="Run each run in order, waiting for each.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local workers.")
@click.option("--site", default=None, help="Run on this site instead of the template's.")
@click.option("--scipion", is_flag=True, help="TEMPLATE is a Scipion workflow JSON.")
def import_cmd(project, template, sets, run_now, workers, site, scipion):
    """Recreate the runs of TEMPLATE in PROJECT (same graph). Every problem of the
    template is listed at once and then nothing is created."""
    from hpcem.cli.commands_runs import _open
    from hpcem.workflow.load import check, instantiate, read_document

    proj = _open(project)
    doc = read_document(template)
    if scipion:
        from hpcem.workflow.scipion import convert

        doc, unmapped = convert(doc)
        for line in unmapped:
            click.echo(f"not imported: {line}", err=True)
    values = _values(sets)
    wf = check(doc, values, proj)
    for note in wf.notes:
        click.echo(f"note: {note}", err=True)
    ids = instantiate(proj, wf, run=run_now, workers=workers, site=site)
    state = "finished" if run_now else "saved"
    for key, rid in ids.items():
        click.echo(f"template run {key} -> run {rid} ({state})")


@click.command("branch")
@click.argument("project")
@click.argument("run")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A changed parameter.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=RUN:OUTPUT", help="Another input.")
@click.option("--run", "run_now", is_flag=True, help="Run the branch in order, waiting for each.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local workers.")
def branch_cmd(project, run, params, inputs, run_now, workers):
    """Copy RUN and everything downstream of it as new runs, with RUN's parameters or
    inputs changed; the copies read each other."""
    from hpcem.cli.commands_runs import _open, _parse_inputs, _run_ref
    from hpcem.workflow.branch import branch

    proj = _open(project)
    rec = _run_ref(proj, run)
    changed = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HpcemError(f"--param {item!r}: expected NAME=VALUE")
        changed[name.strip().replace("-", "_")] = value
    new = branch(proj, rec.id, changed, _parse_inputs(inputs), run=run_now, workers=workers)
    for old, rid in new.items():
        click.echo(f"run {old} -> run {rid}")


@click.command("diff")
@click.argument("project")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def diff_cmd(project, run_a, run_b, as_json):
    """Compare two runs: parameters, inputs, and key figures of their outputs (counts,
    mean defocus, resolution)."""
    from hpcem.cli.commands_runs import _open, _run_ref
    from hpcem.workflow.branch import diff

    proj = _open(project)
    d = diff(proj, _run_ref(proj, run_a).id, _run_ref(proj, run_b).id)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    a, b = d["runs"]
    click.echo(f"run {a} ({d['labels'][0]}) vs run {b} ({d['labels'][1]})")
    if d["protocol"]:
        click.echo(f"  protocol: {d['protocol'][0]} | {d['protocol'][1]}")
    for title, key in (("parameters", "params"), ("inputs", "inputs")):
        click.echo(f"{title}:" if d[key] else f"{title}: same")
        for name, (x, y) in d[key].items():
            click.echo(f"  {name}: {x!r} | {y!r}")
    click.echo("outputs:")
    for name, figures in d["outputs"].items():
        for f, (x, y) in figures.items():
            click.echo(f"  {name}.{f}: {x:.6g} | {y:.6g}")


COMMANDS = [workflow_group, branch_cmd, diff_cmd]
