#!/usr/bin/env python
"""Benchmark :func:`hpcem.refine.projmatch.refine` (the body of ``refine.projmatch``).

Particles: ``--n`` (default 1,000) CTF-modulated projections of the shipped 7DDO model,
``--box`` (64) px at ``--pixel-size-A`` (2.8), SNR ``--snr`` (0.1), random poses and
shifts (±2 px) (:mod:`hpcem.reconstruct.simulate`); the initial model is the true map
low-passed to 30 Å. The refinement runs ``--iterations`` (5) with one and with two
threads (``--threads``, e.g. ``1,2``). Per run: wall and CPU seconds, seconds per
particle per iteration, the median angular error against the true poses, the gold-
standard resolution and the FSC = 0.5 resolution against the true map; per iteration
its search, step, cropped grid and candidates. Prints one JSON object. CPU seconds are
given beside wall seconds since the shared test machine is busy.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size-A", dest="pixel", type=float, default=2.8)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    from hpcem.reconstruct.fourier import relion_ctfs
    from hpcem.reconstruct.simulate import simulate_particles
    from hpcem.refine.orientations import rotation_angles_deg
    from hpcem.refine.projmatch import lowpass_map, refine
    from hpcem.sim.projection import euler_matrices
    from hpcem.sim.volume import load_volume
    from hpcem.validate.fsc import fsc_curve, resolution_at

    volume = load_volume(None, args.pixel, args.box)
    sim = simulate_particles(volume, args.n, snr=args.snr, seed=21, max_shift_px=2.0)
    ctfs = relion_ctfs(
        args.box,
        args.pixel,
        sim["defocus_u"],
        sim["defocus_v"],
        sim["defocus_angle"],
        300,
        2.7,
        0.1,
    )
    initial = lowpass_map(volume.data, args.pixel, 30.0)
    report = {"n": args.n, "box_px": args.box, "pixel_size_A": args.pixel, "runs": []}
    for threads in (int(t) for t in args.threads.split(",")):
        wall, cpu = time.perf_counter(), time.process_time()
        out = refine(
            sim["images"],
            ctfs,
            sim["half_set"],
            initial,
            args.pixel,
            iterations=args.iterations,
            threads=threads,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        errors = rotation_angles_deg(euler_matrices(out["angles"]), euler_matrices(sim["angles"]))
        freq, curve = fsc_curve(out["full"], volume.data, args.pixel)
        report["runs"].append(
            {
                "threads": threads,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "ms_per_particle_iteration": round(1e3 * wall / args.n / out["iterations_run"], 3),
                "median_angular_error_deg": round(float(np.median(errors)), 2),
                "gold_standard_A": round(out["resolution_A"], 2),
                "vs_truth_A": round(resolution_at(freq, curve, 0.5), 2),
                "iterations": [
                    {k: h[k] for k in ("search", "step_deg", "align_px", "candidates")}
                    for h in out["history"]
                ],
            }
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
