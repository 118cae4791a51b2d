"""Pure-numpy reference of the rotational / elliptical average kernel.

Same definition as ``cython_kernels/radial.pyx`` (see there); used to test the kernel
and as the fallback when the compiled module is missing.
"""

from __future__ import annotations

import numpy as np


def radial_average_numpy(
    spectrum: np.ndarray,
    n_bins: int,
    center_y: float,
    center_x: float,
    scale_u: float = 1.0,
    scale_v: float = 1.0,
    angle_rad: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (average, weight) over radial bins 0..n_bins-1 (bin width 1 pixel)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    ny, nx = spectrum.shape
    dy = (np.arange(ny, dtype=np.float64) - center_y)[:, None]
    dx = (np.arange(nx, dtype=np.float64) - center_x)[None, :]
    ca, sa = np.cos(angle_rad), np.sin(angle_rad)
    u = scale_u * (dx * ca + dy * sa)
    v = scale_v * (-dx * sa + dy * ca)
    r = np.sqrt(u * u + v * v).ravel()
    values = np.asarray(spectrum, dtype=np.float64).ravel()
    keep = r < n_bins
    r, values = r[keep], values[keep]
    i0 = np.floor(r).astype(np.intp)
    f = r - i0
    sums = np.bincount(i0, (1 - f) * values, n_bins + 1)
    sums += np.bincount(i0 + 1, f * values, n_bins + 1)
    weights = np.bincount(i0, 1 - f, n_bins + 1) + np.bincount(i0 + 1, f, n_bins + 1)
    average = np.zeros(n_bins)
    weight = weights[:n_bins]
    np.divide(sums[:n_bins], weight, out=average, where=weight > 0)
    return average, weight.copy()


def sector_average_numpy(
    spectrum: np.ndarray,
    n_bins: int,
    n_sectors: int,
    center_y: float,
    center_x: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial averages in ``n_sectors`` sectors of azimuth mod 180°, shape (n_sectors, n_bins).

    Same definition as ``sector_average`` in ``cython_kernels/radial.pyx``.
    """
    if n_bins < 1 or n_sectors < 1:
        raise ValueError("n_bins and n_sectors must be >= 1")
    ny, nx = spectrum.shape
    dy = (np.arange(ny, dtype=np.float64) - center_y)[:, None]
    dx = (np.arange(nx, dtype=np.float64) - center_x)[None, :]
    r = np.sqrt(dx * dx + dy * dy).ravel()
    a = np.arctan2(dy, dx) * np.ones_like(dx)
    a = np.where(a < 0, a + np.pi, a).ravel()
    sector = (a * (n_sectors / np.pi)).astype(np.intp)
    sector[sector >= n_sectors] -= n_sectors
    values = np.asarray(spectrum, dtype=np.float64).ravel()
    keep = r < n_bins
    r, values, sector = r[keep], values[keep], sector[keep]
    i0 = np.floor(r).astype(np.intp)
    f = r - i0
    width = n_bins + 1
    flat0 = sector * width + i0
    size = n_sectors * width
    sums = np.bincount(flat0, (1 - f) * values, size) + np.bincount(flat0 + 1, f * values, size)
    weights = np.bincount(flat0, 1 - f, size) + np.bincount(flat0 + 1, f, size)
    sums = sums.reshape(n_sectors, width)[:, :n_bins]
    weight = weights.reshape(n_sectors, width)[:, :n_bins].copy()
    average = np.zeros((n_sectors, n_bins))
    np.divide(sums, weight, out=average, where=weight > 0)
    return average, weight
