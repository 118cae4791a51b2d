"""Projections of a volume at known orientations, by the Fourier slice theorem.

Conventions (RELION / EMX)
--------------------------
Euler angles ZYZ ``(rot, tilt, psi)`` in degrees define the matrix
``A = R_z(psi) · R_y(tilt) · R_z(rot)`` of RELION's ``Euler_angles2matrix``::

    A = [[ cψ cθ cφ − sψ sφ,   cψ cθ sφ + sψ cφ,  −cψ sθ],
         [−sψ cθ cφ − cψ sφ,  −sψ cθ sφ + cψ cφ,   sψ sθ],
         [ sθ cφ,              sθ sφ,              cθ   ]]

with φ = rot, θ = tilt, ψ = psi. The projection of volume V (indexed [z, y, x], centre at
voxel N//2) is ``P(x, y) = ∫ V(Aᵀ (x, y, z)) dz``: the volume is rotated by A, then summed
along z. In Fourier space the 2D transform of P at (k_x, k_y) is the 3D transform of V
at ``Aᵀ (k_x, k_y, 0)`` (RELION's ``Projector::project``). A shift (s_x, s_y) moves the
projection's content by +s (the particle's centre is at ``N//2 + s``).

Method: the volume is divided by the trilinear gridding kernel (sinc² per axis), padded
``OVERSAMPLING`` times, Fourier transformed once; each projection is a central slice
interpolated trilinearly (vectorised over all its pixels, for batches of orientations),
limited to the sphere of radius Nyquist, then inverse transformed.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.ndimage

from hpcem.errors import ValidationError

OVERSAMPLING = 2
_BATCH = 64


def euler_matrix(rot_deg: float, tilt_deg: float, psi_deg: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (ZYZ), see the module doc."""
    return euler_matrices(np.array([[rot_deg, tilt_deg, psi_deg]], dtype=np.float64))[0]


