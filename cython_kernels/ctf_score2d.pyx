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
data and model follows; nothing of size n_pixels is allocated. The numpy reference is
hpcem.ctf.fit2d.correlate_numpy.
"""

from libc.math cimport cos


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
            m = -cos(2.0 * phase)
            sdm = sdm + data[i] * m
            sm = sm + m
            smm = smm + m * m
    return sdm, sm, smm
