#!/usr/bin/env python
"""Benchmark DoG picking (``picking.dog``) on one core, side by side with RELION 3.1's LoG.

Simulates ``--n`` micrographs of 1536² px at 1 Å/px (PDB 7DDO, SNR 0.1, hpcem.sim) and
``--n-large`` of 4096² px, then times :func:`hpcem.picking.dog.pick_dog` at the defaults
(particle diameter = the model's, 131 Å): picking only (the image in memory; median of
``--repeats`` runs per micrograph) and with reading the file. The peak search is also
timed alone with its numpy reference and its Cython kernel, and the time is split into
its parts (FFT + DoG maps, exclusion test, peaks). ``relion_autopick --LoG`` (GUI
defaults: shrink 0, low-pass 20 Å, threshold 0; diameters 0.8-1.2x; ``--j 1``) runs on
the same 1536² micrographs through a STAR file; its wall time per micrograph includes
reading and writing (it has no in-memory mode). Both F1 scores are against the
simulator's truth (matched within half a diameter).

BLAS/OpenMP threads are pinned to 1 (and scipy.fft uses one worker). Prints one JSON
object; targets (issue 10): <= 0.1 s per 1536², <= 0.7 s per 4096².
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import functools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcem import kernels
from hpcem.io import read_image
from hpcem.picking import dog
from hpcem.picking.evaluate import match_picks, pooled, truth_xy
from hpcem.picking.peaks import find_peaks
from hpcem.sim.dataset import DatasetConfig, simulate_dataset


def _median_time(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_picking(folder: Path, truth: dict, repeats: int) -> dict:
    """Seconds per micrograph (median over micrographs of the median of ``repeats``) for
    picking only and with reading, the parts, the peak search by backend, and F1."""
    ps = truth["optics"]["pixel_size_A"]
    d_A = float(truth["volume"]["diameter_A"])
    only, with_read, parts, peaks_np, peaks_cy, scores = [], [], [], [], [], []
    for item in truth["items"]:
        path = folder / item["name"]
        image = read_image(path)
        dog.pick_dog(image, ps, d_A)  # warm-up (FFT plans, kernel import)
        only.append(_median_time(functools.partial(dog.pick_dog, image, ps, d_A), repeats))
        with_read.append(_median_time(lambda p=path: dog.pick_dog(read_image(p), ps, d_A), repeats))
        t0 = time.perf_counter()
        maps = dog.dog_maps(image, ps, d_A)
        t1 = time.perf_counter()
        mask, _ = dog.exclusion_mask(
            maps["lowpass"],
            round(dog.EXCLUSION_WINDOW_DIAMETERS * maps["diameter_px"]),
            dog.DEFAULT_EXCLUSION_SD,
        )
        t2 = time.perf_counter()
        parts.append((t1 - t0, t2 - t1))
        score = np.where(mask, maps["score"], np.nan)
        distance = dog.MIN_DISTANCE_DIAMETERS * maps["diameter_px"]
        for backend, out in (("numpy", peaks_np), ("cython", peaks_cy)):
            if backend == "cython" and kernels.load("peaks") is None:
                continue
            out.append(
                _median_time(
                    functools.partial(
                        find_peaks, score, distance, dog.DEFAULT_THRESHOLD, backend=backend
                    ),
                    repeats,
                )
            )
        picks = dog.pick_dog(image, ps, d_A)
        scores.append(match_picks(picks["xy"], truth_xy(truth, item["name"]), 0.5 * d_A / ps))
    s = pooled(scores)
    return {
        "micrographs": len(truth["items"]),
        "size_px": int(truth["config"]["size_px"]),
        "s_per_micrograph": round(float(np.median(only)), 4),
        "s_per_micrograph_with_reading": round(float(np.median(with_read)), 4),
        "s_dog_maps": round(float(np.median([p[0] for p in parts])), 4),
        "s_exclusion": round(float(np.median([p[1] for p in parts])), 4),
        "s_peaks_numpy": round(float(np.median(peaks_np)), 4),
        "s_peaks_cython": round(float(np.median(peaks_cy)), 4) if peaks_cy else None,
        "f1": round(s["f1"], 3),
        "precision": round(s["precision"], 3),
        "recall": round(s["recall"], 3),
    }


def run_relion_log(folder: Path, truth: dict) -> dict | None:
    """``relion_autopick --LoG`` on the set: seconds per micrograph (wall, --j 1), F1."""
    if shutil.which("relion_autopick") is None:
        return None
    ps = truth["optics"]["pixel_size_A"]
    d_A = float(truth["volume"]["diameter_A"])
    names = [item["name"] for item in truth["items"]]
    work = Path(tempfile.mkdtemp(prefix="relion_log_"))
    try:
        for name in names:
            (work / name).symlink_to(folder / name)
        (work / "micrographs.star").write_text(
            "data_optics\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
            "_rlnMicrographPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
            f"_rlnAmplitudeContrast #6\nopticsGroup1 1 {ps} 300 2.7 0.1\n\n"
            "data_micrographs\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n"
            + "".join(f"{name} 1\n" for name in names)
        )
        argv = [
            "relion_autopick",
            "--i",
            "micrographs.star",
            "--odir",
            "autopick/",
            "--pickname",
            "autopick",
            "--LoG",
            "--LoG_diam_min",
            str(0.8 * d_A),
            "--LoG_diam_max",
            str(1.2 * d_A),
            "--shrink",
            "0",
            "--lowpass",
            "20",
            "--LoG_adjust_threshold",
            "0",
            "--j",
            "1",
        ]
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=work, capture_output=True, check=False, timeout=1800)
        seconds = time.perf_counter() - t0
        import starfile

        scores = []
        for name in names:
            table = starfile.read(work / "autopick" / name.replace(".mrc", "_autopick.star"))
            xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
            scores.append(match_picks(xy, truth_xy(truth, name), 0.5 * d_A / ps))
        s = pooled(scores)
        return {
            "s_per_micrograph": round(seconds / len(names), 4),
            "f1": round(s["f1"], 3),
            "precision": round(s["precision"], 3),
            "recall": round(s["recall"], 3),
            "note": "wall time of the whole command / micrographs (reading, writing, start-up)",
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=5, help="1536² micrographs")
    ap.add_argument("--n-large", type=int, default=2, help="4096² micrographs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=31)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_dog_"))
    try:
        sets = {}
        for key, size, n, seed in (
            ("1536", 1536, args.n, args.seed),
            ("4096", 4096, args.n_large, args.seed + 1),
        ):
            if n < 1:
                continue
            cfg = DatasetConfig(
                kind="micrographs", n_items=n, size_px=size, pixel_size_A=1.0, seed=seed
            )
            sets[key] = (root / key, simulate_dataset(root / key, cfg))
        result = {
            "benchmark": "picking.dog",
            "threads": 1,
            "peaks_backend": kernels.backend("peaks"),
            "targets_s": {"1536": 0.1, "4096": 0.7},
        }
        for key, (folder, truth) in sets.items():
            result[f"dog_{key}"] = time_picking(folder, truth, args.repeats)
        if "1536" in sets:
            relion = run_relion_log(*sets["1536"])
            result["relion_log_1536"] = relion
            if relion:
                ours = result["dog_1536"]
                result["relion_over_dog_with_reading"] = round(
                    relion["s_per_micrograph"] / ours["s_per_micrograph_with_reading"], 2
                )
                result["relion_over_dog_picking_only"] = round(
                    relion["s_per_micrograph"] / ours["s_per_micrograph"], 2
                )
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
