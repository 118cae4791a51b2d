#!/usr/bin/env python
"""Benchmark template picking (:func:`hpcem.picking.template.pick_micrograph`) on one core.

One simulated micrograph (``--size`` px, default 4096², 1 Å/px, SNR 0.1, shipped 7DDO
model, true CTF) is made before the clock starts; ``--templates`` projections of the
simulator's own map (default 50: the angular step is chosen so that the sphere gets that
many directions) × 360 / ``--inplane-step-deg`` in-plane angles (default 36) are searched.
Times ``--repeats`` whole picks (binning, rotation, CTF, NCC search, peaks) with the Cython
kernels and as many with the numpy references (alternating), and each stage once; pinned
to one CPU with one thread for BLAS/OpenMP (the FFTs use one worker).

Prints one JSON object: size_px, pixel_size_A, templates, inplane_angles, correlations,
binned_px, seconds (wall, min of the repeats), cpu_seconds (this process's CPU time, which
a busy machine disturbs less), the same for the numpy references, stages (wall seconds),
load_average_1min, picks, f1/precision/recall against the simulator's truth, backends.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import math
import time
import warnings

import numpy as np

DIAMETER_A = 150.0
OPTICS = {"voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def step_for(n_templates: int) -> float:
    """Angular step (deg) whose Fibonacci sphere has ``n_templates`` directions."""
    return math.degrees(math.sqrt(4.0 * math.pi / n_templates))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--pixel-size-A", type=float, default=1.0)
    ap.add_argument("--templates", type=int, default=50)
    ap.add_argument("--inplane-step-deg", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    warnings.simplefilter("ignore")

    from hpcem.protocols.picking_template import DEFAULT_THRESHOLD

    from hpcem.kernels import backend
    from hpcem.picking import template as tp
    from hpcem.picking.evaluate import match_picks
    from hpcem.picking.peaks import find_peaks
    from hpcem.sim import simulate_micrograph
    from hpcem.sim.dataset import DatasetConfig, dataset_volume
    from hpcem.sim.specimen import n_particles_for_fill

    px = args.pixel_size_A
    config = DatasetConfig(kind="micrographs", pixel_size_A=px)
    volume = dataset_volume(config)
    shape = (args.size, args.size)
    n = n_particles_for_fill(shape, volume.diameter_A / px, 0.25)
    image, truth = simulate_micrograph(
        shape, px, 20000.0, 19400.0, 35.0, n_particles=n, snr=0.1, seed=args.seed, volume=volume
    )
    ctf = {"defocus_u": 20000.0, "defocus_v": 19400.0, "defocus_angle": 35.0} | OPTICS
    work_A = tp.working_pixel_size_A(DIAMETER_A, px, 20.0)
    box = tp.template_box_px(DIAMETER_A / work_A)
    step = step_for(args.templates)
    stack, _ = tp.volume_templates(volume, step, work_A, box)
    kw = {"threshold": DEFAULT_THRESHOLD, "inplane_step_deg": args.inplane_step_deg}

    # Kernels and numpy references alternate, so that a busy machine hits both alike.
    runs, cpu, numpy_runs, numpy_cpu = [], [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        picks = tp.pick_micrograph(image, px, stack, work_A, DIAMETER_A, ctf, **kw)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        tp.pick_micrograph(image, px, stack, work_A, DIAMETER_A, ctf, use_kernel=False, **kw)
        numpy_runs.append(time.perf_counter() - t0)
        numpy_cpu.append(time.process_time() - c0)

    # Stages, once each (the same calls pick_micrograph makes).
    stages = {}
    t0 = time.perf_counter()
    binned, binned_A, _ = tp.bin_micrograph(image, px, work_A, 20.0)
    stages["bin_micrograph"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_px = DIAMETER_A / binned_A
    rotated, psi = tp.inplane_rotations(tp.resample_templates(stack, work_A, binned_A, box), 10.0)
    stages["rotate_templates"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    filtered = tp.filter_templates(rotated, binned_A, 20.0, ctf)
    stages["ctf_filter_templates"] = time.perf_counter() - t0
    mask = tp.disc_mask(box, 0.5 * d_px)
    t0 = time.perf_counter()
    tp.local_inverse_sigma(binned, mask)
    stages["local_sigma"] = time.perf_counter() - t0
    band = 1.2 * binned_A / 20.0
    t0 = time.perf_counter()
    score, _, _ = tp.ncc_search(binned, filtered, mask, max_frequency=band)
    stages["ncc_search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    find_peaks(score, 0.8 * d_px, threshold=DEFAULT_THRESHOLD, border_px=math.ceil(0.4 * d_px))
    stages["find_peaks"] = time.perf_counter() - t0

    coords = np.asarray(truth["coordinates_px"], dtype=np.float64).reshape(-1, 2)
    score = match_picks(picks["xy"], coords, 0.5 * DIAMETER_A / px)
    print(
        json.dumps(
            {
                "size_px": args.size,
                "pixel_size_A": px,
                "templates": len(stack),
                "angular_step_deg": round(step, 3),
                "inplane_angles": len(psi),
                "correlations": len(stack) * len(psi),
                "binned_px": list(binned.shape),
                "binned_pixel_A": round(binned_A, 4),
                "seconds": round(min(runs), 3),
                "seconds_all": [round(s, 3) for s in runs],
                "cpu_seconds": round(min(cpu), 3),
                "cpu_seconds_all": [round(s, 3) for s in cpu],
                "seconds_numpy": round(min(numpy_runs), 3),
                "cpu_seconds_numpy": round(min(numpy_cpu), 3),
                "cpu_seconds_numpy_all": [round(s, 3) for s in numpy_cpu],
                "load_average_1min": round(os.getloadavg()[0], 2),
                "stages": {k: round(v, 3) for k, v in stages.items()},
                "particles": len(coords),
                "picks": len(picks["xy"]),
                "precision": round(score["precision"], 4),
                "recall": round(score["recall"], 4),
                "f1": round(score["f1"], 4),
                "backends": {"ncc": backend("ncc"), "peaks": backend("peaks")},
                "threshold": DEFAULT_THRESHOLD,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
