"""Local (patch) motion on top of the global alignment, as a smooth spatio-temporal model.

Method:

1. the frames are translated by their global displacement (Fourier shift) and cut into
   ``patches × patches`` overlapping square patches (side ``2·min(ny, nx)/(patches+1)``,
   centres evenly spaced), the same window in every frame; each patch's mean is removed
   and its edges are tapered (raised cosine over 1/8 of the side);
2. each patch stack is aligned like a whole movie (:func:`hpcem.motion.align.align_spectra`,
   same binning and B-factor), from zero residual, searching at most
   ``MAX_LOCAL_SHIFT_PX`` per iteration: what the window does to the correlation pulls
   towards the global solution, never towards a motion of its own;
3. the residuals ``δ(p, i)`` = patch displacement − global displacement are fitted by a
   smooth model (like MotionCor2's, with a per-patch constant as nuisance, since a
   patch's alignment fixes its trajectory only up to a translation)::

       L(x, y, t) = Σ_j Σ_m c[axis, j, m] · b_j(x, y) · τ^m,   m = 1, 2, 3,
       b = (1, x', y', x'², x'·y', y'²),  x' = (x − nx/2)/(nx/2),  y' = (y − ny/2)/(ny/2),
       τ = (i − first)/(n − 1)  (i the movie frame, first..last the frames used),

   (pixels of the full frame; ``L = 0`` on the first frame used), by least squares after
   dropping outlier measurements (more than 4 robust standard deviations off);
4. the coefficients are shrunk towards 0 (ridge) by the amount that best predicts
   held-out patches, and the model is *kept only if it predicts the motion better than
   the global shifts alone*: its F statistic (variance explained per coefficient over
   the residual variance per degree of freedom) must exceed ``F_ACCEPT`` and, predicting
   each patch from a
   model fitted on the other patches, it must remove at least ``CV_MIN_GAIN`` of the
   squared residuals that predicting 0 (the global solution) leaves (leave-one-patch-out
   cross-validation; the held-out patch's measurement noise is in both). Otherwise the
   movie keeps its global alignment (``local = 0``). The F test alone was not enough: the
   fitted model carries about 0.1-0.2 px of its own noise, so a small deformation (0.3 px)
   passed it and the "local" result was worse than the global one.

Summing with the local model (:func:`local_sum`): each frame is shifted by its global
displacement in Fourier space (with its dose weight), transformed back, and resampled at
``x + L(x, y, t)`` with cubic splines (periodic edges); the frames are then added.
Total displacement of the feature at (x, y) of the first frame: ``G(t) + L(x, y, t)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.fft
import scipy.ndimage

from hpcem.errors import ValidationError
from hpcem.motion import align, fourier

#: Largest residual displacement of a patch from the global solution, per iteration (px).
MAX_LOCAL_SHIFT_PX = 8.0
#: F statistic above which the local model is kept (noise gives about 1).
F_ACCEPT = 3.0
#: Leave-one-patch-out gain above which the local model is kept (see fit_model). Measured
#: on 512² movies, 24 frames of 1.5 e/Å², 4x4 patches: no local motion 0.01-0.02; a
#: 0.3-0.5 px deformation 0.06-0.17 (where the model does not beat the global shifts);
#: 1 px 0.26-0.27 and 3 px 0.70 (where it does, 0.14 vs 0.31 px and 0.17 vs 0.91 px).
CV_MIN_GAIN = 0.2
#: Ridge strengths tried (penalty per row on unit-RMS columns; 0 = plain least squares).
RIDGE_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: Measurements further than this many robust SDs from the fit are left out of it.
OUTLIER_SD = 4.0
N_SPATIAL = 6
POWERS = (1, 2, 3)


@dataclasses.dataclass
class LocalModel:
    """A fitted local motion model and what it was fitted on."""

    #: (2, N_SPATIAL, len(POWERS)) coefficients in px: [axis (x, y), spatial term, power].
    coefficients: np.ndarray
    shape: tuple[int, int]
    n_frames: int
    accepted: bool
    f_statistic: float
    #: Leave-one-patch-out gain: 1 − (error predicting each patch from the others) /
    #: (error of the global solution alone, i.e. predicting 0) over the same measurements.
    cv_gain: float
    #: Ridge strength of the coefficients (chosen by the same cross-validation).
    ridge: float
    #: Residual RMS of the fit (px) and measurements left out as outliers.
    fit_rms_px: float
    n_outliers: int
    #: Patch centres (P², 2) as (x, y) px and their displacements relative to the global
    #: solution (P², n, 2), as measured.
    centres_px: np.ndarray
    patch_residuals_px: np.ndarray

    def flat_coefficients(self) -> list[float]:
        """The coefficients as stored (``local_coefficients``): x then y, each spatial
        term's powers 1, 2, 3 in turn (36 numbers)."""
        return [float(c) for c in self.coefficients.ravel()]

    def displacement(self, x: np.ndarray, y: np.ndarray, frame: int) -> np.ndarray:
        """Local displacement (dx, dy) px at positions (x, y) for frame ``frame`` (0-based
        within the frames used); shape ``(2, *x.shape)``."""
        return evaluate(self.coefficients, self.shape, self.n_frames, x, y, frame)


