# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Movie alignment kernels: phase-ramp shift + (dose-)weighted accumulation, and the
leave-one-out cross-power spectrum, both on rfft half planes (complex64).

Frequencies: row ``r`` of an ``m``-row half plane is frequency ``r`` for ``r < m/2`` and
``r - m`` otherwise; column ``c`` is frequency ``c``. A shift is given as
``(ax, ay) = (shift_x / nx, shift_y / ny)`` in cycles per field of view of the *full*
frame, so the same call works on Fourier-cropped copies. The ramp is
``exp(-2πi (fx·ax + fy·ay))`` (a real-space translation by ``+shift``), built separably
from one row and one column of phase factors.

The pure-numpy references are in hpcem.motion.fourier (same definitions; tests compare).
"""

import numpy as np

from libc.math cimport cos, sin, M_PI


cdef void _ramps(float complex[::1] rx, float complex[::1] ry, double ax, double ay) noexcept nogil:
    cdef Py_ssize_t i, my = ry.shape[0], mxh = rx.shape[0]
    cdef double f, phase
    for i in range(mxh):
        phase = -2.0 * M_PI * i * ax
        rx[i] = <float>cos(phase) + 1j * <float>sin(phase)
    for i in range(my):
        f = i if 2 * i < my else i - my
        phase = -2.0 * M_PI * f * ay
        ry[i] = <float>cos(phase) + 1j * <float>sin(phase)


def accumulate_shifted(
    float complex[:, ::1] out,
    const float complex[:, ::1] frame,
    double ax,
    double ay,
    const float[::1] weight_row=None,
    const int[:, ::1] bins=None,
):
    """``out += w · frame · ramp(ax, ay)``; ``w = weight_row[bins[y, x]]`` or 1."""
    cdef Py_ssize_t my = frame.shape[0], mxh = frame.shape[1]
    if out.shape[0] != my or out.shape[1] != mxh:
        raise ValueError("out and frame must have the same shape")
    cdef bint weighted = weight_row is not None
    if weighted and (bins is None or bins.shape[0] != my or bins.shape[1] != mxh):
        raise ValueError("bins must have the frame's shape when weights are given")
    rx_arr = np.empty(mxh, dtype=np.complex64)
    ry_arr = np.empty(my, dtype=np.complex64)
    cdef float complex[::1] rx = rx_arr
    cdef float complex[::1] ry = ry_arr
    cdef Py_ssize_t iy, ix, nb = weight_row.shape[0] if weighted else 0
    cdef float complex r
    cdef int b
    with nogil:
        _ramps(rx, ry, ax, ay)
        for iy in range(my):
            for ix in range(mxh):
                r = frame[iy, ix] * (ry[iy] * rx[ix])
                if weighted:
                    b = bins[iy, ix]
                    if b < 0 or b >= nb:
                        with gil:
                            raise IndexError(f"bin {b} outside the weight table ({nb})")
                    r = r * weight_row[b]
                out[iy, ix] = out[iy, ix] + r


def cross_power(
    const float complex[:, ::1] total,
    const float complex[:, ::1] frame,
    double ax,
    double ay,
    const float[:, ::1] filt,
):
    """``G · conj(total − G) · filt`` with ``G = frame · ramp(ax, ay)`` (complex64).

    Its inverse transform peaks at the displacement of the shifted frame relative to
    the sum of the other frames (``total`` minus its own contribution).
    """
    cdef Py_ssize_t my = frame.shape[0], mxh = frame.shape[1]
    if total.shape[0] != my or total.shape[1] != mxh or filt.shape[0] != my or filt.shape[1] != mxh:
        raise ValueError("total, frame and filt must have the same shape")
    out_arr = np.empty((my, mxh), dtype=np.complex64)
    cdef float complex[:, ::1] out = out_arr
    rx_arr = np.empty(mxh, dtype=np.complex64)
    ry_arr = np.empty(my, dtype=np.complex64)
    cdef float complex[::1] rx = rx_arr
    cdef float complex[::1] ry = ry_arr
    cdef Py_ssize_t iy, ix
    cdef float complex g, rest
    with nogil:
        _ramps(rx, ry, ax, ay)
        for iy in range(my):
            for ix in range(mxh):
                g = frame[iy, ix] * (ry[iy] * rx[ix])
                rest = total[iy, ix] - g
                out[iy, ix] = g * rest.conjugate() * filt[iy, ix]
    return out_arr
