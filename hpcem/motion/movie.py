"""Align one movie file end to end: read, correct, align, sum, write, plot.

This is what one step of ``motion.align`` does (the protocol adds the movie id to the
rejection reasons). Any problem with the input raises an :mod:`hpcem.errors` exception
naming the file; nothing is printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import scipy.fft

from hpcem.motion import align, dose, fourier, frames, local
from hpcem.motion.plot import trajectory_png

#: Accumulated exposure (e⁻/Å²) up to which drift counts as early (RELION's default).
EARLY_EXPOSURE_E_A2 = 4.0


def align_movie_file(
    path: str | os.PathLike,
    *,
    pixel_size_A: float,
    dose_per_frame_e_A2: float,
    voltage_kV: float = 300.0,
    n_frames_expected: int | None = None,
    first_frame: int = 0,
    last_frame: int = -1,
    binning: float = 0.0,
    patches: int = 0,
    b_factor_px2: float = align.B_FACTOR_PX2,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    dose_weighting: bool = True,
    save_nodw: bool = False,
    gain_path: str | None = None,
    defects_path: str | None = None,
    pre_exposure_e_A2: float = 0.0,
    output_binning: float = 1.0,
    out_image: str | os.PathLike | None = None,
    out_nodw: str | os.PathLike | None = None,
    out_plot: str | os.PathLike | None = None,
    workers: int = 1,
) -> dict:
    """Align a movie and write its sums and trajectory picture; return the numbers.

    Returns a JSON-ready dict: ``first_frame``, ``last_frame``, ``shifts_px`` (list of
    (dx, dy), displacement of each used frame relative to the first used one, see
    :mod:`hpcem.motion.align`), ``total_drift_px``, ``early_drift_px``, ``local``
    (bool), ``local_coefficients`` (36 numbers or []), ``local_f`` and ``local_cv_gain``
    (the two tests of the local model, None without patches), ``iterations``,
    ``converged``, ``binning``, ``shape``, ``output_shape`` and ``output_pixel_size_A``
    (of the sums, after ``output_binning``), ``backend``, ``seconds`` per stage,
    ``outputs`` (``{"image": path, "image_nodw": path}`` of the files written) and
    ``images`` (the sums as float32 arrays for those not written, for library use: not
    JSON, a step drops it).

    ``output_binning`` > 1 Fourier-crops the sums (e.g. 2 for super-resolution movies):
    the output pixel is ``nx / output_nx`` times larger and holds the counts of the input
    pixels it covers (like a detector with larger pixels).
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with frames.open_movie(path, n_frames_expected) as (shape3, get):
        n_movie, ny, nx = shape3
        first, last = frames.frame_range(n_movie, first_frame, last_frame)
        gain = frames.read_gain(gain_path, (ny, nx)) if gain_path else None
        defects = frames.read_defects(defects_path, (ny, nx)) if defects_path else None
        stream = (
            frame for _, frame in frames.corrected_frames(get, path, first, last, gain, defects)
        )
        spectra = align.fft_frames(stream, (ny, nx), last - first + 1, workers=workers)
    seconds["read_fft"] = time.perf_counter() - t0
    shape = (ny, nx)
    n = last - first + 1
    # An unknown dose (0) is fine without dose weighting; early drift is then 0.
    dose_known = dose_weighting or dose_per_frame_e_A2 > 0
    exposures_all = dose.frame_exposures(
        np.arange(first, last + 1), dose_per_frame_e_A2 if dose_known else 1.0, pre_exposure_e_A2
    )

    t = time.perf_counter()
    crop_shape = align.alignment_shape(shape, binning, b_factor_px2)
    cropped = align.fourier_crop(spectra, shape, crop_shape)
    result = align.align_spectra(
        cropped,
        shape,
        b_factor_px2=b_factor_px2,
        max_iterations=max_iterations,
        tolerance_px=tolerance_px,
        workers=workers,
    )
    del cropped
    shifts = result.shifts_px
    seconds["align"] = time.perf_counter() - t

    model = None
    if patches > 0:
        t = time.perf_counter()
        centres, measured = local.measure_patches(
            spectra,
            shape,
            shifts,
            patches,
            result.binning,
            b_factor_px2=b_factor_px2,
            max_iterations=max_iterations,
            tolerance_px=tolerance_px,
            workers=workers,
        )
        model = local.fit_model(centres, measured, shape)
        seconds["local"] = time.perf_counter() - t

    t = time.perf_counter()
    table = bins = None
    if dose_weighting:
        table, bins = dose.dose_weights(shape, pixel_size_A, exposures_all, voltage_kV)
    written = {}
    targets = [("image", out_image, table)]
    if save_nodw and dose_weighting:
        targets.append(("image_nodw", out_nodw, None))
    out_shape = align.binned_shape(shape, output_binning)
    out_pixel_A = pixel_size_A * nx / out_shape[1]
    for key, target, weights in targets:
        if model is not None and model.accepted:
            image = local.local_sum(spectra, shape, shifts, model, weights, bins, workers)
            if out_shape != shape:
                image = align.to_image(
                    scipy.fft.rfft2(image, workers=workers), shape, workers, out_shape
                )
        else:
            total = align.shifted_sum(spectra, shape, shifts, weights, bins)
            image = align.to_image(total, shape, workers, out_shape)
        if target is not None:
            from hpcem.io.images import write_mrc

            Path(target).parent.mkdir(parents=True, exist_ok=True)
            write_mrc(target, image, out_pixel_A, overwrite=True)
            written[key] = str(target)
        else:
            written[key] = image
    seconds["sum_write"] = time.perf_counter() - t

    total_px, early_px = align.drift_stats(shifts, exposures_all, EARLY_EXPOSURE_E_A2)
    if not dose_known:
        early_px = 0.0
    use_local = bool(model is not None and model.accepted)
    if out_plot is not None:
        arrows = None
        if use_local:
            lx, ly = model.displacement(model.centres_px[:, 0], model.centres_px[:, 1], n - 1)
            arrows = (model.centres_px * pixel_size_A, np.stack([lx, ly], 1) * pixel_size_A)
        Path(out_plot).parent.mkdir(parents=True, exist_ok=True)
        trajectory_png(
            out_plot,
            shifts * pixel_size_A,
            f"{Path(path).name}: {total_px * pixel_size_A:.1f} Å total drift",
            arrows,
            (ny * pixel_size_A, nx * pixel_size_A),
        )
    seconds["total"] = time.perf_counter() - t0
    return {
        "first_frame": first,
        "last_frame": last,
        "shifts_px": [[float(x), float(y)] for x, y in shifts],
        "total_drift_px": total_px,
        "early_drift_px": early_px,
        "local": use_local,
        "local_coefficients": model.flat_coefficients() if use_local else [],
        "local_f": None if model is None else model.f_statistic,
        "local_cv_gain": None if model is None else model.cv_gain,
        "iterations": result.iterations,
        "converged": result.converged,
        "binning": result.binning,
        "shape": [ny, nx],
        "output_shape": list(out_shape),
        "output_pixel_size_A": out_pixel_A,
        "backend": fourier.backend(),
        "seconds": seconds,
        "outputs": {k: v for k, v in written.items() if isinstance(v, str)},
        "images": {k: v for k, v in written.items() if not isinstance(v, str)},
    }
