"""Benchmark of classify.class2d against RELION 3.1 relion_refine 2D, in the same run.

Simulated particles of the shipped model (7DDO) from ``--views`` distinct views, random
in-plane rotations and shifts (±2 px), a CTF each, SNR 0.1. hpcem, on ``--ranks`` MPI
ranks (``mpiexec.gforker``, one thread each):

* ``hpcem``: a real ``classify.class2d`` run in a temporary project (prepare, classify,
  register), stopping when fewer than 1 % of the particles change class;
* ``hpcem_fixed``: the same step body on the run's particle table for exactly
  ``--iterations`` iterations (the work RELION does), and with ``--exhaustive`` the same
  again with the exhaustive search (every class at every angle) for comparison;
* ``relion``: ``relion_refine`` (CPU, ``--j ranks``) for ``--iterations`` iterations.

Prints one JSON object: wall seconds, CPU seconds (per rank for hpcem, the children's
for RELION), where hpcem's CPU time goes, the machine's load average at start and end,
the ratios, and both qualities (purity against the true views, mean correlation of
each class average with the clean projection of its view after a brute-force in-plane
alignment written in the tests).

    python scripts/bench_classify.py                      # 2,000 x 96 px, K = 10, 10 it.
    python scripts/bench_classify.py --n 400 --box 64 --no-relion
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def fixed_iterations(project, run_id: int, ranks: int, two_stage: bool, name: str) -> dict:
    """The run's ``classify`` step body again, on ``ranks`` MPI ranks, for all its
    iterations (no early stop); returns the step's result, its wall time seen from here
    and the class/averages files."""
    from hpcem.cluster.site import load_site
    from hpcem.execution.mpi import run_mpi_step

    steps = {s["name"]: s for s in project.read_steps(run_id).to_records()}
    args = dict(steps["classify"]["args"])
    args |= {
        "out_dir": f"{args['out_dir']}_{name}",
        "use_mpi": ranks > 1,
        "stop_when_converged": False,
        "two_stage": two_stage,
    }
    if ranks > 1:
        if shutil.which("mpiexec.gforker") is None:
            raise SystemExit("mpiexec.gforker is not on PATH (activate .venv-tests)")
        start = time.perf_counter()
        result = run_mpi_step(
            load_site("localhost"),
            "hpcem.classify.mpi:classify_step",
            args,
            ranks=ranks,
            workdir=project.path,
            name=f"bench-{name}",
        )
    else:
        from hpcem.classify.mpi import classify_step

        cwd = os.getcwd()
        os.chdir(project.path)
        try:
            start = time.perf_counter()
            result = classify_step(**args)
        finally:
            os.chdir(cwd)
    result["seen_wall_s"] = round(time.perf_counter() - start, 2)
    return result


def summary(result: dict, quality, seconds: float | None = None) -> dict:
    cpu = result["cpu_s_per_rank"]
    split = {
        k: round(sum(r[k] for r in result["cpu_s_split_per_rank"]), 2)
        for k in result["cpu_s_split_per_rank"][0]
    }
    return {
        "wall_s": round(seconds if seconds is not None else result["seen_wall_s"], 1),
        "step_wall_s": result["wall_s"],
        "cpu_s_per_rank": cpu,
        "cpu_s_total": round(sum(cpu), 1),
        "cpu_s_split_all_ranks": split,
        "iterations_run": result["iterations_run"],
        "converged": result["converged"],
        "purity": round(quality[0], 3),
        "average_correlation": round(quality[1], 3),
    }


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
    parser.add_argument("--exhaustive", action="store_true", help="also time the exhaustive search")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"

    import mrcfile

    from hpcem.execution import runs as lifecycle
    from hpcem.store import Project

    out: dict = {
        "particles": args.n,
        "box_px": args.box,
        "classes": args.classes,
        "iterations": args.iterations,
        "ranks": args.ranks,
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_start": _load(),
    }
    data = simulate_particles(
        n=args.n, box=args.box, pixel_A=args.pixel, n_views=args.views, snr=0.1, seed=0
    )
    diameter = 0.8 * args.box

    def quality_of(project, result: dict):
        found = np.load(project.path / result["assignment"])
        averages = mrcfile.read(project.path / result["averages"])
        return class_quality(found["class"], averages, data, diameter)

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
        steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
        result = steps["classify"]["result"]
        out["hpcem"] = summary(result, quality_of(project, result), seconds)
        out["hpcem"]["backend"] = result["backend"]
        fixed = fixed_iterations(project, run.id, args.ranks, True, "fixed")
        out["hpcem_fixed"] = summary(fixed, quality_of(project, fixed))
        if args.exhaustive:
            full = fixed_iterations(project, run.id, args.ranks, False, "exhaustive")
            out["hpcem_fixed_exhaustive"] = summary(full, quality_of(project, full))
        out["load_average_after_hpcem"] = _load()
        # hpcem's half now (RELION may take long on a busy machine)
        print(json.dumps(out), file=sys.stderr, flush=True)
        if not args.no_relion:
            before = os.times()
            cls, relion_averages, relion_s = relion_class2d(
                data["images"],
                data["ctf"],
                args.pixel,
                args.classes,
                folder / "relion",
                iterations=args.iterations,
                threads=args.ranks,
            )
            after = os.times()
            cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            # RELION's CTF is -1 x hpcem's: its averages of these images are inverted
            theirs = class_quality(cls, -relion_averages, data, diameter)
            out["relion"] = {
                "wall_s": round(relion_s, 1),
                "cpu_s": round(cpu, 1),
                "threads": args.ranks,
                "iterations_run": args.iterations,
                "purity": round(theirs[0], 3),
                "average_correlation": round(theirs[1], 3),
            }
            fixed_s = out["hpcem_fixed"]
            out["ratio_relion_over_hpcem_fixed"] = {
                "wall": round(relion_s / fixed_s["wall_s"], 2),
                "cpu": round(cpu / fixed_s["cpu_s_total"], 2),
            }
    out["load_average_end"] = _load()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
