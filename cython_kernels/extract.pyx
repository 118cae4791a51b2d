# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Particle boxes: cut (edge fill) and background normalisation in one pass per box.

Each box is copied from the micrograph (pixels outside it take the nearest pixel inside,
RELION's fill), then, while it is in cache, the background (pixels at di² + dj² > r² from
the centre pixel) is summed in double precision, a least-squares plane is fitted from
those sums (the normal matrix depends only on the box and radius and comes inverted from
Python), and the box is written as (v - plane - mean) / sd, times -1 to invert. The numpy
references are hpcem.particles.extract.cut_boxes_numpy and normalise_boxes_numpy.

``geometry`` is the tuple (half_widths, n_bg, ramp, normal_inverse) of
hpcem.particles.extract.norm_geometry: half_widths[i] is the half-width w of the disc in
row i (columns with |dj| <= w are inside it; -1: the whole row is background).
"""

import numpy as np

from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy

cdef double MIN_SD = 1e-10
#: Longest box edge (the per-column ramp terms live in a buffer on the stack).
cdef enum:
    MAX_BOX = 4096


cdef inline Py_ssize_t _clamp(Py_ssize_t v, Py_ssize_t hi) noexcept nogil:
    if v < 0:
        return 0
    if v > hi:
        return hi
    return v


cdef void _cut_one(
    const float[:, ::1] image, Py_ssize_t x0, Py_ssize_t y0, float[:, ::1] box
) noexcept nogil:
    cdef Py_ssize_t n = box.shape[0]
    cdef Py_ssize_t ny = image.shape[0], nx = image.shape[1]
    cdef Py_ssize_t i, j, row
    if x0 >= 0 and y0 >= 0 and x0 + n <= nx and y0 + n <= ny:
        for i in range(n):
            memcpy(&box[i, 0], &image[y0 + i, x0], n * sizeof(float))
        return
    for i in range(n):
        row = _clamp(y0 + i, ny - 1)
        for j in range(n):
            box[i, j] = image[row, _clamp(x0 + j, nx - 1)]


cdef inline void _segment(
    const float* row, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t half, double ref, double* sums
) noexcept nogil:
    """Add sum(v), sum(v * dj) and sum(v * v) of row[j0:j1] (v = pixel - ref, dj = j - half)
    to sums[0..2], in four independent lanes (the additions pipeline instead of waiting on
    one another)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef double x0 = 0.0, x1 = 0.0, x2 = 0.0, x3 = 0.0
    cdef double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0
    cdef double v0, v1, v2, v3, dj
    cdef Py_ssize_t j = j0
    while j + 4 <= j1:
        dj = <double>(j - half)
        v0 = row[j] - ref
        v1 = row[j + 1] - ref
        v2 = row[j + 2] - ref
        v3 = row[j + 3] - ref
        s0 += v0
        s1 += v1
        s2 += v2
        s3 += v3
        x0 += v0 * dj
        x1 += v1 * (dj + 1.0)
        x2 += v2 * (dj + 2.0)
        x3 += v3 * (dj + 3.0)
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
        j += 4
    while j < j1:
        v0 = row[j] - ref
        s0 += v0
        x0 += v0 * (j - half)
        q0 += v0 * v0
        j += 1
    sums[0] += (s0 + s1) + (s2 + s3)
    sums[1] += (x0 + x1) + (x2 + x3)
    sums[2] += (q0 + q1) + (q2 + q3)


