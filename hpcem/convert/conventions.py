"""The conventions hpcem shares with other packages, one small vectorised function per rule.

Every rule is written down once in ``docs/conventions.md`` with the test that checks it
against someone else (RELION's source, Scipion's conversion, pyem's csparc2star, the real
files in ``../shared/data``). hpcem's own conventions are RELION 3.1's:

* Euler angles ZYZ ``(rot, tilt, psi)`` in degrees; the rotation matrix ``A`` of
  RELION's ``Euler_angles2matrix`` (``src/euler.cpp``) maps a 3D map's coordinates to
  the projection's (``A = Rz(psi) Ry(tilt) Rz(rot)`` with passive rotations).
* ``shift_x/shift_y`` in Å with RELION 3.1's sign: ``_rlnOriginXAngst`` (the particle
  centre is at box centre − origin).
* coordinates in pixels of the micrograph array, 0-based, origin at the centre of the
  first pixel, x along columns, the **centre** of the particle box (RELION's
  ``_rlnCoordinateX/Y``).
* defocus in Å (positive = underfocus) and the angle in degrees from x to the U axis.
* image indices 0-based.

Functions take and return numpy arrays (one value per item) and never loop in Python
over items.
"""

from __future__ import annotations

import numpy as np

# --- Euler angles and rotation matrices --------------------------------------------------


def euler_zyz_to_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION's ``Euler_angles2matrix``: ZYZ Euler angles (deg) -> rotation matrices.

    Returns an ``(N, 3, 3)`` array (``(3, 3)`` for scalar input). The matrix maps map
    coordinates to projection coordinates (the projection direction is its third row).
    """
    a = np.deg2rad(np.asarray(rot_deg, dtype=np.float64))
    b = np.deg2rad(np.asarray(tilt_deg, dtype=np.float64))
    g = np.deg2rad(np.asarray(psi_deg, dtype=np.float64))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, cb, cg = np.cos(a), np.cos(b), np.cos(g)
    sa, sb, sg = np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3), dtype=np.float64)
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler_zyz(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's ``Euler_matrix2angles``: rotation matrices -> ``(rot, tilt, psi)`` degrees.

    ``tilt`` is in [0, 180]; at tilt 0 or 180 (gimbal lock) ``rot`` is 0 and ``psi``
    carries the whole in-plane angle, exactly as RELION decomposes it.
    """
    m = np.asarray(matrix, dtype=np.float64)
    abs_sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    tilt = np.arctan2(abs_sb, m[..., 2, 2])
    rot = np.arctan2(m[..., 2, 1], m[..., 2, 0])
    psi = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    up = m[..., 2, 2] > 0
    lock_tilt = np.where(up, 0.0, np.pi)
    lock_psi = np.where(
        up, np.arctan2(-m[..., 1, 0], m[..., 0, 0]), np.arctan2(m[..., 1, 0], -m[..., 0, 0])
    )
    rot = np.where(regular, rot, 0.0)
    tilt = np.where(regular, tilt, lock_tilt)
    psi = np.where(regular, psi, lock_psi)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def _rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """Active rotation matrices ``exp([w]x)`` of axis-angle vectors (radians).

    ``R = cos θ I + sin θ [u]x + (1 − cos θ) u uᵀ``, written out entry by entry (a batched
    3×3 matmul is several times slower in numpy).
    """
    w = np.asarray(axis_angle, dtype=np.float64)
    theta = np.sqrt(np.einsum("...i,...i->...", w, w))
    safe = np.where(theta > 0, theta, 1.0)
    x, y, z = (w[..., i] / safe for i in range(3))
    c, s = np.cos(theta), np.sin(theta)
    t = 1.0 - c
    m = np.empty(w.shape[:-1] + (3, 3))
    m[..., 0, 0] = c + t * x * x
    m[..., 0, 1] = t * x * y - s * z
    m[..., 0, 2] = t * x * z + s * y
    m[..., 1, 0] = t * x * y + s * z
    m[..., 1, 1] = c + t * y * y
    m[..., 1, 2] = t * y * z - s * x
    m[..., 2, 0] = t * x * z - s * y
    m[..., 2, 1] = t * y * z + s * x
    m[..., 2, 2] = c + t * z * z
    return m


