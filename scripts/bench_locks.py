"""How long the project lock is held while a run works (issue 7: locks are held for the
commit, not for the work).

A probe process tries the project lock in a tight loop while a real run (a controller
with 2 workers, ``--steps`` steps of ``--sleep-s``) goes from start to end, and reports
the longest and the total time it found the lock taken, and how many times. Also the
cost of one progress commit (``controller_commit`` without a transition: the run's own
file, not the index) and of one transition (the index). Prints one JSON line.

    python scripts/bench_locks.py [--steps 200] [--sleep-s 0.05]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "tests" / "plugins"


def probe(project_path: str, stop_file: str, result_file: str) -> None:
    from hpcem.store.locks import FileLock

    lock = FileLock(Path(project_path) / ".hpcem" / "locks" / "project.lock", "probe")
    longest = total = 0.0
    holds = 0
    since = None
    tries = 0
    while not os.path.exists(stop_file):
        tries += 1
        try:
            lock.acquire(0)
            lock.release()
            if since is not None:
                held = time.monotonic() - since
                longest, total, holds = max(longest, held), total + held, holds + 1
            since = None
        except Exception:  # noqa: BLE001 - LockedError: taken by someone else
            since = since or time.monotonic()
        time.sleep(0.0005)
    Path(result_file).write_text(
        json.dumps(
            {"longest_hold_s": longest, "total_held_s": total, "holds_seen": holds, "tries": tries}
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sleep-s", type=float, default=0.05)
    args = parser.parse_args()
    sys.path.insert(0, str(PLUGINS))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    from hpcem.execution import runs as lifecycle
    from hpcem.store import Project

    tmp = Path(tempfile.mkdtemp(prefix="hpcem-bench-locks-"))
    project = Project.create(tmp / "proj")
    out = tmp / "out"
    out.mkdir()
    stop_file, result_file = tmp / "stop", tmp / "probe.json"
    p = mp.get_context("spawn").Process(
        target=probe, args=(str(project.path), str(stop_file), str(result_file))
    )
    p.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": args.steps, "sleep_s": args.sleep_s}
    )
    lifecycle.launch(project, run.id, workers=2)
    while lifecycle.effective_state(project.run(run.id)) in ("launched", "running"):
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    stop_file.write_text("")
    p.join(30)
    result = json.loads(result_file.read_text())
    if project.run(run.id).state != "finished":
        raise SystemExit(f"run ended {project.run(run.id).state}: {project.run(run.id).error}")

    # one progress commit vs one transition, in this process
    r2 = project.create_run("test.trivial", params={"n": 1})
    project.begin_attempt(r2.id, ("saved",))
    project.transition(r2.id, ("launched",), "running", attempt=1)
    n = 50
    t = time.perf_counter()
    for k in range(n):
        project.controller_commit(r2.id, 1, steps_done=k, heartbeat=time.time())
    progress_ms = 1000 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    for k in range(n):
        project.set_label(r2.id, f"label {k}")
    index_ms = 1000 * (time.perf_counter() - t) / n
    print(
        json.dumps(
            {
                "steps": args.steps,
                "run_wall_s": round(wall, 2),
                "longest_lock_hold_ms": round(1000 * result["longest_hold_s"], 1),
                "lock_held_total_ms": round(1000 * result["total_held_s"], 1),
                "lock_holds_seen": result["holds_seen"],
                "progress_commit_ms": round(progress_ms, 2),
                "index_commit_ms": round(index_ms, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