def euler_matrices(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of ``angles_deg`` (n, 3) = (rot, tilt, psi)."""
    a = np.radians(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3))
    ca, cb, cg = np.cos(a).T
    sa, sb, sg = np.sin(a).T
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((len(a), 3, 3))
    m[:, 0, 0] = cg * cc - sg * sa
    m[:, 0, 1] = cg * cs + sg * ca
    m[:, 0, 2] = -cg * sb
    m[:, 1, 0] = -sg * cc - cg * sa
    m[:, 1, 1] = -sg * cs + cg * ca
    m[:, 1, 2] = sg * sb
    m[:, 2, 0] = sc
    m[:, 2, 1] = ss
    m[:, 2, 2] = cb
    return m


def wrap_padded(ft: np.ndarray) -> np.ndarray:
    """The half-volume (m, m, h) with one more plane on each axis, (m+1, m+1, h+1): the
    first z and y planes repeated at the end (periodic), zeros beyond x = h − 1, so the
    eight neighbours of a point are fixed offsets from its first one."""
    m0, m1, m2 = ft.shape
    out = np.zeros((m0 + 1, m1 + 1, m2 + 1), dtype=ft.dtype)
    out[:m0, :m1, :m2] = ft
    out[m0, :m1, :m2] = ft[0]
    out[:m0, m1, :m2] = ft[:, 0]
    out[m0, m1, :m2] = ft[0, 0]
    return out


def trilinear(padded: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a :func:`wrap_padded` half-volume at frequency
    coordinates in grid units (z and y periodic with period m, 0 <= x <= h − 1)."""
    p0, p1, p2 = padded.shape
    flat = padded.ravel()
    zf, yf, xf = np.floor(z), np.floor(y), np.floor(x)
    f0, f1, f2 = ((c - cf).astype(np.float32) for c, cf in ((z, zf), (y, yf), (x, xf)))
    g0, g1, g2 = 1 - f0, 1 - f1, 1 - f2
    base = (zf.astype(np.intp) % (p0 - 1)) * (p1 * p2)
    base += (yf.astype(np.intp) % (p1 - 1)) * p2
    base += xf.astype(np.intp)
    out = flat[base] * (g0 * g1 * g2)
    out += flat[base + 1] * (g0 * g1 * f2)
    out += flat[base + p2] * (g0 * f1 * g2)
    out += flat[base + p2 + 1] * (g0 * f1 * f2)
    base += p1 * p2
    out += flat[base] * (f0 * g1 * g2)
    out += flat[base + 1] * (f0 * g1 * f2)
    out += flat[base + p2] * (f0 * f1 * g2)
    out += flat[base + p2 + 1] * (f0 * f1 * f2)
    return out


def random_orientations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` orientations (rot, tilt, psi) in degrees, uniform over all rotations:
    rot and psi uniform in [0, 360), cos(tilt) uniform in [−1, 1]."""
    rot = rng.uniform(0.0, 360.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(0.0, 360.0, n)
    return np.stack([rot, tilt, psi], axis=1)


class Projector:
    """The padded 3D Fourier transform of a volume, ready for central slices."""

    def __init__(self, volume) -> None:
        n = volume.box_px
        m = OVERSAMPLING * n
        r = (np.arange(n) - n // 2) / m
        kernel = np.sinc(r) ** 2  # trilinear interpolation in k = this apodisation in r
        corrected = volume.data / (
            kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :]
        )
        padded = np.zeros((m, m, m), dtype=np.float32)
        lo = m // 2 - n // 2
        padded[lo : lo + n, lo : lo + n, lo : lo + n] = corrected
        ft = scipy.fft.rfftn(np.fft.ifftshift(padded), workers=-1)
        self.box_px = n
        self.padded_px = m
        self._ft = wrap_padded(np.asarray(ft, dtype=np.complex64))
        ky = np.fft.fftfreq(n)[:, None]
        kx = np.fft.rfftfreq(n)[None, :]
        inside = ky * ky + kx * kx <= 0.25
        self._ky = np.broadcast_to(ky, inside.shape)[inside]
        self._kx = np.broadcast_to(kx, inside.shape)[inside]
        self._inside = inside

    def project_ft(self, angles_deg: np.ndarray, shifts_px: np.ndarray | None = None) -> np.ndarray:
        """rfft2 (n, N, N//2+1) of the projections at ``angles_deg`` (n, 3), centred at
        pixel N//2 and shifted by ``shifts_px`` (n, 2) as (dx, dy) when given."""
        angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3)
        n_proj = len(angles)
        n = self.box_px
        out = np.zeros((n_proj, n, n // 2 + 1), dtype=np.complex64)
        for start in range(0, n_proj, _BATCH):
            stop = min(start + _BATCH, n_proj)
            out[start:stop][:, self._inside] = self._slices(angles[start:stop])
        # The slices have the centre at pixel 0; move it to N//2, plus the shifts.
        shifts = np.full((n_proj, 2), float(n // 2))
        if shifts_px is not None:
            shifts += np.asarray(shifts_px, dtype=np.float64).reshape(n_proj, 2)
        ky = np.fft.fftfreq(n)[None, :, None]
        kx = np.fft.rfftfreq(n)[None, None, :]
        out *= np.exp(-2j * math.pi * shifts[:, 1, None, None] * ky).astype(np.complex64)
        out *= np.exp(-2j * math.pi * shifts[:, 0, None, None] * kx).astype(np.complex64)
        return out

    def _slices(self, angles: np.ndarray) -> np.ndarray:
        """Central-slice values (n, n_inside) for a batch of orientations."""
        rotations = euler_matrices(angles)  # (b, 3, 3)
        # 3D frequency (x, y, z) = Aᵀ (kx, ky, 0): column j of A times (kx, ky).
        f = (
            rotations[:, 0, :, None] * self._kx[None, None, :]
            + rotations[:, 1, :, None] * self._ky[None, None, :]
        )  # (b, 3 [x, y, z], p)
        # Friedel: the rfft half-volume holds f_x >= 0; F(−f) = conj F(f).
        flip = f[:, 0] < 0
        f = np.where(flip[:, None, :], -f, f)
        m = self.padded_px
        values = trilinear(self._ft, f[:, 2] * m, f[:, 1] * m, f[:, 0] * m)
        return np.where(flip, np.conj(values), values)

    def project(self, angles_deg: np.ndarray, shifts_px: np.ndarray | None = None) -> np.ndarray:
        """Real-space projections (n, N, N), float32."""
        n = self.box_px
        ft = self.project_ft(angles_deg, shifts_px)
        return scipy.fft.irfft2(ft, s=(n, n), workers=-1).astype(np.float32)


def project(volume, angles_deg: np.ndarray, shifts_px: np.ndarray | None = None) -> np.ndarray:
    """Projections (n, N, N) of ``volume`` at ``angles_deg`` (n, 3) (rot, tilt, psi in
    degrees), optionally shifted by ``shifts_px`` (n, 2) as (dx, dy)."""
    return volume.projector().project(angles_deg, shifts_px)


def place_projections(
    volume, angles_deg: np.ndarray, centres_yx: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """An image of ``shape`` with the projection at ``angles_deg[i]`` centred (to
    sub-pixel precision) at ``centres_yx[i]``; boxes are clipped at the image edge."""
    centres = np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2)
    image = np.zeros(shape, dtype=np.float32)
    if len(centres) == 0:
        return image
    if len(centres) != len(angles_deg):
        raise ValidationError(f"{len(centres)} centres but {len(angles_deg)} orientations")
    n = volume.box_px
    whole = np.floor(centres).astype(np.intp)
    fraction = centres - whole
    for start in range(0, len(centres), _BATCH):
        stop = min(start + _BATCH, len(centres))
        boxes = volume.projector().project(angles_deg[start:stop], fraction[start:stop, ::-1])
        for box, (cy, cx) in zip(boxes, whole[start:stop]):
            y0, x0 = cy - n // 2, cx - n // 2
            ys, xs = max(0, -y0), max(0, -x0)
            ye, xe = min(n, shape[0] - y0), min(n, shape[1] - x0)
            if ye > ys and xe > xs:
                image[y0 + ys : y0 + ye, x0 + xs : x0 + xe] += box[ys:ye, xs:xe]
    return image