def cryosparc_pose_to_matrix(pose_rad) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` (axis-angle, radians) -> RELION's matrix ``A``.

    cryoSPARC's pose is the active rotation ``R = exp([pose]x)`` (Rodrigues); RELION's
    ``A`` is its transpose (pyem's ``expmap`` builds exactly that transpose before
    ``rot2euler``, which is how ``csparc2star.py`` converts).
    """
    return np.swapaxes(_rodrigues(pose_rad), -1, -2)


def matrix_to_cryosparc_pose(matrix) -> np.ndarray:
    """RELION's matrix ``A`` -> cryoSPARC axis-angle pose (radians, angle in [0, pi])."""
    r = np.swapaxes(np.asarray(matrix, dtype=np.float64), -1, -2)  # the active rotation
    cos_t = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos_t)
    v = np.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]],
        axis=-1,
    )
    sin_t = np.sin(theta)
    out = np.zeros_like(v)
    general = sin_t > 1e-4
    out[general] = (theta[general] / (2.0 * sin_t[general]))[..., None] * v[general]
    # near 0: theta / (2 sin theta) -> 1/2
    small = (~general) & (theta < 1.0)
    out[small] = 0.5 * v[small]
    # near pi: the axis from the symmetric part of R, its sign from v
    large = (~general) & (theta >= 1.0)
    if np.any(large):
        rl = r[large]
        cl = cos_t[large][..., None, None]
        b = ((rl + np.swapaxes(rl, -1, -2)) / 2.0 - cl * np.eye(3)) / (1.0 - cl)  # = u u^T
        col = np.argmax(np.diagonal(b, axis1=-2, axis2=-1), axis=-1)
        u = b[np.arange(len(col)), :, col]
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        sign = np.where(np.einsum("...i,...i->...", u, v[large]) < 0, -1.0, 1.0)
        out[large] = u * (sign * theta[large])[..., None]
    return out


def _wrap_deg(angle_deg: np.ndarray) -> np.ndarray:
    """Angles in (−360, 360] into (−180, 180], RELION's range for ``atan2`` results."""
    out = np.where(angle_deg > 180.0, angle_deg - 360.0, angle_deg)
    return np.where(out <= -180.0, out + 360.0, out)


def cryosparc_pose_to_euler(pose_rad) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cryoSPARC axis-angle pose (radians) -> RELION ``(rot, tilt, psi)`` degrees.

    Equal to ``matrix_to_euler_zyz(cryosparc_pose_to_matrix(pose))`` (the test checks
    it), computed through the quaternion of the pose: the active rotation
    ``Rz(rot) Ry(tilt) Rz(psi)`` has quaternion
    ``(cos t cos s, sin t sin d, sin t cos d, cos t sin s)`` with half angles
    ``t = tilt/2, s = (rot+psi)/2, d = (psi−rot)/2``. Rows at gimbal lock (tilt near 0
    or 180°) go through the matrix, as RELION decomposes them.
    """
    w = np.asarray(pose_rad, dtype=np.float64).reshape(-1, 3)
    theta = np.sqrt(np.einsum("ij,ij->i", w, w))
    half = theta / 2.0
    nonzero = theta > 0
    scale = np.divide(np.sin(half), theta, out=np.full(theta.shape, 0.5), where=nonzero)
    qw = np.cos(half)
    qx, qy, qz = (w[:, i] * scale for i in range(3))
    sin_t = np.sqrt(qx * qx + qy * qy)  # |sin(tilt / 2)|
    cos_t = np.sqrt(qw * qw + qz * qz)  # |cos(tilt / 2)|
    sum_half = np.arctan2(qz, qw)
    diff_half = np.arctan2(qx, qy)
    to_deg = 180.0 / np.pi
    tilt = (2.0 * to_deg) * np.arctan2(sin_t, cos_t)
    rot = _wrap_deg((sum_half - diff_half) * to_deg)
    psi = _wrap_deg((sum_half + diff_half) * to_deg)
    # |sin(tilt)| below RELION's threshold: RELION puts the whole angle in psi
    lock = 2.0 * sin_t * cos_t <= 16 * np.finfo(np.float32).eps * 4
    if np.any(lock):
        r2, t2, p2 = matrix_to_euler_zyz(cryosparc_pose_to_matrix(w[lock]))
        rot[lock], tilt[lock], psi[lock] = r2, t2, p2
    shape = np.asarray(pose_rad).shape[:-1]
    return rot.reshape(shape), tilt.reshape(shape), psi.reshape(shape)


def euler_to_cryosparc_pose(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` degrees -> cryoSPARC axis-angle pose (radians).

    Equal to ``matrix_to_cryosparc_pose(euler_zyz_to_matrix(...))`` (tested), through
    the quaternion written in :func:`cryosparc_pose_to_euler`; the angle is in [0, π].
    """
    rot, tilt, psi = np.broadcast_arrays(
        np.asarray(rot_deg, dtype=np.float64),
        np.asarray(tilt_deg, dtype=np.float64),
        np.asarray(psi_deg, dtype=np.float64),
    )
    half = np.pi / 360.0  # degrees -> half angle in radians
    t = tilt * half
    s = (rot + psi) * half
    d = (psi - rot) * half
    cb, sb = np.cos(t), np.sin(t)
    qw, qz = cb * np.cos(s), cb * np.sin(s)
    qx, qy = sb * np.sin(d), sb * np.cos(d)
    norm_v = np.sqrt(qx * qx + qy * qy + qz * qz)
    # q and -q are the same rotation: take the one with qw >= 0 (angle in [0, pi])
    theta = 2.0 * np.arctan2(norm_v, np.abs(qw))
    small = norm_v <= 1e-12
    ratio = np.divide(theta, norm_v, out=np.full(norm_v.shape, 2.0), where=~small)
    ratio *= np.copysign(1.0, qw)
    out = np.empty(qw.shape + (3,))
    np.multiply(qx, ratio, out=out[..., 0])
    np.multiply(qy, ratio, out=out[..., 1])
    np.multiply(qz, ratio, out=out[..., 2])
    return out


def cryosparc_pose2d_to_psi(pose_rad) -> np.ndarray:
    """cryoSPARC ``alignments2D/pose`` (in-plane angle, radians) -> RELION psi (degrees)."""
    return np.rad2deg(np.asarray(pose_rad, dtype=np.float64))


def psi_to_cryosparc_pose2d(psi_deg) -> np.ndarray:
    """RELION psi (degrees) -> cryoSPARC ``alignments2D/pose`` (radians)."""
    return np.deg2rad(np.asarray(psi_deg, dtype=np.float64))


def forward_transform(rot_deg, tilt_deg, psi_deg, origin_x_px, origin_y_px) -> np.ndarray:
    """EMX/RELION forward transform of a projection as a ``(N, 4, 4)`` homogeneous matrix.

    Rotation ``A`` (RELION's Euler matrix) and translation ``-origin`` (pixels): a map
    point ``r`` lands at ``A r - origin`` in the particle image, i.e. the particle centre
    sits at box centre − origin (RELION 3.1's sign).
    """
    a = euler_zyz_to_matrix(rot_deg, tilt_deg, psi_deg)
    m = np.zeros(a.shape[:-2] + (4, 4))
    m[..., :3, :3] = a
    ox, oy = np.broadcast_arrays(
        np.asarray(origin_x_px, dtype=np.float64), np.asarray(origin_y_px, dtype=np.float64)
    )
    m[..., 0, 3] = -np.broadcast_to(ox, a.shape[:-2])
    m[..., 1, 3] = -np.broadcast_to(oy, a.shape[:-2])
    m[..., 3, 3] = 1.0
    return m


def scipion_matrix_from_forward(forward) -> np.ndarray:
    """Scipion's projection matrix is the inverse of the EMX/RELION forward transform.

    (``matrixFromGeometry(shifts, angles, inverseTransform=True)`` in Scipion's RELION
    plugin.) The inverse of ``[A | t]`` is ``[A^T | -A^T t]`` (A is orthogonal).
    """
    f = np.asarray(forward, dtype=np.float64)
    a_t = np.swapaxes(f[..., :3, :3], -1, -2)
    out = np.zeros_like(f)
    out[..., :3, :3] = a_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", a_t, f[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def forward_from_scipion_matrix(matrix) -> np.ndarray:
    """Inverse of :func:`scipion_matrix_from_forward` (the same operation: inversion)."""
    return scipion_matrix_from_forward(matrix)


def euler_origin_from_forward(forward) -> tuple[np.ndarray, ...]:
    """``(rot, tilt, psi, origin_x_px, origin_y_px)`` of an EMX/RELION forward transform."""
    f = np.asarray(forward, dtype=np.float64)
    rot, tilt, psi = matrix_to_euler_zyz(f[..., :3, :3])
    return rot, tilt, psi, -f[..., 0, 3], -f[..., 1, 3]


# --- shifts -------------------------------------------------------------------------------


def origin_px_to_A(origin_px, pixel_size_A) -> np.ndarray:
    """RELION 3.0 ``_rlnOriginX`` (px) -> RELION 3.1 ``_rlnOriginXAngst`` (Å): same sign."""
    return np.asarray(origin_px, dtype=np.float64) * np.asarray(pixel_size_A, dtype=np.float64)


def origin_A_to_px(origin_A, pixel_size_A) -> np.ndarray:
    """RELION 3.1 ``_rlnOriginXAngst`` (Å) -> RELION 3.0 ``_rlnOriginX`` (px)."""
    return np.asarray(origin_A, dtype=np.float64) / np.asarray(pixel_size_A, dtype=np.float64)


def cryosparc_shift_to_origin_A(shift_px, pixel_size_A) -> np.ndarray:
    """cryoSPARC ``alignments*/shift`` (px) -> hpcem shift = ``_rlnOriginXAngst`` (Å).

    cryoSPARC's shift has RELION's origin sign (pyem's csparc2star copies it to
    ``_rlnOriginX`` unchanged); only the unit changes, with ``alignments*/psize_A``.
    """
    return origin_px_to_A(shift_px, pixel_size_A)


def origin_A_to_cryosparc_shift(origin_A, pixel_size_A) -> np.ndarray:
    """hpcem shift (Å, RELION 3.1 origin) -> cryoSPARC ``alignments*/shift`` (px)."""
    return origin_A_to_px(origin_A, pixel_size_A)


# --- coordinates and indices ----------------------------------------------------------------


def box_corner_to_centre(corner_px, box_size_px) -> np.ndarray:
    """EMAN ``.box`` / crYOLO ``.cbox`` corner -> particle centre: ``corner + size / 2``.

    RELION reads ``.box`` the same way (``xpos = x + w / 2`` in ``src/preprocessing.cpp``,
    in integers there; hpcem keeps the half pixel of odd boxes).
    """
    return np.asarray(corner_px, dtype=np.float64) + np.asarray(box_size_px, np.float64) / 2.0


def box_centre_to_corner(centre_px, box_size_px) -> np.ndarray:
    """Particle centre -> EMAN ``.box`` / crYOLO ``.cbox`` corner: ``centre - size / 2``."""
    return np.asarray(centre_px, dtype=np.float64) - np.asarray(box_size_px, np.float64) / 2.0


def cryosparc_frac_to_px(frac, size_px) -> np.ndarray:
    """cryoSPARC ``location/center_*_frac`` -> pixels: ``frac × size`` (size along that axis).

    ``location/micrograph_shape`` is ``(ny, nx)``: x uses ``shape[1]``, y ``shape[0]``.
    """
    return np.asarray(frac, dtype=np.float64) * np.asarray(size_px, dtype=np.float64)


def px_to_cryosparc_frac(px, size_px) -> np.ndarray:
    """Pixels -> cryoSPARC fractional location: ``px / size``."""
    return np.asarray(px, dtype=np.float64) / np.asarray(size_px, dtype=np.float64)


def flip_y_px(y_px, height_px) -> np.ndarray:
    """y of the same pixel in the image flipped along its slow (y) axis: ``height − 1 − y``.

    Pixel centres at integers from 0: the flip maps pixel ``j`` to ``height − 1 − j``.
    RELION flips TIFF movies along the slow axis on reading (its Conventions page); a
    micrograph made from a TIFF by RELION/MotionCor2 is the y-flip of one made by a
    program that does not flip (e.g. cryoSPARC's Patch Motion).
    """
    return np.asarray(height_px, dtype=np.float64) - 1.0 - np.asarray(y_px, dtype=np.float64)


def flip_y_frac(frac) -> np.ndarray:
    """The same flip for cryoSPARC fractions: ``1 − frac`` (what pyem's ``--inverty`` does)."""
    return 1.0 - np.asarray(frac, dtype=np.float64)


def one_based_to_zero_based(index) -> np.ndarray:
    """RELION ``000001@stack.mrcs`` (1-based) -> hpcem ``image_index`` (0-based)."""
    return np.asarray(index, dtype=np.int64) - 1


def zero_based_to_one_based(index) -> np.ndarray:
    """hpcem ``image_index`` (0-based; = cryoSPARC ``blob/idx``) -> RELION's 1-based index."""
    return np.asarray(index, dtype=np.int64) + 1


# --- CTF -----------------------------------------------------------------------------------


def cryosparc_df_angle_to_deg(df_angle_rad) -> np.ndarray:
    """cryoSPARC ``ctf/df_angle_rad`` -> RELION ``_rlnDefocusAngle`` (same reference, deg)."""
    return np.rad2deg(np.asarray(df_angle_rad, dtype=np.float64))


def deg_to_cryosparc_df_angle(angle_deg) -> np.ndarray:
    """RELION/hpcem defocus angle (deg) -> cryoSPARC ``ctf/df_angle_rad``."""
    return np.deg2rad(np.asarray(angle_deg, dtype=np.float64))


def normalise_astigmatism(defocus_u_A, defocus_v_A, angle_deg) -> tuple[np.ndarray, ...]:
    """The same CTF with ``U ≥ V`` and the angle in [0, 180): hpcem's estimators' form.

    Swapping U and V and turning the angle by 90° describes the same defocus at every
    azimuth (``Δf(α) = ½[(U+V) + (U−V) cos 2(α − angle)]``), and the angle is defined
    modulo 180°. Readers keep the file's values (exact round trips); use this where a
    step needs hpcem's form.
    """
    u = np.asarray(defocus_u_A, dtype=np.float64)
    v = np.asarray(defocus_v_A, dtype=np.float64)
    angle = np.asarray(angle_deg, dtype=np.float64)
    swap = v > u
    u2, v2 = np.where(swap, v, u), np.where(swap, u, v)
    angle = np.mod(np.where(swap, angle + 90.0, angle), 180.0)
    return u2, v2, angle


def ctffind_azimuth_to_defocus_angle(azimuth_deg) -> np.ndarray:
    """CTFFIND4 "azimuth of astigmatism" (deg) -> RELION/hpcem defocus angle: identical.

    Both are measured from the x axis to the axis of defocus 1 (U); RELION's
    ``CtffindRunner::getCtffind4Results`` copies column 4 to ``_rlnDefocusAngle`` as is.
    """
    return np.asarray(azimuth_deg, dtype=np.float64)


def ctffind_phase_shift_to_deg(phase_shift_rad) -> np.ndarray:
    """CTFFIND4 column 5 (radians) -> hpcem/RELION phase shift (degrees)."""
    return np.rad2deg(np.asarray(phase_shift_rad, dtype=np.float64))


def relion_ctf_from_hpcem(ctf_values) -> np.ndarray:
    """RELION's CTF value from hpcem's (CTFFIND's) at the same frequency: opposite sign.

    hpcem's ``CTF = −sin(χ + arcsin A)`` is negative at low frequency for underfocus;
    ``relion_ctf_toolbox --simulate`` gives +A at zero frequency (measured in
    ``tests/science/test_ctf_relion.py``).
    """
    return -np.asarray(ctf_values)
