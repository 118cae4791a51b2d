"""Particles with known poses and CTFs, as extraction leaves them: for tests, benchmarks
and figures of the reconstruction.

Each particle is the projection of a :class:`hpcem.sim.volume.Volume` at a uniformly
random orientation and shift (±``max_shift_px``), multiplied by its own CTF (defocus
10,000-25,000 Å, up to 800 Å astigmatism) in RELION's sign (so that the images have the
contrast of extracted, contrast-inverted particles), with white gaussian noise of
variance signal variance / ``snr`` (``snr`` = 0: none). The record says how it was made:
poses, shifts in Å with RELION 3.1's origin sign (centre = box centre − shift), CTFs.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from hpcem.reconstruct.fourier import relion_ctfs

VOLTAGE_KV = 300.0
CS_MM = 2.7
AMPLITUDE_CONTRAST = 0.1


def simulate_particles(
    volume, n: int, snr: float = 0.0, seed: int = 0, max_shift_px: float = 3.0
) -> dict:
    """``{"images" (n, N, N) float32, "angles" (n, 3), "shift_x", "shift_y" (Å),
    "defocus_u", "defocus_v", "defocus_angle", "half_set", "voltage_kV", "cs_mm",
    "amplitude_contrast", "pixel_size_A"}`` (see the module doc)."""
    from hpcem.sim.projection import random_orientations

    rng = np.random.default_rng(seed)
    box, pixel = volume.box_px, volume.pixel_size_A
    angles = random_orientations(rng, n)
    shifts_px = rng.uniform(-max_shift_px, max_shift_px, size=(n, 2))
    du = rng.uniform(10000.0, 25000.0, n)
    dv = du - rng.uniform(0.0, 800.0, n)
    da = rng.uniform(0.0, 180.0, n)
    images = np.empty((n, box, box), dtype=np.float32)
    projector = volume.projector()
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        ft = projector.project_ft(angles[start:stop], shifts_px[start:stop])
        ctf = relion_ctfs(
            box,
            pixel,
            du[start:stop],
            dv[start:stop],
            da[start:stop],
            VOLTAGE_KV,
            CS_MM,
            AMPLITUDE_CONTRAST,
        )
        images[start:stop] = scipy.fft.irfft2(ft * ctf, s=(box, box), workers=1)
    if snr > 0:
        sigma = float(images.std()) / np.sqrt(snr)
        images += rng.normal(0.0, sigma, images.shape).astype(np.float32)
    return {
        "images": images,
        "angles": angles,
        "shift_x": -shifts_px[:, 0] * pixel,
        "shift_y": -shifts_px[:, 1] * pixel,
        "defocus_u": du,
        "defocus_v": dv,
        "defocus_angle": da,
        "half_set": 1 + np.arange(n) % 2,
        "voltage_kV": VOLTAGE_KV,
        "cs_mm": CS_MM,
        "amplitude_contrast": AMPLITUDE_CONTRAST,
        "pixel_size_A": pixel,
    }


def particle_columns(sim: dict, stack: str) -> tuple[dict, dict]:
    """(columns, optics) of an hpcem particle set for ``sim`` stored in ``stack``."""
    n = len(sim["images"])
    columns = {
        "image": [str(stack)] * n,
        "image_index": np.arange(n),
        "rot": sim["angles"][:, 0],
        "tilt": sim["angles"][:, 1],
        "psi": sim["angles"][:, 2],
        "shift_x": sim["shift_x"],
        "shift_y": sim["shift_y"],
        "defocus_u": sim["defocus_u"],
        "defocus_v": sim["defocus_v"],
        "defocus_angle": sim["defocus_angle"],
        "half_set": sim["half_set"],
    }
    optics = {
        "optics_group": [1],
        "voltage_kV": [sim["voltage_kV"]],
        "spherical_aberration_mm": [sim["cs_mm"]],
        "amplitude_contrast": [sim["amplitude_contrast"]],
        "pixel_size_A": [sim["pixel_size_A"]],
        "image_size_px": [sim["images"].shape[-1]],
    }
    return columns, optics
