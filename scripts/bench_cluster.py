#!/usr/bin/env python3
"""Benchmark hpcem's Parsl dispatch on a site (default: the local SLURM).

Runs N independent steps of D seconds each through :class:`ParslExecutor` and prints one
JSON line:
  steps, duration_s, slots (nodes that ran steps x workers per node; each block is one
  whole node), first_result_s (from start),
  wall_s (from start to the last result), ideal_s = steps x duration / slots,
  busy_s = wall_s - first_result_s + duration (the time from when the first step started),
  overhead_pct = 100 x (busy_s - ideal_s) / ideal_s, status_calls (scheduler status
  commands issued by the provider), jobs (blocks submitted).
Needs the site's scheduler to be up (bash scripts/start-slurm.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from hpcem.cluster.site import load_site
from hpcem.errors import HpcemError
from hpcem.execution.parsl_executor import ParslExecutor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--site", default="local-slurm")
    ap.add_argument("--queue", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--duration", type=float, default=0.5, help="seconds per step")
    ap.add_argument("--blocks", type=int, default=4, help="blocks (one node each)")
    ap.add_argument("--workers-per-node", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        site = load_site(args.site)
        queue = site.queue(args.queue)
        workers = args.workers_per_node or queue.cores_per_node
        with tempfile.TemporaryDirectory(prefix="hpcem-bench-", dir="/tmp") as run_dir:
            ex = ParslExecutor(
                site,
                queue=queue.name,
                max_blocks=args.blocks,
                init_blocks=args.blocks,
                workers_per_node=workers,
                run_dir=run_dir,
                max_idletime_s=5,
            )
            t0 = time.monotonic()
            ex.start()
            futures = [
                ex.submit(
                    "hpcem.cluster.diagnostics:sleep_step",
                    {"seconds": args.duration, "index": i},
                    {},
                )
                for i in range(args.steps)
            ]
            first = None
            nodes = set()
            for fut in _as_completed(futures):
                result = fut.result()["result"]
                nodes.add(result["node"])
                if first is None:
                    first = time.monotonic() - t0
            wall = time.monotonic() - t0
            status_calls, jobs = ex.status_calls, len(ex.job_ids())
            ex.shutdown()
    except HpcemError as exc:
        print(f"bench_cluster: error: {exc}", file=sys.stderr)
        return 1
    # slots that really worked: blocks that got a node (another user's job may hold one)
    slots = len(nodes) * workers
    ideal = args.steps * args.duration / slots
    busy = wall - first + args.duration
    print(
        json.dumps(
            {
                "steps": args.steps,
                "duration_s": args.duration,
                "slots": slots,
                "blocks_requested": args.blocks,
                "first_result_s": round(first, 3),
                "wall_s": round(wall, 3),
                "ideal_s": round(ideal, 3),
                "busy_s": round(busy, 3),
                "overhead_pct": round(100 * (busy - ideal) / ideal, 2),
                "status_calls": status_calls,
                "jobs": jobs,
                "nodes": sorted(nodes),
            }
        )
    )
    return 0


def _as_completed(futures):
    import concurrent.futures

    return concurrent.futures.as_completed(futures)


if __name__ == "__main__":
    sys.exit(main())
