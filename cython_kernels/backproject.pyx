# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Insertion of CTF-weighted central slices into a padded 3D Fourier half-volume.

For each particle p and each pixel (kx, ky) of its rfft2 (kx >= 0, ky signed, inside the
radius ``max_r`` in pixels of the image's transform) the 3D frequency is
``f = pad · Aᵀ (kx, ky, 0)`` in grid units of the padded volume (A the particle's
rotation matrix, RELION's convention). Points with f_x < 0 are replaced by their Friedel
mate (−f, conjugate value). The value ``ctf · X`` and the weight ``ctf²`` are spread trilinearly
onto the eight neighbours of f in ``grid`` (shape (m, m, h + 1, 3): real part, imaginary
part and weight of each voxel together, [z, y, x], z and y periodic). The extra x plane
only catches the zero-weight neighbour of points on the last plane.

The numpy reference, and the test oracle, is
:func:`hpcem.reconstruct.fourier.insert_slices_numpy`.
"""

from libc.math cimport floor


def insert_slices(
    double[:, :, :, ::1] grid,
    const float[:, :, :, ::1] ft,
    const float[:, :, ::1] ctf,
    const double[:, :, ::1] rotations,
    int pad,
    double max_r,
):
    """Add the particles' slices to ``grid`` in place.

    ``ft``: (n, N, N//2 + 1, 2) float32, the images' rfft2 (real, imaginary) with the
    particle centre moved to pixel 0; ``ctf``: (n, N, N//2 + 1) float32;
    ``rotations``: (n, 3, 3). Returns the number of samples inserted.
    """
    cdef Py_ssize_t n = ft.shape[0]
    cdef Py_ssize_t size = ft.shape[1]
    cdef Py_ssize_t half = ft.shape[2]
    cdef Py_ssize_t m = grid.shape[0]
    cdef Py_ssize_t p, iy, ix, z0, y0, x0, z1, y1, x1
    cdef double max_r2 = max_r * max_r
    cdef double a00, a01, a02, a10, a11, a12
    cdef double kx, ky, fx, fy, fz, re, im, c, w, gx, gy, gz, hx, hy, hz
    cdef double w000, w001, w010, w011, w100, w101, w110, w111
    cdef double *cell
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
                cell = &grid[z0, y0, x0, 0]
                cell[0] += w000 * re
                cell[1] += w000 * im
                cell[2] += w000 * w
                cell = &grid[z0, y0, x1, 0]
                cell[0] += w001 * re
                cell[1] += w001 * im
                cell[2] += w001 * w
                cell = &grid[z0, y1, x0, 0]
                cell[0] += w010 * re
                cell[1] += w010 * im
                cell[2] += w010 * w
                cell = &grid[z0, y1, x1, 0]
                cell[0] += w011 * re
                cell[1] += w011 * im
                cell[2] += w011 * w
                cell = &grid[z1, y0, x0, 0]
                cell[0] += w100 * re
                cell[1] += w100 * im
                cell[2] += w100 * w
                cell = &grid[z1, y0, x1, 0]
                cell[0] += w101 * re
                cell[1] += w101 * im
                cell[2] += w101 * w
                cell = &grid[z1, y1, x0, 0]
                cell[0] += w110 * re
                cell[1] += w110 * im
                cell[2] += w110 * w
                cell = &grid[z1, y1, x1, 0]
                cell[0] += w111 * re
                cell[1] += w111 * im
                cell[2] += w111 * w
                samples += 1
    return samples