cdef void _normalise_one(
    float[:, ::1] box,
    const int64_t[::1] widths,
    double n_bg,
    bint ramp,
    const double[:, ::1] inv,
    bint normalize,
    bint invert,
) noexcept nogil:
    cdef Py_ssize_t n = box.shape[0]
    cdef Py_ssize_t half = n // 2
    cdef Py_ssize_t i, j, w
    cdef double ref = box[0, 0]
    cdef double di, sv = 0.0, sxv = 0.0, syv = 0.0, svv = 0.0
    cdef double sums[3]
    cdef double ramp_x[MAX_BOX]
    cdef float* row
    cdef double a = 0.0, b = 0.0, c = 0.0, avg, var, scale, base
    cdef double sign = -1.0 if invert else 1.0
    if not normalize:
        if invert:
            for i in range(n):
                for j in range(n):
                    box[i, j] = -box[i, j]
        return
    # Background sums, relative to the first pixel (shift-invariant, keeps precision).
    for i in range(n):
        di = i - half
        w = widths[i]
        sums[0] = 0.0
        sums[1] = 0.0
        sums[2] = 0.0
        if w < 0:
            _segment(&box[i, 0], 0, n, half, ref, sums)
        else:
            _segment(&box[i, 0], 0, half - w, half, ref, sums)
            _segment(&box[i, 0], half + w + 1, n, half, ref, sums)
        sv += sums[0]
        sxv += sums[1]
        svv += sums[2]
        syv += sums[0] * di
    if ramp:
        # plane a*dj + b*di + c from the normal equations (x = dj, y = di, 1)
        a = inv[0, 0] * sxv + inv[0, 1] * syv + inv[0, 2] * sv
        b = inv[1, 0] * sxv + inv[1, 1] * syv + inv[1, 2] * sv
        c = inv[2, 0] * sxv + inv[2, 1] * syv + inv[2, 2] * sv
        # least squares with a constant term: the residuals sum to 0 and their sum of
        # squares is svv - a sxv - b syv - c sv
        avg = 0.0
        var = (svv - a * sxv - b * syv - c * sv) / n_bg
    else:
        avg = sv / n_bg
        var = svv / n_bg - avg * avg
    if var < 0.0:
        var = 0.0
    scale = sqrt(var)
    if scale < MIN_SD:
        # RELION: a flat background is not normalised (the ramp is still removed)
        avg = 0.0
        scale = sign
    else:
        scale = sign / scale
    for j in range(n):
        ramp_x[j] = a * (j - half)
    for i in range(n):
        base = ref + c + b * (i - half) + avg
        row = &box[i, 0]
        for j in range(n):
            row[j] = <float>((row[j] - base - ramp_x[j]) * scale)


def cut_normalise(
    const float[:, ::1] image,
    const int64_t[::1] cx,
    const int64_t[::1] cy,
    float[:, :, ::1] out,
    tuple geometry,
    bint normalize,
    bint invert,
):
    """Cut boxes centred on (cx, cy) into ``out`` (n, box, box), edge fill; normalise
    (with ``geometry``) and/or invert each one while it is in cache."""
    cdef const int64_t[::1] widths = geometry[0]
    cdef double n_bg = <double>geometry[1]
    cdef bint ramp = geometry[2]
    cdef const double[:, ::1] inv = geometry[3]
    cdef Py_ssize_t n = out.shape[0], box = out.shape[1], k
    if out.shape[2] != box or widths.shape[0] != box:
        raise ValueError("out must be (n, box, box) and geometry for that box")
    if box > MAX_BOX:
        raise ValueError(f"box {box} px is above the kernel's limit of {MAX_BOX} px")
    if cx.shape[0] != n or cy.shape[0] != n:
        raise ValueError("cx, cy and out must have the same length")
    if normalize and n_bg < 1:
        raise ValueError("no background pixels: radius too large for the box")
    with nogil:
        for k in range(n):
            _cut_one(image, cx[k] - box // 2, cy[k] - box // 2, out[k])
            _normalise_one(out[k], widths, n_bg, ramp, inv, normalize, invert)


def normalise(float[:, :, ::1] boxes, tuple geometry, bint normalize, bint invert):
    """Normalise and/or invert boxes (n, box, box) in place."""
    cdef const int64_t[::1] widths = geometry[0]
    cdef double n_bg = <double>geometry[1]
    cdef bint ramp = geometry[2]
    cdef const double[:, ::1] inv = geometry[3]
    cdef Py_ssize_t n = boxes.shape[0], k
    if boxes.shape[1] != boxes.shape[2] or widths.shape[0] != boxes.shape[1]:
        raise ValueError("boxes must be (n, box, box) and geometry for that box")
    if boxes.shape[1] > MAX_BOX:
        raise ValueError(f"box {boxes.shape[1]} px is above the kernel's limit of {MAX_BOX} px")
    if normalize and n_bg < 1:
        raise ValueError("no background pixels: radius too large for the box")
    with nogil:
        for k in range(n):
            _normalise_one(boxes[k], widths, n_bg, ramp, inv, normalize, invert)
