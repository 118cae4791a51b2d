"""Where a run executes: here (local workers), as one batch job, or Parsl-dispatched steps.

Turns the command-line execution options into the ``execution`` dict stored with the run
and checks them against the site config *before* anything is stored or submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcem.errors import ConfigError


def execution_request(project, opts: Mapping[str, Any]) -> dict:
    """The run's execution dict from options (site, queue, walltime, cores, nodes, dispatch)."""
    from hpcem.cluster.site import (
        check_limits,
        default_site_name,
        format_walltime,
        load_site,
        parse_walltime,
    )

    opts = {k: v for k, v in opts.items() if v is not None}
    # --site, else the project's default site, else $HPCEM_SITE, else localhost
    site_name = opts.get("site") or default_site_name(project.default_site)
    site = load_site(site_name)
    dispatch = opts.get("dispatch")
    if dispatch is None:  # a cluster site takes whole runs as jobs unless told otherwise
        dispatch = "job" if "queue" in opts or site.scheduler != "local" else "local"
    if dispatch == "local":
        if set(opts) & {"queue", "walltime", "nodes"}:
            raise ConfigError(
                "--queue/--walltime/--nodes need --dispatch job or parsl (or a --queue)"
            )
        # here, MPI steps use this machine's launcher, not the cluster's srun
        local_site = site.name if site.scheduler == "local" else "localhost"
        return {"mode": "local", "dispatch": "local", "site": local_site}
    queue = site.queue(opts.get("queue"))  # ConfigError naming the queues when unknown
    walltime_s = parse_walltime(opts["walltime"]) if "walltime" in opts else site.walltime_s
    resources = {
        "queue": queue.name,
        "walltime": format_walltime(walltime_s),
        "cores": int(opts.get("cores") or 1),
        "nodes": int(opts.get("nodes") or 1),
    }
    check_limits(
        site,
        queue,
        nodes=resources["nodes"],
        cores_per_node=resources["cores"],
        memory_mb=None,
        walltime_s=walltime_s,
        gpus=0,
    )
    execution = {"site": site.name, "resources": resources}
    if dispatch == "job":
        return {**execution, "mode": "job", "dispatch": "local"}
    parsl = {"max_blocks": int(opts.get("max_blocks") or 2)}
    if opts.get("cores"):  # the run asks for its workers: never a site's fixed number
        parsl["workers_per_node"] = int(opts["cores"])
    return {**execution, "mode": "local", "dispatch": "parsl", "parsl": parsl}
