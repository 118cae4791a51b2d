# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Kernel of the template picker's NCC search (hpcem.picking.template.ncc_search).

``running_max``: for a batch of correlation planes ``corr[j]`` (the NCC numerators of
templates ``first + j``), ``score = corr[j, y, x] * inv_sigma[y, x]``; where the score
beats ``best[y, x]``, ``best`` takes it and ``best_index`` takes ``first + j`` (ties keep
the earlier template). One pass over each plane, branch-free (selects, which the compiler
vectorises), the rows of ``best`` staying in cache across the planes of a batch, instead of
numpy's multiply, compare and two masked stores.

The numpy reference is ``_running_max_numpy`` in hpcem/picking/template.py;
tests/science/test_picking_template.py checks that they agree. (The conjugate product of
the spectra stays in numpy: two in-place ufuncs were faster than a scalar complex loop.)
"""


cdef void _row(
    const float* c, const float* s, float* b, int* idx, Py_ssize_t nx, int k
) noexcept nogil:
    cdef Py_ssize_t x
    cdef float v, old
    for x in range(nx):
        v = c[x] * s[x]
        old = b[x]
        b[x] = v if v > old else old
        idx[x] = k if v > old else idx[x]


def running_max(
    const float[:, :, ::1] corr,
    const float[:, ::1] inv_sigma,
    float[:, ::1] best,
    int[:, ::1] best_index,
    int first,
):
    """Update ``best``/``best_index`` in place with the planes of ``corr`` (see above);
    ``corr`` planes may be wider or taller than ``best`` (only the top-left part is read)."""
    cdef Py_ssize_t nb = corr.shape[0]
    cdef Py_ssize_t ny = best.shape[0]
    cdef Py_ssize_t nx = best.shape[1]
    if corr.shape[1] < ny or corr.shape[2] < nx:
        raise ValueError("corr planes are smaller than best")
    if inv_sigma.shape[0] != ny or inv_sigma.shape[1] != nx:
        raise ValueError("inv_sigma and best differ in shape")
    if best_index.shape[0] != ny or best_index.shape[1] != nx:
        raise ValueError("best_index and best differ in shape")
    cdef Py_ssize_t j, y
    if nx == 0:
        return
    with nogil:
        for y in range(ny):
            for j in range(nb):
                _row(&corr[j, y, 0], &inv_sigma[y, 0], &best[y, 0], &best_index[y, 0], nx,
                     <int>(first + j))
