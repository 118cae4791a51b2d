# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Movie alignment kernels: phase-ramp shift + (dose-)weighted accumulation, and the
leave-one-out cross-power spectrum, both on rfft half planes (complex64).

Arrays arrive as float32 views of complex64 data (``a.view(np.float32)``: real and
imaginary parts interleaved), and complex products are written out in real arithmetic:
C99 complex multiplication checks for NaN/Inf on every product (``__mulsc3``), which made
the first version slower than numpy.

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


cdef void _ramps(float[::1] rx, float[::1] ry, double ax, double ay) noexcept nogil:
    """Interleaved (re, im) phase factors along x (columns) and y (rows)."""
    cdef Py_ssize_t i, my = ry.shape[0] // 2, mxh = rx.shape[0] // 2
    cdef double f, phase
    for i in range(mxh):
        phase = -2.0 * M_PI * i * ax
        rx[2 * i] = <float>cos(phase)
        rx[2 * i + 1] = <float>sin(phase)
    for i in range(my):
        f = i if 2 * i < my else i - my
        phase = -2.0 * M_PI * f * ay
        ry[2 * i] = <float>cos(phase)
        ry[2 * i + 1] = <float>sin(phase)


def accumulate_shifted(
    float[:, ::1] out,
    const float[:, ::1] frame,
    double ax,
    double ay,
    const float[::1] weight_row=None,
    const int[:, ::1] bins=None,
):
    """``out += w · frame · ramp(ax, ay)``; ``w = weight_row[bins[y, x]]`` or 1.

    ``out`` and ``frame`` are float32 views (my, 2·mxh) of complex64 half planes.
    """
    cdef Py_ssize_t my = frame.shape[0], mxh = frame.shape[1] // 2
    if out.shape[0] != my or out.shape[1] != 2 * mxh:
        raise ValueError("out and frame must have the same shape")
    cdef bint weighted = weight_row is not None
    if weighted and (bins is None or bins.shape[0] != my or bins.shape[1] != mxh):
        raise ValueError("bins must have the frame's shape when weights are given")
    cdef Py_ssize_t nb = weight_row.shape[0] if weighted else 0
    if weighted and nb == 0:
        raise ValueError("empty weight table")
    if weighted and (np.min(bins) < 0 or np.max(bins) >= nb):
        raise IndexError(f"bins outside the weight table (0..{nb - 1})")
    rx_arr = np.empty(2 * mxh, dtype=np.float32)
    ry_arr = np.empty(2 * my, dtype=np.float32)
    cdef float[::1] rx = rx_arr
    cdef float[::1] ry = ry_arr
    cdef Py_ssize_t iy, ix
    cdef float yr, yi, pr, pi, fr, fi, gr, gi, w
    with nogil:
        _ramps(rx, ry, ax, ay)
        for iy in range(my):
            yr = ry[2 * iy]
            yi = ry[2 * iy + 1]
            for ix in range(mxh):
                pr = yr * rx[2 * ix] - yi * rx[2 * ix + 1]
                pi = yr * rx[2 * ix + 1] + yi * rx[2 * ix]
                fr = frame[iy, 2 * ix]
                fi = frame[iy, 2 * ix + 1]
                gr = fr * pr - fi * pi
                gi = fr * pi + fi * pr
                if weighted:
                    w = weight_row[bins[iy, ix]]
                    gr = gr * w
                    gi = gi * w
                out[iy, 2 * ix] += gr
                out[iy, 2 * ix + 1] += gi


def cross_power(
    const float[:, ::1] total,
    const float[:, ::1] frame,
    double ax,
    double ay,
    const float[:, ::1] filt,
):
    """``G · conj(total − G) · filt`` with ``G = frame · ramp(ax, ay)``, returned as a
    complex64 array (my, mxh); inputs are float32 views of complex64 half planes.

    Its inverse transform peaks at the displacement of the shifted frame relative to
    the sum of the other frames (``total`` minus its own contribution).
    """
    cdef Py_ssize_t my = frame.shape[0], mxh = frame.shape[1] // 2
    if (total.shape[0] != my or total.shape[1] != 2 * mxh or filt.shape[0] != my
            or filt.shape[1] != mxh):
        raise ValueError("total, frame and filt must have the same shape")
    out_arr = np.empty((my, mxh), dtype=np.complex64)
    cdef float[:, ::1] out = out_arr.view(np.float32)
    rx_arr = np.empty(2 * mxh, dtype=np.float32)
    ry_arr = np.empty(2 * my, dtype=np.float32)
    cdef float[::1] rx = rx_arr
    cdef float[::1] ry = ry_arr
    cdef Py_ssize_t iy, ix
    cdef float yr, yi, pr, pi, fr, fi, gr, gi, rr, ri, w
    with nogil:
        _ramps(rx, ry, ax, ay)
        for iy in range(my):
            yr = ry[2 * iy]
            yi = ry[2 * iy + 1]
            for ix in range(mxh):
                pr = yr * rx[2 * ix] - yi * rx[2 * ix + 1]
                pi = yr * rx[2 * ix + 1] + yi * rx[2 * ix]
                fr = frame[iy, 2 * ix]
                fi = frame[iy, 2 * ix + 1]
                gr = fr * pr - fi * pi
                gi = fr * pi + fi * pr
                rr = total[iy, 2 * ix] - gr
                ri = total[iy, 2 * ix + 1] - gi
                w = filt[iy, ix]
                # g · conj(r) = (gr + i gi)(rr − i ri)
                out[iy, 2 * ix] = (gr * rr + gi * ri) * w
                out[iy, 2 * ix + 1] = (gi * rr - gr * ri) * w
    return out_arr
