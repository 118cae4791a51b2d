"""Gold-standard 3D refinement by projection matching (Penczek, Grassucci & Frank 1994).

Each half set is refined on its own against its own reference (both start from the
initial model), as RELION's auto-refine does, so that the FSC of the two half maps is an
honest resolution estimate. One iteration, per half:

1. The half's reference, masked by a soft sphere of ``mask_diameter_A`` and low-passed
   (iteration 1: ``initial_lowpass_A``; later: the previous gold-standard 0.143
   resolution, :func:`next_lowpass_A`) is projected by central slices on a Fourier grid
   cropped to the low-pass (:mod:`hpcem.refine.matching`).
2. The first :data:`GLOBAL_ITERATIONS` iterations search every orientation of the global
   grid (Fibonacci directions × in-plane angles, ``angular_step_deg`` apart,
   :func:`~hpcem.refine.orientations.global_grid`; shifts: every whole pixel of the
   cropped grid within ``max_shift_px``). Each later iteration halves the step (down to
   :data:`FINEST_STEP_FRACTION` of the first) and searches locally: ``Δ · A_prev`` for
   rotations Δ up to :data:`LOCAL_RADIUS_STEPS` previous steps away, shifts at whole
   pixels around the previous (sub-pixel) shift, each candidate scored at its sub-pixel
   peak (a parabola through the neighbouring shifts), so that a slightly wrong pose at
   a whole pixel does not beat the right one half a pixel away.
3. The half map is reconstructed from the half's particles at their new poses by direct
   Fourier inversion with CTF weights and symmetry (:mod:`hpcem.reconstruct.fourier`).

Then the FSC of the half maps gives the resolution (0.143) for the next low-pass.
**Convergence**: after a local iteration at the finest step in which the median pose
change is below half the step; else after ``iterations``. The final map is the
reconstruction of both halves together (the sum of their Fourier accumulators).

The two halves run in ``threads`` threads (numpy's BLAS calls, FFTs and ufuncs release
the interpreter lock); the result does not depend on it (tested bit for bit). On 2 cores
it gains nothing, since the BLAS matrix products of the search already use both
(``scripts/bench_refine.py``, 400 particles of 64 px, 5 iterations: 9.5 s wall and
17.5 s CPU with one thread, 9.4 s with two); it is there for larger nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hpcem.classify.align2d import soft_mask
from hpcem.classify.em2d import normalise
from hpcem.errors import ValidationError
from hpcem.reconstruct.fourier import FourierAccumulator, accumulate, box_sphere, finish
from hpcem.refine import matching
from hpcem.refine import orientations as O
from hpcem.validate.fsc import HALF_MAP_THRESHOLD, fsc_curve, resolution_at

#: Iterations that search the whole global grid (the later ones search locally).
GLOBAL_ITERATIONS = 2
#: The finest angular step, as a fraction of the first.
FINEST_STEP_FRACTION = 0.125
#: Radius of the local search, in steps of the previous iteration.
LOCAL_RADIUS_STEPS = 1.5
#: Fourier shells past the gold-standard resolution kept in the next references. Measured
#: (300 particles, SNR 0.1, 48 px at 3.5 Å/px): 2 shells gave 10.4° median error and 16.8 Å
#: against the truth, 0 shells 7.7° and 15.9 Å, −1 shell 7.4° and 15.7 Å (noise-level).
EXTRA_SHELLS = 0.0
#: The Wiener regulariser of the half-map reconstructions (fraction of a shell's weight).
WIENER = 0.001
#: The edge (px) of the soft sphere that masks the references.
MASK_EDGE_PX = 3.0


def step_schedule(angular_step_deg: float, iterations: int) -> list[float]:
    """The angular step of each iteration: ``angular_step_deg`` for the global searches,
    then halved at each local one down to the finest."""
    finest = angular_step_deg * FINEST_STEP_FRACTION
    return [
        max(finest, angular_step_deg / 2 ** max(0, i - GLOBAL_ITERATIONS + 1))
        for i in range(iterations)
    ]


def next_lowpass_A(resolution_A: float, box_px: int, pixel_size_A: float) -> float:
    """The next iteration's low-pass: the gold-standard resolution plus
    :data:`EXTRA_SHELLS` Fourier shells, at most Nyquist."""
    shell = box_px * pixel_size_A / resolution_A + EXTRA_SHELLS
    return max(box_px * pixel_size_A / shell, 2.0 * pixel_size_A)


def lowpass_map(volume: np.ndarray, pixel_size_A: float, res_A: float) -> np.ndarray:
    """``volume`` low-passed at ``res_A`` (raised-cosine edge over 2 shells)."""
    from hpcem.validate.fsc import sharpen

    return sharpen(volume, pixel_size_A, 0.0, None, lowpass_A=res_A)


class HalfData:
    """One half set's particles ready for matching and reconstruction."""

    def __init__(self, images, ctfs, pixel_size_A, mask_diameter_px):
        self.images = images  # (n, N, N) float32, normalised
        self.ctfs = ctfs  # (n, N, N//2+1) float32, RELION sign
        self.pixel_size_A = float(pixel_size_A)
        self.box_px = images.shape[-1]
        self.mask2d = soft_mask(self.box_px, mask_diameter_px).astype(np.float32)


