"""Multi-reference 2D alignment: in-plane rotation by a bank of rotated references, shifts
by FFT cross-correlation.

Why rotated references and FFT cross-correlation (not polar coordinates): the particle's
CTF multiplies the particle side only (``CTF·X``), so one bank of K × R rotated references
per iteration serves every particle, every shift inside the range comes from one inverse
FFT per (particle, reference), and there is no polar resampling of noisy particles. The
search runs on Fourier-cropped images (``align_box_px``: a low-pass and a smaller FFT);
the best angle and shift are refined below the grid by parabolas through the
neighbouring scores.

Conventions (checked against the simulator's ZYZ = RELION projection in the tests): a
particle is modelled as ``shift(rotate(reference, psi), d)`` where ``rotate`` is
:func:`rotate_images` (the projection at Euler ``(rot, tilt, psi)`` is the one at
``(rot, tilt, 0)`` rotated by ``psi``) and the particle's centre sits at box centre + d
pixels; RELION 3.1's origin is ``-d`` (see :mod:`hpcem.model.types`).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage

from hpcem.errors import ValidationError

#: Particles aligned per batch (bounds the memory of the correlation maps).
_BATCH = 32


def soft_mask(box_px: int, diameter_px: float, edge_px: float = 3.0) -> np.ndarray:
    """A circular mask (box, box), 1 inside ``diameter_px``, a raised-cosine edge outside,
    centred on pixel box//2."""
    c = box_px // 2
    y, x = np.mgrid[0:box_px, 0:box_px] - c
    r = np.hypot(x, y)
    radius = 0.5 * diameter_px
    t = np.clip((r - radius) / edge_px, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def rotate_images(images: np.ndarray, angles_deg, order: int = 1) -> np.ndarray:
    """Rotate each image (n, N, N) about pixel N//2 by its angle (degrees, the psi sense).

    ``out(x, y) = in(x cos a - y sin a, x sin a + y cos a)`` (x = column, y = row, both
    from the centre): the same map rotates a centred (``fftshift``-ed) Fourier array
    consistently with its image. Outside the box reads as 0.
    """
    images = np.asarray(images)
    single = images.ndim == 2
    stack = images[None] if single else images
    angles = np.broadcast_to(np.asarray(angles_deg, dtype=np.float64), (len(stack),))
    n = stack.shape[-1]
    c = n // 2
    y, x = (np.mgrid[0:n, 0:n] - c).astype(np.float64)
    out = np.empty(stack.shape, dtype=np.result_type(stack.dtype, np.float32))
    for i, angle in enumerate(angles):
        t = np.radians(angle)
        cs, sn = np.cos(t), np.sin(t)
        xs = cs * x - sn * y + c
        ys = sn * x + cs * y + c
        out[i] = scipy.ndimage.map_coordinates(stack[i], [ys, xs], order=order, cval=0.0)
    return out[0] if single else out


def crop_rfft(ft: np.ndarray, n: int) -> np.ndarray:
    """Crop the last two axes of an ``rfft2`` array of box N to the ``rfft2`` layout of
    box ``n`` (a Fourier crop: the low frequencies, as a box-n image would have)."""
    big = ft.shape[-2]
    if n == big:
        return ft
    half = n // 2
    rows = np.r_[0:half, big - half : big]
    return ft[..., rows, : half + 1]


def hermitian_weights(n: int) -> np.ndarray:
    """Weights (n, n//2+1) that make sums over an rfft2 half-plane equal sums over the full
    plane: 2 for the columns that stand for two frequencies, 1 for kx = 0 and Nyquist."""
    w = np.full((n, n // 2 + 1), 2.0)
    w[:, 0] = 1.0
    if n % 2 == 0:
        w[:, -1] = 1.0
    return w


def angle_grid(step_deg: float) -> np.ndarray:
    """In-plane angles searched: ``0, step, 2 step, ... < 360`` (step adjusted to divide
    360 evenly)."""
    if not 0.0 < step_deg <= 90.0:
        raise ValidationError(f"angular step must be in (0, 90] degrees, got {step_deg}")
    count = round(360.0 / step_deg)
    return np.arange(count) * (360.0 / count)


def reference_bank(
    references: np.ndarray, angles_deg: np.ndarray, mask: np.ndarray, align_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """The conjugate Fourier transforms (K·R, n, n//2+1) of every reference at every angle,
    masked and cropped to box ``align_px``, and their weighted power (K·R, n·(n//2+1)) with
    the Hermitian weights folded in (for the norm of CTF·reference)."""
    k, box, _ = references.shape
    n_rot = len(angles_deg)
    rotated = np.empty((k * n_rot, box, box), dtype=np.float32)
    for i in range(k):
        rotated[i * n_rot : (i + 1) * n_rot] = rotate_images(
            np.repeat(references[i][None], n_rot, axis=0), angles_deg
        )
    rotated *= mask
    ft = crop_rfft(scipy.fft.rfft2(rotated, workers=-1), align_px)
    power = (np.abs(ft) ** 2 * hermitian_weights(align_px)).reshape(k * n_rot, -1)
    return np.conj(ft).astype(np.complex64), power.astype(np.float32)


def shift_dft(n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """DFT matrices that evaluate a half-plane (rfft2) spectrum at the shifts ``-r..r``:
    ``ex`` (n//2+1, 2r+1) along x with the Hermitian weights folded in (so the real part
    of the result is the full-plane sum) and ``ey`` (n, 2r+1) along y."""
    shifts = np.arange(-r, r + 1)
    kx = np.arange(n // 2 + 1)
    ky = np.fft.fftfreq(n) * n
    ex = np.exp(2j * np.pi * np.outer(kx, shifts) / n) * hermitian_weights(n)[0][:, None]
    ey = np.exp(2j * np.pi * np.outer(ky, shifts) / n)
    return ex.astype(np.complex64), ey.astype(np.complex64)


def _parabola(minus: np.ndarray, zero: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Offset (−0.5..0.5) of the vertex of the parabola through three equally spaced
    values (0 where they are flat)."""
    den = minus - 2.0 * zero + plus
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (minus - plus) / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def align_numpy(
    particles_ft: np.ndarray,
    ctf2: np.ndarray,
    bank: np.ndarray,
    bank_power: np.ndarray,
    max_shift_align_px: int,
    bank_by_row: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Best (reference, shift) of each particle by normalised cross-correlation.

    Parameters
    ----------
    particles_ft : (B, n, n//2+1) complex, ``CTF · rfft2(masked particle)``, cropped.
    ctf2 : (B, n·(n//2+1)) float, the particles' CTF² on the same grid.
    bank, bank_power : from :func:`reference_bank`.
    max_shift_align_px : shifts searched are ``-r..r`` on the cropped grid in x and y.
    bank_by_row : ``bank`` as a C-contiguous (n, K·R, n//2+1) array (BLAS needs it
        contiguous; :func:`align_particles` makes it once for all batches).

    Returns ``{"index" (B,) int: best row of the bank, "shift" (B, 2): (dx, dy) in cropped
    pixels with sub-pixel parabola refinement, "score" (B,): the normalised correlation,
    "scores" (B, K·R): the best score of every bank row}``. The reference's norm under
    the particle's CTF is in the score (``Σ CTF²|R|²``), so strong references do not win
    by power alone.
    """
    b, n, h = particles_ft.shape
    r = int(max_shift_align_px)
    w = 2 * r + 1
    ex, ey = shift_dft(n, r)
    norms = np.sqrt(np.maximum(ctf2 @ bank_power.T, 1e-30))  # (B, KR)
    kr = bank.shape[0]
    # The correlation only at the 2r+1 shifts searched, as two small DFTs (BLAS) instead
    # of a full inverse FFT per (particle, reference). The x-DFT goes on the particle side
    # first (z: B x w per frequency), so no (B, K·R, n, h) product is ever formed.
    z = particles_ft[:, :, :, None] * ex[None, None]  # (B, n, h, w)
    z = z.transpose(1, 2, 0, 3).reshape(n, h, b * w)  # per ky: (h, B·w)
    if bank_by_row is None:
        bank_by_row = np.ascontiguousarray(bank.transpose(1, 0, 2))
    t = np.matmul(bank_by_row, z)  # (n, KR, B·w)
    cc = (ey.T @ t.reshape(n, kr * b * w)).real  # (w [dy], KR·B·w [dx])
    cc = cc.reshape(w, kr, b, w).transpose(2, 1, 0, 3)  # (B, KR, dy, dx)
    cc = cc / norms[:, :, None, None]
    flat = cc.reshape(b, cc.shape[1], w * w)
    best_shift = flat.argmax(axis=2)  # (B, KR)
    scores = np.take_along_axis(flat, best_shift[:, :, None], axis=2)[:, :, 0]
    index = scores.argmax(axis=1)
    rows = np.arange(b)
    best = best_shift[rows, index]
    iy, ix = np.divmod(best, w)
    maps = cc[rows, index]  # (B, w, w)

    def at(yy, xx):
        return maps[rows, np.clip(yy, 0, w - 1), np.clip(xx, 0, w - 1)]

    centre = at(iy, ix)
    dx = np.where((ix > 0) & (ix < w - 1), _parabola(at(iy, ix - 1), centre, at(iy, ix + 1)), 0)
    dy = np.where((iy > 0) & (iy < w - 1), _parabola(at(iy - 1, ix), centre, at(iy + 1, ix)), 0)
    shift = np.stack([ix - r + dx, iy - r + dy], axis=1)
    return {"index": index, "shift": shift, "score": scores[rows, index], "scores": scores}


def align_particles(
    particles_ft: np.ndarray,
    ctf2: np.ndarray,
    bank: np.ndarray,
    bank_power: np.ndarray,
    max_shift_align_px: int,
) -> dict[str, np.ndarray]:
    """:func:`align_numpy` in batches of :data:`_BATCH` particles (bounded memory)."""
    by_row = np.ascontiguousarray(bank.transpose(1, 0, 2))
    parts = [
        align_numpy(
            particles_ft[s : s + _BATCH],
            ctf2[s : s + _BATCH],
            bank,
            bank_power,
            max_shift_align_px,
            by_row,
        )
        for s in range(0, len(particles_ft), _BATCH)
    ]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def refine_angle(scores: np.ndarray, index: np.ndarray, n_rot: int, step_deg: float):
    """(class, angle in degrees) of each particle from its best bank row, the angle refined
    by a parabola through the scores of the neighbouring angles of the same class."""
    cls, rot = np.divmod(index, n_rot)
    rows = np.arange(len(index))
    base = cls * n_rot
    minus = scores[rows, base + (rot - 1) % n_rot]
    plus = scores[rows, base + (rot + 1) % n_rot]
    offset = _parabola(minus, scores[rows, index], plus)
    return cls, ((rot + offset) * step_deg) % 360.0
