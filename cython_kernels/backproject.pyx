# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Insertion of CTF-weighted central slices into a padded 3D Fourier half-volume.

For each particle p and each pixel (kx, ky) of its rfft2 (kx >= 0, ky signed, inside the
radius ``max_r`` in pixels of the image's transform) the 3D frequency is
``f = pad · Aᵀ (kx, ky, 0)`` in grid units of the padded volume (A the particle's
rotation matrix, RELION's convention). Points with f_x < 0 are replaced by their Friedel
mate (−f, conjugate value). The value ``ctf · X`` is spread trilinearly onto the eight
neighbours of f in ``data`` (shape (m, m, h + 1, 2): real and imaginary parts, [z, y, x],
z and y periodic) and ``ctf²`` onto the same neighbours of ``weight`` (m, m, h + 1).
The extra x plane only catches the zero-weight neighbour of points on the last plane.

The numpy reference, and the test oracle, is
:func:`hpcem.reconstruct.fourier.insert_slices_numpy`.
"""

from libc.math cimport floor


def insert_slices(
    double[:, :, :, ::1] data,
    double[:, :, ::1] weight,
    const float[:, :, :, ::1] ft,
    const float[:, :, ::1] ctf,
    const double[:, :, ::1] rotations,
    int pad,
    double max_r,
):
    """Add the particles' slices to ``data`` and ``weight`` in place.

    ``ft``: (n, N, N//2 + 1, 2) float32, the images' rfft2 (real, imaginary) with the
    particle centre moved to pixel 0; ``ctf``: (n, N, N//2 + 1) float32;
    ``rotations``: (n, 3, 3). Returns the number of samples inserted.
    """
    cdef Py_ssize_t n = ft.shape[0]
    cdef Py_ssize_t size = ft.shape[1]
    cdef Py_ssize_t half = ft.shape[2]
    cdef Py_ssize_t m = data.shape[0]
    cdef Py_ssize_t p, iy, ix, z0, y0, x0, z1, y1, x1
    cdef double max_r2 = max_r * max_r
    cdef double a00, a01, a02, a10, a11, a12
    cdef double kx, ky, fx, fy, fz, re, im, c, w, gx, gy, gz, hx, hy, hz
    cdef double w000, w001, w010, w011, w100, w101, w110, w111
    cdef long samples = 0
    for p in range(n):
        a00 = pad * rotations[p, 0, 0]
        a01 = pad * rotations[p, 0, 1]
        a02 = pad * rotations[p, 0, 2]
        a10 = pad * rotations[p, 1, 0]
        a11 = pad * rotations[p, 1, 1]
        a12 = pad * rotations[p, 1, 2]
        for iy in range(size):
            ky = iy if 2 * iy < size else iy - size
            if ky * ky > max_r2:
                continue
            for ix in range(half):
                kx = ix
                if kx * kx + ky * ky > max_r2:
                    break
                c = ctf[p, iy, ix]
                re = c * ft[p, iy, ix, 0]
                im = c * ft[p, iy, ix, 1]
                w = c * c
                fx = a00 * kx + a10 * ky
                fy = a01 * kx + a11 * ky
                fz = a02 * kx + a12 * ky
                if fx < 0:
                    fx = -fx
                    fy = -fy
                    fz = -fz
                    im = -im
                x0 = <Py_ssize_t>fx
                gx = fx - x0
                y0 = <Py_ssize_t>floor(fy)
                gy = fy - y0
                z0 = <Py_ssize_t>floor(fz)
                gz = fz - z0
                if y0 < 0:
                    y0 = y0 + m
                if z0 < 0:
                    z0 = z0 + m
                y1 = y0 + 1
                if y1 == m:
                    y1 = 0
                z1 = z0 + 1
                if z1 == m:
                    z1 = 0
                x1 = x0 + 1
                hx = 1.0 - gx
                hy = 1.0 - gy
                hz = 1.0 - gz
                w000 = hz * hy * hx
                w001 = hz * hy * gx
                w010 = hz * gy * hx
                w011 = hz * gy * gx
                w100 = gz * hy * hx
                w101 = gz * hy * gx
                w110 = gz * gy * hx
                w111 = gz * gy * gx
                data[z0, y0, x0, 0] += w000 * re
                data[z0, y0, x0, 1] += w000 * im
                weight[z0, y0, x0] += w000 * w
                data[z0, y0, x1, 0] += w001 * re
                data[z0, y0, x1, 1] += w001 * im
                weight[z0, y0, x1] += w001 * w
                data[z0, y1, x0, 0] += w010 * re
                data[z0, y1, x0, 1] += w010 * im
                weight[z0, y1, x0] += w010 * w
                data[z0, y1, x1, 0] += w011 * re
                data[z0, y1, x1, 1] += w011 * im
                weight[z0, y1, x1] += w011 * w
                data[z1, y0, x0, 0] += w100 * re
                data[z1, y0, x0, 1] += w100 * im
                weight[z1, y0, x0] += w100 * w
                data[z1, y0, x1, 0] += w101 * re
                data[z1, y0, x1, 1] += w101 * im
                weight[z1, y0, x1] += w101 * w
                data[z1, y1, x0, 0] += w110 * re
                data[z1, y1, x0, 1] += w110 * im
                weight[z1, y1, x0] += w110 * w
                data[z1, y1, x1, 0] += w111 * re
                data[z1, y1, x1, 1] += w111 * im
                weight[z1, y1, x1] += w111 * w
                samples += 1
    return samples
