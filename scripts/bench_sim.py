"""Time the simulator and print one JSON line.

    python scripts/bench_sim.py [--sizes 1024 4096] [--repeats 3] [--quick]

Measured, each as the median and the fastest of ``--repeats`` runs after a warm-up (FFT
plans, imports, the volume's 3D transform built once, as a dataset does):

* ``micrograph_<size>``: one micrograph of the shipped model (PDB 7DDO, 1 Å/px,
  particles covering 25 % of the area, SNR 0.1) — the blob phantom of the older
  simulator is timed too at 1024 px (``blobs_1024``), as the figure its target was set on;
* ``movie_1024x24``: a 24-frame 1024² movie (smooth drift, dose decay, Poisson counts);
* ``projections_1000_box128``: 1000 projections of a 128³ map (the model at 1.1 Å/px)
  at random orientations, with the one-off 3D FFT of the volume apart
  (``projector_setup_box128_s``).

This was a timed test once, and is a benchmark now, since a shared test machine cannot
time anything reliably. Targets: a 1024² blob micrograph under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

TARGET_1024_S = 0.5


def _timed(fn, repeats: int) -> dict:
    fn(0)  # warm-up
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        fn(seed)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def main() -> int:
    from hpcem.sim import simulate_micrograph, simulate_movie
    from hpcem.sim.projection import random_orientations
    from hpcem.sim.specimen import n_particles_for_fill
    from hpcem.sim.volume import load_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, 1024 px only")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [1024], 1
    result: dict = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
    }
    volume = load_volume(None, 1.0)
    start = time.perf_counter()
    volume.projector()
    result["projector_setup_s"] = round(time.perf_counter() - start, 3)
    for size in args.sizes:
        shape = (size, size)
        n = n_particles_for_fill(shape, volume.diameter_A, 0.25)
        result[f"micrograph_{size}"] = _timed(
            lambda seed, shape=shape, n=n: simulate_micrograph(
                shape, 1.0, 20000.0, 19000.0, 30.0, n_particles=n, volume=volume, seed=seed
            ),
            args.repeats,
        ) | {"particles": n}
    result["blobs_1024"] = _timed(lambda seed: simulate_micrograph(seed=seed), args.repeats)
    result["target_1024_s"] = TARGET_1024_S
    result["blobs_meet_target_1024"] = result["blobs_1024"]["median_s"] < TARGET_1024_S
    n_movie = n_particles_for_fill((1024, 1024), volume.diameter_A, 0.25)
    result["movie_1024x24"] = _timed(
        lambda seed: simulate_movie(
            (1024, 1024),
            24,
            1.0,
            1.5,
            (0.2, 0.1),
            0.0,
            n_particles=n_movie,
            volume=volume,
            drift_model="smooth",
            early_drift_px=(4.0, 2.0),
            dose_decay=True,
            seed=seed,
        ),
        args.repeats,
    )
    box128 = load_volume(None, 1.1, box_px=128)
    start = time.perf_counter()
    projector = box128.projector()
    result["projector_setup_box128_s"] = round(time.perf_counter() - start, 3)
    angles = random_orientations(np.random.default_rng(0), 1000)
    result["projections_1000_box128"] = _timed(lambda seed: projector.project(angles), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
