"""Time the micrograph simulator and print one JSON line.

    python scripts/bench_sim.py [--sizes 1024 2048 4096] [--repeats 5]

For each size: the median and the fastest of ``--repeats`` simulations (after a warm-up
that builds FFT plans and imports), with particles as in the tests. The target for a
1024² micrograph is under 0.5 s; this was a timed test once, and is a
benchmark now, since a shared test machine cannot time anything reliably.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from hpcem.sim import simulate_micrograph

TARGET_1024_S = 0.5


def bench_size(size: int, repeats: int) -> dict:
    simulate_micrograph((size, size), seed=0)  # warm-up
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        simulate_micrograph((size, size), seed=seed)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result: dict = {"python": platform.python_version(), "repeats": args.repeats}
    for size in args.sizes:
        result[f"micrograph_{size}"] = bench_size(size, args.repeats)
    if "micrograph_1024" in result:
        result["target_1024_s"] = TARGET_1024_S
        result["meets_target_1024"] = result["micrograph_1024"]["median_s"] < TARGET_1024_S
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
