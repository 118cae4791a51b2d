"""Matching particles against projections of a map: the best pose and shift of each.

The particle side is the one of :mod:`hpcem.classify.align2d`: ``CTF · FT(mask · X)``,
Fourier-cropped to ``align_px`` (a low-pass and a smaller problem), with CTF² for the
norm. The references are central slices of the map's padded transform taken directly
on the cropped grid at any rotation matrix (:class:`SliceProjector`), so in-plane angles
cost no real-space interpolation. The score of a pose and shift d is the normalised
cross-correlation ``Re Σ CTF X̄ P e^{...d}/ sqrt(Σ CTF² |P|²)``, evaluated at the
``(2r+1)²`` shifts by two small DFTs (as in align2d).

* :func:`match_global`: one bank of projections shared by every particle (the global
  grid), through :func:`hpcem.classify.align2d.align_particles` (BLAS over particles).
* :func:`match_local`: each particle's own candidates ``Δ · A_prev`` (batched matmuls
  over particles).

Conventions: a particle is its projection at A centred at box centre + d (pixels);
RELION's origin is −d (``shift_x = −d_x · pixel``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from hpcem.classify import align2d
from hpcem.sim.projection import OVERSAMPLING, trilinear, wrap_padded

#: Particles matched together in a local search (bounds the memory of their banks).
LOCAL_BATCH = 16


class SliceProjector:
    """The padded transform of a map (N, N, N) [z, y, x], centre at N//2, gridding-
    corrected for trilinear interpolation, ready for central slices at rotation matrices."""

    def __init__(self, volume: np.ndarray) -> None:
        data = np.asarray(volume, dtype=np.float64)
        n = data.shape[0]
        m = OVERSAMPLING * n
        r = (np.arange(n) - n // 2) / m
        kernel = np.sinc(r) ** 2
        data = data / (kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :])
        padded = np.zeros((m, m, m), dtype=np.float32)
        lo = m // 2 - n // 2
        padded[lo : lo + n, lo : lo + n, lo : lo + n] = data
        ft = scipy.fft.rfftn(np.fft.ifftshift(padded), workers=1)
        self.box_px = n
        self.padded_px = m
        self._ft = wrap_padded(np.asarray(ft, dtype=np.complex64))

    def slices(self, rotations: np.ndarray, align_px: int, filt: np.ndarray) -> np.ndarray:
        """rfft2 (k, a, a//2+1) complex64 on the grid of an N-box image Fourier-cropped to
        ``a = align_px``, of the projections at ``rotations`` (k, 3, 3) with the centre at
        pixel a//2, multiplied by ``filt`` (a, a//2+1) (the low-pass; 0 = left out)."""
        n, a = self.box_px, int(align_px)
        rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        ky_i = np.fft.fftfreq(a, 1.0 / a)[:, None]
        kx_i = np.arange(a // 2 + 1, dtype=np.float64)[None, :]
        inside = filt > 0
        ky = np.broadcast_to(ky_i, inside.shape)[inside] / n
        kx = np.broadcast_to(kx_i, inside.shape)[inside] / n
        # centre at a//2 (= N//2 of the full box): the phase (−1)^(kx + ky)
        sign = np.where((np.broadcast_to(ky_i + kx_i, inside.shape)[inside] % 2) == 0, 1, -1)
        weight = (filt[inside] * sign).astype(np.float32)
        out = np.zeros((len(rot), a, a // 2 + 1), dtype=np.complex64)
        m = self.padded_px
        for start in range(0, len(rot), 256):
            r = rot[start : start + 256]
            f = r[:, 0, :, None] * kx[None, None, :] + r[:, 1, :, None] * ky[None, None, :]
            flip = f[:, 0] < 0
            f = np.where(flip[:, None, :], -f, f)
            values = trilinear(self._ft, f[:, 2] * m, f[:, 1] * m, f[:, 0] * m)
            values = np.where(flip, np.conj(values), values) * weight
            out[start : start + len(r)][:, inside] = values
        return out


def lowpass_filter(box_px: int, align_px: int, pixel_size_A: float, res_A: float) -> np.ndarray:
    """Weights (a, a//2+1) on the cropped grid: 1 up to frequency 1/``res_A``, a raised
    cosine to 0 over the next 2 shells (pixels of the N-box transform), 0 past the
    cropped Nyquist; the DC term is 0 (a particle's mean carries no pose)."""
    a = int(align_px)
    ky = np.fft.fftfreq(a, 1.0 / a)[:, None]
    kx = np.arange(a // 2 + 1, dtype=np.float64)[None, :]
    r = np.sqrt(ky * ky + kx * kx)
    edge = box_px * pixel_size_A / res_A
    t = np.clip((r - edge) / 2.0, 0.0, 1.0)
    w = 0.5 + 0.5 * np.cos(math.pi * t)
    w[r > a / 2] = 0.0
    w[0, 0] = 0.0
    return w.astype(np.float32)


def align_size(box_px: int, pixel_size_A: float, res_A: float) -> int:
    """Smallest even cropped box whose Nyquist holds the low-pass and its edge (and >= 16,
    <= the box)."""
    radius = box_px * pixel_size_A / res_A + 2.0
    a = 2 * math.ceil(radius) + 2
    return int(min(box_px - box_px % 2, max(16, a)))


def particle_side(
    images: np.ndarray, ctfs: np.ndarray, mask: np.ndarray, align_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(CTF · FT(mask · X))`` cropped to ``align_px`` (n, a, a//2+1) complex64 and the
    cropped CTF² (n, a·(a//2+1)) float32 of images (n, N, N) and CTFs (n, N, N//2+1)."""
    ft = scipy.fft.rfft2(images * mask, workers=1) * ctfs
    ft = align2d.crop_rfft(ft, align_px).astype(np.complex64)
    ctf2 = (align2d.crop_rfft(ctfs, align_px) ** 2).reshape(len(images), -1)
    return ft, ctf2.astype(np.float32)


def bank_power(bank_ft: np.ndarray) -> np.ndarray:
    """|P|² of projections (k, a, a//2+1) with the Hermitian weights folded in, (k, a·h)."""
    a = bank_ft.shape[1]
    power = np.abs(bank_ft) ** 2 * align2d.hermitian_weights(a)
    return power.reshape(len(bank_ft), -1).astype(np.float32)


def match_global(
    particles_ft: np.ndarray, ctf2: np.ndarray, bank_ft: np.ndarray, max_shift_align_px: int
) -> dict[str, np.ndarray]:
    """Best row of ``bank_ft`` (projections, not conjugated) and shift for each particle:
    ``{"index", "shift" (n, 2) cropped px, "score"}``."""
    found = align2d.align_particles(
        particles_ft, ctf2, np.conj(bank_ft), bank_power(bank_ft), max_shift_align_px
    )
    return {"index": found["index"], "shift": found["shift"], "score": found["score"]}


def _vertex(minus: np.ndarray, zero: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Offset (−0.5..0.5) of the vertex of the parabola through three equally spaced
    values (0 where they do not bend down)."""
    den = minus - 2.0 * zero + plus
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (minus - plus) / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def _rise(minus, zero, plus, offset):
    """How far the parabola through three values rises above the middle one at
    ``offset`` (its vertex, from :func:`_vertex`)."""
    return 0.5 * (plus - minus) * offset + 0.5 * (plus - 2.0 * zero + minus) * offset**2


def match_local(
    particles_ft: np.ndarray,
    ctf2: np.ndarray,
    projector: SliceProjector,
    rotations: np.ndarray,
    filt: np.ndarray,
    max_shift_align_px: int,
    centre_px: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Best candidate of each particle among its own ``rotations`` (n, J, 3, 3) and the
    shift: ``{"index" (n,) in 0..J-1, "shift" (n, 2) cropped px, "score" (n,)}``.

    Shifts are searched at ``centre_px`` (n, 2) (e.g. the previous shifts, sub-pixel) plus
    whole pixels ``-r..r``: comparing poses at whole-pixel shifts only would let a slightly
    wrong pose at a whole pixel beat the right one half a pixel away."""
    n, a, h = particles_ft.shape
    if centre_px is not None:
        c = np.asarray(centre_px, dtype=np.float64).reshape(n, 2)
        ky = np.fft.fftfreq(a)[None, :, None]
        kx = np.fft.rfftfreq(a)[None, None, :]
        # move each particle by −c: its shift from the reference becomes d − c
        ramp = np.exp(2j * math.pi * (c[:, 0, None, None] * kx + c[:, 1, None, None] * ky))
        particles_ft = (particles_ft * ramp).astype(np.complex64)
    n_cand = rotations.shape[1]
    r = int(max_shift_align_px)
    w = 2 * r + 1
    ex, ey = align2d.shift_dft(a, r)
    index = np.empty(n, dtype=np.intp)
    shift = np.empty((n, 2))
    score = np.empty(n)
    for s in range(0, n, LOCAL_BATCH):
        b = min(n, s + LOCAL_BATCH) - s
        bank = projector.slices(rotations[s : s + b].reshape(-1, 3, 3), a, filt)
        norms = np.einsum("bk,bjk->bj", ctf2[s : s + b], bank_power(bank).reshape(b, n_cand, -1))
        norms = np.sqrt(np.maximum(norms, 1e-30))
        z = particles_ft[s : s + b, :, :, None] * ex[None, None]  # (b, a, h, w)
        refs = np.conj(bank).reshape(b, n_cand, a, h).transpose(0, 2, 1, 3)  # (b, a, J, h)
        t = np.matmul(refs, z)  # (b, a [ky], J, w [dx])
        cc = np.einsum("yd,byjx->bjdx", ey, t, optimize=True).real / norms[:, :, None, None]
        flat = cc.reshape(b, n_cand, w * w)
        pos = flat.argmax(axis=2)  # (b, J): each candidate's best whole-pixel shift
        iy, ix = np.divmod(pos, w)
        bi, ji = np.meshgrid(np.arange(b), np.arange(n_cand), indexing="ij")

        def at(yy, xx, bi=bi, ji=ji, cc=cc):
            return cc[bi, ji, np.clip(yy, 0, w - 1), np.clip(xx, 0, w - 1)]

        centre = at(iy, ix)
        inner_x = (ix > 0) & (ix < w - 1)
        inner_y = (iy > 0) & (iy < w - 1)
        mx, px = at(iy, ix - 1), at(iy, ix + 1)
        my, py = at(iy - 1, ix), at(iy + 1, ix)
        dx = np.where(inner_x, _vertex(mx, centre, px), 0.0)
        dy = np.where(inner_y, _vertex(my, centre, py), 0.0)
        # candidates compared at their sub-pixel peaks (parabolas through the neighbours)
        peak = centre + np.where(inner_x, _rise(mx, centre, px, dx), 0.0)
        peak += np.where(inner_y, _rise(my, centre, py, dy), 0.0)
        j = peak.argmax(axis=1)
        rows = np.arange(b)
        ix, iy, dx, dy = ix[rows, j], iy[rows, j], dx[rows, j], dy[rows, j]
        centre = peak[rows, j]
        index[s : s + b] = j
        shift[s : s + b] = np.stack([ix - r + dx, iy - r + dy], axis=1)
        score[s : s + b] = centre
    if centre_px is not None:
        shift += c
    return {"index": index, "shift": shift, "score": score}
