"""``hpcem project merge TARGET SOURCE``: merge a diverged copy of a project into another.

Attached to the ``project`` group by ``commands_project`` (``project_group.add_command(
merge_cmd)``); the work is done by :func:`hpcem.store.merge.merge`.
"""

from __future__ import annotations

import json

import click


@click.command("merge")
@click.argument("target")
@click.argument("source")
@click.option("--dry-run", is_flag=True, help="Say what would be merged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON for scripts.")
def merge_cmd(target: str, source: str, dry_run: bool, as_json: bool) -> None:
    """Merge the runs of project SOURCE into project TARGET (two copies of one project).

    Runs present in both (same origin id) are kept once; new runs of SOURCE are added
    with their folders, output sets and lineage, renumbered when TARGET already uses
    their ids. A run run again only in SOURCE since the copy is taken over (TARGET's
    record, folder and outputs replaced by SOURCE's) unless TARGET still runs it, its
    params differ, or a run only TARGET has uses its outputs. A run changed in both
    copies is a conflict: reported, TARGET's version kept, and SOURCE's runs made from
    it are held back. All-or-nothing: TARGET is not modified unless the whole merge
    succeeds. SOURCE is only read.

    Refused (nothing changed) for unrelated projects, the same folder twice, a SOURCE
    with runs still active, and links where SOURCE keeps store files. Exit status 0
    when merged (or nothing to merge), 1 when conflicts or held-back runs were reported
    (the rest is merged).
    """
    from hpcem.errors import HpcemError
    from hpcem.store.merge import merge

    report = merge(target, source, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for line in report.lines():
            click.echo(line)
    if report.conflicts or report.held_back:
        done = "would be merged" if dry_run else "was merged"
        raise HpcemError(
            f"{len(report.conflicts)} conflicting and {len(report.held_back)} held-back "
            f"run(s) of SOURCE need a decision (listed above); the rest {done}"
        )
