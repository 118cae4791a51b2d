"""Simulated dose-fractionated movies with known drift, local motion, damage and gain.

Frame ``i`` of a movie is the CTF-filtered object of :mod:`hpcem.sim.specimen`,

1. attenuated by radiation damage (optional): the spectrum is multiplied by
   ``exp(−N_i / (2 N_e(k)))`` with ``N_i`` the exposure at the middle of the frame and
   ``N_e(k) = 0.245 k^−1.665 + 2.81`` e⁻/Å² the critical exposure of Grant & Grigorieff
   (2015) at 300 kV (× 0.8 at 200 kV and below), ``k`` in 1/Å;
2. deformed by a smooth local motion (optional): a feature at ``(x, y)`` of frame 0
   moves by ``L(x, y, i)``, a quadratic polynomial of the position whose amplitude grows
   with time like the early drift (see :func:`local_displacement_px`);
3. shifted by the global drift ``shifts_px[i]`` (a Fourier phase ramp: sub-pixel,
   periodic boundary);
4. recorded as Poisson counts at ``dose_per_frame_e_per_A2``, times a per-pixel detector
   sensitivity when a gain is simulated.

So a feature at ``(x, y)`` in frame 0 is at ``(x, y) + shifts_px[i] + L(x, y, i)`` in
frame ``i`` (:func:`displacement_px`); aligning means shifting frame ``i`` back by that.

Gain: frames are the raw counts of a detector of sensitivity ``s(x, y)``; the gain
reference ``truth["gain_reference"] = 1 / s`` is what RELION and MotionCor2 expect for
``--gainref``: raw × gain = corrected.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from hpcem.ctf.model import frequency_grid
from hpcem.errors import ValidationError
from hpcem.sim.specimen import check_shape, irfft2, rfft2, specimen_ft

DRIFT_MODELS = ("linear", "smooth")
#: Polynomial terms of the local motion model, in normalised coordinates u, v in [-1, 1).
LOCAL_TERMS = ("u", "v", "u*u", "u*v", "v*v")
_LOCAL_FIXED_POINT_ITERATIONS = 4


def critical_exposure_e_A2(k_1_per_A: np.ndarray, voltage_kV: float = 300.0) -> np.ndarray:
    """Critical exposure ``N_e(k)`` (e⁻/Å²) of Grant & Grigorieff (2015), eq. 3.

    ``0.245 k^−1.665 + 2.81`` at 300 kV, scaled by 0.8 at 200 kV and below (as in
    their paper and in MotionCor2/RELION); infinite at ``k = 0``.
    """
    k = np.asarray(k_1_per_A, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ne = 0.245 * np.power(k, -1.665) + 2.81
    return ne * (0.8 if voltage_kV <= 200.0 else 1.0)


def dose_attenuation(
    shape: tuple[int, int], pixel_size_A: float, exposure_e_A2: float, voltage_kV: float = 300.0
) -> np.ndarray:
    """Amplitude attenuation ``exp(−N / (2 N_e(k)))`` on the rfft2 half plane."""
    ky, kx = frequency_grid(shape, pixel_size_A, half=True)
    k = np.sqrt(ky * ky + kx * kx)
    return np.exp(-exposure_e_A2 / (2.0 * critical_exposure_e_A2(k, voltage_kV)))


def _time_profile(n_frames: int, decay_frames: float) -> np.ndarray:
    """``1 − exp(−i / T)`` for frames 0..n−1 (0 at frame 0, fast early, then flat)."""
    i = np.arange(n_frames, dtype=np.float64)
    return -np.expm1(-i / decay_frames)


def global_shifts(
    rng: np.random.Generator,
    n_frames: int,
    drift_model: str,
    drift_px_per_frame: tuple[float, float],
    jitter_px: float,
    early_drift_px: tuple[float, float],
    early_decay_frames: float,
) -> np.ndarray:
    """Whole-frame shifts (n_frames, 2) as (dx, dy) in pixels, frame 0 at (0, 0).

    ``"linear"``: a constant drift per frame plus a gaussian random walk of
    ``jitter_px``. ``"smooth"``: ``drift · i + early · (1 − exp(−i / T))`` — a steady
    drift plus an early motion that decays with time constant ``T`` frames (no jitter).
    """
    if drift_model == "linear":
        steps = np.asarray(drift_px_per_frame, dtype=np.float64) + jitter_px * rng.standard_normal(
            (n_frames, 2)
        )
        steps[0] = 0.0
        return np.cumsum(steps, axis=0)
    if drift_model == "smooth":
        i = np.arange(n_frames, dtype=np.float64)[:, None]
        early = _time_profile(n_frames, early_decay_frames)[:, None]
        return i * np.asarray(drift_px_per_frame, dtype=np.float64) + early * np.asarray(
            early_drift_px, dtype=np.float64
        )
    raise ValidationError(f"drift_model must be one of {DRIFT_MODELS}, got {drift_model!r}")


def _local_basis(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The polynomial terms :data:`LOCAL_TERMS` at pixel positions (x, y); shape (5, ...)."""
    u = 2.0 * np.asarray(x, dtype=np.float64) / shape[1] - 1.0
    v = 2.0 * np.asarray(y, dtype=np.float64) / shape[0] - 1.0
    return np.stack(np.broadcast_arrays(u, v, u * u, u * v, v * v))


