# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Kernels of the template picker's NCC search (hpcem.picking.template.ncc_search).

``running_max``: for a batch of correlation planes ``corr[j]`` (the NCC numerators of
templates ``first + j``), ``score = corr[j, y, x] * inv_sigma[y, x]``; where the score
beats ``best[y, x]``, ``best`` takes it and ``best_index`` takes ``first + j`` (ties keep
the earlier template). One pass over memory per plane instead of numpy's four
(multiply, compare, two masked stores).

``conj_multiply``: ``ft[j] = conj(ft[j]) * image_ft`` in place, in one pass (the
cross-correlation of each template with the image in Fourier space).

The numpy references are ``_running_max_numpy`` and ``_conj_multiply_numpy`` in
hpcem/picking/template.py; tests/science/test_picking_template.py checks that they agree.
"""



def running_max(
    const float[:, :, :] corr,
    const float[:, ::1] inv_sigma,
    float[:, ::1] best,
    int[:, ::1] best_index,
    int first,
):
    """Update ``best``/``best_index`` in place with the planes of ``corr`` (see above)."""
    cdef Py_ssize_t nb = corr.shape[0]
    cdef Py_ssize_t ny = best.shape[0]
    cdef Py_ssize_t nx = best.shape[1]
    if corr.shape[1] < ny or corr.shape[2] < nx:
        raise ValueError("corr planes are smaller than best")
    if inv_sigma.shape[0] != ny or inv_sigma.shape[1] != nx:
        raise ValueError("inv_sigma and best differ in shape")
    if best_index.shape[0] != ny or best_index.shape[1] != nx:
        raise ValueError("best_index and best differ in shape")
    cdef Py_ssize_t j, y, x
    cdef float s
    with nogil:
        for y in range(ny):
            for j in range(nb):
                for x in range(nx):
                    s = corr[j, y, x] * inv_sigma[y, x]
                    if s > best[y, x]:
                        best[y, x] = s
                        best_index[y, x] = <int>(first + j)


def conj_multiply(float complex[:, :, ::1] ft, const float complex[:, ::1] image_ft):
    """``ft[j] = conj(ft[j]) * image_ft`` for every plane j, in place."""
    cdef Py_ssize_t nb = ft.shape[0]
    cdef Py_ssize_t ny = ft.shape[1]
    cdef Py_ssize_t nx = ft.shape[2]
    if image_ft.shape[0] != ny or image_ft.shape[1] != nx:
        raise ValueError("ft planes and image_ft differ in shape")
    cdef Py_ssize_t j, y, x
    cdef float ar, ai, br, bi
    with nogil:
        for j in range(nb):
            for y in range(ny):
                for x in range(nx):
                    ar = ft[j, y, x].real
                    ai = ft[j, y, x].imag
                    br = image_ft[y, x].real
                    bi = image_ft[y, x].imag
                    # conj(a) * b = (ar - i ai)(br + i bi)
                    ft[j, y, x].real = ar * br + ai * bi
                    ft[j, y, x].imag = ar * bi - ai * br
