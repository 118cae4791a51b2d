# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Rotate-and-accumulate for the M-step of 2D classification (hpcem.classify.em2d).

``rotate_add(out, image, angle_deg)`` adds ``image`` rotated by ``angle_deg`` (the psi
sense of :func:`hpcem.classify.align2d.rotate_images`: ``out(x, y) += in(x cos a -
y sin a, x sin a + y cos a)`` about pixel N//2, bilinear, 0 outside) into ``out`` in
place, without the temporary arrays of ``scipy.ndimage.map_coordinates``. The pure-numpy
reference is :func:`hpcem.classify.align2d.rotate_images` (order 1) plus an addition.
"""

from cython cimport floating
from libc.math cimport M_PI, cos, floor, sin


def rotate_add(double[:, ::1] out, const floating[:, ::1] image, double angle_deg):
    """``out += rotate(image, angle_deg)`` (both N x N; bilinear; 0 outside the box)."""
    cdef Py_ssize_t n = image.shape[0]
    cdef Py_ssize_t m = image.shape[1]
    cdef Py_ssize_t c = n // 2
    cdef double t = angle_deg * M_PI / 180.0
    cdef double cs = cos(t), sn = sin(t)
    cdef Py_ssize_t i, j, x0, y0
    cdef double x, y, xs, ys, fx, fy, v00, v01, v10, v11
    with nogil:
        for i in range(n):
            y = <double>(i - c)
            for j in range(m):
                x = <double>(j - c)
                xs = cs * x - sn * y + c
                ys = sn * x + cs * y + c
                if xs <= -1.0 or ys <= -1.0 or xs >= m or ys >= n:
                    continue
                x0 = <Py_ssize_t>floor(xs)
                y0 = <Py_ssize_t>floor(ys)
                fx = xs - x0
                fy = ys - y0
                v00 = image[y0, x0] if (y0 >= 0 and x0 >= 0) else 0.0
                v01 = image[y0, x0 + 1] if (y0 >= 0 and x0 + 1 < m) else 0.0
                v10 = image[y0 + 1, x0] if (y0 + 1 < n and x0 >= 0) else 0.0
                v11 = image[y0 + 1, x0 + 1] if (y0 + 1 < n and x0 + 1 < m) else 0.0
                out[i, j] += (
                    (1.0 - fy) * ((1.0 - fx) * v00 + fx * v01) + fy * ((1.0 - fx) * v10 + fx * v11)
                )