def _local_field(coefficients: np.ndarray, x, y, shape: tuple[int, int]) -> np.ndarray:
    """``Σ_k c[:, k] · term_k(u, v)``, shape (2, ...), without stacking the terms."""
    u = 2.0 * np.asarray(x, dtype=np.float64) / shape[1] - 1.0
    v = 2.0 * np.asarray(y, dtype=np.float64) / shape[0] - 1.0
    u, v = np.broadcast_arrays(u, v)
    out = np.empty((2, *u.shape))
    for d in range(2):
        c = coefficients[d]
        # c0 u + c1 v + c2 u² + c3 uv + c4 v² = u (c0 + c2 u + c3 v) + v (c1 + c4 v)
        out[d] = u * (c[0] + c[2] * u + c[3] * v) + v * (c[1] + c[4] * v)
    return out


def _local_model(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_frames: int,
    amplitude_px: float,
    decay_frames: float,
) -> dict:
    """Random coefficients of the local model, scaled so that the largest displacement
    over the image at the last frame is ``amplitude_px``."""
    coefficients = rng.uniform(-1.0, 1.0, size=(2, len(LOCAL_TERMS)))
    profile = _time_profile(n_frames, decay_frames)
    time_scale = profile / profile[-1] if n_frames > 1 and profile[-1] > 0 else profile
    gy, gx = np.meshgrid(np.linspace(0, shape[0], 33), np.linspace(0, shape[1], 33), indexing="ij")
    field = np.tensordot(coefficients, _local_basis(gx, gy, shape), axes=1)
    peak = float(np.max(np.hypot(field[0], field[1]))) or 1.0
    return {
        "terms": list(LOCAL_TERMS),
        "coefficients_px": (coefficients * (amplitude_px / peak)).tolist(),
        "time_scale": time_scale.tolist(),
        "shape": [int(shape[0]), int(shape[1])],
    }


def local_displacement_px(
    truth: dict, x: np.ndarray | float, y: np.ndarray | float, frame: int
) -> np.ndarray:
    """The local (non-global) part of the true motion of frame-0 position (x, y) at
    ``frame``: an array (2, ...) of (dx, dy) in pixels; zero for a movie without local
    motion.

    ``L(x, y, i) = time_scale[i] · Σ_k c[:, k] · term_k(u, v)`` with ``u = 2x/nx − 1``,
    ``v = 2y/ny − 1`` and the terms of :data:`LOCAL_TERMS`.
    """
    model = truth.get("local_motion")
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if not model:
        return np.zeros((2, *x.shape))
    shape = tuple(model["shape"])
    coefficients = np.asarray(model["coefficients_px"], dtype=np.float64)
    return model["time_scale"][frame] * _local_field(coefficients, x, y, shape)


def displacement_px(
    truth: dict, x: np.ndarray | float, y: np.ndarray | float, frame: int
) -> np.ndarray:
    """Where a feature at (x, y) of frame 0 has moved at ``frame``: (dx, dy), shape
    (2, ...), in pixels — the global shift of the frame plus the local motion there."""
    local = local_displacement_px(truth, x, y, frame)
    shift = np.asarray(truth["shifts_px"], dtype=np.float64)[frame]
    return local + shift.reshape((2,) + (1,) * (local.ndim - 1))


def _warp_local(image: np.ndarray, truth: dict, frame: int) -> np.ndarray:
    """``W(q) = image(p)`` where ``q = p + L(p)``: content at p moves by L(p).

    ``p`` is found by fixed-point iteration ``p ← q − L(p)`` (L is smooth and small, so
    it converges in a few steps); values by cubic splines, periodic boundary.
    """
    ny, nx = image.shape
    qy = np.arange(ny, dtype=np.float64)[:, None]
    qx = np.arange(nx, dtype=np.float64)[None, :]
    px, py = np.broadcast_arrays(qx, qy)
    for _ in range(_LOCAL_FIXED_POINT_ITERATIONS):
        d = local_displacement_px(truth, px, py, frame)
        px, py = qx - d[0], qy - d[1]
    coefficients = scipy.ndimage.spline_filter(image, order=3, mode="grid-wrap")
    return scipy.ndimage.map_coordinates(
        coefficients, [py, px], order=3, mode="grid-wrap", prefilter=False
    )


