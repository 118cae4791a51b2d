#!/usr/bin/env python
"""Benchmark the local dispatcher and ``hpcem status``.

1. Protocols of ``--steps`` and of 30,000 independent trivial steps (``test.trivial``
   from the test plugin) run on the local executor, in the foreground of this process;
   the wall time minus the bare executor's gives the framework's overhead per step, and
   every controller commit is timed (target at 30,000 steps: overhead <= 1 ms per step,
   progress-commit time independent of the number of steps).
2. Projects of ``--runs`` and of 5,000 finished runs; ``hpcem status PROJECT`` is timed
   in fresh processes against a bare ``python -c 'import h5py'`` (target at 5,000 runs:
   at most 1.3 times that). The two alternate in one loop (``--repeats`` each, medians),
   so that the load of a shared machine falls on both alike. Both run with their
   bytecode cached, as an installed hpcem and h5py do (an editable checkout under
   PYTHONDONTWRITEBYTECODE=1 would compile hpcem's sources in every process: that
   figure is printed too, ``*_compiling``). ``hpcem status`` runs numpy with one
   OpenBLAS thread; the bare import with the same setting is printed as well.

Prints one JSON object: {"steps", "wall_s", "overhead_ms_per_step", "status_s", ...}.
``--only status`` runs the second part alone.
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

    project = Project.create(tmp / f"dispatch-{n_steps}")
    # Baseline: the same executor running the same trivial calls with no framework around.
    executor = LocalExecutor(workers).start()
    for _ in range(workers):  # warm the pool up
        executor.submit("hpcem_testplugin.protocols:trivial", {"i": 0}).result()
    t0 = time.perf_counter()
    futures = [
        executor.submit("hpcem_testplugin.protocols:trivial", {"i": i}) for i in range(n_steps)
    ]
    for f in futures:
        f.result()
    bare_s = time.perf_counter() - t0
    executor.shutdown()

    # time every controller commit of the run (it runs in this process: foreground)
    from hpcem.store.project import Project as ProjectClass

    commits: list[tuple[float, bool]] = []  # (seconds, with a transition)
    real_commit = ProjectClass.controller_commit

    def timed_commit(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return real_commit(self, *args, **kwargs)
        finally:
            commits.append(
                (
                    time.perf_counter() - t,
                    kwargs.get("state") is not None or kwargs.get("steps") is not None,
                )
            )

    ProjectClass.controller_commit = timed_commit
    try:
        run = lifecycle.create_run(project, "test.trivial", {"n": n_steps})
        t0 = time.perf_counter()
        lifecycle.launch(project, run.id, workers=workers, foreground=True)
        wall_s = time.perf_counter() - t0
    finally:
        ProjectClass.controller_commit = real_commit
    rec = project.run(run.id)
    if rec.state != "finished" or rec.steps_done != n_steps:
        raise SystemExit(
            f"dispatch run ended {rec.state} with {rec.steps_done}/{n_steps} steps: {rec.error}"
        )
    progress = sorted(t for t, whole in commits if not whole)
    return {
        f"steps_{n_steps}": {
            "workers": workers,
            "wall_s": round(wall_s, 3),
            "bare_executor_s": round(bare_s, 3),
            "overhead_ms_per_step": round(1000 * (wall_s - bare_s) / n_steps, 3),
            "progress_commits": len(progress),
            "progress_commit_median_ms": round(1000 * statistics.median(progress), 2)
            if progress
            else None,
            "progress_commit_max_ms": round(1000 * progress[-1], 2) if progress else None,
            "plan_and_end_commits_ms": [round(1000 * t, 1) for t, whole in commits if whole],
        }
    }


def _finished_project(path: Path, n_runs: int):
    """A project of ``n_runs`` finished runs. The first 50 go through the real run
    operations; the rest are copies of those records written in one index commit (5,000
    separate commits would make the set-up, not the command, the slow part)."""
    import dataclasses

    import numpy as np

    from hpcem.store import Project
    from hpcem.store import project as store_project

    project = Project.create(path)
    for i in range(min(n_runs, 50)):
        run = project.create_run("test.trivial", label=f"run {i}", params={"n": 10})
        project.begin_attempt(run.id, ("saved",))
        project.transition(run.id, ("launched",), "running", attempt=1, started=time.time() - 60)
        project.set_output(run.id, "particles", "hpcem.SetOfParticles", 1000 * i, attempt=1)
        project.controller_commit(
            run.id,
            1,
            state="finished",
            steps_done=10,
            steps_total=10,
            attempt_fields={"ended": time.time(), "outcome": "finished"},
        )
    if n_runs > 50:
        model = project.runs
        rows = [store_project._record_row(r) for r in model]
        for i in range(50, n_runs):
            rec = dataclasses.replace(
                model[i % 50], id=i + 1, label=f"run {i}", output_sizes={"particles": 1000 * i}
            )
            rows.append(store_project._record_row(rec))
        with project._index_lock():
            attrs, _ = project._read_index(fresh=True)
            attrs["next_run_id"] = n_runs + 1
            cols = {
                name: np.array([r[name] for r in rows], dtype=object if t == "str" else t)
                for name, t in (*store_project.RUN_COLUMNS, *store_project.SUMMARY_COLUMNS)
            }
            project._write_index(attrs, cols)
    return project


def _timed_runs(commands: dict, repeats: int, env: dict) -> dict[str, list[float]]:
    """Wall seconds of each command (name -> argv), run in turns ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env.get(name))
            times[name].append(time.perf_counter() - t0)
    return times


