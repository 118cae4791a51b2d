# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Rotational (and elliptical) average of a 2D power spectrum, with linear interpolation.

Each pixel at offset (dy, dx) from the centre is given the effective radius

    r = sqrt((su * u)**2 + (sv * v)**2),  u = dx cos(a) + dy sin(a),  v = -dx sin(a) + dy cos(a)

(plain radius when su = sv = 1) and shares its value between bins floor(r) and
floor(r) + 1 with weights 1 - f and f (f the fractional part). With
su = sqrt(defocus_u / mean), sv = sqrt(defocus_v / mean) and a the astigmatism angle,
the ellipses of constant r follow the Thon rings of an astigmatic CTF (Cs neglected).
The pure-numpy reference is hpcem.ctf.radial_numpy.radial_average_numpy.
"""

import numpy as np

from cython cimport floating
from libc.math cimport M_PI, atan2, cos, floor, sin, sqrt


def radial_average(
    const floating[:, ::1] spectrum,
    Py_ssize_t n_bins,
    double center_y,
    double center_x,
    double scale_u=1.0,
    double scale_v=1.0,
    double angle_rad=0.0,
):
    """Return (average, weight), two float64 arrays of length n_bins.

    Bins that no pixel reaches have average 0 and weight 0.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    sums_arr = np.zeros(n_bins + 1, dtype=np.float64)
    weights_arr = np.zeros(n_bins + 1, dtype=np.float64)
    cdef double[::1] sums = sums_arr
    cdef double[::1] weights = weights_arr
    cdef Py_ssize_t ny = spectrum.shape[0]
    cdef Py_ssize_t nx = spectrum.shape[1]
    cdef Py_ssize_t iy, ix, i0
    cdef double ca = cos(angle_rad), sa = sin(angle_rad)
    cdef double dy, dx, u, v, r, f, value
    cdef double r_max = <double>n_bins
    with nogil:
        for iy in range(ny):
            dy = iy - center_y
            for ix in range(nx):
                dx = ix - center_x
                u = scale_u * (dx * ca + dy * sa)
                v = scale_v * (-dx * sa + dy * ca)
                r = sqrt(u * u + v * v)
                if r >= r_max:
                    continue
                i0 = <Py_ssize_t>floor(r)
                f = r - i0
                value = spectrum[iy, ix]
                sums[i0] += (1.0 - f) * value
                weights[i0] += 1.0 - f
                sums[i0 + 1] += f * value
                weights[i0 + 1] += f
    average = np.zeros(n_bins, dtype=np.float64)
    weight = weights_arr[:n_bins]
    np.divide(sums_arr[:n_bins], weight, out=average, where=weight > 0)
    return average, weight.copy()


def sector_average(
    const floating[:, ::1] spectrum,
    Py_ssize_t n_bins,
    Py_ssize_t n_sectors,
    double center_y,
    double center_x,
):
    """Radial averages in ``n_sectors`` azimuthal sectors of [0, 180) degrees.

    A pixel at offset (dy, dx) belongs to sector floor(n_sectors * a / pi) with
    a = atan2(dy, dx) mod pi (a power spectrum is point-symmetric, so azimuths a and
    a + pi are the same), sector s centred on (s + 0.5) * pi / n_sectors; along the radius
    it is shared between bins as in radial_average. Returns (average, weight), float64
    arrays of shape (n_sectors, n_bins).
    """
    if n_bins < 1 or n_sectors < 1:
        raise ValueError("n_bins and n_sectors must be >= 1")
    sums_arr = np.zeros((n_sectors, n_bins + 1), dtype=np.float64)
    weights_arr = np.zeros((n_sectors, n_bins + 1), dtype=np.float64)
    cdef double[:, ::1] sums = sums_arr
    cdef double[:, ::1] weights = weights_arr
    cdef Py_ssize_t ny = spectrum.shape[0]
    cdef Py_ssize_t nx = spectrum.shape[1]
    cdef Py_ssize_t iy, ix, i0, s
    cdef double dy, dx, r, f, value, a
    cdef double r_max = <double>n_bins
    cdef double per_rad = n_sectors / M_PI
    with nogil:
        for iy in range(ny):
            dy = iy - center_y
            for ix in range(nx):
                dx = ix - center_x
                r = sqrt(dx * dx + dy * dy)
                if r >= r_max:
                    continue
                a = atan2(dy, dx)
                if a < 0:
                    a = a + M_PI
                s = <Py_ssize_t>(a * per_rad)
                if s >= n_sectors:
                    s = s - n_sectors
                i0 = <Py_ssize_t>floor(r)
                f = r - i0
                value = spectrum[iy, ix]
                sums[s, i0] += (1.0 - f) * value
                weights[s, i0] += 1.0 - f
                sums[s, i0 + 1] += f * value
                weights[s, i0 + 1] += f
    average = np.zeros((n_sectors, n_bins), dtype=np.float64)
    weight = weights_arr[:, :n_bins]
    np.divide(sums_arr[:, :n_bins], weight, out=average, where=weight > 0)
    return average, weight.copy()
