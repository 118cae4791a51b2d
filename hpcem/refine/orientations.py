"""Orientation grids for projection matching, as rotation matrices (RELION's ZYZ matrix A
of :func:`hpcem.sim.projection.euler_matrices`: a map point r projects to ``A r``).

* :func:`global_grid`: projection directions on a Fibonacci (golden-spiral) sphere at
  about ``step_deg`` apart, limited to the asymmetric unit of C_n / D_n, times in-plane
  angles ``psi`` every ``step_deg``. The spiral is even to a few per cent in area per
  point, with no poles crowded as on a (rot, tilt) grid (Swinbank & Purser 2006).
* :func:`local_offsets`: small rotations ``exp([ω]×)`` with ω on a cubic grid of spacing
  ``step_deg`` inside a ball of ``radius_deg``: a local search applies each to the
  particle's previous pose (``Δ · A``), a uniform neighbourhood of A in SO(3) because the
  angle of ``Δ`` is ``|ω|``.
* :func:`rotation_angles_deg`: the angle of ``A Bᵀ``, the distance of two poses.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem.errors import ValidationError
from hpcem.reconstruct.symmetry import normalise_symmetry
from hpcem.sim.projection import euler_matrices

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def fibonacci_directions(step_deg: float) -> np.ndarray:
    """(rot, tilt) in degrees (k, 2) of about ``4π / step²`` directions spread evenly
    over the sphere (golden spiral; ``step_deg`` the mean spacing)."""
    if not 0.0 < step_deg <= 90.0:
        raise ValidationError(f"angular step must be in (0, 90] degrees, got {step_deg}")
    step = math.radians(step_deg)
    count = max(2, round(4.0 * math.pi / (step * step)))
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    tilt = np.degrees(np.arccos(z))
    rot = np.degrees((i * GOLDEN_ANGLE) % (2.0 * math.pi))
    return np.stack([rot, tilt], axis=1)


def asymmetric_directions(directions: np.ndarray, symmetry: str) -> np.ndarray:
    """The ``directions`` (rot, tilt) inside the asymmetric unit of C_n (rot < 360/n) or
    D_n (also tilt <= 90); other groups keep the whole sphere (correct, only slower)."""
    sym = normalise_symmetry(symmetry)
    if sym[0] not in "CD":
        return directions
    n = int(sym[1:])
    keep = directions[:, 0] < 360.0 / n
    if sym[0] == "D":
        keep &= directions[:, 1] <= 90.0
    return directions[keep]


def global_grid(step_deg: float, symmetry: str = "C1") -> np.ndarray:
    """Euler angles (k, 3) (rot, tilt, psi) of the global search: every direction of the
    asymmetric unit at every in-plane angle, both about ``step_deg`` apart."""
    directions = asymmetric_directions(fibonacci_directions(step_deg), symmetry)
    n_psi = max(1, round(360.0 / step_deg))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    angles = np.empty((len(directions), n_psi, 3))
    angles[:, :, :2] = directions[:, None, :]
    angles[:, :, 2] = psi[None, :]
    return angles.reshape(-1, 3)


def axis_angle_matrices(omega_rad: np.ndarray) -> np.ndarray:
    """Rotation matrices (k, 3, 3) ``exp([ω]×)`` of rotation vectors ``omega_rad`` (k, 3)."""
    w = np.asarray(omega_rad, dtype=np.float64).reshape(-1, 3)
    theta = np.linalg.norm(w, axis=1)
    safe = np.where(theta > 0, theta, 1.0)
    k = w / safe[:, None]
    cross = np.zeros((len(w), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2] = -k[:, 2], k[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = k[:, 2], -k[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -k[:, 1], k[:, 0]
    s = np.sin(theta)[:, None, None]
    c = (1.0 - np.cos(theta))[:, None, None]
    return np.eye(3)[None] + s * cross + c * (cross @ cross)


def local_offsets(step_deg: float, radius_deg: float) -> np.ndarray:
    """Small rotations (k, 3, 3), the identity first: ω on a cubic grid of spacing
    ``step_deg`` with ``|ω| <= radius_deg``."""
    if not 0.0 < step_deg <= radius_deg:
        raise ValidationError(
            f"local search needs 0 < step <= radius, got {step_deg} and {radius_deg} degrees"
        )
    m = math.floor(radius_deg / step_deg + 1e-9)
    g = np.arange(-m, m + 1, dtype=np.float64)
    w = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3) * step_deg
    w = w[np.linalg.norm(w, axis=1) <= radius_deg + 1e-9]
    w = w[np.argsort(np.linalg.norm(w, axis=1), kind="stable")]
    return axis_angle_matrices(np.radians(w))


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``A Bᵀ`` for matrices (k, 3, 3) ``a`` and ``b``."""
    trace = np.einsum("kij,kij->k", np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.degrees(np.arccos(np.clip(0.5 * (trace - 1.0), -1.0, 1.0)))


def symmetric_angles_deg(a: np.ndarray, b: np.ndarray, symmetry: str) -> np.ndarray:
    """The smallest angle between pose ``A`` and ``B · R`` over the operators R of
    ``symmetry`` (a symmetric map projects identically at B and B · R)."""
    from hpcem.reconstruct.symmetry import symmetry_matrices

    ops = symmetry_matrices(symmetry)
    b = np.asarray(b, np.float64)
    return np.min([rotation_angles_deg(a, b @ op) for op in ops], axis=0)


def matrices(angles_deg: np.ndarray) -> np.ndarray:
    """RELION's matrices (k, 3, 3) of Euler angles (k, 3) (rot, tilt, psi)."""
    return euler_matrices(angles_deg)
