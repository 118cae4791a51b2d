"""Benchmark of classify.class2d against RELION 3.1 relion_refine 2D, in the same run.

Simulated particles of the shipped model (7DDO) from ``--views`` distinct views, random
in-plane rotations and shifts (±2 px), a CTF each, SNR 0.1; hpcem's run is a real
``classify.class2d`` run in a temporary project with ``--ranks`` MPI ranks; RELION runs
``relion_refine`` (CPU, ``--j ranks``) for the same number of iterations. Prints one
JSON object: both times, their ratio, and both qualities (purity against the true views,
mean correlation of each class average with the clean projection of its view after a
brute-force in-plane alignment written in the tests).

    python scripts/bench_classify.py                      # 2,000 x 96 px, K = 10, 10 it.
    python scripts/bench_classify.py --n 400 --box 64 --no-relion
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "science"))

from test_classify2d import class_quality, relion_class2d, simulate_particles


def particle_set(project, folder: Path, data: dict, pixel_A: float) -> str:
    """A finished run holding the simulated particles as output ``particles``."""
    from hpcem.io import write_mrc

    images = data["images"]
    n, box, _ = images.shape
    stack = write_mrc(folder / "parts.mrcs", images, pixel_A, kind="stack", overwrite=True)
    run = project.create_run("test.particles", "simulated particles")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(
        {
            "optics_group": [1],
            "voltage_kV": [300.0],
            "spherical_aberration_mm": [2.7],
            "amplitude_contrast": [0.1],
            "pixel_size_A": [pixel_A],
            "image_size_px": [box],
        }
    )
    writer.append_columns(
        {
            "image": [str(stack)] * n,
            "image_index": np.arange(n),
            **{k: data["ctf"][k] for k in ("defocus_u", "defocus_v", "defocus_angle")},
        }
    )
    writer.close()
    project.set_output(run.id, "particles", "hpcem.SetOfParticles", n)
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:particles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--pixel", type=float, default=2.5, help="Å/px")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--no-relion", action="store_true")
    args = parser.parse_args()

    import mrcfile

    from hpcem.execution import runs as lifecycle
    from hpcem.store import Project

    data = simulate_particles(
        n=args.n, box=args.box, pixel_A=args.pixel, n_views=args.views, snr=0.1, seed=0
    )
    diameter = 0.8 * args.box
    out: dict = {
        "particles": args.n,
        "box_px": args.box,
        "classes": args.classes,
        "iterations": args.iterations,
        "ranks": args.ranks,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        project = Project.create(folder / "proj")
        ref = particle_set(project, folder, data, args.pixel)
        params = {
            "n_classes": args.classes,
            "iterations": args.iterations,
            "ranks": args.ranks,
            "mask_diameter_A": diameter * args.pixel,
            "seed": 1,
        }
        run = lifecycle.create_run(project, "classify.class2d", params, {"particles": [ref]})
        start = time.perf_counter()
        lifecycle.launch(project, run.id, foreground=True)
        seconds = time.perf_counter() - start
        rec = project.run(run.id)
        if rec.state != "finished":
            raise SystemExit(f"classify.class2d run failed: {rec.error}")
        particles = project.open_set(run.id, "particles")
        classes = project.open_set(run.id, "classes")
        averages = mrcfile.read(classes.column("representative")[0])
        steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
        ours = class_quality(particles.column("class_id") - 1, averages, data, diameter)
        out["hpcem"] = {
            "seconds": round(seconds, 1),
            "iterations_run": steps["classify"]["result"]["iterations_run"],
            "converged": steps["classify"]["result"]["converged"],
            "purity": round(ours[0], 3),
            "average_correlation": round(ours[1], 3),
        }
        # hpcem's half now (RELION may take long on a busy machine)
        print(json.dumps({"hpcem": out["hpcem"]}), file=sys.stderr, flush=True)
        if not args.no_relion:
            cls, relion_averages, relion_s = relion_class2d(
                data["images"],
                data["ctf"],
                args.pixel,
                args.classes,
                folder / "relion",
                iterations=args.iterations,
                threads=args.ranks,
            )
            # RELION's CTF is -1 x hpcem's: its averages of these images are inverted
            theirs = class_quality(cls, -relion_averages, data, diameter)
            out["relion"] = {
                "seconds": round(relion_s, 1),
                "purity": round(theirs[0], 3),
                "average_correlation": round(theirs[1], 3),
            }
            out["time_ratio_relion_over_hpcem"] = round(relion_s / seconds, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