def _phase_ramp(
    ky: np.ndarray, kx: np.ndarray, dx: float, dy: float, dtype=np.complex128
) -> np.ndarray:
    """``exp(−2πi (kx dx + ky dy))`` (k in cycles/px) as an outer product (separable)."""
    ramp_y = np.exp(-2j * math.pi * dy * ky).astype(dtype)
    return ramp_y * np.exp(-2j * math.pi * dx * kx).astype(dtype)


def _sensitivity(rng: np.random.Generator, shape: tuple[int, int], gain_sd: float) -> np.ndarray:
    return np.clip(1.0 + gain_sd * rng.standard_normal(shape), 0.2, 1.8)


def make_gain_reference(shape: tuple[int, int], gain_sd: float, seed: int) -> np.ndarray:
    """A detector's gain reference (float32, raw × gain = corrected): the inverse of a
    per-pixel sensitivity ``1 + gain_sd · N(0, 1)`` (clipped to 0.2–1.8)."""
    shape = check_shape(shape)
    rng = np.random.default_rng(seed)
    return (1.0 / _sensitivity(rng, shape, gain_sd)).astype(np.float32)


def _check_movie_args(
    n_frames: int, dose_per_frame_e_per_A2: float, pixel_size_A: float, **kw: float
) -> None:
    if n_frames < 1:
        raise ValidationError(f"n_frames must be >= 1, got {n_frames}")
    if not dose_per_frame_e_per_A2 > 0:
        raise ValidationError(f"dose per frame must be > 0 e/Å², got {dose_per_frame_e_per_A2}")
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if not kw["early_decay_frames"] > 0:
        raise ValidationError(f"early_decay_frames must be > 0, got {kw['early_decay_frames']}")
    if not 0 <= kw["gain_sd"] < 0.5:
        raise ValidationError(f"gain_sd must be in [0, 0.5), got {kw['gain_sd']}")
    if not 0 < kw["contrast"] <= 0.5:
        raise ValidationError(f"contrast must be in (0, 0.5], got {kw['contrast']}")
    if not kw["local_motion_px"] >= 0:
        raise ValidationError(f"local_motion_px must be >= 0, got {kw['local_motion_px']}")


