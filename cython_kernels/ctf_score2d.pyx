# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Correlation of a background-subtracted 2D power spectrum with a model CTF^2 (ctf.fit2d).

For every spectrum pixel p of the fit band the caller precomputes k^2, k^2 cos(2a),
k^2 sin(2a) and k^4 (a: azimuth of p). The wave aberration of an astigmatic CTF is then
linear in three defocus parameters:

    phase(p) = a_mean k^2 + a_c k^2 cos 2a + a_s k^2 sin 2a - a_cs k^4 + offset

with a_mean = pi lambda (U + V) / 2, (a_c, a_s) = pi lambda (U - V) / 2 (cos 2t, sin 2t),
a_cs = pi Cs lambda^3 / 2 and offset = arcsin(amplitude contrast) + phase shift, and the
oscillating part of CTF^2 = (1 - cos 2 phase) / 2 is m(p) = -cos(2 phase(p)). One call
returns sum(d m), sum(m) and sum(m m) over the pixels, from which the correlation of
data and model follows; nothing of size n_pixels is allocated. The cosine is a degree-12
polynomial after reduction to [0, pi/2] (error < 1e-8, several times faster than libm's
cos, which made this loop no faster than numpy's vectorised one). The numpy reference
is hpcem.ctf.fit2d.correlate_numpy.
"""

from libc.math cimport fabs, floor

cdef double TWO_PI = 6.283185307179586
cdef double INV_TWO_PI = 0.15915494309189535
cdef double PI = 3.141592653589793
cdef double HALF_PI = 1.5707963267948966


cdef inline double fast_cos(double x) noexcept nogil:
    """cos(x) to < 1e-8: x reduced to [-pi, pi], folded to [0, pi/2], Taylor to y^12."""
    cdef double y, y2, sign = 1.0
    y = fabs(x - TWO_PI * floor(x * INV_TWO_PI + 0.5))
    if y > HALF_PI:
        y = PI - y
        sign = -1.0
    y2 = y * y
    return sign * (1.0 + y2 * (-0.5 + y2 * (1.0 / 24.0 + y2 * (-1.0 / 720.0 + y2 * (
        1.0 / 40320.0 + y2 * (-1.0 / 3628800.0 + y2 * (1.0 / 479001600.0)))))))


def correlate(
    const double[::1] data,
    const double[::1] k2,
    const double[::1] k2c,
    const double[::1] k2s,
    const double[::1] k4,
    double a_mean,
    double a_c,
    double a_s,
    double a_cs,
    double offset,
):
    """Return (sum of data*m, sum of m, sum of m*m) with m = -cos(2 phase)."""
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t i
    cdef double phase, m, sdm = 0.0, sm = 0.0, smm = 0.0
    if k2.shape[0] != n or k2c.shape[0] != n or k2s.shape[0] != n or k4.shape[0] != n:
        raise ValueError("data, k2, k2c, k2s and k4 must have the same length")
    with nogil:
        for i in range(n):
            phase = a_mean * k2[i] + a_c * k2c[i] + a_s * k2s[i] - a_cs * k4[i] + offset
            m = -fast_cos(2.0 * phase)
            sdm = sdm + data[i] * m
            sm = sm + m
            smm = smm + m * m
    return sdm, sm, smm
