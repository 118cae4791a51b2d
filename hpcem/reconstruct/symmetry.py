"""Point-group symmetry: the rotation matrices of C_n, D_n, T, O and I, with RELION's axes.

Each group is the closure of RELION 3.1's generators (``src/symmetries.cpp``, inherited
from Xmipp): C_n a n-fold axis along z; D_n adds a 2-fold along x; T a 3-fold along z and
a 2-fold along (0, 0.816496, 0.577350); O a 3-fold along (1, 1, 1)/√3 and a 4-fold along z;
I (= I2, RELION's default icosahedral setting) and I1-I4 the standard settings. The
matrices agree, as sets, with ``relion_refine --sym G --print_symmetry_ops``
(``tests/science/test_reconstruct.py``). Since every group is closed under inversion, a
symmetric map V obeys ``V(R x) = V(x)`` for every matrix R of the list, whichever way R
is applied.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from hpcem.errors import ValidationError

_SYMMETRY_RE = re.compile(r"^(C|D)([1-9][0-9]*)$|^(T|O|I[1-4]?)$")

#: Generators ``(fold, axis)`` of the polyhedral groups, RELION's settings.
_POLYHEDRAL = {
    "T": ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))),
    "O": ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))),
    "I1": (
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ),
    "I2": (
        (2, (0.0, 0.0, 1.0)),
        (5, (0.525731112119, 0.0, 0.850650808354)),
        (3, (0.0, 0.356822089773, 0.934172358963)),
    ),
    "I3": (
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
    "I4": (
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ),
}


def normalise_symmetry(symmetry: str) -> str:
    """``symmetry`` in canonical form (``"c1"`` -> ``"C1"``, ``"I"`` -> ``"I2"``).

    Raises ValidationError, listing the supported groups, for anything else."""
    text = str(symmetry).strip().upper()
    if not _SYMMETRY_RE.match(text):
        raise ValidationError(
            f"symmetry {symmetry!r} is not a supported point group "
            "(C1, Cn, Dn, T, O, I, I1-I4; n >= 1)"
        )
    return "I2" if text == "I" else text


def axis_rotation(fold_deg: float, axis) -> np.ndarray:
    """The rotation by ``fold_deg`` degrees about ``axis`` (normalised here), 3x3."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(fold_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _closure(generators: list[np.ndarray], limit: int = 120) -> np.ndarray:
    """Every product of ``generators``: the finite group they generate."""
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for g in frontier:
            for h in generators:
                p = h @ g
                p[np.abs(p) < 1e-12] = 0.0
                if not any(np.allclose(p, q, atol=1e-5) for q in group):
                    group.append(p)
                    new.append(p)
        if len(group) > limit:  # pragma: no cover - generators are fixed above
            raise ValidationError(f"symmetry generators do not close in {limit} matrices")
        frontier = new
    return np.asarray(group)


def symmetry_matrices(symmetry: str) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of the point group ``symmetry``, identity first.

    n is the group's order: n for C_n, 2n for D_n, 12 for T, 24 for O, 60 for I."""
    return _group(normalise_symmetry(symmetry)).copy()


@functools.lru_cache(maxsize=16)
def _group(name: str) -> np.ndarray:
    if name[0] in "CD":
        n = int(name[1:])
        gens = [axis_rotation(360.0 / n, (0.0, 0.0, 1.0))]
        if name[0] == "D":
            gens.append(axis_rotation(180.0, (1.0, 0.0, 0.0)))
    else:
        gens = [axis_rotation(360.0 / fold, axis) for fold, axis in _POLYHEDRAL[name]]
    group = _closure(gens)
    # Snap the axis values (e.g. 0.816496) to the exact group: orthonormalise each matrix.
    u, _, vt = np.linalg.svd(group)
    return u @ vt


def symmetrise_map(volume: np.ndarray, symmetry: str) -> np.ndarray:
    """The average of ``volume`` (N, N, N) [z, y, x], centre at N//2, over the rotations
    of ``symmetry`` (cubic spline interpolation; outside the box counts as 0)."""
    import scipy.ndimage

    data = np.asarray(volume, dtype=np.float64)
    mats = symmetry_matrices(symmetry)
    if len(mats) == 1:
        return data.astype(np.float32)
    c = np.full(3, data.shape[0] // 2, dtype=np.float64)
    out = np.zeros_like(data)
    for r in mats:
        # r acts on (x, y, z); the array axes are (z, y, x): reverse both index orders.
        m = r[::-1, ::-1]
        out += scipy.ndimage.affine_transform(data, m, offset=c - m @ c, order=3)
    return (out / len(mats)).astype(np.float32)
