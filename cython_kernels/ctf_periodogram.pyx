# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Per-tile work of the tiled power spectrum (hpcem.ctf.spectrum.tiled_power_spectrum).

prepare_tiles copies one row of tiles out of the micrograph, removes each tile's mean
and multiplies by the edge taper in one pass (numpy needs a stack, a mean, a subtraction
and a product, each over the whole row); accumulate_power adds |F|^2 of the tiles'
rfft2 into a float64 sum without the temporaries of ft.real**2 + ft.imag**2.
The numpy references are prepare_tiles_numpy and accumulate_power_numpy in
hpcem/ctf/spectrum.py.
"""


def prepare_tiles(
    const float[:, ::1] image,
    Py_ssize_t y,
    const Py_ssize_t[::1] starts_x,
    const float[:, ::1] taper,
    float[:, :, ::1] out,
):
    """out[i] = (image[y:y+t, x_i:x_i+t] - its mean) * taper, for each x_i in starts_x."""
    cdef Py_ssize_t tile = taper.shape[0]
    cdef Py_ssize_t n = starts_x.shape[0]
    cdef Py_ssize_t i, iy, ix, x0
    cdef double total, mean
    if y < 0 or y + tile > image.shape[0]:
        raise ValueError("tile row outside the image")
    for i in range(n):
        x0 = starts_x[i]
        if x0 < 0 or x0 + tile > image.shape[1]:
            raise ValueError("tile outside the image")
    with nogil:
        for i in range(n):
            x0 = starts_x[i]
            total = 0.0
            for iy in range(tile):
                for ix in range(tile):
                    total = total + image[y + iy, x0 + ix]
            mean = total / (tile * tile)
            for iy in range(tile):
                for ix in range(tile):
                    out[i, iy, ix] = <float>((image[y + iy, x0 + ix] - mean) * taper[iy, ix])


def accumulate_power(const float complex[:, :, ::1] ft, double[:, ::1] total):
    """total += sum over tiles of |ft|^2 (float64 accumulation)."""
    cdef Py_ssize_t n = ft.shape[0], ny = ft.shape[1], nx = ft.shape[2]
    cdef Py_ssize_t i, iy, ix
    cdef float re, im
    if total.shape[0] != ny or total.shape[1] != nx:
        raise ValueError("total has the wrong shape")
    with nogil:
        for i in range(n):
            for iy in range(ny):
                for ix in range(nx):
                    re = ft[i, iy, ix].real
                    im = ft[i, iy, ix].imag
                    total[iy, ix] += <double>re * re + <double>im * im
