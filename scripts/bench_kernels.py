"""Time the Cython kernels against their numpy references and print JSON.

    python scripts/bench_kernels.py [--repeats N] [--profile]

For each spectrum size it times the rotational average (and the elliptical one used by
the astigmatism search) with ``hpcem.kernels.radial`` and with the numpy reference, and
for context the other candidates for a kernel (2D CTF on the grid, tiled periodogram).
``--profile`` also runs the defocus estimator once under cProfile on a simulated
4096² micrograph and adds the functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import statistics
import time

import numpy as np
from hpcem.kernels.radial import radial_average

from hpcem.ctf.estimate import estimate_ctf, tiled_power_spectrum
from hpcem.ctf.model import ctf_2d
from hpcem.ctf.radial_numpy import radial_average_numpy
from hpcem.sim import simulate_micrograph


def _time(func, repeats: int) -> dict:
    func()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def bench_radial(size: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    spectrum = rng.random((size, size))
    centre = size / 2
    out = {}
    for label, extra in (("rotational", ()), ("elliptical", (1.05, 0.95, 0.5))):
        args = (size // 2, centre, centre, *extra)
        numpy_t = _time(lambda a=args: radial_average_numpy(spectrum, *a), repeats)
        cython_t = _time(lambda a=args: radial_average(spectrum, *a), repeats)
        agree = float(
            np.abs(
                radial_average(spectrum, *args)[0] - radial_average_numpy(spectrum, *args)[0]
            ).max()
        )
        out[label] = {
            "numpy_s": numpy_t["median_s"],
            "cython_s": cython_t["median_s"],
            "speedup": numpy_t["median_s"] / cython_t["median_s"],
            "max_abs_diff": agree,
        }
    out["ctf_2d_numpy_s"] = _time(
        lambda: ctf_2d((size, size), 1.0, 15000.0, 14000.0, 30.0, centered=True), repeats
    )["median_s"]
    return out


def profile_estimator(top: int = 12) -> dict:
    image, _ = simulate_micrograph((4096, 4096), 1.0, 15000.0, 14000.0, 30.0, seed=0)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    estimate_ctf(image, 1.0)
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{filename.rsplit('/', 1)[-1]}:{line}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    periodogram = _time(lambda: tiled_power_spectrum(image, 512), 1)["median_s"]
    return {
        "micrograph": "4096x4096 simulated, astigmatic",
        "total_s": round(total, 3),
        "tiled_periodogram_s": round(periodogram, 3),
        "top_by_own_time": rows[:top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    report = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "radial_average": {
            f"{size}x{size}": bench_radial(size, args.repeats) for size in (1024, 4096)
        },
    }
    if args.profile:
        report["estimator_profile"] = profile_estimator()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
