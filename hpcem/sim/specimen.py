"""The imaged object of a simulated micrograph or movie: particles in ice, through a CTF.

Image model (weak phase object, everything in one Fourier pass):

* **particles** at known, non-overlapping centres with sub-pixel positions: either
  projections of a real volume at known orientations (:mod:`hpcem.sim.projection`), or,
  when no volume is given, random phantoms of gaussian blobs (the historical default);
* **ice**: a white random field of the same kind of contrast, which makes Thon rings
  reach the high frequencies as amorphous ice and carbon do in real micrographs;
* the object is multiplied by a known CTF (:func:`hpcem.ctf.model.ctf_2d`) with a
  B-factor envelope.

Noise (gaussian at an SNR, or shot noise at a dose) is added by the callers
(:mod:`hpcem.sim.micrograph`, :mod:`hpcem.sim.movie`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from hpcem.ctf.model import ctf_2d, frequency_grid
from hpcem.errors import ValidationError

BLOBS_PER_PARTICLE = 12


def rfft2(a: np.ndarray) -> np.ndarray:
    """rfft2 on all cores; the result does not depend on the number of workers."""
    return scipy.fft.rfft2(a, workers=-1)


def irfft2(a: np.ndarray, s: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rfft2` for an image of shape ``s``."""
    return scipy.fft.irfft2(a, s=s, workers=-1)


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """``(ny, nx)`` as ints, both >= 16, or ValidationError."""
    if len(shape) != 2 or min(shape) < 16:
        raise ValidationError(f"shape must be (ny, nx) with both >= 16, got {shape}")
    return int(shape[0]), int(shape[1])


def particle_centres(
    rng: np.random.Generator, shape: tuple[int, int], n: int, diameter_px: float
) -> np.ndarray:
    """Up to ``n`` non-overlapping centres (y, x) inside the image, in pixels.

    Centres are at least one diameter apart and half a diameter from the edges; fewer
    than ``n`` come back when the image is too crowded (rejection sampling).
    """
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float64)
    margin = 0.5 * diameter_px
    low = np.array([margin, margin])
    high = np.array([shape[0] - margin, shape[1] - margin])
    if np.any(high <= low):
        raise ValidationError(f"particles of {diameter_px:.1f} px do not fit in {shape}")
    kept = np.empty((n, 2))
    count = 0
    candidates = rng.uniform(low, high, size=(20 * max(n, 1), 2))
    for c in candidates:
        if count == n:
            break
        if count == 0 or np.min(np.hypot(*(kept[:count] - c).T)) >= diameter_px:
            kept[count] = c
            count += 1
    return kept[:count].copy()


def n_particles_for_fill(shape: tuple[int, int], diameter_px: float, fill_fraction: float) -> int:
    """Number of particles whose discs cover ``fill_fraction`` of the image area."""
    if not 0 <= fill_fraction <= 0.6:
        raise ValidationError(f"fill fraction must be in [0, 0.6], got {fill_fraction}")
    area = shape[0] * shape[1]
    return round(fill_fraction * area / (math.pi * (0.5 * diameter_px) ** 2))


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


def _blob_particles_ft(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_size_A: float,
    centres: np.ndarray,
    particle_diameter_A: float,
) -> np.ndarray:
    """rfft2 of gaussian-blob phantoms at ``centres`` (y, x)."""
    diameter_px = particle_diameter_A / pixel_size_A
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
    return rfft2(_splat(shape, points, weights)) * (blob_ft / blob_peak)


def object_ft(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_size_A: float,
    n_particles: int,
    particle_diameter_A: float,
    ice_level: float,
    volume=None,
) -> tuple[np.ndarray, dict]:
    """rfft2 of the projected object (particles + ice) and the particles' truth.

    With ``volume`` (a :class:`hpcem.sim.volume.Volume` at ``pixel_size_A``) particles
    are its projections at uniformly random orientations, and the particle diameter is
    the volume's; otherwise gaussian-blob phantoms of ``particle_diameter_A``.

    Returns the half-plane spectrum and ``{"centres_yx": (n, 2), "angles_deg": (n, 3)
    or None}``; a centre is where the volume's centre (its box centre, ``N // 2``)
    projects, to sub-pixel precision.
    """
    if volume is not None:
        if abs(volume.pixel_size_A - pixel_size_A) > 1e-6 * pixel_size_A:
            raise ValidationError(
                f"volume has {volume.pixel_size_A} Å/px, the image {pixel_size_A} Å/px; "
                "resample it first (hpcem.sim.volume)"
            )
        particle_diameter_A = volume.diameter_A
    diameter_px = particle_diameter_A / pixel_size_A
    centres = particle_centres(rng, shape, n_particles, diameter_px)
    angles = None
    if volume is None:
        obj_ft = _blob_particles_ft(rng, shape, pixel_size_A, centres, particle_diameter_A)
        if ice_level > 0:
            obj_ft += rfft2(ice_level * rng.standard_normal(shape))
    else:
        from hpcem.sim.projection import place_projections, random_orientations

        angles = random_orientations(rng, len(centres))
        obj = place_projections(volume, angles, centres, shape)
        if ice_level > 0:
            obj += ice_level * rng.standard_normal(shape, dtype=np.float32)
        obj_ft = rfft2(obj)  # float32 in, complex64 out: half the time of float64
    return obj_ft, {"centres_yx": centres, "angles_deg": angles}


def specimen_ft(
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
    phase_shift_deg: float = 0.0,
    volume=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The object spectrum, the CTF (rfft half plane) and the ground truth shared by
    micrographs and movies. The noise-free image is ``irfft2(object * ctf)``."""
    defocus_v_A = defocus_u_A if defocus_v_A is None else defocus_v_A
    obj_ft, particles = object_ft(
        rng, shape, pixel_size_A, n_particles, particle_diameter_A, ice_level, volume
    )
    ctf = ctf_2d(
        shape,
        pixel_size_A,
        defocus_u_A=defocus_u_A,
        defocus_v_A=defocus_v_A,
        angle_deg=angle_deg,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        b_factor_A2=b_factor_A2,
        half=True,
    )
    if obj_ft.dtype == np.complex64:
        ctf = ctf.astype(np.float32)  # keep the single-precision path of volume particles
    centres = particles["centres_yx"]
    truth = {
        "coordinates_px": centres[:, ::-1].copy(),
        "defocus_u": float(defocus_u_A),
        "defocus_v": float(defocus_v_A),
        "defocus_angle": float(angle_deg),
        "phase_shift": float(phase_shift_deg),
        "pixel_size_A": float(pixel_size_A),
        "voltage_kV": float(voltage_kV),
        "cs_mm": float(cs_mm),
        "amplitude_contrast": float(amplitude_contrast),
        "b_factor_A2": float(b_factor_A2),
        "ice_level": float(ice_level),
    }
    if particles["angles_deg"] is not None:
        truth["angles_deg"] = particles["angles_deg"]
    return obj_ft, ctf, truth