def _check_rows(argv: list[str], n_rows: int, env: dict) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    rows = [line for line in out.stdout.splitlines() if "finished" in line]
    if len(rows) != n_rows:
        raise SystemExit(f"status listed {len(rows)} finished runs, expected {n_rows}")


def bench_status(tmp: Path, sizes: list[int], repeats: int) -> dict:
    """``hpcem status`` on projects of ``sizes`` finished runs against a bare h5py import,
    alternating; with cached bytecode and, for comparison, compiling every time."""
    hpcem = [sys.executable, "-c", "import sys; from hpcem.cli.main import main; sys.exit(main())"]
    bare = [sys.executable, "-c", "import h5py"]
    commands = {"bare_import_h5py": bare, "bare_import_h5py_1thread": bare}
    for n in sizes:
        project = _finished_project(tmp / f"status-{n}", n)
        commands[f"status_{n}"] = [*hpcem, "status", str(project.path)]
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")  # not in the checkout
    compiling = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    compiling.pop("PYTHONPYCACHEPREFIX", None)
    result: dict = {"status_repeats": repeats}
    for mode, env in (("", cached), ("_compiling", compiling)):
        envs = {name: env for name in commands}
        envs["bare_import_h5py_1thread"] = {**env, "OPENBLAS_NUM_THREADS": "1"}
        for n in sizes:  # the check run also writes the bytecode (cached mode)
            _check_rows(commands[f"status_{n}"], n, env)
        _timed_runs(commands, 1, envs)  # warm-up: bytecode written, files in the page cache
        times = _timed_runs(commands, repeats, envs)
        for name, ts in times.items():
            result[f"{name}{mode}_s"] = round(statistics.median(ts), 3)
            result[f"{name}{mode}_min_s"] = round(min(ts), 3)
        for ref in ("bare_import_h5py", "bare_import_h5py_1thread"):
            result[f"status_5000_over_{ref}{mode}"] = round(
                result[f"status_5000{mode}_s"] / result[f"{ref}{mode}_s"], 2
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=21, help="runs of each status timing")
    parser.add_argument("--only", choices=["dispatch", "status"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcem-bench-") as tmp:
        result = {}
        if args.only != "status":
            for n in sorted({args.steps, 30000}):
                result.update(bench_steps(Path(tmp), n, args.workers))
        if args.only != "dispatch":
            result.update(bench_status(Path(tmp), sorted({args.runs, 5000}), args.repeats))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