def align_half(
    half: HalfData,
    reference: np.ndarray,
    res_A: float,
    step_deg: float,
    previous: np.ndarray | None,
    previous_shift_px: np.ndarray | None,
    previous_step_deg: float,
    max_shift_px: float,
    symmetry: str,
    mask3d: np.ndarray,
    global_search: bool = False,
) -> dict:
    """New poses of one half against its ``reference``: ``{"rotations" (n, 3, 3),
    "shift_px" (n, 2) as (dx, dy), "score", "align_px", "candidates"}``; a global search
    when ``previous`` (n, 3, 3) is None, else local."""
    box = half.box_px
    a = matching.align_size(box, half.pixel_size_A, res_A)
    scale = box / a
    filt = matching.lowpass_filter(box, a, half.pixel_size_A, res_A)
    projector = matching.SliceProjector(reference * mask3d)
    pft, ctf2 = matching.particle_side(half.images, half.ctfs, half.mask2d, a)
    r = max(1, int(np.ceil(max_shift_px / scale)))
    if previous is None or global_search:
        angles = O.global_grid(step_deg, symmetry)
        grid = O.matrices(angles)
        bank = projector.slices(grid, a, filt)
        found = matching.match_global(pft, ctf2, bank, r)
        rotations = grid[found["index"]]
        candidates = len(grid)
    else:
        offsets = O.local_offsets(step_deg, LOCAL_RADIUS_STEPS * previous_step_deg)
        cand = np.einsum("jik,nkl->njil", offsets, previous)
        centre = np.asarray(previous_shift_px) / scale
        found = matching.match_local(pft, ctf2, projector, cand, filt, r, centre)
        limit = max_shift_px / scale
        found["shift"] = np.clip(found["shift"], -limit, limit)
        rotations = cand[np.arange(len(cand)), found["index"]]
        candidates = len(offsets)
    return {
        "rotations": rotations,
        "shift_px": found["shift"] * scale,
        "score": found["score"],
        "align_px": a,
        "candidates": int(candidates),
    }


def reconstruct_half(
    half: HalfData, rotations: np.ndarray, shift_px: np.ndarray, symmetry: str
) -> FourierAccumulator:
    """The Fourier accumulator of one half at these poses (shifts (dx, dy) px)."""
    from hpcem.convert.conventions import matrix_to_euler_zyz

    acc = FourierAccumulator(half.box_px, 2)
    angles = np.stack(matrix_to_euler_zyz(rotations), axis=1)
    shifts_A = -np.asarray(shift_px) * half.pixel_size_A
    accumulate(acc, half.images, angles, shifts_A, half.ctfs, half.pixel_size_A, symmetry)
    return acc


def prepare_half(images, ctfs, pixel_size_A, mask_diameter_px) -> HalfData:
    """Normalise ``images`` (background mean 0, sd 1 outside the mask) into a HalfData."""
    mask = soft_mask(images.shape[-1], mask_diameter_px)
    return HalfData(
        normalise(np.asarray(images, np.float32), mask), ctfs, pixel_size_A, mask_diameter_px
    )


