#!/usr/bin/env python
"""Benchmark the project store with a realistic refined particle set.

Writes N particles (image location, CTF, acquisition/optics, orientation + shifts,
coordinate, micrograph id, class id) to a fresh project, reopens it in a new process,
reads all columns, runs a range query on defocus and writes a 50% subset as a new set.
Prints one JSON object. Usage: ``python scripts/bench_store.py --n 1000000``.

``--appends 1000`` instead streams that many appends of ``--rows`` (300) particles into
one set, once with the old compaction (merge every segment when there are more than 16)
and once with the size-tiered one, and prints total, mean and worst append time of each.

``--steps 1000,10000,30000`` instead times a step-table commit that changed one record,
at each size: the old whole-table rewrite (``StepTable.from_records`` of every record +
``write_steps_file``, what the controller did) against ``append_steps`` of that record
(mean and worst over ``--commits`` commits, plus the fold of the log into the base and
its share per record), and the merged read of the largest table.
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

from hpcem.store import Project, StepTable
from hpcem.store import steps as st

PARTICLES_PER_MICROGRAPH = 200


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_particles(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of a refined particle set: particles grouped by micrograph stacks."""
    rng = np.random.default_rng(seed)
    n_mic = max(1, n // PARTICLES_PER_MICROGRAPH)
    mic = np.sort(rng.integers(0, n_mic, n))
    stacks = np.array(
        [f"Extract/job012/Movies/FoilHole_{i:08d}_Data.mrcs" for i in range(n_mic)], dtype=object
    )
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


OPTICS = {
    "optics_group": [1],
    "name": ["opticsGroup1"],
    "voltage_kV": [300.0],
    "spherical_aberration_mm": [2.7],
    "amplitude_contrast": [0.1],
    "pixel_size_A": [1.06],
    "dose_per_frame_e_A2": [1.2],
    "magnification": [105000.0],
}


def write(path: Path, n: int) -> tuple[float, int, int]:
    cols = make_particles(n)
    project = Project.create(path)
    run = project.create_run("hpcem.bench", label="refined particles")
    t0 = time.perf_counter()
    writer = project.create_set(
        run.id, "particles", "hpcem.SetOfParticles", inputs=["0:micrographs"], step="bench"
    )
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
    writer = project.create_set(
        run_id, "half1", "hpcem.SetOfParticles", inputs=[f"{run_id}:particles"], step="subset"
    )
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
    return {
        "reopen_s": t1 - t0,
        "read_all_s": t2 - t1,
        "query_s": t3 - t2,
        "subset_s": t4 - t3,
        "query_cold_s": t6 - t5,
        "query_rows": int(mask.sum()),
        "subset_rows": int(half.sum()),
        "peak_rss_mb": peak_rss_mb(),
    }


# --- streaming appends: old vs tiered compaction -----------------------------------------
def _old_compaction(writer) -> None:
    """The policy before tiering: merge every segment once there are more than 16."""
    if len(writer._m.segments) > 16:
        writer.compact()


def bench_appends(root: Path, n_appends: int, rows: int) -> dict:
    """Both policies stream the same batches, interleaved (the order alternating), so a
    shared machine's noise falls on both alike."""
    cols = make_particles(n_appends * rows, seed=1)
    out: dict = {"appends": n_appends, "rows_per_append": rows}
    writers, times = {}, {}
    for policy in ("old", "tiered"):
        project = Project.create(root / f"appends-{policy}")
        run = project.create_run("hpcem.bench", label=f"streaming, {policy} compaction")
        w = project.create_set(run.id, "particles", "hpcem.SetOfParticles", step="bench")
        w.set_optics(OPTICS)
        if policy == "old":
            w._maybe_compact = lambda w=w: _old_compaction(w)
        w._merge_tail = _counting(w, w._merge_tail)
        writers[policy], times[policy] = w, []
    for k in range(n_appends):
        batch = {name: col[k * rows : (k + 1) * rows] for name, col in cols.items()}
        for policy in ("old", "tiered") if k % 2 else ("tiered", "old"):
            t0 = time.perf_counter()
            writers[policy].append_columns(batch)
            times[policy].append(time.perf_counter() - t0)
    for policy, w in writers.items():
        segments = len(w._m.segments)
        w.close()
        t = np.array(times[policy])
        out[policy] = {
            "total_s": round(float(t.sum()), 3),
            "per_append_ms": round(float(t.mean()) * 1e3, 2),
            "median_ms": round(float(np.median(t)) * 1e3, 2),
            "worst_ms": round(float(t.max()) * 1e3, 1),
            "last_100_ms": round(float(t[-100:].mean()) * 1e3, 2),
            "merges": w.merges,
            "rows_rewritten": w.rows_rewritten,
            "segments_at_end": segments,
        }
    return out


def _counting(writer, merge_tail):
    """Wrap a writer's merge to count merges and the rows they rewrite."""
    writer.merges = writer.rows_rewritten = 0

    def counted(start: int) -> None:
        tail = writer._m.segments[start:]
        if len(tail) > 1:
            writer.merges += 1
            writer.rows_rewritten += sum(r for _, r in tail)
        merge_tail(start)

    return counted


# --- step-table commits: whole rewrite vs the step log ---------------------------------------
def step_records(n: int) -> list[dict]:
    """Step records like a 1-movie-per-step run's: hashes, paths, JSON results."""
    recs = []
    for i in range(n):
        done = i % 2 == 0
        recs.append(
            {
                "id": f"{i:064x}",
                "name": f"motioncorr_{i:06d}",
                "func": "hpcem.protocols.motion:correct",
                "state": "finished" if done else "waiting",
                "deps": [],
                "args": {
                    "movie": f"Movies/FoilHole_{i:08d}_Data_fractions.tiff",
                    "patch": [5, 5],
                    "dose_per_frame_e_A2": 1.2,
                    "bin": 1,
                },
                "started": 1.7e9 + i if done else None,
                "ended": 1.7e9 + i + 30 if done else None,
                "host": "node017" if done else "",
                "exit_code": 0 if done else None,
                "job_id": "4711" if done else "",
                "attempts": int(done),
                "result": {"micrograph": f"MotionCorr/mic_{i:08d}.mrc", "shift_A": 12.5}
                if done
                else None,
            }
        )
    return recs


def _touch(rec: dict, k: int) -> dict:
    return dict(
        rec,
        state="finished",
        started=1.8e9 + k,
        ended=1.8e9 + k + 30,
        host="node001",
        exit_code=0,
        attempts=int(rec["attempts"]) + 1,
        result={"k": k},
    )


def bench_steps(root: Path, sizes: list[int], commits: int) -> dict:
    out: dict = {"commits": commits}
    path = None
    for n in sizes:
        run_dir = root / "steps" / "runs" / f"{n:06d}"
        run_dir.mkdir(parents=True)
        path = run_dir / "steps.h5"
        records = step_records(n)
        st.write_steps_file(path, 1, StepTable.from_records(records))
        old = []
        for k in range(5):
            records[(k * 7919) % n] = _touch(records[(k * 7919) % n], k)
            t0 = time.perf_counter()
            st.write_steps_file(path, 1, StepTable.from_records(records))
            old.append(time.perf_counter() - t0)
        new = []
        for k in range(commits):
            i = (k * 7919) % n
            records[i] = _touch(records[i], k)
            t0 = time.perf_counter()
            st.append_steps(path, 1, [records[i]])
            new.append(time.perf_counter() - t0)
        deltas = len([p for p in run_dir.iterdir() if st.DELTA_RE.match(p.name)])
        t0 = time.perf_counter()
        st.compact_steps(path, 1)
        fold = time.perf_counter() - t0
        t = np.array(new)
        out[str(n)] = {
            "old_rewrite_ms": round(float(np.median(old)) * 1e3, 1),
            "append_mean_ms": round(float(t.mean()) * 1e3, 2),
            "append_median_ms": round(float(np.median(t)) * 1e3, 2),
            "append_worst_ms": round(float(t.max()) * 1e3, 1),
            "deltas_after": deltas,
            "fold_ms": round(fold * 1e3, 1),
            "fold_share_ms_per_record": round(fold / n * 1e3, 3),
        }
        if n == max(sizes):
            # the merged read of a log as a controller leaves it: base + a chain of deltas
            for k in range(commits):
                i = (k * 104729) % n
                records[i] = _touch(records[i], commits + k)
                st.append_steps(path, 1, [records[i]])
            deltas = len([p for p in run_dir.iterdir() if st.DELTA_RE.match(p.name)])
            reads = []
            for _ in range(5):
                t0 = time.perf_counter()
                table = st.read_steps_file(path, 1)
                reads.append(time.perf_counter() - t0)
            if table != StepTable.from_records(records):
                raise RuntimeError("merged step table differs from the records committed")
            st.compact_steps(path, 1)
            base_reads = []
            for _ in range(5):
                t0 = time.perf_counter()
                st.read_steps_file(path, 1)
                base_reads.append(time.perf_counter() - t0)
            out["read"] = {
                "steps": n,
                "deltas": deltas,
                "merged_read_ms": round(float(np.median(reads)) * 1e3, 1),
                "base_only_read_ms": round(float(np.median(base_reads)) * 1e3, 1),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of particles")
    ap.add_argument("--dir", default=None, help="where to make the project (default: tmp)")
    ap.add_argument(
        "--appends",
        type=int,
        default=0,
        help="stream this many appends into one set (old vs tiered compaction)",
    )
    ap.add_argument("--rows", type=int, default=300, help="rows per append with --appends")
    ap.add_argument(
        "--steps", default="", help="step-table sizes to time commits at, e.g. 1000,10000,30000"
    )
    ap.add_argument(
        "--commits", type=int, default=300, help="1-record commits timed per size with --steps"
    )
    ap.add_argument("--child", nargs=2, metavar=("PROJECT", "RUN_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(read_child(args.child[0], int(args.child[1]))))
        return
    if args.appends or args.steps:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="hpcem-bench-") as tmp:
            if args.appends:
                print(json.dumps(bench_appends(Path(tmp), args.appends, args.rows)))
            if args.steps:
                sizes = [int(x) for x in args.steps.split(",") if x]
                print(json.dumps(bench_steps(Path(tmp), sizes, args.commits)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="hpcem-bench-") as tmp:
        path = Path(tmp) / "project"
        write_s, size, run_id = write(path, args.n)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path), str(run_id)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "n": args.n,
        "write_s": round(write_s, 3),
        "reopen_s": round(child["reopen_s"], 3),
        "read_all_s": round(child["read_all_s"], 3),
        "query_s": round(child["query_s"], 3),
        "subset_s": round(child["subset_s"], 3),
        "bytes_per_item": round(size / args.n, 1),
        "peak_rss_mb": round(max(peak_rss_mb(), child["peak_rss_mb"]), 1),
        "query_cold_s": round(child["query_cold_s"], 3),
        "query_rows": child["query_rows"],
        "subset_rows": child["subset_rows"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
