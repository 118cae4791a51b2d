"""Direct Fourier inversion: a 3D map from particle images with known poses and CTFs.

Method (the central-slice theorem run backwards, as in RELION's ``BackProjector``):

1. Each image's rfft2 is phase-shifted so that the particle centre (box centre − shift,
   RELION 3.1's origin sign) sits at pixel 0, and multiplied by its CTF (RELION's sign:
   ``−ctf_2d``, since extracted particles have inverted contrast; see
   :mod:`hpcem.ctf.model`).
2. The slice is inserted into a 3D Fourier half-volume padded ``pad`` times at the
   frequencies ``Aᵀ (k_x, k_y, 0)`` (A the particle's ZYZ rotation matrix): the value
   ``CTF · X`` and the weight ``CTF²`` are spread trilinearly onto the eight neighbours
   (the Cython kernel ``backproject``; :func:`insert_slices_numpy` is its reference).
   Symmetry: each particle is inserted once per operator R of the point group, with the
   rotation ``A · R`` (a symmetric map projects identically at A and at A · R).
3. :func:`finish` enforces Hermitian symmetry on the x = 0 plane, divides the data by the
   weight plus a Wiener-style regulariser ``wiener · ⟨W⟩_shell`` (the shell's mean
   weight: small where the sampling is dense, protecting sparsely sampled voxels),
   transforms back, crops the padded box and applies the gridding correction (division
   by the real-space image of the trilinear kernel, sinc², where it is not tiny).

Accumulators are float64 so that the sum of the ranks' shares (MPI) equals the serial sum
to float tolerance. Arrays are [z, y, x]; the map's centre is voxel N // 2.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from hpcem.errors import ValidationError
from hpcem.kernels import load

KERNEL = "backproject"


class FourierAccumulator:
    """Sum of CTF-weighted slices (``data``) and CTF² weights (``weight``) of one map.

    ``data`` has shape (m, m, h + 1, 2) (real, imaginary), ``weight`` (m, m, h + 1), with
    m = pad · N and h = m // 2 + 1; the last x plane only catches zero-weight spill-over.
    Two accumulators of the same shape add with :meth:`add` (what an MPI Reduce does).
    """

    def __init__(self, box_px: int, pad: int = 2):
        if box_px < 4 or box_px % 2:
            raise ValidationError(f"box must be even and >= 4 px, got {box_px}")
        if pad not in (1, 2, 3, 4):
            raise ValidationError(f"pad must be 1, 2, 3 or 4, got {pad}")
        self.box_px = int(box_px)
        self.pad = int(pad)
        m = self.pad * self.box_px
        h = m // 2 + 1
        self.data = np.zeros((m, m, h + 1, 2), dtype=np.float64)
        self.weight = np.zeros((m, m, h + 1), dtype=np.float64)
        self.n_particles = 0

    @property
    def padded_px(self) -> int:
        return self.pad * self.box_px

    def add(self, other: FourierAccumulator) -> None:
        """Add ``other`` (same box and pad) into this one."""
        if other.data.shape != self.data.shape:
            raise ValidationError("cannot add Fourier accumulators of different shapes")
        self.data += other.data
        self.weight += other.weight
        self.n_particles += other.n_particles

    def insert(
        self,
        images_ft: np.ndarray,
        ctf: np.ndarray,
        rotations: np.ndarray,
        max_r_px: float | None = None,
        use_kernel: bool = True,
    ) -> int:
        """Insert centred image transforms ``images_ft`` (n, N, N//2+1) complex with their
        ``ctf`` (n, N, N//2+1) and ``rotations`` (n, 3, 3) up to radius ``max_r_px``
        (pixels of the image's transform; default and maximum N/2, Nyquist).
        Returns the number of samples inserted."""
        n = self.box_px
        ft = np.ascontiguousarray(images_ft, dtype=np.complex64)
        if ft.ndim != 3 or ft.shape[1:] != (n, n // 2 + 1):
            raise ValidationError(
                f"image transforms of shape {ft.shape}, want (k, {n}, {n // 2 + 1})"
            )
        ctf32 = np.ascontiguousarray(ctf, dtype=np.float32).reshape(ft.shape)
        rot = np.ascontiguousarray(rotations, dtype=np.float64).reshape(len(ft), 3, 3)
        limit = n / 2
        r = limit if max_r_px is None else min(float(max_r_px), limit)
        kernel = load(KERNEL) if use_kernel else None
        if kernel is not None:
            count = kernel.insert_slices(
                self.data,
                self.weight,
                ft.view(np.float32).reshape(*ft.shape, 2),
                ctf32,
                rot,
                self.pad,
                r,
            )
        else:
            count = insert_slices_numpy(self.data, self.weight, ft, ctf32, rot, self.pad, r)
        self.n_particles += len(ft)
        return int(count)


def insert_slices_numpy(
    data: np.ndarray,
    weight: np.ndarray,
    ft: np.ndarray,
    ctf: np.ndarray,
    rotations: np.ndarray,
    pad: int,
    max_r: float,
) -> int:
    """Numpy reference of ``backproject.insert_slices`` (same arguments, ``ft`` complex):
    trilinear spreading with ``np.bincount`` on flat indices."""
    size = ft.shape[1]
    m = data.shape[0]
    hx = data.shape[2]
    ky = np.fft.fftfreq(size, 1.0 / size)[:, None]
    kx = np.arange(ft.shape[2], dtype=np.float64)[None, :]
    inside = kx * kx + ky * ky <= max_r * max_r
    kx = np.broadcast_to(kx, inside.shape)[inside]
    ky = np.broadcast_to(ky, inside.shape)[inside]
    n_vox = data.shape[0] * data.shape[1] * hx
    flat_re = np.zeros(n_vox)
    flat_im = np.zeros(n_vox)
    flat_w = np.zeros(n_vox)
    for p in range(len(ft)):
        a = pad * rotations[p]
        c = ctf[p][inside].astype(np.float64)
        val = ft[p][inside].astype(np.complex128) * c
        w = c * c
        f = a[0][:, None] * kx[None, :] + a[1][:, None] * ky[None, :]  # (3 [x, y, z], k)
        flip = f[0] < 0
        f[:, flip] *= -1
        val = np.where(flip, np.conj(val), val)
        base = np.floor(f)
        g = f - base
        x0 = base[0].astype(np.intp)
        y0 = base[1].astype(np.intp) % m
        z0 = base[2].astype(np.intp) % m
        for dz in (0, 1):
            zz = (z0 + dz) % m
            wz = g[2] if dz else 1 - g[2]
            for dy in (0, 1):
                yy = (y0 + dy) % m
                wy = g[1] if dy else 1 - g[1]
                for dx in (0, 1):
                    wx = g[0] if dx else 1 - g[0]
                    idx = (zz * m + yy) * hx + x0 + dx
                    share = wz * wy * wx
                    flat_re += np.bincount(idx, share * val.real, n_vox)
                    flat_im += np.bincount(idx, share * val.imag, n_vox)
                    flat_w += np.bincount(idx, share * w, n_vox)
    data[..., 0] += flat_re.reshape(weight.shape)
    data[..., 1] += flat_im.reshape(weight.shape)
    weight += flat_w.reshape(weight.shape)
    return int(inside.sum()) * len(ft)


def centred_transforms(images: np.ndarray, centres_px: np.ndarray) -> np.ndarray:
    """rfft2 (n, N, N//2+1) complex64 of ``images`` (n, N, N) with each particle's centre
    ``centres_px`` (n, 2) as (x, y) in pixels moved to pixel 0."""
    imgs = np.asarray(images, dtype=np.float32)
    n = imgs.shape[-1]
    ft = scipy.fft.rfft2(imgs, workers=1)
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    ky = np.fft.fftfreq(n)[None, :, None]
    kx = np.fft.rfftfreq(n)[None, None, :]
    phase = np.exp(2j * math.pi * centres[:, 1, None, None] * ky).astype(np.complex64)
    phase = phase * np.exp(2j * math.pi * centres[:, 0, None, None] * kx).astype(np.complex64)
    return (ft * phase).astype(np.complex64)


def particle_centres_px(shifts_A: np.ndarray, box_px: int, pixel_size_A: float) -> np.ndarray:
    """Particle centres (n, 2) (x, y) in pixels: box centre − shift (RELION 3.1 sign)."""
    return box_px // 2 - np.asarray(shifts_A, dtype=np.float64).reshape(-1, 2) / pixel_size_A


def relion_ctfs(
    box_px: int,
    pixel_size_A: float,
    defocus_u_A: np.ndarray,
    defocus_v_A: np.ndarray,
    defocus_angle_deg: np.ndarray,
    voltage_kV: float | np.ndarray,
    cs_mm: float | np.ndarray,
    amplitude_contrast: float | np.ndarray,
    phase_shift_deg: np.ndarray | None = None,
) -> np.ndarray:
    """CTFs (n, N, N//2+1) float32 on the rfft2 grid with RELION's sign (+A at zero
    frequency), i.e. ``−ctf_2d``: the contrast of extracted, contrast-inverted particles.
    The optics values may be scalars or one value per particle (several optics groups)."""
    from hpcem.ctf.model import ctf_2d

    du = np.atleast_1d(np.asarray(defocus_u_A, dtype=np.float64))
    dv = np.atleast_1d(np.asarray(defocus_v_A, dtype=np.float64))
    da = np.atleast_1d(np.asarray(defocus_angle_deg, dtype=np.float64))
    ps = np.zeros_like(du) if phase_shift_deg is None else np.atleast_1d(phase_shift_deg)
    kv, cs, ac = (
        np.broadcast_to(np.asarray(v, np.float64), du.shape)
        for v in (voltage_kV, cs_mm, amplitude_contrast)
    )
    out = np.empty((len(du), box_px, box_px // 2 + 1), dtype=np.float32)
    for i in range(len(du)):
        out[i] = -ctf_2d(
            (box_px, box_px),
            pixel_size_A,
            du[i],
            dv[i],
            da[i],
            voltage_kV=float(kv[i]),
            cs_mm=float(cs[i]),
            amplitude_contrast=float(ac[i]),
            phase_shift_deg=float(ps[i]),
            half=True,
        )
    return out


def expand_symmetry(rotations: np.ndarray, symmetry: str) -> np.ndarray:
    """Rotations (n · |G|, 3, 3): each particle's ``A · R`` for every operator R of the
    group, particle-major (the identity first)."""
    from hpcem.reconstruct.symmetry import symmetry_matrices

    ops = symmetry_matrices(symmetry)
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if len(ops) == 1:
        return rot
    return np.einsum("nij,gjk->ngik", rot, ops).reshape(-1, 3, 3)


def _hermitian_x0(acc: FourierAccumulator) -> tuple[np.ndarray, np.ndarray]:
    """Complex data (m, m, h) and weight with the x = 0 plane made Hermitian: each point
    gets the conjugate sum of itself and its mate (−y, −z), as does its weight."""
    h = acc.padded_px // 2 + 1
    data = acc.data[:, :, :h, 0] + 1j * acc.data[:, :, :h, 1]
    weight = acc.weight[:, :, :h].copy()
    plane = data[:, :, 0]
    mate = np.roll(plane[::-1, ::-1], 1, axis=(0, 1))  # value at (−z, −y)
    data[:, :, 0] = plane + np.conj(mate)
    wplane = weight[:, :, 0]
    weight[:, :, 0] = wplane + np.roll(wplane[::-1, ::-1], 1, axis=(0, 1))
    return data, weight


def _radius_grid(m: int) -> np.ndarray:
    """Radius (in padded grid units) of each voxel of an (m, m, m//2+1) half-volume."""
    kz = np.fft.fftfreq(m, 1.0 / m)[:, None, None]
    ky = np.fft.fftfreq(m, 1.0 / m)[None, :, None]
    kx = np.arange(m // 2 + 1, dtype=np.float64)[None, None, :]
    return np.sqrt(kz * kz + ky * ky + kx * kx)


def finish(
    acc: FourierAccumulator,
    wiener: float = 0.001,
    gridding_correction: bool = True,
    max_r_px: float | None = None,
) -> np.ndarray:
    """The real-space map (N, N, N) float32 of an accumulator (see the module doc).

    ``wiener`` >= 0 is the regulariser as a fraction of each shell's mean weight;
    ``max_r_px`` limits the map to that radius in pixels of the N-box transform."""
    if wiener < 0:
        raise ValidationError(f"wiener regularisation must be >= 0, got {wiener}")
    n, m = acc.box_px, acc.padded_px
    data, weight = _hermitian_x0(acc)
    radius = _radius_grid(m)
    limit = (n / 2) if max_r_px is None else min(max_r_px, n / 2)
    shell = np.rint(radius).astype(np.intp)
    n_shells = m // 2 + 2
    inside = radius <= limit * acc.pad + 1.0  # the trilinear spill-over of the last samples
    sums = np.bincount(shell[inside], weight[inside], n_shells)
    counts = np.bincount(shell[inside], None, n_shells)
    mean_w = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    denom = weight + wiener * mean_w[np.minimum(shell, n_shells - 1)]
    ok = inside & (radius <= limit * acc.pad) & (denom > 0)
    vol_ft = np.zeros_like(data)
    vol_ft[ok] = data[ok] / denom[ok]
    padded = scipy.fft.irfftn(vol_ft, s=(m, m, m), workers=1)
    padded = np.fft.fftshift(padded)
    lo = m // 2 - n // 2
    volume = padded[lo : lo + n, lo : lo + n, lo : lo + n]
    if gridding_correction:
        volume = volume / gridding_kernel(n, m)
    return np.ascontiguousarray(volume, dtype=np.float32)


def gridding_kernel(box_px: int, padded_px: int) -> np.ndarray:
    """Real-space image (N, N, N) of trilinear interpolation on the padded grid: sinc² of
    the distance from the centre over the padded size, per axis (RELION's correction)."""
    r = (np.arange(box_px) - box_px // 2) / padded_px
    k = np.sinc(r) ** 2
    return k[:, None, None] * k[None, :, None] * k[None, None, :]


def reconstruct(
    images: np.ndarray,
    angles_deg: np.ndarray,
    shifts_A: np.ndarray,
    ctfs: np.ndarray | None,
    pixel_size_A: float,
    symmetry: str = "C1",
    pad: int = 2,
    wiener: float = 0.001,
    max_res_A: float = 0.0,
    batch: int = 256,
    use_kernel: bool = True,
) -> np.ndarray:
    """Map (N, N, N) from in-memory ``images`` (n, N, N), poses ``angles_deg`` (n, 3)
    (rot, tilt, psi), shifts (n, 2) in Å and CTFs (n, N, N//2+1) (RELION sign; None =
    no CTF). A convenience for tests and scripts; protocols use :func:`accumulate`."""
    images = np.asarray(images, dtype=np.float32)
    box = images.shape[-1]
    acc = FourierAccumulator(box, pad)
    accumulate(
        acc,
        images,
        angles_deg,
        shifts_A,
        ctfs,
        pixel_size_A,
        symmetry,
        max_res_A,
        batch,
        use_kernel,
    )
    return finish(acc, wiener, max_r_px=max_radius_px(box, pixel_size_A, max_res_A))


def max_radius_px(box_px: int, pixel_size_A: float, max_res_A: float) -> float | None:
    """Radius in pixels of an N-box transform for resolution ``max_res_A`` (0 = None)."""
    if not max_res_A:
        return None
    return box_px * pixel_size_A / max_res_A


def accumulate(
    acc: FourierAccumulator,
    images: np.ndarray,
    angles_deg: np.ndarray,
    shifts_A: np.ndarray,
    ctfs: np.ndarray | None,
    pixel_size_A: float,
    symmetry: str = "C1",
    max_res_A: float = 0.0,
    batch: int = 256,
    use_kernel: bool = True,
) -> int:
    """Insert ``images`` into ``acc`` in batches; returns the samples inserted."""
    from hpcem.sim.projection import euler_matrices

    box = acc.box_px
    r = max_radius_px(box, pixel_size_A, max_res_A)
    count = 0
    for start in range(0, len(images), batch):
        stop = min(start + batch, len(images))
        centres = particle_centres_px(shifts_A[start:stop], box, pixel_size_A)
        ft = centred_transforms(images[start:stop], centres)
        ctf = np.ones(ft.shape, np.float32) if ctfs is None else ctfs[start:stop]
        rot = euler_matrices(angles_deg[start:stop])
        count += insert_with_symmetry(acc, ft, ctf, rot, symmetry, r, use_kernel)
    return count


def insert_with_symmetry(
    acc: FourierAccumulator,
    ft: np.ndarray,
    ctf: np.ndarray,
    rotations: np.ndarray,
    symmetry: str,
    max_r_px: float | None,
    use_kernel: bool = True,
) -> int:
    """Insert each slice once per operator of ``symmetry`` (see :func:`expand_symmetry`)."""
    rot = expand_symmetry(rotations, symmetry)
    order = len(rot) // len(ft)
    if order > 1:
        ft = np.repeat(ft, order, axis=0)
        ctf = np.repeat(ctf, order, axis=0)
    added = acc.insert(ft, ctf, rot, max_r_px, use_kernel)
    acc.n_particles -= len(ft) - len(ft) // order  # count particles, not copies
    return added
