"""Simulated micrographs and movies with known particles, CTF and drift.

Image model (weak phase object, everything in one Fourier pass):

* **particles**: each is a random phantom of gaussian blobs (a stand-in for the
  projection of a small molecule in a random orientation) at a known centre;
* **ice**: a white random field of the same kind of contrast, which makes Thon rings
  reach the high frequencies as amorphous ice and carbon do in real micrographs;
* the object is multiplied by a known CTF (:func:`hpcem.ctf.model.ctf_2d`) with a
  B-factor envelope, then
* noise is added: gaussian at a given SNR (variance of the clean image over noise
  variance), or shot noise (Poisson) for a given dose.

All randomness comes from ``numpy.random.default_rng(seed)``: same arguments, same
image, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from hpcem.ctf.model import ctf_2d, frequency_grid
from hpcem.errors import ValidationError

BLOBS_PER_PARTICLE = 12


def _rfft2(a: np.ndarray) -> np.ndarray:
    # All cores; the result does not depend on the number of workers.
    return scipy.fft.rfft2(a, workers=-1)


def _irfft2(a: np.ndarray, s: tuple[int, int]) -> np.ndarray:
    return scipy.fft.irfft2(a, s=s, workers=-1)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 16:
        raise ValidationError(f"shape must be (ny, nx) with both >= 16, got {shape}")
    return int(shape[0]), int(shape[1])


def _particle_centres(
    rng: np.random.Generator, shape: tuple[int, int], n: int, diameter_px: float
) -> np.ndarray:
    """Up to ``n`` non-overlapping centres (y, x) inside the image, in pixels."""
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    margin = 0.5 * diameter_px
    low = np.array([margin, margin])
    high = np.array([shape[0] - margin, shape[1] - margin])
    if np.any(high <= low):
        raise ValidationError(f"particles of {diameter_px:.1f} px do not fit in {shape}")
    kept: list[np.ndarray] = []
    candidates = rng.uniform(low, high, size=(20 * max(n, 1), 2))
    for c in candidates:
        if len(kept) == n:
            break
        if not kept or np.min(np.hypot(*(np.array(kept) - c).T)) >= diameter_px:
            kept.append(c)
    return np.array(kept, dtype=np.float64).reshape(-1, 2)


def _splat(shape: tuple[int, int], points_yx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Deposit weighted points on the grid with bilinear weights (sub-pixel positions)."""
    image = np.zeros(shape, dtype=np.float64)
    y0 = np.floor(points_yx[:, 0]).astype(np.intp)
    x0 = np.floor(points_yx[:, 1]).astype(np.intp)
    fy = points_yx[:, 0] - y0
    fx = points_yx[:, 1] - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(image, ((y0 + dy) % shape[0], (x0 + dx) % shape[1]), weights * wy * wx)
    return image


def _object_ft(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_size_A: float,
    n_particles: int,
    particle_diameter_A: float,
    ice_level: float,
) -> tuple[np.ndarray, np.ndarray]:
    """rfft2 of the projected object (particles + ice) and the particle centres (y, x)."""
    diameter_px = particle_diameter_A / pixel_size_A
    centres = _particle_centres(rng, shape, n_particles, diameter_px)
    n = len(centres)
    # Blobs inside 0.35 diameters of the centre, each 4% of the diameter (>= 1.5 px) wide.
    radius = 0.35 * diameter_px * np.sqrt(rng.uniform(size=(n, BLOBS_PER_PARTICLE)))
    phi = rng.uniform(0, 2 * np.pi, size=(n, BLOBS_PER_PARTICLE))
    offsets = np.stack([radius * np.sin(phi), radius * np.cos(phi)], axis=-1)
    points = (centres[:, None, :] + offsets).reshape(-1, 2)
    weights = rng.uniform(0.5, 1.0, size=len(points))
    blob_sigma_A = max(1.5 * pixel_size_A, 0.04 * particle_diameter_A)

    ky, kx = frequency_grid(shape, pixel_size_A, half=True)
    k2 = ky * ky + kx * kx
    blob_ft = np.exp(-2.0 * math.pi**2 * blob_sigma_A**2 * k2)
    # Normalise so that a lone blob of weight 1 peaks at 1 (the gaussian's peak height).
    blob_peak = 1.0 / (2.0 * math.pi * (blob_sigma_A / pixel_size_A) ** 2)
    obj_ft = _rfft2(_splat(shape, points, weights)) * (blob_ft / blob_peak)
    if ice_level > 0:
        obj_ft += _rfft2(ice_level * rng.standard_normal(shape))
    return obj_ft, centres


