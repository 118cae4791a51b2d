#!/usr/bin/env python
"""Benchmark the project store with a realistic refined particle set.

Writes N particles (image location, CTF, acquisition/optics, orientation + shifts,
coordinate, micrograph id, class id) to a fresh project, reopens it in a new process,
reads all columns, runs a range query on defocus and writes a 50% subset as a new set.
Prints one JSON object. Usage: ``python scripts/bench_store.py --n 1000000``.
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
from pathlib import Path

import numpy as np

from hpcem.store import Project

PARTICLES_PER_MICROGRAPH = 200


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_particles(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of a refined particle set: particles grouped by micrograph stacks."""
    rng = np.random.default_rng(seed)
    n_mic = max(1, n // PARTICLES_PER_MICROGRAPH)
    mic = np.sort(rng.integers(0, n_mic, n))
    stacks = np.array([f"Extract/job012/Movies/FoilHole_{i:08d}_Data.mrcs" for i in range(n_mic)],
                      dtype=object)
    # image_index = position within its micrograph's stack
    first = np.searchsorted(mic, np.arange(n_mic))
    image_index = np.arange(n) - first[mic]
    mic_def = rng.uniform(8000, 32000, n_mic)
    astig = rng.uniform(0, 800, n_mic)
    return {
        "image": stacks[mic],
        "image_index": image_index.astype(np.int32),
        "micrograph_id": mic.astype(np.int64),
        "coord_x": rng.uniform(0, 4096, n).astype(np.float32),
        "coord_y": rng.uniform(0, 4096, n).astype(np.float32),
        "coord_score": rng.random(n, dtype=np.float32),
        "defocus_u": (mic_def[mic] + astig[mic] / 2 + rng.normal(0, 50, n)).astype(np.float32),
        "defocus_v": (mic_def[mic] - astig[mic] / 2 + rng.normal(0, 50, n)).astype(np.float32),
        "defocus_angle": rng.uniform(0, 180, n_mic)[mic].astype(np.float32),
        "ctf_fit_resolution": rng.uniform(2.5, 8, n_mic)[mic].astype(np.float32),
        "ctf_fit_score": rng.random(n_mic)[mic].astype(np.float32),
        "rot": rng.uniform(-180, 180, n).astype(np.float32),
        "tilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))).astype(np.float32),
        "psi": rng.uniform(-180, 180, n).astype(np.float32),
        "shift_x": rng.normal(0, 2, n).astype(np.float32),
        "shift_y": rng.normal(0, 2, n).astype(np.float32),
        "class_id": rng.integers(1, 11, n).astype(np.int32),
        "weight": np.ones(n, dtype=np.float32),
        "half_set": (rng.integers(0, 2, n) + 1).astype(np.int8),
        "optics_group": np.ones(n, dtype=np.int32),
    }


OPTICS = {"optics_group": [1], "name": ["opticsGroup1"], "voltage_kV": [300.0],
          "spherical_aberration_mm": [2.7], "amplitude_contrast": [0.1],
          "pixel_size_A": [1.06], "dose_per_frame_e_A2": [1.2], "magnification": [105000.0]}


def write(path: Path, n: int) -> tuple[float, int, int]:
    cols = make_particles(n)
    project = Project.create(path)
    run = project.create_run("hpcem.bench", label="refined particles")
    t0 = time.perf_counter()
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles",
                                inputs=["0:micrographs"], step="bench")
    writer.set_optics(OPTICS)
    writer.append_columns(cols)
    writer.close()
    write_s = time.perf_counter() - t0
    set_dir = project.open_set(run.id, "particles").path
    size = sum(f.stat().st_size for f in set_dir.iterdir())
    return write_s, size, run.id


def read_child(path: str, run_id: int) -> dict:
    """Runs in a fresh process: reopen, read all columns, query, subset."""
    t0 = time.perf_counter()
    project = Project.open(path)
    particles = project.runs[0].outputs["particles"]
    t1 = time.perf_counter()
    cols = particles.read_columns()
    t2 = time.perf_counter()
    mask = particles.where("defocus_u between 15000 and 25000")
    t3 = time.perf_counter()
    half = particles.where("half_set == 1")
    sub = particles.subset(half)
    writer = project.create_set(run_id, "half1", "hpcem.SetOfParticles",
                                inputs=[f"{run_id}:particles"], step="subset")
    writer.set_optics(particles.optics)
    writer.append_columns(sub)
    writer.close()
    t4 = time.perf_counter()
    cold = project.open_set(run_id, "particles")  # fresh snapshot: query reads its column
    t5 = time.perf_counter()
    cold.where("defocus_u between 15000 and 25000")
    t6 = time.perf_counter()
    if len(cols["id"]) != len(particles):
        raise RuntimeError(f"read {len(cols['id'])} rows, expected {len(particles)}")
    return {"reopen_s": t1 - t0, "read_all_s": t2 - t1, "query_s": t3 - t2,
            "subset_s": t4 - t3, "query_cold_s": t6 - t5, "query_rows": int(mask.sum()), "subset_rows": int(half.sum()),
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of particles")
    ap.add_argument("--dir", default=None, help="where to make the project (default: tmp)")
    ap.add_argument("--child", nargs=2, metavar=("PROJECT", "RUN_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(read_child(args.child[0], int(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="hpcem-bench-") as tmp:
        path = Path(tmp) / "project"
        write_s, size, run_id = write(path, args.n)
        out = subprocess.run([sys.executable, __file__, "--child", str(path), str(run_id)],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": "0"})
        child = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"n": args.n, "write_s": round(write_s, 3),
              "reopen_s": round(child["reopen_s"], 3), "read_all_s": round(child["read_all_s"], 3),
              "query_s": round(child["query_s"], 3), "subset_s": round(child["subset_s"], 3),
              "bytes_per_item": round(size / args.n, 1),
              "peak_rss_mb": round(max(peak_rss_mb(), child["peak_rss_mb"]), 1),
              "query_cold_s": round(child["query_cold_s"], 3),
              "query_rows": child["query_rows"], "subset_rows": child["subset_rows"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