def simulate_movie(
    shape: tuple[int, int] = (1024, 1024),
    n_frames: int = 20,
    pixel_size_A: float = 1.0,
    dose_per_frame_e_per_A2: float = 1.0,
    drift_px_per_frame: tuple[float, float] = (0.5, -0.3),
    jitter_px: float = 0.2,
    defocus_u_A: float = 15000.0,
    defocus_v_A: float | None = None,
    angle_deg: float = 0.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    b_factor_A2: float = 60.0,
    n_particles: int = 50,
    particle_diameter_A: float = 150.0,
    ice_level: float = 0.3,
    seed: int = 0,
    *,
    drift_model: str = "linear",
    early_drift_px: tuple[float, float] = (0.0, 0.0),
    early_decay_frames: float = 3.0,
    local_motion_px: float = 0.0,
    dose_decay: bool = False,
    pre_exposure_e_per_A2: float = 0.0,
    gain_sd: float = 0.0,
    contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
    volume=None,
    gain_reference: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Simulate a dose-fractionated movie whose frames move by known shifts.

    Shifts (``drift_model``, see :func:`global_shifts`): ``"linear"`` (the default) is
    a drift of ``drift_px_per_frame`` (dx, dy) plus a gaussian random walk of
    ``jitter_px`` per frame; ``"smooth"`` is ``drift_px_per_frame · i +
    early_drift_px · (1 − exp(−i / early_decay_frames))``. Both relative to frame 0,
    whose shift is (0, 0). A feature at (x, y) in frame 0 is at (x + dx_i, y + dy_i) in
    frame i (plus the local motion, if any: :func:`displacement_px`).

    Parameters (beyond those of :func:`hpcem.sim.simulate_micrograph`)
    ----------
    local_motion_px : largest local displacement over the image at the last frame
        (0 = none); a smooth quadratic field growing like the early drift.
    dose_decay : attenuate each frame's spectrum for its exposure (Grant & Grigorieff
        2015), starting after ``pre_exposure_e_per_A2``.
    gain_sd : relative standard deviation of the per-pixel detector sensitivity
        (0 = a perfect detector); its inverse is ``truth["gain_reference"]``.
    gain_reference : a given gain reference (ny, nx) instead of a random one (the same
        detector for every movie of a dataset: :func:`make_gain_reference`).
    contrast : relative standard deviation of the clean, undamaged frame image.
    volume : as in :func:`hpcem.sim.simulate_micrograph` (particles from a real map).

    Returns
    -------
    frames : float32 (n_frames, ny, nx), raw electron counts (integers).
    truth : the dict of :func:`hpcem.sim.simulate_micrograph` plus ``shifts_px``
        (n_frames, 2) as (dx, dy), ``n_frames``, ``dose_per_frame_e_per_A2``,
        ``pre_exposure_e_per_A2``, ``dose_decay``, ``drift_model``, ``local_motion``
        (the model of :func:`local_displacement_px`, or None) and ``gain_reference``
        (float32 (ny, nx) such that raw × gain = corrected, or None).
    """
    shape = check_shape(shape)
    _check_movie_args(
        n_frames,
        dose_per_frame_e_per_A2,
        pixel_size_A,
        early_decay_frames=early_decay_frames,
        gain_sd=gain_sd,
        contrast=contrast,
        local_motion_px=local_motion_px,
    )
    rng = np.random.default_rng(seed)
    obj_ft, ctf, truth = specimen_ft(
        rng,
        shape,
        pixel_size_A,
        n_particles,
        particle_diameter_A,
        ice_level,
        defocus_u_A=defocus_u_A,
        defocus_v_A=defocus_v_A,
        angle_deg=angle_deg,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        b_factor_A2=b_factor_A2,
        phase_shift_deg=phase_shift_deg,
        volume=volume,
    )
    image_ft = obj_ft * ctf
    del obj_ft
    shifts = global_shifts(
        rng,
        n_frames,
        drift_model,
        drift_px_per_frame,
        jitter_px,
        early_drift_px,
        early_decay_frames,
    )
    truth["shifts_px"] = shifts
    truth["local_motion"] = (
        _local_model(rng, shape, n_frames, local_motion_px, early_decay_frames)
        if local_motion_px > 0
        else None
    )
    sensitivity = None
    if gain_reference is not None:
        gain_reference = np.asarray(gain_reference, dtype=np.float64)
        if gain_reference.shape != shape or not np.all(gain_reference > 0):
            raise ValidationError(
                f"gain reference must be positive and {shape}, got {gain_reference.shape}"
            )
        sensitivity = 1.0 / gain_reference
    elif gain_sd > 0:
        sensitivity = _sensitivity(rng, shape, gain_sd)

    # Frequencies in cycles per pixel for the phase ramps.
    ky, kx = frequency_grid(shape, 1.0, half=True)
    real_dtype = np.float32 if image_ft.dtype == np.complex64 else np.float64
    if dose_decay:  # exp(−N / (2 N_e(k))) = exp(−N · half_inverse_ne), see dose_attenuation
        k_A = np.sqrt(ky * ky + kx * kx) / pixel_size_A
        half_inverse_ne = 0.5 / critical_exposure_e_A2(k_A, voltage_kV)
    contrast_scale = (float(np.std(irfft2(image_ft, s=shape))) or 1.0) / contrast
    mean_counts = dose_per_frame_e_per_A2 * pixel_size_A**2
    frames = np.empty((n_frames, *shape), dtype=np.float32)
    for i, (dx, dy) in enumerate(shifts):
        frame_ft = image_ft
        if dose_decay:
            exposure = pre_exposure_e_per_A2 + dose_per_frame_e_per_A2 * (i + 0.5)
            frame_ft = frame_ft * np.exp(-exposure * half_inverse_ne).astype(real_dtype)
        if truth["local_motion"] is not None and i > 0:
            clean = _warp_local(irfft2(frame_ft, s=shape), truth, i)
            clean = irfft2(rfft2(clean) * _phase_ramp(ky, kx, dx, dy, image_ft.dtype), s=shape)
        else:
            clean = irfft2(frame_ft * _phase_ramp(ky, kx, dx, dy, image_ft.dtype), s=shape)
        expected = np.clip(mean_counts * (1.0 + clean / contrast_scale), 0.0, None)
        if sensitivity is not None:
            expected *= sensitivity
        frames[i] = rng.poisson(expected)
    truth.update(
        {
            "n_frames": int(n_frames),
            "dose_per_frame_e_per_A2": float(dose_per_frame_e_per_A2),
            "pre_exposure_e_per_A2": float(pre_exposure_e_per_A2),
            "dose_decay": bool(dose_decay),
            "drift_model": drift_model,
            "gain_reference": None
            if sensitivity is None
            else (1.0 / sensitivity).astype(np.float32),
            "seed": int(seed),
        }
    )
    return frames, truth
