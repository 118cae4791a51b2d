"""``hpcem import-relion``: continue a RELION project in hpcem (its finished jobs as runs,
with lineage); ``hpcem export-relion``: an hpcem set as a RELION STAR or cryoSPARC ``.cs``
(particles, micrographs, movies) for going back."""

from __future__ import annotations

import click

from hpcem.cli.status_table import safe
from hpcem.errors import ValidationError


def _open(path: str):
    from hpcem.store import Project

    return Project.open(path)


@click.command("import-relion")
@click.argument("project", type=click.Path(exists=True, file_okay=False))
@click.argument("relion_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
def import_relion_cmd(project, relion_dir, workers):
    """Import every finished job of the RELION project RELION_DIR into PROJECT.

    Reads RELION_DIR/default_pipeline.star and makes one 'import.relion_job' run per
    job RELION finished, in dependency order, each with the runs of the jobs it read from
    as inputs (lineage). Each run finishes before the next starts (its children point to
    its outputs), so the command returns when all are imported. Run it again after RELION
    has gone on: only the new jobs are imported.

    \b
    Example:
      hpcem import-relion ./proj ~/relion/betagal
      hpcem run ./proj ctf.estimate --input micrographs=RUN:micrographs --wait
    """
    from hpcem.protocols.import_relion_project import import_relion_project

    proj = _open(project)

    def show(row: dict) -> None:
        run = f"run {row['run']}" if row["run"] is not None else "no run"
        note = f" ({safe(row['note'])})" if row.get("note") else ""
        click.echo(f"{row['job']:<24} {row['type']:<20} {run:<8} {row['state']}{note}")

    rows = import_relion_project(proj, relion_dir, workers=workers, progress=show)
    failed = [r for r in rows if r["state"] not in ("finished", "skipped")]
    made = sum(1 for r in rows if r["state"] == "finished" and r.get("note") != "imported before")
    click.echo(f"{made} job(s) imported, {len(rows) - made - len(failed)} already or skipped")
    if failed:
        raise click.ClickException(f"{len(failed)} job(s) failed to import: {failed[0]['job']}")


#: set type -> (writer in hpcem.convert, default extension)
_EXPORTS = {
    "hpcem.SetOfParticles": "particles",
    "hpcem.SetOfMicrographs": "micrographs",
    "hpcem.SetOfMovies": "movies",
}


@click.command("export-relion")
@click.argument("project", type=click.Path(exists=True, file_okay=False))
@click.argument("pointer")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="File.")
@click.option("--cs", "as_cs", is_flag=True, help="Write a cryoSPARC .cs (particles only).")
@click.option(
    "--relion-version",
    type=click.Choice(["3.1", "3.0"]),
    default="3.1",
    show_default=True,
    help="STAR flavour for particles.",
)
def export_relion_cmd(project, pointer, output, as_cs, relion_version):
    """Write the set POINTER (RUN:OUTPUT) of PROJECT as a RELION STAR file (particles,
    micrographs, movies) or, with --cs, a cryoSPARC particle .cs. Image paths inside the
    output file's folder are written relative to it."""
    import os

    from hpcem.convert import cryosparc, relion

    proj = _open(project)
    run_part, _, name = pointer.rpartition(":")
    if not run_part or not name:
        raise ValidationError(f"{pointer!r} is not RUN:OUTPUT (e.g. 3:particles)")
    from hpcem.store.project import find_run

    s = proj.open_set(find_run(proj.runs, run_part).id, name)
    kind = _EXPORTS.get(s.type_name)
    if kind is None or (as_cs and kind != "particles"):
        what = "particles" if as_cs else ", ".join(_EXPORTS)
        raise ValidationError(f"{pointer} is a {s.type_name}; export-relion writes {what}")
    cols = s.read_columns()
    root = os.path.dirname(os.path.abspath(output))
    if as_cs:
        cryosparc.write_particles_cs(output, cols, s.optics)
    elif kind == "particles":
        relion.write_particles(output, cols, s.optics, version=relion_version, root=root)
    elif kind == "micrographs":
        relion.write_micrographs(output, cols, s.optics, root=root)
    else:
        relion.write_movies(output, cols, s.optics, root=root)
    click.echo(f"{len(s)} {kind} written to {output}")


COMMANDS = [import_relion_cmd, export_relion_cmd]