def refine(
    images: np.ndarray,
    ctfs: np.ndarray,
    halves: np.ndarray,
    reference: np.ndarray,
    pixel_size_A: float,
    symmetry: str = "C1",
    iterations: int = 5,
    angular_step_deg: float = 15.0,
    max_shift_px: float = 5.0,
    initial_lowpass_A: float = 30.0,
    mask_diameter_A: float = 0.0,
    threads: int = 2,
    on_iteration: Callable[[dict], None] | None = None,
) -> dict:
    """Refine the particles ``images`` (n, N, N) with CTFs (n, N, N//2+1) (RELION sign) in
    ``halves`` (n,) 1 or 2 against the initial ``reference`` (N, N, N) (see the module
    doc). ``mask_diameter_A`` 0 = the box less 4 px.

    Returns ``{"angles" (n, 3) rot, tilt, psi, "shift_px" (n, 2) (dx, dy): particle
    centre − box centre, "score" (n,), "half1", "half2", "full" (maps), "frequency",
    "fsc", "resolution_A", "history" [per iteration: step, resolution, FSC, pose change],
    "converged", "iterations_run"}``."""
    from hpcem.convert.conventions import matrix_to_euler_zyz

    images = np.asarray(images, np.float32)
    n, box, _ = images.shape
    reference = np.asarray(reference, np.float32)
    if reference.shape != (box, box, box):
        raise ValidationError(
            f"the reference is {reference.shape}, the particles {box} px: they need one box"
        )
    halves = np.asarray(halves)
    if not np.isin(halves, (1, 2)).all() or len(np.unique(halves)) != 2:
        raise ValidationError("every particle needs a half set 1 or 2, and both halves some")
    mask_px = (mask_diameter_A / pixel_size_A) if mask_diameter_A > 0 else box - 4.0
    mask3d = np.minimum(
        box_sphere(box, MASK_EDGE_PX),
        _sphere(box, 0.5 * mask_px, MASK_EDGE_PX),
    )
    rows = {h: np.flatnonzero(halves == h) for h in (1, 2)}
    data = {h: prepare_half(images[rows[h]], ctfs[rows[h]], pixel_size_A, mask_px) for h in (1, 2)}
    start = lowpass_map(reference, pixel_size_A, initial_lowpass_A)
    refs = {1: start, 2: start}
    steps = step_schedule(angular_step_deg, iterations)
    res = float(initial_lowpass_A)
    rotations = np.zeros((n, 3, 3))
    shift_px = np.zeros((n, 2))
    score = np.zeros(n)
    previous = None
    history: list[dict] = []
    converged = False
    accs: dict[int, FourierAccumulator] = {}
    freq = fsc = None

    def one_half(h, it):
        prev = None if previous is None else previous[rows[h]]
        prev_shift = None if previous is None else shift_px[rows[h]]
        step = steps[it]
        found = align_half(
            data[h],
            refs[h],
            res,
            step,
            prev,
            prev_shift,
            steps[max(it - 1, 0)],
            max_shift_px,
            symmetry,
            mask3d,
            it < GLOBAL_ITERATIONS,
        )
        acc = reconstruct_half(data[h], found["rotations"], found["shift_px"], symmetry)
        return found, acc

    it = 0
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        for it in range(iterations):
            results = dict(zip((1, 2), pool.map(lambda h, it=it: one_half(h, it), (1, 2))))
            new_rot = np.zeros((n, 3, 3))
            for h in (1, 2):
                found, accs[h] = results[h]
                new_rot[rows[h]] = found["rotations"]
                shift_px[rows[h]] = found["shift_px"]
                score[rows[h]] = found["score"]
            change = (
                None
                if previous is None
                else float(np.median(O.symmetric_angles_deg(new_rot, previous, symmetry)))
            )
            rotations = new_rot
            previous = new_rot
            maps = {h: finish(accs[h], WIENER) for h in (1, 2)}
            freq, fsc = fsc_curve(maps[1], maps[2], pixel_size_A)
            new_res = resolution_at(freq, fsc, HALF_MAP_THRESHOLD)
            info = {
                "iteration": it + 1,
                "step_deg": steps[it],
                "search": "global" if it < GLOBAL_ITERATIONS else "local",
                "lowpass_A": res,
                "align_px": int(results[1][0]["align_px"]),
                "candidates": int(results[1][0]["candidates"]),
                "resolution_A": float(new_res),
                "median_change_deg": change,
                "fsc": [float(x) for x in fsc],
                "mean_score": float(score.mean()),
            }
            history.append(info)
            if on_iteration is not None:
                on_iteration(info)
            res = next_lowpass_A(float(new_res), box, pixel_size_A)
            refs = {h: lowpass_map(maps[h], pixel_size_A, res) for h in (1, 2)}
            if change is not None and steps[it] <= steps[-1] + 1e-9 and change < 0.5 * steps[it]:
                converged = True
                break
    full = FourierAccumulator(box, 2)
    full.add(accs[1])
    full.add(accs[2])
    rot, tilt, psi = matrix_to_euler_zyz(rotations)
    return {
        "angles": np.stack([rot, tilt, psi], axis=1),
        "shift_px": shift_px,
        "score": score,
        "half1": maps[1],
        "half2": maps[2],
        "full": finish(full, WIENER),
        "frequency": freq,
        "fsc": fsc,
        "resolution_A": float(resolution_at(freq, fsc, HALF_MAP_THRESHOLD)),
        "history": history,
        "converged": converged,
        "iterations_run": it + 1,
    }


def _sphere(box_px: int, radius_px: float, edge_px: float) -> np.ndarray:
    c = np.arange(box_px) - box_px // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    t = np.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
