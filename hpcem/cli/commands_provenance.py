"""``hpcem provenance | methods | export-provenance``: what made a result, in three forms.

A run's provenance record (versions, hosts, jobs, times, hashes, seeds, command lines),
a methods paragraph with its BibTeX, and a Workflow Run RO-Crate for deposition
(:mod:`hpcem.provenance`, docs/provenance.md).
"""

from __future__ import annotations

import json

import click


def _open(path: str):
    from hpcem.store import Project

    return Project.open(path)


def _run_ref(project, ref: str):
    from hpcem.cli.commands_runs import _run_ref as find

    return find(project, ref)


@click.command("provenance")
@click.argument("project")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
def provenance_cmd(project, run, as_json):
    """Show the provenance of RUN (id or label): software versions, protocol version,
    kernel backends, external programs and their exact command lines, site, hosts, job
    ids, times of every attempt and step, seeds, and the sizes and hashes of the input
    and output files (hashes are cached in the run folder: computed once per file)."""
    from hpcem.provenance.record import format_text, provenance

    proj = _open(project)
    record = provenance(proj, _run_ref(proj, run).id)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True, default=str))
    else:
        from hpcem.cli.status_table import safe

        click.echo("\n".join(safe(line) for line in format_text(record).split("\n")))


@click.command("methods")
@click.argument("project")
@click.argument("runs", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the methods paragraph (Markdown) to this file instead of printing it.",
)
@click.option(
    "--bib",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the BibTeX of every method used to this file.",
)
def methods_cmd(project, runs, output, bib):
    """Write a methods paragraph for RUNS (ids or labels; default: every finished run):
    what each run did, with which protocol and version, the parameters that differ from
    the defaults (with units), kernels and external programs with their versions, and
    the citation keys ([@key]); --bib writes the BibTeX of those keys."""
    from hpcem.provenance.methods import bibtex, methods_text

    proj = _open(project)
    ids = [_run_ref(proj, r).id for r in runs]
    text = methods_text(proj, ids)
    if output:
        with open(output, "w") as f:
            f.write(text)
        click.echo(f"methods written to {output}")
    else:
        click.echo(text, nl=False)
    if bib:
        with open(bib, "w") as f:
            f.write(bibtex(proj, ids))
        click.echo(f"BibTeX written to {bib}")


@click.command("export-provenance")
@click.argument("project")
@click.argument("run", required=False)
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    type=click.Path(file_okay=False),
    help="New (or empty) folder for the crate.",
)
@click.option(
    "--include-data",
    is_flag=True,
    help="Also copy the files the sets refer to (micrographs, pictures) from the runs' "
    "folders; by default they are referenced by path with their size and hashes.",
)
def export_provenance_cmd(project, run, dest, include_data):
    """Write a Workflow Run RO-Crate of RUN and every run upstream of it (default: all
    runs) to a new folder: ro-crate-metadata.json, the workflow, one action per run with
    its inputs, parameters, software and outputs (copied, with sha256), the provenance
    records, methods.md and references.bib."""
    from hpcem.provenance.rocrate import export_crate

    proj = _open(project)
    ids = [_run_ref(proj, run).id] if run else None
    out = export_crate(proj, ids, dest, include_data=include_data)
    click.echo(f"RO-Crate written to {out.parent} ({out.name})")


COMMANDS = [provenance_cmd, methods_cmd, export_provenance_cmd]
