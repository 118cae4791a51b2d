#!/usr/bin/env python
"""Benchmark the local dispatcher and ``hpcem status``.

1. A protocol of ``--steps`` independent trivial steps (``test.trivial`` from the test
   plugin) runs on the local executor, in the foreground of this process; the wall time
   minus an idle baseline gives the framework's overhead per step.
2. A project with ``--runs`` runs; ``hpcem status PROJECT`` is timed in fresh processes
   (the median of 5).

Prints one JSON object: {"steps", "wall_s", "overhead_ms_per_step", "status_s", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "tests" / "plugins"
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])


def bench_steps(tmp: Path, n_steps: int, workers: int) -> dict:
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.local import LocalExecutor
    from hpcem.store import Project

    project = Project.create(tmp / "dispatch")
    # Baseline: the same executor running the same trivial calls with no framework around.
    executor = LocalExecutor(workers).start()
    for _ in range(workers):  # warm the pool up
        executor.submit("hpcem_testplugin.protocols:trivial", {"i": 0}).result()
    t0 = time.perf_counter()
    futures = [executor.submit("hpcem_testplugin.protocols:trivial", {"i": i}) for i in range(n_steps)]
    for f in futures:
        f.result()
    bare_s = time.perf_counter() - t0
    executor.shutdown()

    run = lifecycle.create_run(project, "test.trivial", {"n": n_steps})
    t0 = time.perf_counter()
    lifecycle.launch(project, run.id, workers=workers, foreground=True)
    wall_s = time.perf_counter() - t0
    rec = project.run(run.id)
    if rec.state != "finished" or rec.steps_done != n_steps:
        raise SystemExit(f"dispatch run ended {rec.state} with {rec.steps_done}/{n_steps} steps: {rec.error}")
    return {"steps": n_steps, "workers": workers, "wall_s": round(wall_s, 3),
            "bare_executor_s": round(bare_s, 3),
            "overhead_ms_per_step": round(1000 * (wall_s - bare_s) / n_steps, 3)}


def bench_status(tmp: Path, n_runs: int) -> dict:
    from hpcem.store import Project

    project = Project.create(tmp / "status")
    for i in range(n_runs):
        run = project.create_run("test.trivial", label=f"run {i}", params={"n": 10})
        project.begin_attempt(run.id, ("saved",))
        project.transition(run.id, ("launched",), "running", attempt=1, started=time.time() - 60)
        project.set_output(run.id, "particles", "hpcem.SetOfParticles", 1000 * i, attempt=1)
        project.controller_commit(run.id, 1, state="finished", steps_done=10, steps_total=10,
                                  attempt_fields={"ended": time.time(), "outcome": "finished"})
    hpcem = [sys.executable, "-c", "import sys; from hpcem.cli.main import main; sys.exit(main())"]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = subprocess.run(hpcem + ["status", str(project.path)], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
    rows = [line for line in out.stdout.splitlines() if "finished" in line]
    if len(rows) != n_runs:
        raise SystemExit(f"status listed {len(rows)} finished runs, expected {n_runs}")
    return {"runs": n_runs, "status_s": round(statistics.median(times), 3),
            "status_min_s": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcem-bench-") as tmp:
        result = bench_steps(Path(tmp), args.steps, args.workers)
        result.update(bench_status(Path(tmp), args.runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
