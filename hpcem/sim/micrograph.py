"""Simulated micrographs with known particles and CTF.

The object (particles in ice) and its CTF come from :mod:`hpcem.sim.specimen`; this
module adds the noise: gaussian at a given SNR (variance of the clean image over noise
variance), or shot noise (Poisson) for a given dose. Movies are in
:mod:`hpcem.sim.movie` (:func:`simulate_movie` is re-exported here for old imports).

All randomness comes from ``numpy.random.default_rng(seed)``: same arguments, same
image, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem.errors import ValidationError
from hpcem.sim.movie import simulate_movie
from hpcem.sim.specimen import check_shape, irfft2, specimen_ft

__all__ = ["simulate_micrograph", "simulate_movie"]

#: Relative standard deviation of the clean image in dose (counting) mode.
DEFAULT_CONTRAST = 0.1


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
    *,
    phase_shift_deg: float = 0.0,
    volume=None,
) -> tuple[np.ndarray, dict]:
    """Simulate one micrograph with known particles and CTF.

    Parameters
    ----------
    shape : (ny, nx) in pixels.
    defocus_u_A, defocus_v_A, angle_deg : CTF defocus (Å, positive = underfocus) and
        astigmatism angle (EMX conventions, see :mod:`hpcem.ctf.model`);
        ``defocus_v_A=None`` means no astigmatism.
    b_factor_A2 : envelope ``exp(−B k²/4)`` on the CTF.
    n_particles : particles asked for (fewer when they do not fit without overlap).
    particle_diameter_A : diameter of the blob phantoms (ignored with ``volume``).
    ice_level : standard deviation of the white "ice" object per pixel, relative to a
        particle's peak projected density of about 1.
    snr : variance of the clean (CTF-filtered) image over the variance of the added
        gaussian noise; ignored when ``dose_e_per_A2`` is given.
    dose_e_per_A2 : if given, the image is Poisson counts at this dose instead, with
        contrast such that the clean image has a relative standard deviation of 10%.
    seed : seed of the random generator; the result is a pure function of the arguments.
    phase_shift_deg : additional phase shift of the CTF (phase plate).
    volume : a :class:`hpcem.sim.volume.Volume` at ``pixel_size_A``: particles are its
        projections at uniformly random orientations (default: gaussian-blob phantoms).

    Returns
    -------
    image : float32 (ny, nx).
    truth : dict with ``coordinates_px`` (n, 2) particle centres as (x, y) in pixels,
        ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle`` (deg), ``phase_shift``
        (deg), ``pixel_size_A``, ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``,
        ``b_factor_A2``, ``ice_level``, ``snr``, ``dose_e_per_A2``, ``seed``; with a
        volume also ``angles_deg`` (n, 3): rot, tilt, psi of each particle.
    """
    shape = check_shape(shape)
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if not snr > 0:
        raise ValidationError(f"snr must be > 0, got {snr}")
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
    clean = irfft2(obj_ft * ctf, s=shape)
    image = _add_noise(rng, clean, pixel_size_A, snr, dose_e_per_A2)
    truth.update(
        {
            "snr": float(snr),
            "dose_e_per_A2": None if dose_e_per_A2 is None else float(dose_e_per_A2),
            "seed": int(seed),
        }
    )
    return image.astype(np.float32), truth


def _add_noise(
    rng: np.random.Generator,
    clean: np.ndarray,
    pixel_size_A: float,
    snr: float,
    dose_e_per_A2: float | None,
) -> np.ndarray:
    if dose_e_per_A2 is None:
        noise_sd = math.sqrt(float(np.var(clean)) / snr)
        dtype = np.float32 if clean.dtype == np.float32 else np.float64
        return clean + np.asarray(noise_sd, dtype) * rng.standard_normal(clean.shape, dtype)
    if not dose_e_per_A2 > 0:
        raise ValidationError(f"dose must be > 0 e/Å², got {dose_e_per_A2}")
    mean_counts = dose_e_per_A2 * pixel_size_A**2
    relative = DEFAULT_CONTRAST * clean / (float(np.std(clean)) or 1.0)
    expected = np.clip(mean_counts * (1.0 + relative), 0.0, None)
    return rng.poisson(expected).astype(np.float64)
