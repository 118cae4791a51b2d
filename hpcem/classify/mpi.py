"""The step body of ``classify.2d``: each MPI rank reads and aligns its share of the
particles; class sums are reduced with ``MPI.Allreduce`` (:mod:`hpcem.classify.em2d`).

The same function runs without MPI (``use_mpi=False``: one process, no mpi4py), so the
one-rank and the many-rank runs execute the same code and give the same classes for a
seed (sums in float64; only their order differs).
"""

from __future__ import annotations

import os
import time

import numpy as np

from hpcem.classify import em2d
from hpcem.errors import DataFormatError

#: Columns of the particle table (``prepare`` writes it) that hold the CTF.
CTF_KEYS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "phase_shift",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
)


def read_images(paths: np.ndarray, indices: np.ndarray, box_px: int) -> np.ndarray:
    """The images ``paths[i]``, ``indices[i]`` (n, box, box) float32, one open per file."""
    from hpcem.io.mrc import mmap_mrc

    out = np.empty((len(paths), box_px, box_px), np.float32)
    for path in np.unique(paths):
        rows = np.flatnonzero(paths == path)
        with mmap_mrc(str(path)) as (_header, data):
            stack = data if data.ndim == 3 else data[None]
            if stack.shape[1:] != (box_px, box_px):
                raise DataFormatError(
                    f"{path}: images are {stack.shape[2]}x{stack.shape[1]} px, the particle "
                    f"set says {box_px}x{box_px}"
                )
            wanted = indices[rows]
            if wanted.max() >= len(stack):
                raise DataFormatError(
                    f"{path}: holds {len(stack)} images, particle index {wanted.max()} asked"
                )
            out[rows] = stack[wanted]
    return out


def write_gallery_png(path: str, averages: np.ndarray, sizes, title: str) -> None:
    """The class averages side by side (up to 10 a row) with their sizes, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(averages)
    cols = min(k, 10)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < k:
            ax.imshow(averages[i], cmap="gray")
            ax.set_title(f"{i + 1}: {int(sizes[i])}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def classify_step(
    table: str,
    out_dir: str,
    n_classes: int,
    iterations: int,
    mask_diameter_A: float,
    angle_step_deg: float,
    max_shift_A: float,
    align_box_px: int,
    seed: int,
    ctf_correction: bool,
    use_mpi: bool,
    stop_when_converged: bool = True,
    two_stage: bool = True,
) -> dict | None:
    """Classify the particles of ``table`` (an ``.npz`` from the protocol's ``prepare``
    step); files go to ``out_dir``: ``classes.mrcs`` (the averages),
    ``iteration_NNN.png`` (the averages after each iteration), ``assignment.npz``
    (per-particle ``class`` 0-based, ``psi_deg``, ``shift_px`` (dx, dy) = particle centre −
    box centre, ``score``). ``stop_when_converged`` False runs all ``iterations`` (the
    benchmark's fixed-work comparison with RELION); ``two_stage`` False searches every class
    at every angle (:func:`hpcem.classify.em2d.classify`).

    Rank 0 returns ``{"iterations_run", "converged", "sizes", "history", "ranks",
    "backend", "averages", "assignment", "pngs", "wall_s", "cpu_s_per_rank",
    "cpu_s_split_per_rank"}``; other ranks None. The CPU seconds are each rank's own
    (``time.process_time``) from the start of the step body: with the wall time they say
    how evenly the work split and how much a busy machine slowed the run.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    from hpcem.io import write_mrc
    from hpcem.kernels import backend

    if use_mpi:
        from mpi4py import MPI

        comm = em2d.MPIComm(MPI.COMM_WORLD)
    else:
        comm = em2d.SerialComm()
    data = np.load(table, allow_pickle=False)
    n_total = len(data["image_index"])
    box = int(data["box_px"])
    pixel_size_A = float(data["pixel_size_A"])
    lo, hi = em2d.shard(n_total, comm.size, comm.rank)
    images = read_images(data["image"][lo:hi], data["image_index"][lo:hi], box)
    read_cpu_s = time.process_time() - cpu_started
    ctf = {k: data[k][lo:hi] for k in CTF_KEYS} if ctf_correction else None
    os.makedirs(out_dir, exist_ok=True)
    pngs = []

    def on_iteration(i, averages, info):
        if comm.rank == 0:
            png = os.path.join(out_dir, f"iteration_{i:03d}.png")
            changed = 100 * info["changed_fraction"]
            title = f"iteration {i}: {changed:.1f} % changed class"
            write_gallery_png(png, averages, info["sizes"], title)
            pngs.append(png)

    result = em2d.classify(
        images,
        ctf,
        pixel_size_A,
        n_total,
        lo,
        n_classes,
        iterations,
        mask_diameter_px=mask_diameter_A / pixel_size_A,
        angle_step_deg=angle_step_deg,
        max_shift_px=max_shift_A / pixel_size_A,
        align_box_px=align_box_px,
        seed=seed,
        comm=comm,
        on_iteration=on_iteration,
        stop_when_converged=stop_when_converged,
        two_stage=two_stage,
    )
    split = {"read_s": round(read_cpu_s, 3), **result["cpu_s"]}
    cpu = comm.allgather((round(time.process_time() - cpu_started, 3), split))
    if comm.rank != 0:
        return None
    averages = os.path.join(out_dir, "classes.mrcs")
    write_mrc(averages, result["averages"], pixel_size_A, kind="stack", overwrite=True)
    assignment = os.path.join(out_dir, "assignment.npz")
    np.savez(
        assignment,
        **{k: result[k] for k in ("class", "psi_deg", "shift_px", "score")},
    )
    return {
        "iterations_run": int(result["iterations_run"]),
        "converged": bool(result["converged"]),
        "sizes": [int(s) for s in result["sizes"]],
        "history": result["history"],
        "ranks": int(comm.size),
        # the search is numpy + BLAS; the rotations (references, M-step) the compiled kernel
        "backend": {"align2d": backend("align2d")},
        "averages": averages,
        "assignment": assignment,
        "pngs": pngs,
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s_per_rank": [c[0] for c in cpu],
        "cpu_s_split_per_rank": [c[1] for c in cpu],
    }