def _ctf_image_ft(
    obj_ft: np.ndarray,
    shape: tuple[int, int],
    pixel_size_A: float,
    ctf_params: dict,
) -> np.ndarray:
    ctf = ctf_2d(shape, pixel_size_A, half=True, **ctf_params)
    return obj_ft * ctf


def simulate_micrograph(
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_A: float = 1.0,
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
    snr: float = 0.1,
    dose_e_per_A2: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Simulate one micrograph with known particles and CTF.

    Parameters
    ----------
    shape : (ny, nx) in pixels.
    defocus_u_A, defocus_v_A, angle_deg : CTF defocus (Å, positive = underfocus) and
        astigmatism angle (EMX conventions, see :mod:`hpcem.ctf.model`);
        ``defocus_v_A=None`` means no astigmatism.
    b_factor_A2 : envelope ``exp(−B k²/4)`` on the CTF.
    ice_level : standard deviation of the white "ice" object per pixel, relative to a
        blob peak of 1.
    snr : variance of the clean (CTF-filtered) image over the variance of the added
        gaussian noise; ignored when ``dose_e_per_A2`` is given.
    dose_e_per_A2 : if given, the image is Poisson counts at this dose instead, with
        contrast such that the clean image has a relative standard deviation of 10%.
    seed : seed of the random generator; the result is a pure function of the arguments.

    Returns
    -------
    image : float32 (ny, nx).
    truth : dict with ``coordinates_px`` (n, 2) particle centres as (x, y) in pixels,
        ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle`` (deg), ``pixel_size_A``,
        ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``, ``b_factor_A2``, ``snr``,
        ``dose_e_per_A2``, ``seed``.
    """
    shape = _check_shape(shape)
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if not snr > 0:
        raise ValidationError(f"snr must be > 0, got {snr}")
    rng = np.random.default_rng(seed)
    image_ft, truth = _specimen_ft(
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
    )
    clean = _irfft2(image_ft, s=shape)
    image = _add_noise(rng, clean, pixel_size_A, snr, dose_e_per_A2)
    truth.update(
        {
            "snr": float(snr),
            "dose_e_per_A2": None if dose_e_per_A2 is None else float(dose_e_per_A2),
            "seed": int(seed),
        }
    )
    return image.astype(np.float32), truth


def _specimen_ft(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_size_A: float,
    n_particles: int,
    particle_diameter_A: float,
    ice_level: float,
    *,
    defocus_u_A: float,
    defocus_v_A: float | None,
    angle_deg: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    b_factor_A2: float,
) -> tuple[np.ndarray, dict]:
    """The noise-free image (rfft half plane) of random particles through a known CTF,
    and the ground truth shared by micrographs and movies."""
    defocus_v_A = defocus_u_A if defocus_v_A is None else defocus_v_A
    ctf_params = {
        "defocus_u_A": defocus_u_A,
        "defocus_v_A": defocus_v_A,
        "angle_deg": angle_deg,
        "voltage_kV": voltage_kV,
        "cs_mm": cs_mm,
        "amplitude_contrast": amplitude_contrast,
        "b_factor_A2": b_factor_A2,
    }
    obj_ft, centres = _object_ft(
        rng, shape, pixel_size_A, n_particles, particle_diameter_A, ice_level
    )
    truth = {
        "coordinates_px": centres[:, ::-1].copy(),
        "defocus_u": float(defocus_u_A),
        "defocus_v": float(defocus_v_A),
        "defocus_angle": float(angle_deg),
        "pixel_size_A": float(pixel_size_A),
        "voltage_kV": float(voltage_kV),
        "cs_mm": float(cs_mm),
        "amplitude_contrast": float(amplitude_contrast),
        "b_factor_A2": float(b_factor_A2),
    }
    return _ctf_image_ft(obj_ft, shape, pixel_size_A, ctf_params), truth


def _add_noise(
    rng: np.random.Generator,
    clean: np.ndarray,
    pixel_size_A: float,
    snr: float,
    dose_e_per_A2: float | None,
) -> np.ndarray:
    if dose_e_per_A2 is None:
        noise_sd = math.sqrt(float(np.var(clean)) / snr)
        return clean + noise_sd * rng.standard_normal(clean.shape)
    if not dose_e_per_A2 > 0:
        raise ValidationError(f"dose must be > 0 e/Å², got {dose_e_per_A2}")
    mean_counts = dose_e_per_A2 * pixel_size_A**2
    relative = clean / (10.0 * (float(np.std(clean)) or 1.0))
    expected = np.clip(mean_counts * (1.0 + relative), 0.0, None)
    return rng.poisson(expected).astype(np.float64)


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
) -> tuple[np.ndarray, dict]:
    """Simulate a dose-fractionated movie whose frames drift by known shifts.

    Frame i is the CTF-filtered object translated by ``shifts_px[i]`` (sub-pixel, by a
    Fourier phase ramp; periodic boundary), with Poisson noise at
    ``dose_per_frame_e_per_A2``. Shifts are a linear drift of
    ``drift_px_per_frame`` (dx, dy) plus a gaussian random walk of ``jitter_px`` per
    frame, relative to frame 0 (whose shift is (0, 0)). A feature at (x, y) in frame 0
    is at (x + dx_i, y + dy_i) in frame i, so aligning means shifting frame i by −shift_i.

    Returns
    -------
    frames : float32 (n_frames, ny, nx), electron counts.
    truth : the dict of :func:`simulate_micrograph` plus ``shifts_px`` (n_frames, 2) as
        (dx, dy), ``n_frames`` and ``dose_per_frame_e_per_A2``.
    """
    shape = _check_shape(shape)
    if n_frames < 1:
        raise ValidationError(f"n_frames must be >= 1, got {n_frames}")
    if not dose_per_frame_e_per_A2 > 0:
        raise ValidationError(f"dose per frame must be > 0 e/Å², got {dose_per_frame_e_per_A2}")
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    rng = np.random.default_rng(seed)
    image_ft, truth = _specimen_ft(
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
    )

    steps = np.asarray(drift_px_per_frame, dtype=np.float64) + jitter_px * rng.standard_normal(
        (n_frames, 2)
    )
    steps[0] = 0.0
    shifts = np.cumsum(steps, axis=0)

    # Frequencies in cycles per pixel for the phase ramps.
    ky, kx = frequency_grid(shape, 1.0, half=True)
    contrast_scale = 10.0 * float(np.std(_irfft2(image_ft, s=shape))) or 1.0
    mean_counts = dose_per_frame_e_per_A2 * pixel_size_A**2
    frames = np.empty((n_frames, *shape), dtype=np.float32)
    for i, (dx, dy) in enumerate(shifts):
        ramp = np.exp(-2j * math.pi * (kx * dx + ky * dy))
        clean = _irfft2(image_ft * ramp, s=shape)
        expected = np.clip(mean_counts * (1.0 + clean / contrast_scale), 0.0, None)
        frames[i] = rng.poisson(expected)
    truth.update(
        {
            "shifts_px": shifts,
            "n_frames": int(n_frames),
            "dose_per_frame_e_per_A2": float(dose_per_frame_e_per_A2),
            "seed": int(seed),
        }
    )
    return frames, truth
