#!/usr/bin/env python
"""Benchmark ``reconstruct.fourier``'s code on one core, beside relion_reconstruct, and on
2 MPI ranks.

Particles: ``--n`` (default 2,000) CTF-modulated projections of the shipped 7DDO model,
``--box`` (96) px at ``--pixel-size-A`` (1.6), SNR ``--snr`` (0.05), known poses and
shifts (:mod:`hpcem.reconstruct.simulate`), written as an MRC stack and a RELION 3.1 STAR
file before any clock starts. Then, pinned to one CPU with one thread for BLAS/OpenMP:

* ``hpcem``: read the stack, CTFs, transforms, insertion (Cython kernel), Wiener
  division, gridding correction, write the map — one full map, as relion_reconstruct
  makes it; ``relion``: ``relion_reconstruct --ctf`` on the same particles in the same
  run (skipped when absent or with ``--skip-relion``); the time ratio and both maps'
  resolution at FSC = 0.5 against the true volume.
* ``insert_particles_per_s``: the kernel alone (transforms and CTFs ready) at box 96 and
  128.
* ``mpi``: the whole step body (two half maps, full map, FSC, files) on 1 and on
  ``--ranks`` ranks, unpinned, under ``srun --mpi=pmi2`` (site local-slurm) when the
  local SLURM answers, else ``mpiexec.gforker`` (site localhost); ``--launcher`` chooses.
  Speed-up of the wall time and of the insertion phase; the insertion's CPU time per
  rank (one rank's over the busiest rank's: the speed-up with a free core per rank,
  which a busy machine cannot show in wall time); the parallel fraction of the one-rank
  run (Amdahl: insertion CPU seconds over the wall time, the rest — start-up, reading
  the table, reduction, finishing the maps, FSC, files — being serial), the speed-up it
  allows, and the one these runs would show with a free core per rank. ``--mpi-n``
  particles (default ``--n``); ``--skip-serial`` skips the one-core part, ``--skip-mpi``
  this one.
* ``insertion_order``: the kernel's CPU seconds for ``--order-n`` (3,000) particles
  inserted in random order and in viewing-direction order (what the step does), in one
  process and in two processes at once (the memory-bound case of two ranks on a node).

Prints one JSON object. CPU seconds are given beside wall seconds since the shared test
machine is busy.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start) -> dict:
    wall, cpu = _clock()
    return {"wall_s": round(wall - start[0], 3), "cpu_s": round(cpu - start[1], 3)}


def _table(sim: dict, stack: str) -> dict:
    from hpcem.reconstruct.simulate import particle_columns

    columns, _ = particle_columns(sim, stack)
    n = len(sim["images"])
    return {
        "stack": columns["image"],
        "image_index": columns["image_index"],
        **{k: columns[k] for k in ("rot", "tilt", "psi", "shift_x", "shift_y")},
        **{k: columns[k] for k in ("defocus_u", "defocus_v", "defocus_angle")},
        "phase_shift": np.zeros(n),
        "half": columns["half_set"],
        "voltage_kV": np.full(n, sim["voltage_kV"]),
        "spherical_aberration_mm": np.full(n, sim["cs_mm"]),
        "amplitude_contrast": np.full(n, sim["amplitude_contrast"]),
    }


def hpcem_full_map(stack: str, sim: dict, out: str) -> None:
    """What is timed for hpcem: from the stack on disk to the map on disk."""
    from hpcem.io import read_image, write_mrc
    from hpcem.reconstruct import fourier

    images = read_image(stack)
    box, pixel = images.shape[-1], sim["pixel_size_A"]
    ctfs = fourier.relion_ctfs(
        box,
        pixel,
        sim["defocus_u"],
        sim["defocus_v"],
        sim["defocus_angle"],
        sim["voltage_kV"],
        sim["cs_mm"],
        sim["amplitude_contrast"],
    )
    shifts = np.stack([sim["shift_x"], sim["shift_y"]], axis=1)
    volume = fourier.reconstruct(images, sim["angles"], shifts, ctfs, pixel)
    write_mrc(out, volume, pixel, kind="volume", overwrite=True)


def insertion_rate(box: int, n: int, seed: int) -> dict:
    """Particles per second through the kernel alone at ``box``."""
    from hpcem.kernels import backend
    from hpcem.reconstruct.fourier import FourierAccumulator
    from hpcem.sim.projection import euler_matrices, random_orientations

    rng = np.random.default_rng(seed)
    ft = (rng.normal(size=(n, box, box // 2 + 1)) * (1 + 1j)).astype(np.complex64)
    ctf = rng.uniform(-1, 1, ft.shape).astype(np.float32)
    rot = euler_matrices(random_orientations(rng, n))
    acc = FourierAccumulator(box, 2)
    start = _clock()
    acc.insert(ft, ctf, rot)
    took = _since(start)
    return {
        "box_px": box,
        "particles": n,
        **took,
        "particles_per_s": round(n / took["wall_s"], 1),
        "particles_per_cpu_s": round(n / max(took["cpu_s"], 1e-9), 1),
        "backend": backend("backproject"),
    }


def _order_trial(box: int, n: int, seed: int, barrier=None, queue=None) -> dict | None:
    """Kernel CPU seconds of ``n`` particles in table (random) order and in
    viewing-direction order; with ``barrier``, both trials start together with the
    other process's, and the result goes to ``queue``."""
    from hpcem.reconstruct.fourier import FourierAccumulator, direction_order
    from hpcem.sim.projection import euler_matrices, random_orientations

    rng = np.random.default_rng(seed)
    ft = (rng.normal(size=(n, box, box // 2 + 1)) * (1 + 1j)).astype(np.complex64)
    ctf = rng.uniform(-1, 1, ft.shape).astype(np.float32)
    rot = euler_matrices(random_orientations(rng, n))
    found = {}
    for name, order in (("random", np.arange(n)), ("direction", direction_order(rot))):
        f, c, r = ft[order], ctf[order], rot[order]  # copies made before the clock
        acc = FourierAccumulator(box, 2)
        acc.grid.fill(0.0)  # touch the pages before the clock too
        if barrier is not None:
            barrier.wait()
        start = time.process_time()
        acc.insert(f, c, r)
        found[f"{name}_cpu_s"] = round(time.process_time() - start, 3)
    found["speedup"] = round(found["random_cpu_s"] / found["direction_cpu_s"], 2)
    if queue is None:
        return found
    queue.put(found)
    return None


def insertion_order(box: int, n: int, seed: int) -> dict:
    """The kernel's CPU time for ``n`` particles inserted in random order and in
    viewing-direction order (:func:`hpcem.reconstruct.fourier.direction_order`), in one
    process and in two processes at once (the memory-bound case: they share the memory
    bus and the last-level cache, as two MPI ranks on one node do)."""
    import multiprocessing

    report = {"box_px": box, "particles": n, "one_process": _order_trial(box, n, seed)}
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_order_trial, args=(box, n, seed + i, barrier, queue)) for i in range(2)
    ]
    for proc in procs:
        proc.start()
    report["two_processes_at_once"] = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return report


def resolution_vs_truth(path: str, truth: np.ndarray, pixel: float) -> float:
    from hpcem.io import read_image
    from hpcem.validate.fsc import REFERENCE_THRESHOLD, fsc_curve, resolution_at

    freq, curve = fsc_curve(read_image(path), truth, pixel)
    return round(resolution_at(freq, curve, REFERENCE_THRESHOLD), 3)


def run_relion(folder: Path, sim: dict, stack: str) -> dict:
    from hpcem.convert.relion import write_particles
    from hpcem.reconstruct.simulate import particle_columns

    columns, optics = particle_columns(sim, stack)
    write_particles(folder / "particles.star", columns, optics, root=folder)
    argv = ["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"]
    start = _clock()
    children = os.times()
    proc = subprocess.run(argv, cwd=folder, capture_output=True, text=True, check=False)
    took = _since(start)
    after = os.times()
    took["cpu_s"] = round(
        (after.children_user - children.children_user)
        + (after.children_system - children.children_system),
        3,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"relion_reconstruct failed: {proc.stderr[-500:]}")
    return {"argv": argv, **took}


def slurm_answers() -> bool:
    """Whether the local SLURM answers (``sinfo``)."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return False
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def mpi_speedup(folder: Path, table: str, ranks: int, launcher: str = "auto") -> dict:
    """The whole step body on 1 and on ``ranks`` ranks under ``srun --mpi=pmi2`` (site
    local-slurm; ``auto``: when SLURM answers) or ``mpiexec.gforker`` (site localhost).

    Besides the wall times, the CPU seconds of the insertion on each rank (the part that
    is split) give the parallel fraction of the one-rank run (Amdahl: insertion CPU over
    wall) and the speed-up the same runs would show with a free core per rank:
    one-rank wall over (its serial part + the busiest rank's insertion CPU)."""
    from hpcem.cluster.site import load_site
    from hpcem.execution.mpi import run_mpi_step

    if launcher == "auto":
        launcher = "srun" if slurm_answers() else "gforker"
    if launcher == "srun":
        site, how = load_site("local-slurm"), "srun --mpi=pmi2 -n R (site local-slurm)"
    elif shutil.which("mpiexec.gforker") is None:
        return {"skipped": "mpiexec.gforker is not on PATH and SLURM was not asked"}
    else:
        site, how = load_site("localhost"), "mpiexec.gforker -n R (site localhost)"
    options = {"symmetry": "C1", "pad": 2, "wiener": 0.001, "max_res_A": 0.0, "ctf": True}
    found = {}
    for r in (1, ranks):
        out = {k: str(folder / f"mpi{r}_{k}.mrc") for k in ("full", "half1", "half2")}
        out |= {"fsc": str(folder / f"mpi{r}_fsc.npz"), "plot": str(folder / f"mpi{r}.png")}
        load = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        result = run_mpi_step(
            site,
            "hpcem.reconstruct.mpi:reconstruct_step",
            {"table": table, "out": out, "options": options},
            ranks=r,
            workdir=folder / f"mpi{r}",
        )
        found[r] = {
            "wall_s": round(time.perf_counter() - start, 3),
            "insert_s": result["insert_s"],
            "insert_cpu_s_per_rank": result["insert_cpu_s_per_rank"],
            "finish_s": result["finish_s"],
            "resolution_A": round(result["resolution_A"], 3),
            "load_average_1min_before": load,
        }
    one, many = found[1], found[ranks]
    parallel_s = one["insert_cpu_s_per_rank"][0]
    serial_s = max(one["wall_s"] - parallel_s, 0.0)
    fraction = parallel_s / one["wall_s"]
    return {
        "launcher": how,
        "ranks": ranks,
        "one_rank": one,
        "n_ranks": many,
        "speedup_wall": round(one["wall_s"] / many["wall_s"], 2),
        "speedup_insert": round(one["insert_s"] / many["insert_s"], 2),
        # CPU seconds of the one rank over the busiest of the n ranks: the speed-up of the
        # insertion when every rank has a core of its own.
        "speedup_insert_cpu": round(parallel_s / max(many["insert_cpu_s_per_rank"]), 2),
        "parallel_fraction": round(fraction, 3),
        "serial_s": round(serial_s, 3),
        "amdahl_limit": round(1.0 / ((1.0 - fraction) + fraction / ranks), 2),
        "speedup_free_cores": round(
            one["wall_s"] / (serial_s + max(many["insert_cpu_s_per_rank"])), 2
        ),
    }


def serial_part(report: dict, args, folder: Path, sim: dict, stack: str, volume, all_cpus):
    """hpcem's full map and relion_reconstruct's on one pinned core, and the kernel's
    insertion rate, into ``report``."""
    if all_cpus:
        os.sched_setaffinity(0, {min(all_cpus)})
    start = _clock()
    hpcem_full_map(stack, sim, str(folder / "hpcem.mrc"))
    report["hpcem"] = _since(start)
    report["hpcem"]["resolution_vs_truth_A"] = resolution_vs_truth(
        str(folder / "hpcem.mrc"), volume.data, args.pixel_size_A
    )
    if not args.skip_relion and shutil.which("relion_reconstruct"):
        relion = run_relion(folder, sim, stack)
        relion["resolution_vs_truth_A"] = resolution_vs_truth(
            str(folder / "relion.mrc"), volume.data, args.pixel_size_A
        )
        report["relion"] = relion
        report["time_ratio_relion_over_hpcem"] = round(
            relion["wall_s"] / report["hpcem"]["wall_s"], 2
        )
        report["cpu_ratio_relion_over_hpcem"] = round(
            relion["cpu_s"] / max(report["hpcem"]["cpu_s"], 1e-9), 2
        )
    else:
        report["relion"] = {"skipped": "relion_reconstruct not run"}
    report["insert_particles_per_s"] = [
        insertion_rate(96, 500, args.seed),
        insertion_rate(128, 500, args.seed),
    ]
    if all_cpus:
        os.sched_setaffinity(0, all_cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--pixel-size-A", type=float, default=1.6)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-relion", action="store_true")
    ap.add_argument("--mpi-n", type=int, default=0, help="particles for the MPI part")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument(
        "--launcher",
        choices=("auto", "srun", "gforker"),
        default="auto",
        help="MPI launcher of the MPI part (auto: srun when the local SLURM answers)",
    )
    ap.add_argument("--skip-serial", action="store_true", help="skip the one-core part")
    ap.add_argument("--skip-mpi", action="store_true", help="skip the MPI part")
    ap.add_argument(
        "--order-n",
        type=int,
        default=3000,
        help="particles of the insertion-order trial (random vs viewing-direction order, "
        "one process and two at once; 0 skips it)",
    )
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from hpcem.io import write_mrc
    from hpcem.reconstruct.mpi import write_table
    from hpcem.reconstruct.simulate import simulate_particles
    from hpcem.sim.volume import load_volume

    all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    volume = load_volume(None, args.pixel_size_A, args.box)
    report: dict = {
        "particles": args.n,
        "box_px": args.box,
        "pixel_size_A": args.pixel_size_A,
        "snr": args.snr,
        "nyquist_A": 2 * args.pixel_size_A,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }
    mpi_n = args.mpi_n or args.n
    with tempfile.TemporaryDirectory(prefix="bench-recon-") as tmp:
        folder = Path(tmp)
        if not args.skip_serial:
            sim = simulate_particles(volume, args.n, snr=args.snr, seed=args.seed)
            stack = str(write_mrc(folder / "particles.mrcs", sim["images"], args.pixel_size_A))
            serial_part(report, args, folder, sim, stack, volume, all_cpus)
        if args.order_n:
            report["insertion_order"] = insertion_order(args.box, args.order_n, args.seed)
        if not args.skip_mpi:
            if args.skip_serial or mpi_n != args.n:
                sim = simulate_particles(volume, mpi_n, snr=args.snr, seed=args.seed)
                stack = str(write_mrc(folder / "mpi.mrcs", sim["images"], args.pixel_size_A))
            table = str(folder / "table.npz")
            write_table(
                table,
                _table(sim, stack),
                {"pixel_size_A": args.pixel_size_A, "image_size_px": args.box},
            )
            report["mpi"] = mpi_speedup(folder, table, args.ranks, args.launcher)
            report["mpi"]["particles"] = mpi_n
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
