#!/usr/bin/env python
"""Benchmark the particle conversions: hpcem -> RELION 3.1 STAR -> hpcem, and hpcem ->
cryoSPARC ``.cs`` -> hpcem, for ``--particles`` particles (default 1,000,000).

The particles look like a real refinement (float32 columns as the store keeps them,
3,000 stacks and micrographs, 6 optics groups, CTF, angles, shifts, classes, half
sets). Each direction runs ``--repeats`` times, each time in a fresh Python process
(``--worker``) so that its peak memory (``ru_maxrss``) is its own: the process builds
the columns (or has the file), imports the modules, records its RSS, then converts under
the clock: wall seconds and the process's CPU seconds (on a shared machine the wall
time includes waiting for a core; the CPU time does not). A write step removes the file
of the previous repeat before the clock starts. ``starfile.read`` of the same STAR file
is timed the same way, for scale.

Prints one JSON object: particles, repeats, the load average before each step, the
file sizes, and for each step (``star_write``, ``star_read``, ``starfile_read``,
``cs_write``, ``cs_read``) ``seconds`` and ``cpu_seconds`` (``min``, ``median``, every
run), ``peak_rss_mb`` (the largest of the runs) and ``rss_before_mb``;
``star_read_vs_starfile`` (our read time / the starfile time, min and median, wall and
CPU); the round-trip errors of each read against the columns written
(``roundtrip_max_abs_error``: float columns; integer columns and image paths must be
equal); the targets (3 s per STAR direction, 0.5 s per .cs direction, 1.5 GB) and whether each
step met them (``targets_met``: by its minimum wall time, and by its minimum CPU time,
the fair figure on a busy machine; memory either way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_particles(n: int, seed: int = 0) -> tuple[dict, dict]:
    """hpcem PARTICLE columns and an optics table of ``n`` realistic particles."""
    rng = np.random.default_rng(seed)
    n_mics = 3000
    mic = np.sort(rng.integers(0, n_mics, n))
    stacks = np.asarray(
        [f"Extract/job012/Movies/FoilHole_{i:07d}_Data.mrcs" for i in range(n_mics)]
    )
    first = np.searchsorted(mic, mic)  # index of the first particle of each micrograph

    def f32(a):
        return np.asarray(a, dtype=np.float32)

    dfu = rng.uniform(8000, 30000, n_mics)[mic]
    cols = {
        "image": stacks.astype(object)[mic],
        "image_index": (np.arange(n) - first).astype(np.int32),
        "micrograph_id": (mic + 1).astype(np.int64),
        "coord_x": f32(rng.integers(100, 3900, n)),
        "coord_y": f32(rng.integers(100, 3900, n)),
        "coord_score": f32(rng.normal(0.5, 0.2, n)),
        "defocus_u": f32(dfu),
        "defocus_v": f32(dfu - rng.uniform(0, 600, n_mics)[mic]),
        "defocus_angle": f32(rng.uniform(-180, 180, n_mics)[mic]),
        "phase_shift": f32(np.zeros(n)),
        "ctf_fit_resolution": f32(rng.uniform(2.5, 6, n_mics)[mic]),
        "ctf_fit_score": f32(rng.uniform(0.05, 0.3, n_mics)[mic]),
        "rot": f32(rng.uniform(-180, 180, n)),
        "tilt": f32(rng.uniform(0, 180, n)),
        "psi": f32(rng.uniform(-180, 180, n)),
        "shift_x": f32(rng.normal(0, 2, n)),
        "shift_y": f32(rng.normal(0, 2, n)),
        "class_id": rng.integers(1, 51, n).astype(np.int32),
        "half_set": rng.integers(1, 3, n).astype(np.int8),
        "optics_group": (mic % 6 + 1).astype(np.int32),
    }
    optics = {
        "optics_group": np.arange(1, 7, dtype=np.int32),
        "name": np.asarray([f"opticsGroup{i}" for i in range(1, 7)], dtype=object),
        "voltage_kV": np.full(6, 300.0, dtype=np.float32),
        "spherical_aberration_mm": np.full(6, 2.7, dtype=np.float32),
        "amplitude_contrast": np.full(6, 0.1, dtype=np.float32),
        "pixel_size_A": np.full(6, 1.06, dtype=np.float32),
        "image_size_px": np.full(6, 256, dtype=np.int32),
    }
    return cols, optics


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Columns a particle .cs written without micrographs (as ``hpcem convert`` writes it)
#: does not carry: the location fields need the micrograph files and shapes.
NOT_IN_CS = ("micrograph_id", "coord_x", "coord_y", "coord_score")


def _roundtrip_errors(conv, n: int, skip: tuple = ()) -> dict:
    """Largest |read − written| of each float column (angles wrapped to ±180°) and the
    largest angle between the written and the read rotation (``rotation_deg``); integer
    columns and image paths must come back equal (AssertionError otherwise)."""
    from hpcem.convert.conventions import euler_zyz_to_matrix

    ref, _ = make_particles(n)
    errors = {}
    for k, v in ref.items():
        if k in skip:
            continue
        got = np.asarray(conv.columns[k])
        if np.asarray(v).dtype.kind == "f":
            diff = got - v.astype(np.float64)
            if k in ("rot", "psi"):
                diff = (diff + 180.0) % 360.0 - 180.0
            errors[k] = float(np.max(np.abs(diff)))
        elif k == "image":
            assert got.tolist() == v.tolist(), "image paths differ"
        else:
            assert np.array_equal(got, v), f"{k} differs"
    # near tilt 0 or 180° rot and psi alone are ill-defined (RELION puts the whole
    # in-plane angle in psi): the angle between the written and read rotations says more
    worst = 0.0
    for start in range(0, n, 100_000):
        sl = slice(start, start + 100_000)
        a = euler_zyz_to_matrix(*(ref[k][sl] for k in ("rot", "tilt", "psi")))
        b = euler_zyz_to_matrix(*(conv.columns[k][sl] for k in ("rot", "tilt", "psi")))
        frobenius = np.sqrt(np.sum((a - b) ** 2, axis=(1, 2)))  # = 2√2 sin(angle / 2)
        angle = 2.0 * np.arcsin(np.clip(frobenius / (2.0 * np.sqrt(2.0)), 0.0, 1.0))
        worst = max(worst, float(np.degrees(angle.max())))
    errors["rotation_deg"] = worst
    return errors


def worker(step: str, n: int, folder: str) -> dict:
    """One timed step in this (fresh) process."""
    star = os.path.join(folder, "particles.star")
    cs = os.path.join(folder, "particles.cs")
    names = {i: f"MotionCorr/job002/Movies/FoilHole_{i - 1:07d}_Data.mrc" for i in range(1, 3001)}
    if step in ("star_write", "cs_write"):
        cols, optics = make_particles(n)
        target = star if step == "star_write" else cs
        if os.path.exists(target):  # a new file each time: no truncation under the clock
            os.remove(target)
    # modules are imported before the clock: a one-time cost of the process, not of a
    # conversion (pandas alone takes about 0.5 s to import)
    import starfile

    from hpcem.convert import cryosparc, relion

    before = _rss_mb()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if step == "star_write":
        relion.write_particles(star, cols, optics, micrograph_names=names)
    elif step == "star_read":
        conv = relion.read_particles(star, micrograph_ids={v: k for k, v in names.items()})
    elif step == "starfile_read":
        starfile.read(star)
    elif step == "cs_write":
        cryosparc.write_particles_cs(cs, cols, optics)
    elif step == "cs_read":
        conv = cryosparc.read_particles_cs(cs)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    out["rss_before_mb"] = round(before, 1)
    if step in ("star_read", "cs_read"):
        skip = NOT_IN_CS if step == "cs_read" else ()
        out["roundtrip_max_abs_error"] = _roundtrip_errors(conv, n, skip)
    return out


def _summary(runs: list[dict]) -> dict:
    """Min, median and every value of the timings of repeated runs of one step."""
    out: dict = {}
    for key in ("seconds", "cpu_seconds"):
        values = [r[key] for r in runs]
        out[key] = {
            "min": min(values),
            "median": round(statistics.median(values), 3),
            "runs": values,
        }
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["rss_before_mb"] = max(r["rss_before_mb"] for r in runs)
    if "roundtrip_max_abs_error" in runs[-1]:
        out["roundtrip_max_abs_error"] = runs[-1]["roundtrip_max_abs_error"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per step")
    ap.add_argument("--no-star", action="store_true", help="skip the RELION STAR direction")
    ap.add_argument("--no-cs", action="store_true", help="skip the cryoSPARC .cs direction")
    ap.add_argument("--no-starfile", action="store_true", help="skip timing starfile.read")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.particles, args.folder)))
        return 0
    steps = [] if args.no_star else ["star_write", "star_read"]
    if not args.no_star and not args.no_starfile:
        steps.append("starfile_read")
    if not args.no_cs:
        steps += ["cs_write", "cs_read"]
    result: dict = {"particles": args.particles, "repeats": args.repeats, "loadavg": {}}
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as folder:
        for step in steps:
            argv_w = [sys.executable, os.path.abspath(__file__), "--worker", step]
            argv_w += ["--particles", str(args.particles), "--folder", folder]
            result["loadavg"][step] = round(os.getloadavg()[0], 2)
            runs = []
            for _ in range(args.repeats):
                done = subprocess.run(argv_w, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    result[step] = {"error": done.stderr.strip().splitlines()[-1:]}
                    break
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                result[step] = _summary(runs)
            for name, key in (("particles.star", "star_bytes"), ("particles.cs", "cs_bytes")):
                if step.endswith("_write") and os.path.exists(os.path.join(folder, name)):
                    result[key] = os.path.getsize(os.path.join(folder, name))
    ours, theirs = result.get("star_read", {}), result.get("starfile_read", {})
    if "seconds" in ours and "seconds" in theirs:
        result["star_read_vs_starfile"] = {
            f"{key}_{stat}": round(ours[key][stat] / theirs[key][stat], 3)
            for key in ("seconds", "cpu_seconds")
            for stat in ("min", "median")
        }
    targets = {"star_s": 3.0, "cs_s": 0.5, "peak_rss_mb": 1536}
    result["targets"] = targets
    met: dict = {"wall_min": {}, "cpu_min": {}}
    for step in steps:
        if "seconds" in result.get(step, {}) and step != "starfile_read":
            limit = targets["cs_s"] if step.startswith("cs") else targets["star_s"]
            memory_ok = result[step]["peak_rss_mb"] <= targets["peak_rss_mb"]
            for key, clock in (("wall_min", "seconds"), ("cpu_min", "cpu_seconds")):
                met[key][step] = result[step][clock]["min"] <= limit and memory_ok
    result["targets_met"] = met
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
