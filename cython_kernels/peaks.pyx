# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Local maxima with a minimum distance (the pickers' peak finder).

``candidates``: row-major (iy, ix) of the finite pixels above the threshold, away from
the border and inside the mask, that are >= every pixel of their 3x3 neighbourhood and
every pixel with dy² + dx² < d² (non-finite pixels must already be -inf).
``suppress_sorted``: greedy suppression of points given strongest first; a point is
dropped when a kept one is closer than d (a grid of cells of side d: only the 3x3 cells
around a point are searched). The numpy reference is hpcem.picking.peaks
(candidates_numpy, suppress).
"""

import numpy as np

from libc.math cimport ceil, floor, isfinite


def candidates(
    const double[:, ::1] work,
    double min_distance,
    double threshold,
    Py_ssize_t border,
    const unsigned char[:, ::1] mask=None,
):
    """Row-major (iy, ix), two intp arrays, of the candidate peaks of ``work``."""
    cdef Py_ssize_t ny = work.shape[0]
    cdef Py_ssize_t nx = work.shape[1]
    cdef Py_ssize_t half = <Py_ssize_t>ceil(min_distance)
    cdef double d2 = min_distance * min_distance
    # Disc offsets outside the 3x3 neighbourhood, nearest first (most rejections early).
    offsets = []
    cdef Py_ssize_t dy, dx
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            if dy * dy + dx * dx < d2 and (dy > 1 or dy < -1 or dx > 1 or dx < -1):
                offsets.append((dy * dy + dx * dx, dy, dx))
    offsets.sort()
    cdef Py_ssize_t n_off = len(offsets)
    off_arr = np.empty((max(n_off, 1), 2), dtype=np.intp)
    cdef Py_ssize_t[:, ::1] off = off_arr
    cdef Py_ssize_t k
    for k in range(n_off):
        off[k, 0] = offsets[k][1]
        off[k, 1] = offsets[k][2]
    out_y_arr = np.empty(64, dtype=np.intp)
    out_x_arr = np.empty(64, dtype=np.intp)
    cdef Py_ssize_t[::1] out_y = out_y_arr
    cdef Py_ssize_t[::1] out_x = out_x_arr
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t y, x, yy, xx, y0, y1, x0, x1
    cdef double v
    cdef bint ok
    y0 = border if border > 0 else 0
    y1 = ny - border if border > 0 else ny
    x0 = border if border > 0 else 0
    x1 = nx - border if border > 0 else nx
    for y in range(y0, y1):
        for x in range(x0, x1):
            v = work[y, x]
            if not (v > threshold) or not isfinite(v):
                continue
            if mask is not None and not mask[y, x]:
                continue
            ok = True
            for yy in range(y - 1, y + 2):
                if yy < 0 or yy >= ny:
                    continue
                for xx in range(x - 1, x + 2):
                    if xx < 0 or xx >= nx:
                        continue
                    if work[yy, xx] > v:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                continue
            for k in range(n_off):
                yy = y + off[k, 0]
                xx = x + off[k, 1]
                if yy < 0 or yy >= ny or xx < 0 or xx >= nx:
                    continue
                if work[yy, xx] > v:
                    ok = False
                    break
            if not ok:
                continue
            if count == out_y.shape[0]:
                out_y_arr = np.concatenate([out_y_arr, np.empty(count, dtype=np.intp)])
                out_x_arr = np.concatenate([out_x_arr, np.empty(count, dtype=np.intp)])
                out_y = out_y_arr
                out_x = out_x_arr
            out_y[count] = y
            out_x[count] = x
            count += 1
    return out_y_arr[:count].copy(), out_x_arr[:count].copy()


def suppress_sorted(const double[:, ::1] xy, double min_distance):
    """Indices (intp) of the points kept by greedy suppression of ``xy`` ((n, 2), given
    strongest first): a point is dropped when a kept point is closer than
    ``min_distance``."""
    cdef Py_ssize_t n = xy.shape[0]
    keep_arr = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] keep = keep_arr
    cdef Py_ssize_t n_keep = 0
    cdef Py_ssize_t i
    if n == 0:
        return keep_arr[:0]
    if not (min_distance > 0):
        return np.arange(n, dtype=np.intp)
    cdef double xmin = xy[0, 0], xmax = xy[0, 0], ymin = xy[0, 1], ymax = xy[0, 1]
    for i in range(n):
        xmin = min(xmin, xy[i, 0])
        xmax = max(xmax, xy[i, 0])
        ymin = min(ymin, xy[i, 1])
        ymax = max(ymax, xy[i, 1])
    # Cells of at least d (so the 3x3 cells around a point hold every point closer than
    # d), and at most 1024 cells along an axis (memory, for a tiny d).
    cdef double cell = max(min_distance, max(xmax - xmin, ymax - ymin) / 1024.0)
    cdef Py_ssize_t gx = <Py_ssize_t>floor((xmax - xmin) / cell) + 1
    cdef Py_ssize_t gy = <Py_ssize_t>floor((ymax - ymin) / cell) + 1
    # Kept points of each cell as linked lists: head[cell], next[kept index].
    head_arr = np.full(gx * gy, -1, dtype=np.intp)
    nxt_arr = np.full(n, -1, dtype=np.intp)
    cdef Py_ssize_t[::1] head = head_arr
    cdef Py_ssize_t[::1] nxt = nxt_arr
    cdef double d2 = min_distance * min_distance
    cdef Py_ssize_t cx, cy, ax, ay, j, c
    cdef double px, py, ddx, ddy
    cdef bint free
    for i in range(n):
        px = xy[i, 0]
        py = xy[i, 1]
        cx = <Py_ssize_t>floor((px - xmin) / cell)
        cy = <Py_ssize_t>floor((py - ymin) / cell)
        free = True
        for ay in range(max(cy - 1, 0), min(cy + 2, gy)):
            for ax in range(max(cx - 1, 0), min(cx + 2, gx)):
                j = head[ay * gx + ax]
                while j >= 0:
                    ddx = xy[j, 0] - px
                    ddy = xy[j, 1] - py
                    if ddx * ddx + ddy * ddy < d2:
                        free = False
                        break
                    j = nxt[j]
                if not free:
                    break
            if not free:
                break
        if free:
            c = cy * gx + cx
            nxt[i] = head[c]
            head[c] = i
            keep[n_keep] = i
            n_keep += 1
    return keep_arr[:n_keep].copy()