def spatial_basis(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The spatial terms ``(1, x', y', x'², x'y', y'²)`` at (x, y)."""
    ny, nx = shape
    xn = (np.asarray(x, dtype=np.float64) - nx / 2) / (nx / 2)
    yn = (np.asarray(y, dtype=np.float64) - ny / 2) / (ny / 2)
    return [np.ones_like(xn), xn, yn, xn * xn, xn * yn, yn * yn]


def temporal_basis(n_frames: int, frame) -> np.ndarray:
    """``τ^m`` for m in POWERS, τ = frame/(n_frames − 1); shape (len(POWERS), ...)."""
    tau = np.asarray(frame, dtype=np.float64) / max(n_frames - 1, 1)
    return np.stack([tau**m for m in POWERS])


def evaluate(coefficients, shape, n_frames, x, y, frame) -> np.ndarray:
    """Displacement (2, ...) px of the model at (x, y) for one frame index."""
    spatial = spatial_basis(shape, x, y)
    temporal = temporal_basis(n_frames, frame)
    out = []
    for axis in range(2):
        weights = coefficients[axis] @ temporal  # (N_SPATIAL,)
        out.append(sum(w * b for w, b in zip(weights, spatial)))
    return np.stack(out)


def patch_layout(shape: tuple[int, int], patches: int) -> tuple[int, np.ndarray]:
    """Patch side (even px) and the top-left corners (P², 2) as (x0, y0)."""
    ny, nx = shape
    side = 2 * int(min(ny, nx) / (patches + 1))
    if side < 32:
        raise ValidationError(
            f"{patches}x{patches} patches of a {nx}x{ny} frame would be {side} px; "
            "use fewer patches (at least 32 px each)"
        )
    xs = np.linspace(0, nx - side, patches).round().astype(int)
    ys = np.linspace(0, ny - side, patches).round().astype(int)
    corners = np.array([(x0, y0) for y0 in ys for x0 in xs])
    return side, corners


def _taper(side: int) -> np.ndarray:
    edge = max(2, side // 8)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge) + 0.5) / edge)
    w = np.ones(side)
    w[:edge] = ramp
    w[-edge:] = ramp[::-1]
    return np.outer(w, w).astype(np.float32)


def aligned_frames(
    spectra: np.ndarray,
    full_shape: tuple[int, int],
    shifts_px: np.ndarray,
    workers: int = 1,
) -> np.ndarray:
    """The frames translated by their global displacement (Fourier shift, periodic),
    float32 (n, ny, nx): every frame in the first frame's coordinates."""
    ny, nx = full_shape
    out = np.empty((len(spectra), ny, nx), dtype=np.float32)
    for i, (dx, dy) in enumerate(np.asarray(shifts_px, dtype=np.float64)):
        one = np.zeros(spectra.shape[1:], dtype=np.complex64)
        fourier.accumulate_shifted(one, spectra[i], -dx / nx, -dy / ny)
        out[i] = scipy.fft.irfft2(one, s=full_shape, workers=workers)
    return out


def measure_patches(
    spectra: np.ndarray,
    full_shape: tuple[int, int],
    global_shifts_px: np.ndarray,
    patches: int,
    binning: float,
    b_factor_px2: float = align.B_FACTOR_PX2,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Align every patch of the globally aligned frames; return the patch centres
    (P², 2) as (x, y) px and the residual displacements (P², n, 2) px, each patch's
    relative to its own first frame.

    The patches are cut from frames already translated by the global solution (exactly,
    in Fourier space), so the patch window is the same in every frame: whatever the
    window and its taper do to the correlation pulls towards the global solution, not
    towards a pattern of its own (cutting windows that follow the *rounded* global shift
    gave residuals with a smooth, spurious "local motion" of 0.2 px on movies without any).
    """
    ny, nx = full_shape
    n = len(spectra)
    side, corners = patch_layout((ny, nx), patches)
    taper = _taper(side)
    crop = align.alignment_shape((side, side), binning, b_factor_px2)
    frames = aligned_frames(spectra, full_shape, global_shifts_px, workers)
    centres = corners + side / 2.0
    measured = np.zeros((len(corners), n, 2))
    for p, (x0, y0) in enumerate(corners):
        stack = np.empty((n, crop[0], crop[1] // 2 + 1), dtype=np.complex64)
        for i in range(n):
            tile = frames[i, y0 : y0 + side, x0 : x0 + side]
            tile = (tile - tile.mean()) * taper
            full = scipy.fft.rfft2(tile.astype(np.float32), workers=workers)
            stack[i] = align.fourier_crop(full, (side, side), crop)
        result = align.align_spectra(
            stack,
            (side, side),
            b_factor_px2=b_factor_px2,
            max_iterations=max_iterations,
            tolerance_px=tolerance_px,
            max_shift_px=MAX_LOCAL_SHIFT_PX,
            workers=workers,
        )
        measured[p] = result.shifts_px
    return centres, measured


def fit_model(
    centres_px: np.ndarray,
    residuals_px: np.ndarray,
    shape: tuple[int, int],
) -> LocalModel:
    """Fit the smooth model to the patch residuals (P², n, 2) and decide whether to
    keep it (F test and leave-one-patch-out cross-validation)."""
    n_patches, n, _ = residuals_px.shape
    residual = np.asarray(residuals_px, dtype=np.float64)
    spatial = np.stack(spatial_basis(shape, centres_px[:, 0], centres_px[:, 1]), axis=1)
    temporal = temporal_basis(n, np.arange(n)).T  # (n, n_powers)
    # Per-patch constants are nuisance: centre both data and design over time.
    temporal_c = temporal - temporal.mean(axis=0)
    design = (spatial[:, None, :, None] * temporal_c[None, :, None, :]).reshape(n_patches * n, -1)
    data = (residual - residual.mean(axis=1, keepdims=True)).reshape(n_patches * n, 2)
    n_coef = design.shape[1]
    dof_total = n_patches * (n - 1)
    keep = np.ones(len(design), dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], data[keep], rcond=None)
        err = data - design @ coef
        sd = 1.4826 * np.median(np.abs(err[keep] - np.median(err[keep], axis=0)), axis=0)
        new_keep = np.all(np.abs(err) <= OUTLIER_SD * np.maximum(sd, 1e-6), axis=1)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    coef, *_ = np.linalg.lstsq(design[keep], data[keep], rcond=None)
    err = data[keep] - design[keep] @ coef
    rss1 = float(np.sum(err**2))
    rss0 = float(np.sum(data[keep] ** 2))
    n_out = int(np.count_nonzero(~keep))
    dof_resid = 2 * (dof_total - n_out - n_coef)
    if dof_resid <= 0 or rss1 <= 0:
        f_stat = 0.0
    else:
        f_stat = ((rss0 - rss1) / (2 * n_coef)) / (rss1 / dof_resid)
    # The coefficients are shrunk towards 0 (ridge) by the amount that predicts held-out
    # patches best; the gain of that choice over predicting 0 decides.
    ridge, cv_gain = _choose_ridge(design, data, keep, n_patches, n)
    coef = _ridge_fit(design[keep], data[keep], ridge)
    coefficients = coef.T.reshape(2, N_SPATIAL, len(POWERS))
    return LocalModel(
        coefficients=coefficients,
        shape=tuple(shape),
        n_frames=n,
        accepted=bool(f_stat > F_ACCEPT and cv_gain > CV_MIN_GAIN),
        f_statistic=float(f_stat),
        cv_gain=float(cv_gain),
        ridge=float(ridge),
        fit_rms_px=math.sqrt(rss1 / max(err.size, 1)),
        n_outliers=n_out,
        centres_px=centres_px,
        patch_residuals_px=residual,
    )


def _ridge_fit(design: np.ndarray, data: np.ndarray, ridge: float) -> np.ndarray:
    """Least squares with the penalty ``ridge · rows · |c|²`` on coefficients of columns
    scaled to unit RMS (so the penalty does not depend on each term's units)."""
    scale = np.sqrt(np.mean(design**2, axis=0))
    scale[scale == 0] = 1.0
    scaled = design / scale
    normal = scaled.T @ scaled + ridge * len(design) * np.eye(design.shape[1])
    return np.linalg.solve(normal, scaled.T @ data) / scale[:, None]


def _choose_ridge(
    design: np.ndarray, data: np.ndarray, keep: np.ndarray, n_patches: int, n: int
) -> tuple[float, float]:
    """The ridge strength of RIDGE_GRID that predicts held-out patches best, and its
    gain ``1 − CV(ridge)/CV₀``.

    Leave-one-patch-out: CV(ridge) sums the squared errors of predicting each patch's
    (kept) residuals with the model fitted on the other patches, CV₀ those of predicting 0
    (the global solution). A held-out patch's own measurement noise is in both, so the
    gain is positive only when the model predicts motion at unseen positions better than
    its own fitting noise spoils them.
    """
    patch = np.repeat(np.arange(n_patches), n)
    folds = []
    for p in range(n_patches):
        test = keep & (patch == p)
        train = keep & (patch != p)
        if test.any() and train.sum() > design.shape[1]:
            folds.append((train, test))
    cv0 = sum(float(np.sum(data[test] ** 2)) for _, test in folds)
    if not folds or cv0 <= 0:
        return RIDGE_GRID[0], 0.0
    errors = []
    for ridge in RIDGE_GRID:
        total = 0.0
        for train, test in folds:
            coef = _ridge_fit(design[train], data[train], ridge)
            total += float(np.sum((data[test] - design[test] @ coef) ** 2))
        errors.append(total)
    best = int(np.argmin(errors))
    return RIDGE_GRID[best], 1.0 - errors[best] / cv0


def local_sum(
    spectra: np.ndarray,
    full_shape: tuple[int, int],
    global_shifts_px: np.ndarray,
    model: LocalModel,
    weight_table: np.ndarray | None = None,
    bins: np.ndarray | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Sum (float32 image) of frames aligned by global + local displacements."""
    ny, nx = full_shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    out = np.zeros(full_shape, dtype=np.float64)
    for i, (dx, dy) in enumerate(np.asarray(global_shifts_px, dtype=np.float64)):
        one = np.zeros(spectra.shape[1:], dtype=np.complex64)
        row = None if weight_table is None else weight_table[i]
        fourier.accumulate_shifted(one, spectra[i], -dx / nx, -dy / ny, row, bins)
        image = scipy.fft.irfft2(one, s=full_shape, workers=workers)
        lx, ly = model.displacement(xx, yy, i)
        out += scipy.ndimage.map_coordinates(image, [yy + ly, xx + lx], order=3, mode="grid-wrap")
    return out.astype(np.float32)
