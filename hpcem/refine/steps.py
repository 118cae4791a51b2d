"""The worker step of ``refine.projmatch``: read the particles, refine, write the results.

:func:`refine_step` reads the particle table written by ``reconstruct.fourier``'s
``prepare`` step (stacks, indices, CTFs, optics and half sets per particle;
:func:`hpcem.reconstruct.mpi.write_table`), the particles' images and the initial
reference, runs :func:`hpcem.refine.projmatch.refine` and writes the half maps and the
full map (MRC), the final poses (``poses.npz``), the gold-standard curve (``fsc.npz``),
its plot (PNG) and a plot of the FSC of every iteration.
"""

from __future__ import annotations

import os
import time

import numpy as np

from hpcem.errors import ValidationError
from hpcem.kernels import backend
from hpcem.reconstruct.fourier import KERNEL, relion_ctfs
from hpcem.reconstruct.mpi import read_table


def load_images(table: dict) -> np.ndarray:
    """The particle images (n, N, N) float32 of a particle table, in its order."""
    from hpcem.io.mrc import mmap_mrc

    box = int(table["optics_image_size_px"])
    n = len(table["image_index"])
    images = np.empty((n, box, box), dtype=np.float32)
    stacks = table["stack"]
    for stack in np.unique(stacks):
        rows = np.flatnonzero(stacks == stack)
        idx = table["image_index"][rows].astype(np.intp)
        with mmap_mrc(str(stack)) as (_, data):
            if data.ndim == 2:
                data = data[None]
            if data.shape[-2:] != (box, box):
                raise ValidationError(
                    f"stack {stack}: images of {data.shape[-1]}x{data.shape[-2]} px, but the "
                    f"particles' optics say image_size_px {box}"
                )
            if idx.min() < 0 or idx.max() >= len(data):
                raise ValidationError(
                    f"stack {stack}: image index {int(idx.max())} beyond its {len(data)} images"
                )
            images[rows] = data[idx]
    return images


def table_ctfs(table: dict) -> np.ndarray:
    """The particles' CTFs (n, N, N//2+1), RELION's sign (extracted particles' contrast)."""
    return relion_ctfs(
        int(table["optics_image_size_px"]),
        float(table["optics_pixel_size_A"]),
        table["defocus_u"],
        table["defocus_v"],
        table["defocus_angle"],
        table["voltage_kV"],
        table["spherical_aberration_mm"],
        table["amplitude_contrast"],
        table["phase_shift"],
    )


def plot_history_png(path: str, frequency: np.ndarray, history: list[dict]) -> str:
    """A PNG of the gold-standard FSC of every iteration."""
    from hpcem.validate.fsc import HALF_MAP_THRESHOLD, plot_fsc_png

    curves = {
        f"it {h['iteration']} ({h['search']}, {h['step_deg']:g}°): {h['resolution_A']:.1f} Å": (
            np.asarray(h["fsc"])
        )
        for h in history
    }
    return plot_fsc_png(
        path, frequency, curves, (HALF_MAP_THRESHOLD,), title="gold-standard FSC per iteration"
    )


def refine_step(table: str, reference: str, options: dict, out: dict) -> dict:
    """Step of ``refine.projmatch`` (see the module doc). ``out`` holds project-relative
    paths: ``full``, ``half1``, ``half2`` (MRC), ``poses`` and ``fsc`` (npz), ``plot``
    and ``history_plot`` (PNG). ``options``: the protocol's parameters."""
    from hpcem.io import read_image, write_mrc
    from hpcem.refine.projmatch import refine
    from hpcem.validate.fsc import plot_fsc_png

    started = time.perf_counter()
    data = read_table(table)
    pixel = float(data["optics_pixel_size_A"])
    images = load_images(data)
    ctfs = table_ctfs(data)
    volume = read_image(reference).astype(np.float32)
    read_s = time.perf_counter() - started
    result = refine(
        images,
        ctfs,
        data["half"],
        volume,
        pixel,
        symmetry=options["symmetry"],
        iterations=options["iterations"],
        angular_step_deg=options["angular_step_deg"],
        max_shift_px=options["max_shift_px"],
        initial_lowpass_A=options["initial_lowpass_A"],
        mask_diameter_A=options["mask_diameter_A"],
        threads=options.get("threads", 2),
    )
    for key in ("full", "half1", "half2"):
        os.makedirs(os.path.dirname(out[key]) or ".", exist_ok=True)
        write_mrc(out[key], result[key], pixel, kind="volume", overwrite=True)
    np.savez(
        out["poses"],
        angles=result["angles"],
        shift_px=result["shift_px"],
        score=result["score"],
        half=np.asarray(data["half"]),
    )
    freq, curve = result["frequency"], result["fsc"]
    np.savez(out["fsc"], frequency=freq, fsc=curve)
    n = len(images)
    plot_fsc_png(
        out["plot"],
        freq,
        {"half 1 vs half 2": curve},
        title=f"gold-standard FSC: {result['resolution_A']:.2f} Å at 0.143 ({n} particles)",
    )
    plot_history_png(out["history_plot"], freq, result["history"])
    halves = np.asarray(data["half"])
    return {
        "particles": int(n),
        "half_counts": [int((halves == 1).sum()), int((halves == 2).sum())],
        "box_px": int(images.shape[-1]),
        "pixel_size_A": pixel,
        "resolution_A": result["resolution_A"],
        "frequency": [float(f) for f in freq],
        "fsc": [float(c) for c in curve],
        "history": result["history"],
        "converged": bool(result["converged"]),
        "iterations_run": int(result["iterations_run"]),
        "maps": {k: out[k] for k in ("full", "half1", "half2")},
        "poses": out["poses"],
        "fsc_file": out["fsc"],
        "plot": out["plot"],
        "history_plot": out["history_plot"],
        "read_s": round(read_s, 3),
        "refine_s": round(time.perf_counter() - started - read_s, 3),
        "backend": backend(KERNEL),
    }
