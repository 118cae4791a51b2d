"""Time the Cython kernels against their numpy references and print JSON.

    python scripts/bench_kernels.py [--repeats N] [--profile] [--no-micrograph]

For each spectrum size it times the rotational average (and the elliptical one used by
the astigmatism search) with ``hpcem.kernels.radial`` and with the numpy reference, and
for context the other candidates for a kernel (2D CTF on the grid, tiled periodogram).

CTF kernels: the tiled periodogram (``ctf_periodogram``), the sector averages
(``radial.sector_average``) and the 2D model correlation (``ctf_score2d``), each against
its numpy reference. **CTF per micrograph** (``ctf_per_micrograph``): a simulated 4096²
float32 MRC file is read and fitted by each strategy (``ctf.estimate``'s
:func:`~hpcem.ctf.estimate.estimate_ctf`, ``ctf.fit2d``'s
:func:`~hpcem.ctf.fit2d.fit_ctf_2d`), reading included, on one core (BLAS and FFT
threads pinned to 1 before numpy is imported); the 2-core figure runs two such
micrographs in two processes at once and reports the wall time per micrograph.
``--profile`` also runs the defocus estimator once under cProfile on the 4096²
micrograph and adds the functions with the most own time.

Picking and extraction (issue 10) have their own scripts, each JSON on one core and each
with RELION side by side where RELION does the same job: ``bench_dog.py`` (DoG picking vs
``relion_autopick --LoG``), ``bench_template.py`` (template picking, 50 templates × 36
angles per 4096² micrograph), ``bench_extract.py`` (extraction vs ``relion_preprocess
--extract``) and ``bench_picking.py`` (consensus picking); figures in docs/benchmarks.md.
"""

from __future__ import annotations

import os

# One core: set before numpy (BLAS) is imported; scipy.fft uses one worker by default.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import cProfile
import json
import multiprocessing
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from hpcem.kernels.radial import radial_average

from hpcem.ctf.estimate import estimate_ctf, load_micrograph, tiled_power_spectrum
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


def bench_ctf_kernels(repeats: int) -> dict:
    """Each CTF kernel against its numpy reference, on realistic sizes."""
    import scipy.fft

    from hpcem.ctf import fit2d, spectrum
    from hpcem.ctf.radial_numpy import sector_average_numpy
    from hpcem.kernels import load

    out = {}
    rng = np.random.default_rng(1)
    periodogram = load("ctf_periodogram")
    if periodogram is not None:
        image = rng.standard_normal((1024, 4096)).astype(np.float32)
        starts = np.arange(0, 4096 - 1023, 1024, dtype=np.intp)
        taper = spectrum._taper(1024)
        rows = np.empty((len(starts), 1024, 1024), np.float32)
        ft = scipy.fft.rfft2(rows)
        total = np.zeros((1024, 513))

        def both(prep, acc):
            prep(image, 0, starts, taper, rows)
            acc(ft, total)

        c = _time(lambda: both(periodogram.prepare_tiles, periodogram.accumulate_power), repeats)
        n = _time(
            lambda: both(spectrum.prepare_tiles_numpy, spectrum.accumulate_power_numpy), repeats
        )
        out["periodogram_tiles_and_power_4x1024sq"] = {
            "numpy_s": n["median_s"],
            "cython_s": c["median_s"],
            "speedup": n["median_s"] / c["median_s"],
        }
    radial = load("radial")
    half = rng.random((601, 301))
    if radial is not None:
        c = _time(lambda: radial.sector_average(half, 300, 18, 300.0, 0.0), repeats)
        n = _time(lambda: sector_average_numpy(half, 300, 18, 300.0, 0.0), repeats)
        out["sector_average_601x301_18"] = {
            "numpy_s": n["median_s"],
            "cython_s": c["median_s"],
            "speedup": n["median_s"] / c["median_s"],
        }
    score = load("ctf_score2d")
    if score is not None:
        m = 100_000
        k2 = rng.uniform(1e-3, 0.06, m)
        az = rng.uniform(0, np.pi, m)
        args = (rng.standard_normal(m), k2, k2 * np.cos(2 * az), k2 * np.sin(2 * az), k2 * k2)
        coeffs = (930.0, 20.0, -10.0, 250.0, 0.1)
        c = _time(lambda: score.correlate(*args, *coeffs), repeats)
        n = _time(lambda: fit2d.correlate_numpy(*args, *coeffs), repeats)
        out["score2d_100k_pixels"] = {
            "numpy_s": n["median_s"],
            "cython_s": c["median_s"],
            "speedup": n["median_s"] / c["median_s"],
        }
    return out


def _fit_file(args: tuple[str, str]) -> dict:
    """Read and fit one micrograph file; (strategy, path) -> times and result."""
    strategy, path = args
    from hpcem.ctf.fit2d import fit_ctf_2d

    start = time.perf_counter()
    image, pixel = load_micrograph(path, 1.0)
    read_s = time.perf_counter() - start
    fit = (fit_ctf_2d if strategy == "fit2d" else estimate_ctf)(image, pixel)
    total = time.perf_counter() - start
    return {
        "total_s": total,
        "read_s": read_s,
        "defocus_u": fit["defocus_u"],
        "defocus_v": fit["defocus_v"],
        "defocus_angle": fit["defocus_angle"],
    }


def bench_ctf_per_micrograph(repeats: int) -> dict:
    """CTF of a 4096² MRC micrograph, reading included: one core, then two at once."""
    from hpcem.io import write_mrc

    truth = {"defocus_u": 15300.0, "defocus_v": 14700.0, "defocus_angle": 30.0}
    image, _ = simulate_micrograph(
        (4096, 4096), 1.0, truth["defocus_u"], truth["defocus_v"], 30.0, snr=0.1, seed=0
    )
    out = {
        "micrograph": "4096x4096 float32 MRC, 1.0 A/px, simulated (SNR 0.1), U/V/angle "
        "15300/14700 A/30 deg; times include reading the file",
        "truth": truth,
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(write_mrc(Path(tmp) / f"m{i}.mrc", image, 1.0)) for i in range(2)]
        for strategy in ("estimate", "fit2d"):
            _fit_file((strategy, paths[0]))  # warm-up (imports, page cache)
            runs = [_fit_file((strategy, paths[0])) for _ in range(repeats)]
            times = [r["total_s"] for r in runs]
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                pool.map(_fit_file, [(strategy, p) for p in paths])  # warm-up
                start = time.perf_counter()
                pool.map(_fit_file, [(strategy, p) for p in paths * repeats])
                wall = time.perf_counter() - start
            out[f"ctf.{strategy}"] = {
                "one_core_median_s": statistics.median(times),
                "one_core_min_s": min(times),
                "read_median_s": statistics.median(r["read_s"] for r in runs),
                "two_cores_wall_s_per_micrograph": wall / (2 * repeats),
                "result": {k: round(runs[0][k], 1) for k in truth},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-micrograph", action="store_true", help="skip the per-micrograph CTF timing"
    )
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
    report["ctf_kernels"] = bench_ctf_kernels(args.repeats)
    if not args.no_micrograph:
        report["ctf_per_micrograph"] = bench_ctf_per_micrograph(args.repeats)
    if args.profile:
        report["estimator_profile"] = profile_estimator()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
