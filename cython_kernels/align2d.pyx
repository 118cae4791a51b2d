# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Bilinear rotations for 2D classification (hpcem.classify): the M-step's rotate-and-add
and the rotated references of the search.

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


def rotate_add_pairs(
    double[:, :, :, ::1] sums,
    const float[:, :, ::1] images,
    const float[:, :, ::1] weights,
    const Py_ssize_t[::1] classes,
    const double[::1] angles_deg,
):
    """For every j: ``sums[0, classes[j]] += rotate(images[j], angles_deg[j])`` and
    ``sums[1, classes[j]] += rotate(weights[j], angles_deg[j])`` (all N x N; bilinear, 0
    outside the box). The M-step of hpcem.classify.em2d in one call: one set of
    interpolation weights per pixel serves both images, and no Python per particle."""
    cdef Py_ssize_t count = images.shape[0]
    cdef Py_ssize_t n = images.shape[1]
    cdef Py_ssize_t m = images.shape[2]
    cdef Py_ssize_t c = n // 2
    cdef Py_ssize_t p, i, j, k, x0, y0
    cdef double t, cs, sn, x, y, xs, ys, fx, fy, w00, w01, w10, w11
    cdef bint in00, in01, in10, in11
    if weights.shape[0] != count or classes.shape[0] != count or angles_deg.shape[0] != count:
        raise ValueError("images, weights, classes and angles_deg differ in length")
    if weights.shape[1] != n or weights.shape[2] != m or sums.shape[2] != n or sums.shape[3] != m:
        raise ValueError("images, weights and sums differ in size")
    for p in range(count):
        if classes[p] < 0 or classes[p] >= sums.shape[1]:
            raise ValueError(f"class {classes[p]} outside 0..{sums.shape[1] - 1}")
    with nogil:
        for p in range(count):
            k = classes[p]
            t = angles_deg[p] * M_PI / 180.0
            cs = cos(t)
            sn = sin(t)
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
                    w00 = (1.0 - fy) * (1.0 - fx)
                    w01 = (1.0 - fy) * fx
                    w10 = fy * (1.0 - fx)
                    w11 = fy * fx
                    in00 = y0 >= 0 and x0 >= 0
                    in01 = y0 >= 0 and x0 + 1 < m
                    in10 = y0 + 1 < n and x0 >= 0
                    in11 = y0 + 1 < n and x0 + 1 < m
                    if in00:
                        sums[0, k, i, j] += w00 * images[p, y0, x0]
                        sums[1, k, i, j] += w00 * weights[p, y0, x0]
                    if in01:
                        sums[0, k, i, j] += w01 * images[p, y0, x0 + 1]
                        sums[1, k, i, j] += w01 * weights[p, y0, x0 + 1]
                    if in10:
                        sums[0, k, i, j] += w10 * images[p, y0 + 1, x0]
                        sums[1, k, i, j] += w10 * weights[p, y0 + 1, x0]
                    if in11:
                        sums[0, k, i, j] += w11 * images[p, y0 + 1, x0 + 1]
                        sums[1, k, i, j] += w11 * weights[p, y0 + 1, x0 + 1]


def rotate_stack(float[:, :, ::1] out, const float[:, ::1] image, const double[::1] angles_deg):
    """``out[r] = rotate(image, angles_deg[r])`` for every r (bilinear, 0 outside the box):
    the rotated references of hpcem.classify.align2d.rotated_references_ft."""
    cdef Py_ssize_t count = out.shape[0]
    cdef Py_ssize_t n = image.shape[0]
    cdef Py_ssize_t m = image.shape[1]
    cdef Py_ssize_t c = n // 2
    cdef Py_ssize_t r, i, j, x0, y0
    cdef double t, cs, sn, x, y, xs, ys, fx, fy, v00, v01, v10, v11
    if angles_deg.shape[0] != count or out.shape[1] != n or out.shape[2] != m:
        raise ValueError("out must be (len(angles_deg), N, N) with image's N")
    with nogil:
        for r in range(count):
            t = angles_deg[r] * M_PI / 180.0
            cs = cos(t)
            sn = sin(t)
            for i in range(n):
                y = <double>(i - c)
                for j in range(m):
                    x = <double>(j - c)
                    xs = cs * x - sn * y + c
                    ys = sn * x + cs * y + c
                    if xs <= -1.0 or ys <= -1.0 or xs >= m or ys >= n:
                        out[r, i, j] = 0.0
                        continue
                    x0 = <Py_ssize_t>floor(xs)
                    y0 = <Py_ssize_t>floor(ys)
                    fx = xs - x0
                    fy = ys - y0
                    v00 = image[y0, x0] if (y0 >= 0 and x0 >= 0) else 0.0
                    v01 = image[y0, x0 + 1] if (y0 >= 0 and x0 + 1 < m) else 0.0
                    v10 = image[y0 + 1, x0] if (y0 + 1 < n and x0 >= 0) else 0.0
                    v11 = image[y0 + 1, x0 + 1] if (y0 + 1 < n and x0 + 1 < m) else 0.0
                    out[r, i, j] = (
                        (1.0 - fy) * ((1.0 - fx) * v00 + fx * v01)
                        + fy * ((1.0 - fx) * v10 + fx * v11)
                    )
