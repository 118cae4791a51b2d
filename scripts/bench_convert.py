#!/usr/bin/env python
"""Benchmark the particle conversions: hpcem -> RELION 3.1 STAR -> hpcem, and hpcem ->
cryoSPARC ``.cs`` -> hpcem, for ``--particles`` particles (default 1,000,000).

The particles look like a real refinement (float32 columns as the store keeps them,
3,000 stacks and micrographs, 6 optics groups, CTF, angles, shifts, classes, half
sets). Each direction runs in a fresh Python process (``--worker``) so that its peak
memory (``ru_maxrss``) is its own: the process builds the columns (or has the file),
imports the modules, records its RSS, then converts under the clock (wall ``seconds``
and the process's ``cpu_seconds``: on a shared machine the wall time includes waiting
for a core). ``starfile.read`` of the same STAR file is timed the same way, for scale.

Prints one JSON object: particles, star_bytes, for each step (``star_write``,
``star_read``, ``starfile_read``, ``cs_write``, ``cs_read``) its ``seconds``,
``peak_rss_mb`` and ``rss_before_mb``; ``star_read_vs_starfile`` (our read time / the
starfile time); ``roundtrip_max_abs_error`` of the STAR round trip per float column;
targets (3 s per STAR direction, 0.5 s per .cs direction, 1.5 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def worker(step: str, n: int, folder: str) -> dict:
    """One timed step in this (fresh) process."""
    star = os.path.join(folder, "particles.star")
    cs = os.path.join(folder, "particles.cs")
    names = {i: f"MotionCorr/job002/Movies/FoilHole_{i - 1:07d}_Data.mrc" for i in range(1, 3001)}
    if step in ("star_write", "cs_write"):
        cols, optics = make_particles(n)
    # modules are imported before the clock: a one-time cost of the process, not of a
    # conversion (pandas alone takes about 0.5 s to import)
    import starfile

    from hpcem.convert import cryosparc, relion  # noqa: F401

    before = _rss_mb()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if step == "star_write":
        from hpcem.convert.relion import write_particles

        write_particles(star, cols, optics, micrograph_names=names)
    elif step == "star_read":
        from hpcem.convert.relion import read_particles

        conv = read_particles(star, micrograph_ids={v: k for k, v in names.items()})
    elif step == "starfile_read":
        import starfile

        starfile.read(star)
    elif step == "cs_write":
        from hpcem.convert.cryosparc import write_particles_cs

        write_particles_cs(cs, cols, optics)
    elif step == "cs_read":
        from hpcem.convert.cryosparc import read_particles_cs

        conv = read_particles_cs(cs)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    out["rss_before_mb"] = round(before, 1)
    if step == "star_read":
        ref, _ = make_particles(n)
        errors = {}
        for k, v in ref.items():
            if np.asarray(v).dtype.kind == "f":
                errors[k] = float(np.max(np.abs(np.asarray(conv.columns[k]) - v.astype(float))))
            elif k == "image":
                assert np.array_equal(conv.columns[k], v), "image paths differ"
            else:
                assert np.array_equal(np.asarray(conv.columns[k]), v), f"{k} differs"
        out["roundtrip_max_abs_error"] = errors
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--no-cs", action="store_true", help="skip the cryoSPARC .cs direction")
    ap.add_argument("--no-starfile", action="store_true", help="skip timing starfile.read")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.particles, args.folder)))
        return 0
    steps = ["star_write", "star_read"]
    if not args.no_starfile:
        steps.append("starfile_read")
    if not args.no_cs:
        steps += ["cs_write", "cs_read"]
    result: dict = {"particles": args.particles}
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as folder:
        for step in steps:
            argv_w = [sys.executable, os.path.abspath(__file__), "--worker", step]
            argv_w += ["--particles", str(args.particles), "--folder", folder]
            done = subprocess.run(argv_w, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                result[step] = {"error": done.stderr.strip().splitlines()[-1:]}
                continue
            result[step] = json.loads(done.stdout.strip().splitlines()[-1])
            if step == "star_write":
                result["star_bytes"] = os.path.getsize(os.path.join(folder, "particles.star"))
    if "seconds" in result.get("starfile_read", {}) and "seconds" in result.get("star_read", {}):
        result["star_read_vs_starfile"] = round(
            result["star_read"]["seconds"] / result["starfile_read"]["seconds"], 3
        )
    result["targets"] = {"star_s": 3.0, "cs_s": 0.5, "peak_rss_mb": 1536}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
