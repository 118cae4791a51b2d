"""``hpcem project create | list`` and ``hpcem protocols``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from hpcem.cli.commands_merge import merge_cmd


@click.group("project")
def project_group():
    """Create and find projects (one folder each, metadata in HDF5)."""


@project_group.command("create")
@click.argument("path")
@click.option("--site", default=None, help="Default site for runs of this project.")
def project_create(path, site):
    """Create a new project folder at PATH."""
    from hpcem.store import Project

    if site:
        from hpcem.cluster.site import load_site

        load_site(site)  # a broken or unknown site is reported before anything is written
    project = Project.create(path)
    if site:
        project.set_default_site(site)
    click.echo(f"created project {project.path}")


@project_group.command("list")
@click.argument("root", default=".", required=False)
@click.option("--depth", default=2, show_default=True, help="How many folder levels to search.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def project_list(root, depth, as_json):
    """List the projects under ROOT (default: the current folder)."""
    from hpcem.errors import HpcemError
    from hpcem.store import Project

    found = []
    root_path = Path(root).resolve()
    for folder, dirs, files in os.walk(root_path):
        level = len(Path(folder).relative_to(root_path).parts)
        if "project.h5" in files:
            try:
                p = Project.open(folder)
                runs = p.runs
                found.append(
                    {
                        "path": folder,
                        "runs": len(runs),
                        "active": sum(r.state in ("launched", "running") for r in runs),
                        "error": "",
                    }
                )
            except HpcemError as exc:
                found.append({"path": folder, "runs": None, "active": None, "error": str(exc)})
            dirs[:] = []
        elif level >= depth:
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "runs"]
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    if not found:
        click.echo(f"no projects under {root_path}")
    for p in found:
        if p["error"]:
            click.echo(f"{p['path']}  UNREADABLE: {p['error']}")
        else:
            click.echo(f"{p['path']}  {p['runs']} runs, {p['active']} active")


@click.command("protocols")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the declaration(s) as JSON.")
def protocols_cmd(name, as_json):
    """List protocols (name, label, citation), or show the full form of NAME."""
    from hpcem.cli.forms import describe
    from hpcem.protocol.registry import get_protocol, registry

    reg = registry()
    if name:
        protocol = get_protocol(name)
        click.echo(json.dumps(protocol.to_json(), indent=1) if as_json else describe(protocol))
        return
    if as_json:
        click.echo(json.dumps([reg.protocols[n].to_json() for n in reg.names()], indent=1))
        return
    rows = [("NAME", "LABEL", "CITATION")]
    for n in reg.names():
        p = reg.protocols[n]
        rows.append((n, p.label, "; ".join(c.short for c in p.citations) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        click.echo(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
    for plugin, error in sorted(reg.errors.items()):
        click.echo(f"warning: protocol plugin {plugin} not loaded: {error}", err=True)


project_group.add_command(merge_cmd)

COMMANDS = [project_group, protocols_cmd]
