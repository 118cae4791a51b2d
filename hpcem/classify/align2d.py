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


def rotated_references_ft(
    references: np.ndarray, angles_deg: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``rfft2`` (K·R, N, N//2+1) of every reference (K, N, N) rotated to every angle and
    masked (row ``k·R + j``: reference k at angle j), at full size: the banks of every
    search resolution are crops of it (:func:`bank_from_ft`), so the references are
    rotated once per iteration."""
    from hpcem.kernels import load

    kernel = load("align2d")  # rotate_stack; None: rotate_images, the numpy reference
    k, box, _ = references.shape
    n_rot = len(angles_deg)
    rotated = np.empty((k * n_rot, box, box), dtype=np.float32)
    angles = np.ascontiguousarray(angles_deg, dtype=np.float64)
    for i in range(k):
        part = rotated[i * n_rot : (i + 1) * n_rot]
        if kernel is not None:
            kernel.rotate_stack(part, np.ascontiguousarray(references[i], np.float32), angles)
        else:
            part[...] = rotate_images(np.repeat(references[i][None], n_rot, axis=0), angles)
    rotated *= mask
    if not len(rotated):  # no references (an MPI rank with no share of the classes)
        return np.zeros((0, box, box // 2 + 1), np.complex64)
    return scipy.fft.rfft2(rotated, workers=-1)


def bank_from_ft(ft: np.ndarray, align_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The bank of :func:`reference_bank` from :func:`rotated_references_ft`'s rows
    (all, or a subset such as every other angle), cropped to box ``align_px``."""
    ft = crop_rfft(ft, align_px)
    power = np.abs(ft) ** 2 * hermitian_weights(align_px)
    power = power.reshape(len(ft), align_px * (align_px // 2 + 1))
    return np.conj(ft).astype(np.complex64), power.astype(np.float32)


def reference_bank(
    references: np.ndarray, angles_deg: np.ndarray, mask: np.ndarray, align_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """The conjugate Fourier transforms (K·R, n, n//2+1) of every reference at every angle,
    masked and cropped to box ``align_px``, and their weighted power (K·R, n·(n//2+1)) with
    the Hermitian weights folded in (for the norm of CTF·reference)."""
    return bank_from_ft(rotated_references_ft(references, angles_deg, mask), align_px)


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
    return _best_shift_and_row(cc / norms[:, :, None, None], r)


def _best_shift_and_row(cc: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """The best row and shift of each particle from normalised correlations ``cc``
    (B, M, dy, dx) at shifts ``-r..r``: ``{"index" (B,), "shift" (B, 2) (dx, dy) refined by
    parabolas, "score" (B,), "scores" (B, M) the best over shifts of every row}``."""
    b, m, w, _ = cc.shape
    flat = cc.reshape(b, m, w * w)
    best_shift = flat.argmax(axis=2)  # (B, M)
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


def align_rows(
    particles_ft: np.ndarray,
    ctf2: np.ndarray,
    bank: np.ndarray,
    bank_power: np.ndarray,
    rows: np.ndarray,
    max_shift_align_px: int,
) -> dict[str, np.ndarray]:
    """:func:`align_numpy` against a few bank rows per particle (``rows`` (N, M): its own
    M rows each) instead of the whole bank: the local stage of :func:`search_two_stage`.
    Returns the same keys, ``"index"`` and ``"scores"`` counting in ``rows``' columns."""
    total, n, _ = particles_ft.shape
    r = int(max_shift_align_px)
    w = 2 * r + 1
    ex, ey = shift_dft(n, r)
    eyt = np.ascontiguousarray(ey.T)
    m = rows.shape[1]
    parts = []
    for s in range(0, total, _BATCH):
        ft, sel = particles_ft[s : s + _BATCH], rows[s : s + _BATCH]
        b = len(ft)
        norms = np.sqrt(
            np.maximum(np.einsum("bf,bmf->bm", ctf2[s : s + b], bank_power[sel]), 1e-30)
        )
        z = ft[:, :, :, None] * ex[None, None]  # (B, n, h, w)
        g = bank[sel].transpose(0, 2, 1, 3)  # (B, n, M, h)
        t = np.matmul(g, z)  # (B, n, M, w [dx])
        cc = np.matmul(eyt, t.reshape(b, n, m * w)).real  # (B, w [dy], M·w)
        cc = cc.reshape(b, w, m, w).transpose(0, 2, 1, 3)  # (B, M, dy, dx)
        parts.append(_best_shift_and_row(cc / norms[:, :, None, None], r))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def search_two_stage(
    coarse: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
    fine: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
    n_rot: int,
    step_deg: float,
    factor: int,
    candidates: int = 3,
    reach: int = 2,
) -> dict[str, np.ndarray]:
    """Coarse-to-fine multi-reference search: every class at every ``factor``-th angle on
    a smaller Fourier crop first, then, for each particle's ``candidates`` best (class,
    angle) pairs of that stage, the angles within ``reach`` steps of the fine grid at the
    full search box and the full shift range; angle refined by a parabola as in
    :func:`refine_angle`.

    ``coarse`` and ``fine`` are ``(particles_ft, ctf2, bank, bank_power, max_shift_px)``
    (arguments of :func:`align_particles`; the coarse bank holds angles ``0, factor,
    2·factor, ...`` of the fine grid of ``n_rot`` angles, class by class). Candidates are
    classes, each at its best coarse angle (the next angles of the best class would crowd
    the other classes out). Why: the exhaustive search costs K·R rows × the Fourier
    pixels × the shifts per particle; the coarse stage has ``1/factor`` of the rows on
    ``(coarse/fine crop)²`` of the pixels and fewer shifts, and the fine stage
    ``candidates · (2·reach + 1)`` rows: for K = 10 at 5° on a 48 → 32 px crop, 2.6×
    less CPU at the same classes (measured in :mod:`hpcem.classify.em2d`).

    Returns ``{"class", "psi_deg", "shift" (dx, dy) on the fine crop's pixels, "score"}``.
    """
    n_coarse = n_rot // factor
    first = align_particles(*coarse)
    scores = first["scores"].reshape(len(first["scores"]), -1, n_coarse)  # (N, K, Rc)
    per_class = scores.argmax(axis=2)  # each class's best coarse angle
    best = np.take_along_axis(scores, per_class[:, :, None], axis=2)[:, :, 0]  # (N, K)
    c = min(candidates, best.shape[1])
    cls = np.argsort(-best, axis=1, kind="stable")[:, :c]  # (N, C)
    coarse_rot = np.take_along_axis(per_class, cls, axis=1)
    offsets = np.arange(-reach, reach + 1)
    rot = (coarse_rot[:, :, None] * factor + offsets) % n_rot  # (N, C, L)
    rows = (cls[:, :, None] * n_rot + rot).reshape(len(scores), -1)
    found = align_rows(*fine[:4], rows, fine[4])
    length = len(offsets)
    group, pos = np.divmod(found["index"], length)
    idx = np.arange(len(rows))
    local = found["scores"]
    inner = (pos > 0) & (pos < length - 1)
    minus = local[idx, np.where(inner, found["index"] - 1, found["index"])]
    plus = local[idx, np.where(inner, found["index"] + 1, found["index"])]
    offset = np.where(inner, _parabola(minus, found["score"], plus), 0.0)
    best_rot = rot.reshape(len(rows), -1)[idx, found["index"]]
    return {
        "class": cls[idx, group],
        "psi_deg": ((best_rot + offset) * step_deg) % 360.0,
        "shift": found["shift"],
        "score": found["score"],
    }
