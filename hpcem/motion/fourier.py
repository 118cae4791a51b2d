"""Fourier-space frame operations of movie alignment: compiled kernel or numpy reference.

Both work on rfft half planes (complex64) and take a shift as ``(ax, ay) = (shift_x / nx,
shift_y / ny)``: cycles per field of view of the *full* frame, so the same call serves a
Fourier-cropped copy. The phase ramp ``exp(−2πi (fx·ax + fy·ay))`` translates the image
by ``+shift`` in real space. ``cython_kernels/motion.pyx`` implements the same two
definitions; :func:`backend` says which one this process uses.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem import kernels

KERNEL = "motion"


def backend() -> str:
    """``"cython"`` or ``"numpy"``: which implementation the functions below use."""
    return kernels.backend(KERNEL)


def signed_frequencies(n: int) -> np.ndarray:
    """Integer frequency of each of ``n`` rows of a (possibly cropped) spectrum."""
    i = np.arange(n)
    return np.where(2 * i < n, i, i - n)


def phase_ramp(shape: tuple[int, int], ax: float, ay: float) -> np.ndarray:
    """``exp(−2πi (fx·ax + fy·ay))`` on a half plane of ``shape`` (complex64), separable."""
    my, mxh = shape
    rx = np.exp(-2j * math.pi * ax * np.arange(mxh)).astype(np.complex64)
    ry = np.exp(-2j * math.pi * ay * signed_frequencies(my)).astype(np.complex64)
    return ry[:, None] * rx[None, :]


def accumulate_shifted_numpy(
    out: np.ndarray,
    frame: np.ndarray,
    ax: float,
    ay: float,
    weight_row: np.ndarray | None = None,
    bins: np.ndarray | None = None,
) -> None:
    """Reference: ``out += w · frame · ramp(ax, ay)``, ``w = weight_row[bins]`` or 1."""
    shifted = frame * phase_ramp(frame.shape, ax, ay)
    if weight_row is not None:
        shifted *= weight_row[bins]
    out += shifted


def cross_power_numpy(
    total: np.ndarray, frame: np.ndarray, ax: float, ay: float, filt: np.ndarray
) -> np.ndarray:
    """Reference: ``G · conj(total − G) · filt`` with ``G = frame · ramp(ax, ay)``."""
    g = frame * phase_ramp(frame.shape, ax, ay)
    return (g * np.conj(total - g) * filt).astype(np.complex64)


def accumulate_shifted(
    out: np.ndarray,
    frame: np.ndarray,
    ax: float,
    ay: float,
    weight_row: np.ndarray | None = None,
    bins: np.ndarray | None = None,
) -> None:
    """``out += w · frame · ramp(ax, ay)`` in place (kernel when built)."""
    mod = kernels.load(KERNEL)
    if mod is None:
        accumulate_shifted_numpy(out, frame, ax, ay, weight_row, bins)
    else:
        mod.accumulate_shifted(
            out.view(np.float32), frame.view(np.float32), float(ax), float(ay), weight_row, bins
        )


def cross_power(
    total: np.ndarray, frame: np.ndarray, ax: float, ay: float, filt: np.ndarray
) -> np.ndarray:
    """Leave-one-out cross-power spectrum (kernel when built); see the module docs."""
    mod = kernels.load(KERNEL)
    if mod is None:
        return cross_power_numpy(total, frame, ax, ay, filt)
    return mod.cross_power(
        total.view(np.float32), frame.view(np.float32), float(ax), float(ay), filt
    )
