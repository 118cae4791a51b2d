"""The 2D classification iteration: hard-assignment multi-reference alignment (k-means
in the space of in-plane poses), Wiener-filtered class averages, on one rank or many.

Why hard assignment (not RELION's maximum-likelihood marginalisation): each particle
costs one best-pose search per iteration, the result is deterministic for a seed and
identical on any number of ranks, and at the SNRs the tests use (0.1) the poses are
well defined. ML is more robust at very low SNR; this module is the k-means-like method
of the issue, with its convergence test written below.

One iteration:

1. **E-step** (each rank, its own particles): every particle against every reference at
   every in-plane angle and shift (:mod:`hpcem.classify.align2d`); the best (class,
   psi, shift) is kept.
2. The per-particle results are gathered on every rank (a few numbers per particle);
   **empty classes** (fewer than ``min_class_size`` members; default
   :data:`MIN_CLASS_FRACTION` of the mean class size) are re-seeded by moving the
   worse-scoring half of the largest class into them — the same decision on every rank.
3. **M-step**: each rank sums its particles, shifted and rotated back, multiplied by
   their CTF, and the rotated CTF² (Wiener numerator and denominator); one
   ``Allreduce`` of the sums; every rank forms the same new averages
   ``FT⁻¹[Σ CTF·X / (Σ CTF² + τ)]`` with ``τ`` = ``wiener_fraction`` × the mean of
   ``Σ CTF²`` (without CTF correction: the plain mean). Two filters of the same sums: the
   references of the next search use ``wiener_fraction`` = 0.1 (damped low frequencies,
   where the CTF is small: stable assignments), the averages reported use ``τ`` =
   ``output_wiener_per_particle`` (1.2) × the mean of ``Σ CTF²`` / the class's size,
   i.e. a constant per particle as the Wiener filter has it (the noise power of one
   particle over its signal power does not change with the class size), closer to the
   true image. Measured on 200 simulated particles at SNR 0.1 (5 views, ~40 per class):
   one filter at 0.1 for both gives purity 1.0 but averages that correlate 0.86–0.89
   with the true projections; 0.03 for both, 0.95 but purity 0.965; 0.01, purity 0.41;
   0.1 and 0.03 (= 1.2 / 40), purity 1.0 and 0.95. On 2,000 particles (10 views, ~200
   per class) the fraction 0.03 gave averages correlating 0.973, 0.01 0.990 and 0.003
   0.994 (same classes): a fixed fraction over-smooths large classes, hence per particle.
4. **Centring**: each class is moved so that its centre of mass is at the box centre,
   and its particles' shifts with it (RELION's ``--center_classes``); without it the
   averages drift by a pixel or two and the shifts with them.

**Convergence**: stop after an iteration in which fewer than 1 % of the particles
changed class (:data:`CONVERGED_FRACTION`) and no class was re-seeded, or after
``iterations``. Initial references are the averages of ``K`` random subsets of the
particles at random in-plane angles (from ``seed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.fft

from hpcem.classify import align2d
from hpcem.errors import ValidationError

#: The run has converged when fewer than this fraction of particles changed class.
CONVERGED_FRACTION = 0.01
#: The coarse stage of the two-stage search: Fourier crop (fraction of ``align_box_px``),
#: every how many angles of the fine grid, and how many classes per particle (each at
#: its best coarse angle) go on to the fine stage. Measured on the benchmark's 2,000
#: particles (96 px, K = 10, SNR 0.1, 10 iterations, one core): purity 0.990 and
#: class-average correlation 0.973 in 15.5 CPU s, against 0.991 and 0.973 in 39.7 CPU s
#: for the exhaustive search; with 3 candidates instead of 10, purity fell to 0.96 on
#: 500 of those particles (0.99 exhaustive).
COARSE_BOX_FRACTION = 2 / 3
COARSE_ANGLE_FACTOR = 2
CANDIDATES = 10
#: ... but the coarse crop is never under this box, nor its angular step over this: on
#: 60 particles of 32 px searched at 10° (coarse 20° on a 22 px crop), one particle in
#: 60 went to a wrong class that the exhaustive search got right.
COARSE_MIN_BOX_PX = 32
COARSE_MAX_STEP_DEG = 10.0
#: Default smallest class, as a fraction of the mean class size (n / K): a smaller class
#: is re-seeded from the largest one.
MIN_CLASS_FRACTION = 0.5


class SerialComm:
    """The two collective operations the iteration needs, on one process (no MPI)."""

    rank = 0
    size = 1

    def allgather(self, value):
        return [value]

    def sum(self, array: np.ndarray) -> np.ndarray:
        return array


class MPIComm:
    """:class:`SerialComm`'s operations over an mpi4py communicator."""

    def __init__(self, comm) -> None:
        self.comm = comm
        self.rank = comm.rank
        self.size = comm.size

    def allgather(self, value):
        return self.comm.allgather(value)

    def sum(self, array: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        total = np.empty_like(array)
        self.comm.Allreduce(np.ascontiguousarray(array), total, op=MPI.SUM)
        return total


def shard(n_total: int, size: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of the particles of ``rank`` among ``size`` ranks (contiguous, balanced)."""
    bounds = np.linspace(0, n_total, size + 1).astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def normalise(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Images with the mean and standard deviation of the background (outside ``mask``)
    set to 0 and 1, float32 (so every particle's noise has the same scale)."""
    outside = mask < 0.5
    bg = images[:, outside]
    mean = bg.mean(axis=1)
    std = bg.std(axis=1)
    std = np.where(std > 0, std, 1.0)
    return ((images - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def particle_ctfs(ctf: dict | None, n: int, box: int, pixel_size_A: float):
    """(half, centred) CTFs of ``n`` particles: the ``rfft2`` layout (n, box, box//2+1) and
    the ``fftshift`` layout (n, box, box), float32; all ones without CTF."""
    from hpcem.ctf.model import ctf_2d

    if ctf is None:
        return (
            np.ones((n, box, box // 2 + 1), np.float32),
            np.ones((n, box, box), np.float32),
        )
    half = np.empty((n, box, box // 2 + 1), np.float32)
    centred = np.empty((n, box, box), np.float32)
    for i in range(n):
        args = (
            (box, box),
            pixel_size_A,
            float(ctf["defocus_u"][i]),
            float(ctf["defocus_v"][i]),
            float(ctf["defocus_angle"][i]),
        )
        kw = {
            "voltage_kV": float(ctf["voltage_kV"][i]),
            "cs_mm": float(ctf["cs_mm"][i]),
            "amplitude_contrast": float(ctf["amplitude_contrast"][i]),
            "phase_shift_deg": float(ctf["phase_shift"][i]),
        }
        half[i] = ctf_2d(*args, half=True, **kw)
        centred[i] = ctf_2d(*args, centered=True, **kw)
    return half, centred


def class_sums(
    images: np.ndarray,
    ctf_half: np.ndarray,
    ctf_centred: np.ndarray,
    classes: np.ndarray,
    psi_deg: np.ndarray,
    shifts_px: np.ndarray,
    n_classes: int,
) -> np.ndarray:
    """Wiener numerator and denominator of each class from these particles, packed in one
    float64 array (2, K, N, N) for a single reduction: ``[0]`` the real-space sum of
    ``FT⁻¹(CTF·X)`` shifted by −shift and rotated by −psi, ``[1]`` the sum of CTF²
    (centred Fourier layout) rotated by −psi. Uses the compiled ``rotate_add_pairs`` of
    ``hpcem.kernels.align2d`` when built (no temporaries, no Python per particle), else
    :func:`rotate_images`."""
    from hpcem.kernels import load

    kernel = load("align2d")  # rotate_add_pairs; None: the numpy reference below
    n, box, _ = images.shape
    sums = np.zeros((2, n_classes, box, box), np.float64)
    ky = np.fft.fftfreq(box).astype(np.float32)
    kx = np.fft.rfftfreq(box).astype(np.float32)
    for start in range(0, n, 64):
        stop = min(n, start + 64)
        ft = scipy.fft.rfft2(images[start:stop], workers=-1) * ctf_half[start:stop]
        d = shifts_px[start:stop].astype(np.float32)
        # particle centre at box centre + d: move it back by -d (the ramp is separable)
        ft *= np.exp(2j * np.pi * d[:, 0, None, None] * kx[None, None, :]).astype(np.complex64)
        ft *= np.exp(2j * np.pi * d[:, 1, None, None] * ky[None, :, None]).astype(np.complex64)
        centred = scipy.fft.irfft2(ft, s=(box, box), workers=-1).astype(np.float32)
        angles = -np.asarray(psi_deg[start:stop], dtype=np.float64)
        weights = ctf_centred[start:stop] ** 2
        if kernel is not None:
            kernel.rotate_add_pairs(
                sums,
                np.ascontiguousarray(centred),
                np.ascontiguousarray(weights, dtype=np.float32),
                np.ascontiguousarray(classes[start:stop], dtype=np.intp),
                np.ascontiguousarray(angles),
            )
            continue
        back = align2d.rotate_images(centred, angles)
        turned = align2d.rotate_images(weights, angles)
        for j, k in enumerate(classes[start:stop]):
            sums[0, k] += back[j]
            sums[1, k] += turned[j]
    return sums


def averages_from_sums(
    sums: np.ndarray,
    counts: np.ndarray,
    wiener_fraction: float,
    mask: np.ndarray,
    per_particle: bool = False,
) -> np.ndarray:
    """Class averages (K, N, N) float32 from :func:`class_sums` summed over all ranks,
    masked with ``mask``, without frequencies beyond Nyquist in any direction (the corners
    of the Fourier square: noise only, as in RELION's averages); an empty class is all
    zeros. The Wiener constant is ``wiener_fraction`` × the mean of the class's Σ CTF²,
    divided by the class's size when ``per_particle``."""
    numerator, weight = sums
    k, box, _ = numerator.shape
    out = np.zeros((k, box, box), np.float32)
    freq = np.fft.fftshift(np.fft.fftfreq(box))
    inside = np.hypot(freq[:, None], freq[None, :]) <= 0.5
    for i in range(k):
        if counts[i] == 0:
            continue
        ft = np.fft.fftshift(np.fft.fft2(numerator[i]))
        tau = wiener_fraction * weight[i].mean() / (counts[i] if per_particle else 1)
        ft = np.where(inside, ft / (weight[i] + tau), 0)
        out[i] = np.fft.ifft2(np.fft.ifftshift(ft)).real * mask
    return out


def centre_offsets(averages: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K, 2) offset (dx, dy) px of each average's centre of mass from the box centre: the
    mass is the positive part of the masked average, signed so that the particle (the
    larger masked sum) is positive."""
    k, box, _ = averages.shape
    y, x = np.mgrid[0:box, 0:box] - box // 2
    out = np.zeros((k, 2))
    for i, average in enumerate(averages):
        a = average * mask
        mass = np.clip(a * (1.0 if a.sum() >= 0 else -1.0), 0.0, None)
        total = mass.sum()
        if total > 0:
            out[i] = ((mass * x).sum() / total, (mass * y).sum() / total)
    return out


def shift_images(images: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Images (n, N, N) moved by (dx, dy) each (Fourier phase ramp, sub-pixel)."""
    box = images.shape[-1]
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    ft = scipy.fft.rfft2(images)
    ft *= np.exp(
        -2j * np.pi * (shifts_px[:, 0, None, None] * kx + shifts_px[:, 1, None, None] * ky)
    )
    return scipy.fft.irfft2(ft, s=(box, box)).astype(np.float32)


def reseed_empty(
    classes: np.ndarray, scores: np.ndarray, n_classes: int, min_size: int
) -> tuple[np.ndarray, list[int]]:
    """Move the worse-scoring half of the largest class into each class with fewer than
    ``min_size`` members (deterministic: the same on every rank). Returns the new labels
    and the classes re-seeded."""
    classes = classes.copy()
    reseeded = []
    for k in range(n_classes):
        sizes = np.bincount(classes, minlength=n_classes)
        if sizes[k] >= min_size:
            continue
        largest = int(np.argmax(sizes))
        if sizes[largest] < 2 * min_size:
            continue
        members = np.flatnonzero(classes == largest)
        worst = members[np.argsort(scores[members], kind="stable")[: len(members) // 2]]
        classes[worst] = k
        reseeded.append(k)
    return classes, reseeded


def classify(
    images: np.ndarray,
    ctf: dict | None,
    pixel_size_A: float,
    n_total: int,
    offset: int,
    n_classes: int,
    iterations: int,
    mask_diameter_px: float,
    angle_step_deg: float = 5.0,
    max_shift_px: float = 5.0,
    align_box_px: int = 48,
    seed: int = 0,
    wiener_fraction: float = 0.1,
    output_wiener_per_particle: float = 1.2,
    min_class_size: int = 0,
    comm=None,
    on_iteration: Callable[[int, np.ndarray, dict], None] | None = None,
    two_stage: bool = True,
    stop_when_converged: bool = True,
) -> dict:
    """Classify the particles of this rank (global rows ``offset .. offset+len(images)``
    of ``n_total``) into ``n_classes`` classes together with the other ranks of ``comm``
    (None = one process).

    ``images`` (n, N, N) with the particle centred at pixel N//2; ``ctf`` a dict of
    per-particle arrays (defocus_u, defocus_v, defocus_angle, phase_shift, voltage_kV,
    cs_mm, amplitude_contrast) for CTF correction, or None. ``on_iteration(i, averages,
    info)`` is called on every rank after each iteration. ``two_stage``: the
    coarse-to-fine search (:func:`hpcem.classify.align2d.search_two_stage`, on a crop of
    :data:`COARSE_BOX_FRACTION` of ``align_box_px`` at every
    :data:`COARSE_ANGLE_FACTOR`-th angle, then :data:`CANDIDATES` candidates refined);
    False: every class at every angle and shift on the full search crop.
    ``stop_when_converged`` False runs all ``iterations`` (benchmarks).

    Returns, the same on every rank, ``{"class" (n_total,) 0-based, "psi_deg",
    "shift_px" (n_total, 2) as (dx, dy) = particle centre − box centre, "score",
    "averages" (K, N, N), "sizes", "history": [{"iteration", "changed_fraction",
    "reseeded", "sizes"}], "converged": bool, "iterations_run", "cpu_s": this rank's CPU
    seconds in ``setup`` (normalising, CTFs, transforms), ``references`` (rotated banks),
    ``search``, ``m_step`` (sums, reduction, averages, centring)}``.
    """
    clock = time.process_time
    cpu_s = {"setup_s": 0.0, "references_s": 0.0, "search_s": 0.0, "m_step_s": 0.0}
    tick = clock()

    def lap(key: str) -> None:
        nonlocal tick
        now = clock()
        cpu_s[key] += now - tick
        tick = now

    comm = comm or SerialComm()
    n_local, box, _ = images.shape
    min_class_size = min_class_size or max(3, int(MIN_CLASS_FRACTION * n_total / n_classes))
    if n_classes < 1 or n_classes > n_total:
        raise ValidationError(f"n_classes must be 1..{n_total} (the particles), got {n_classes}")
    align_px = min(box, int(align_box_px) or box)
    align_px -= align_px % 2
    scale = box / align_px
    mask = align2d.soft_mask(box, mask_diameter_px)
    images = normalise(images, mask)
    ctf_half, ctf_centred = particle_ctfs(ctf, n_local, box, pixel_size_A)
    full_ft = scipy.fft.rfft2(images * mask, workers=-1) * ctf_half
    particles_ft = align2d.crop_rfft(full_ft, align_px).astype(np.complex64)
    ctf2 = (align2d.crop_rfft(ctf_half, align_px) ** 2).reshape(n_local, -1)
    angles = align2d.angle_grid(angle_step_deg)
    step = 360.0 / len(angles)
    max_shift_align = max(1, int(np.ceil(max_shift_px / scale)))
    coarse_px = min(
        align_px, 2 * max(COARSE_MIN_BOX_PX // 2, round(COARSE_BOX_FRACTION * align_px / 2))
    )
    factor = COARSE_ANGLE_FACTOR
    if len(angles) % factor or factor * step > COARSE_MAX_STEP_DEG:
        factor = 1
    two_stage = two_stage and (coarse_px < align_px or factor > 1)
    if two_stage:
        coarse_ft = align2d.crop_rfft(full_ft, coarse_px).astype(np.complex64)
        coarse_ctf2 = (align2d.crop_rfft(ctf_half, coarse_px) ** 2).reshape(n_local, -1)
        coarse_shift = max(1, int(np.ceil(max_shift_px * coarse_px / box)))
    del full_ft

    def banks(references):
        """The search banks (fine, and coarse when two-stage) of all classes: each rank
        rotates its share of the classes (the same numbers whatever the ranks) and the
        shares are gathered."""
        lo, hi = shard(n_classes, comm.size, comm.rank)
        rotated = align2d.rotated_references_ft(references[lo:hi], angles, mask)
        coarse = None
        if two_stage:
            rows = np.arange(hi - lo)[:, None] * len(angles) + np.arange(0, len(angles), factor)
            coarse = align2d.bank_from_ft(rotated[rows.ravel()], coarse_px)
        parts = comm.allgather((align2d.bank_from_ft(rotated, align_px), coarse))
        bank = np.concatenate([p[0][0] for p in parts])
        power = np.concatenate([p[0][1] for p in parts])
        if two_stage:
            coarse = tuple(np.concatenate([p[1][i] for p in parts]) for i in (0, 1))
        return bank, power, coarse

    rng = np.random.default_rng(seed)
    classes = rng.integers(0, n_classes, n_total)
    psi = rng.uniform(0.0, 360.0, n_total)
    shifts = np.zeros((n_total, 2))
    scores = np.zeros(n_total)
    local = slice(offset, offset + n_local)

    def m_step():
        counts = np.bincount(classes, minlength=n_classes)
        sums = comm.sum(
            class_sums(
                images, ctf_half, ctf_centred, classes[local], psi[local], shifts[local], n_classes
            )
        )
        return (
            averages_from_sums(sums, counts, wiener_fraction, mask),
            averages_from_sums(sums, counts, output_wiener_per_particle, mask, True),
            counts,
        )

    def centre(references, averages):
        """Move each class to the box centre (its centre of mass) and the poses with it."""
        offsets = centre_offsets(references, mask)
        c, s = np.cos(np.radians(psi)), np.sin(np.radians(psi))
        off = offsets[classes]  # particle = T_d rot(T_c A', psi) = T_(d + R c) rot(A', psi)
        shifts[:, 0] += c * off[:, 0] + s * off[:, 1]
        shifts[:, 1] += -s * off[:, 0] + c * off[:, 1]
        return shift_images(references, -offsets) * mask, shift_images(averages, -offsets) * mask

    lap("setup_s")
    references, averages, sizes = m_step()
    lap("m_step_s")
    history = []
    converged = False
    iteration = 0
    for iteration in range(1, iterations + 1):
        bank, power, coarse_bank = banks(references)
        lap("references_s")
        if two_stage:
            found = align2d.search_two_stage(
                (coarse_ft, coarse_ctf2, *coarse_bank, coarse_shift),
                (particles_ft, ctf2, bank, power, max_shift_align),
                len(angles),
                step,
                factor,
                CANDIDATES,
            )
            cls, ang = found["class"], found["psi_deg"]
        else:
            found = align2d.align_particles(particles_ft, ctf2, bank, power, max_shift_align)
            cls, ang = align2d.refine_angle(found["scores"], found["index"], len(angles), step)
        lap("search_s")
        parts = comm.allgather((cls, ang, found["shift"] * scale, found["score"]))
        new_classes = np.concatenate([p[0] for p in parts])
        changed = float(np.mean(new_classes != classes))
        psi = np.concatenate([p[1] for p in parts])
        shifts = np.concatenate([p[2] for p in parts])
        scores = np.concatenate([p[3] for p in parts])
        classes, reseeded = reseed_empty(new_classes, scores, n_classes, min_class_size)
        references, averages, sizes = m_step()
        references, averages = centre(references, averages)
        lap("m_step_s")
        info = {
            "iteration": iteration,
            "changed_fraction": changed,
            "reseeded": reseeded,
            "sizes": sizes.tolist(),
        }
        history.append(info)
        if on_iteration is not None:
            on_iteration(iteration, averages, info)
        done = iteration > 1 and changed < CONVERGED_FRACTION and not reseeded
        if done and stop_when_converged:
            converged = True
            break
        converged = done
    return {
        "class": classes,
        "psi_deg": psi,
        "shift_px": shifts,
        "score": scores,
        "averages": averages,
        "sizes": sizes,
        "history": history,
        "converged": converged,
        "iterations_run": iteration,
        "cpu_s": {k: round(v, 3) for k, v in cpu_s.items()},
    }
