"""Global (whole-frame) movie alignment and the aligned, dose-weighted sum.

Method (in the spirit of Unblur and RELION's own motion correction):

1. every frame is Fourier transformed once, at full size (``scipy.fft.rfft2``, float32);
2. alignment works on Fourier-cropped copies (``binning``: crop to 1/binning of the
   frequencies, i.e. a binned image without real-space aliasing), with a B-factor
   low-pass ``exp(−B k²/4)`` (``B`` in px², ``k`` in cycles per full-size pixel, as
   RELION's and MotionCor2's ``--bfactor``) on the cross-correlation;
3. iteration: the shifted frames are summed; each frame is cross-correlated with the
   sum of the *others* (leave-one-out, so its own noise does not correlate with
   itself); the peak (3-point parabola per axis, sub-pixel) is the frame's residual
   displacement; all frames are updated together, until the largest update is below
   ``tolerance_px`` (full-size pixels) or ``max_iterations`` are done. Because the
   residual goes to zero, the symmetric peak fit is unbiased at convergence whatever
   the peak shape;
4. the sum: every full-size spectrum times its phase ramp (and dose weight, see
   :mod:`hpcem.motion.dose`), accumulated in Fourier space, one inverse FFT.

Shift convention: ``shifts_px[i] = (dx, dy)`` is the *measured displacement* of frame i
relative to the first frame used: a feature at ``(x, y)`` in the first frame is at
``(x + dx, y + dy)`` in frame i (``hpcem.sim.simulate_movie``'s ``shifts_px``). To align,
frame i is translated by ``−shifts_px[i]``; the sum is in the first frame's coordinates.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.fft

from hpcem.errors import ValidationError
from hpcem.motion import fourier

#: Default B-factor (px²) of the cross-correlation low-pass (RELION/MotionCor2 default).
B_FACTOR_PX2 = 150.0
#: Default largest alignment grid (px, longer side) when binning is automatic.
AUTO_ALIGN_SIZE_PX = 1024
#: Automatic binning keeps the frequencies where the B-factor filter is above this.
AUTO_FILTER_FLOOR = 0.01


@dataclasses.dataclass
class GlobalAlignment:
    """Result of :func:`align_spectra`: per-frame displacements (full-size px)."""

    shifts_px: np.ndarray
    iterations: int
    converged: bool
    binning: float
    #: Largest update of the last iteration (px).
    last_update_px: float


def fft_frames(
    frames, shape: tuple[int, int], n_frames: int | None = None, workers: int = 1
) -> np.ndarray:
    """Stack the rfft2 (complex64) of an iterable of 2D float32 frames of ``shape``.

    With ``n_frames`` the stack is allocated once and filled frame by frame (no second
    copy of a movie's spectra: 1.6 GB for 24 frames of 4096²).
    """
    ny, nx = shape
    out = None
    if n_frames is not None:
        out = np.empty((n_frames, ny, nx // 2 + 1), np.complex64)
        # Touch every page once, in one pass: faulting the pages in one by one while
        # FFTs allocate and free their own buffers made reading + FFT of a 4096² 24-frame
        # movie take 5-9 s instead of 3 s (+0.3 s for this fill), measured on one core.
        out.fill(0)
    spectra = []
    count = 0
    for frame in frames:
        if frame.shape != tuple(shape):
            raise ValidationError(f"frame of shape {frame.shape}, expected {shape}")
        ft = scipy.fft.rfft2(np.asarray(frame, dtype=np.float32), workers=workers)
        if out is None:
            spectra.append(ft)
        elif count < n_frames:
            out[count] = ft
        count += 1
    if out is None:
        return np.stack(spectra).astype(np.complex64, copy=False)
    if count != n_frames:
        raise ValidationError(f"got {count} frames, expected {n_frames}")
    return out


def alignment_shape(
    shape: tuple[int, int], binning: float, b_factor_px2: float = B_FACTOR_PX2
) -> tuple[int, int]:
    """Even grid size after Fourier cropping by ``binning`` (>= 1), rounded up to a
    fast FFT length (so the actual binning can be a little smaller).

    ``binning = 0`` is automatic: the largest of ``max(ny, nx)/AUTO_ALIGN_SIZE_PX`` and
    the cropping that keeps every frequency where the B-factor filter exceeds
    ``AUTO_FILTER_FLOOR`` (nothing above it could change the correlation by more than
    that fraction), and at least 1.
    """
    ny, nx = shape
    if binning == 0:
        binning = max(1.0, max(ny, nx) / AUTO_ALIGN_SIZE_PX)
        if b_factor_px2 > 0:
            k_cut = math.sqrt(-4.0 * math.log(AUTO_FILTER_FLOOR) / b_factor_px2)
            binning = max(binning, 0.5 / k_cut)
    if binning < 1:
        raise ValidationError(f"binning must be >= 1 (or 0 = automatic), got {binning}")
    return _fast_even(ny, binning), _fast_even(nx, binning)


def _fast_even(n: int, binning: float) -> int:
    """The smallest even length >= n/binning with small prime factors (fast FFTs; a
    crop to e.g. 718 = 2·359 px would make every inverse FFT slow), at most n."""
    m = max(16, math.ceil(n / binning))
    while True:
        m = scipy.fft.next_fast_len(m, real=True)
        if m % 2 == 0:
            break
        m += 1
    return min(n, m)


def fourier_crop(spectra: np.ndarray, full_shape: tuple[int, int], shape: tuple[int, int]):
    """Crop rfft half planes of ``full_shape`` to the half planes of ``shape`` (a copy)."""
    ny, nx = full_shape
    my, mx = shape
    if (my, mx) == (ny, nx):
        return np.ascontiguousarray(spectra)
    h = my // 2
    rows = np.r_[0:h, ny - h : ny]
    return np.ascontiguousarray(spectra[..., rows, : mx // 2 + 1])


def bfactor_filter(
    shape: tuple[int, int], full_shape: tuple[int, int], b_factor_px2: float
) -> np.ndarray:
    """``exp(−B k²/4)`` (float32) on a cropped half plane, k in cycles per full-size
    pixel; 0 at k = 0 (the mean does not correlate)."""
    my, mx = shape
    ny, nx = full_shape
    fy = fourier.signed_frequencies(my) / ny
    fx = np.arange(mx // 2 + 1) / nx
    k2 = fy[:, None] ** 2 + fx[None, :] ** 2
    filt = np.exp(-0.25 * b_factor_px2 * k2).astype(np.float32)
    filt[0, 0] = 0.0
    return filt


def find_peak(cc: np.ndarray, max_shift: float | None = None) -> tuple[float, float]:
    """Sub-pixel position ``(dx, dy)`` of the maximum of a periodic cross-correlation
    (origin at pixel 0), within ``max_shift`` px of the origin if given.

    The integer maximum is refined by a 3-point parabola along each axis.
    """
    my, mx = cc.shape
    if max_shift is not None:
        r_y = min(my // 2 - 1, math.ceil(max_shift) + 1)
        r_x = min(mx // 2 - 1, math.ceil(max_shift) + 1)
        rows = np.arange(-r_y, r_y + 1) % my
        cols = np.arange(-r_x, r_x + 1) % mx
        window = cc[np.ix_(rows, cols)]
        iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
        py, px = iy - r_y, ix - r_x
    else:
        iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
        py = iy if 2 * iy < my else iy - my
        px = ix if 2 * ix < mx else ix - mx

    c0 = float(cc[py % my, px % mx])
    dy = _parabola(float(cc[(py - 1) % my, px % mx]), c0, float(cc[(py + 1) % my, px % mx]))
    dx = _parabola(float(cc[py % my, (px - 1) % mx]), c0, float(cc[py % my, (px + 1) % mx]))
    return px + dx, py + dy


#: Once every frame moved by less than this (px of the alignment grid) in an iteration,
#: the cross-correlation is evaluated only within WINDOW_RADIUS px of the origin.
WINDOW_SWITCH_PX = 1.0
WINDOW_RADIUS = 3


class PeakWindow:
    """The cross-correlation near the origin, straight from its half-plane spectrum.

    Once the residual displacements are below a pixel, only the peak's neighbourhood
    matters: ``c(x, y) = Re Σ_ky Σ_kx m(kx) P(ky, kx) e^{2πi(kx·x/mx + ky·y/my)}`` for
    ``|x|, |y| ≤ radius`` (``m`` = 1 for the columns an rfft holds once, 2 otherwise) is
    two small matrix products, several times cheaper than a whole inverse FFT. Same
    values as ``irfft2`` up to a constant factor (which the peak does not depend on).
    """

    def __init__(self, shape: tuple[int, int], radius: int):
        my, mx = shape
        self.radius = radius
        offsets = np.arange(-radius, radius + 1)
        kx = np.arange(mx // 2 + 1)
        multiplicity = np.full(len(kx), 2.0)
        multiplicity[0] = 1.0
        if mx % 2 == 0:
            multiplicity[-1] = 1.0
        ky = fourier.signed_frequencies(my)
        self.ex = (
            multiplicity[:, None] * np.exp(2j * math.pi * np.outer(kx, offsets) / mx)
        ).astype(np.complex64)
        self.ey = np.exp(2j * math.pi * np.outer(offsets, ky) / my).astype(np.complex64)

    def values(self, power: np.ndarray) -> np.ndarray:
        """``c`` on the (2·radius+1)² window, rows y = −radius..radius."""
        return np.real(self.ey @ (power @ self.ex))

    def peak(self, power: np.ndarray) -> tuple[float, float] | None:
        """Sub-pixel ``(dx, dy)`` of the window's maximum, or None when the maximum is on
        the window's edge (the caller then searches the whole correlation)."""
        c = self.values(power)
        iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
        if not (0 < iy < c.shape[0] - 1 and 0 < ix < c.shape[1] - 1):
            return None
        dy = _parabola(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix])
        dx = _parabola(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1])
        return ix - self.radius + dx, iy - self.radius + dy


def _parabola(m1: float, c0: float, p1: float) -> float:
    """Vertex offset of the parabola through (−1, m1), (0, c0), (1, p1), within ±0.5;
    0 when the three points do not make a maximum (flat or noisy)."""
    denom = m1 - 2.0 * c0 + p1
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (m1 - p1) / denom, -0.5, 0.5))


def shifted_sum(
    spectra: np.ndarray,
    full_shape: tuple[int, int],
    shifts_px: np.ndarray,
    weight_table: np.ndarray | None = None,
    bins: np.ndarray | None = None,
) -> np.ndarray:
    """Sum (half plane, complex64) of spectra translated by ``−shifts_px`` (aligned),
    each weighted by ``weight_table[i][bins]`` when given."""
    ny, nx = full_shape
    total = np.zeros(spectra.shape[1:], dtype=np.complex64)
    for i, (dx, dy) in enumerate(np.asarray(shifts_px, dtype=np.float64)):
        row = None if weight_table is None else weight_table[i]
        fourier.accumulate_shifted(total, spectra[i], -dx / nx, -dy / ny, row, bins)
    return total


def align_spectra(
    spectra: np.ndarray,
    full_shape: tuple[int, int],
    b_factor_px2: float = B_FACTOR_PX2,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    initial_shifts_px: np.ndarray | None = None,
    max_shift_px: float | None = None,
    workers: int = 1,
) -> GlobalAlignment:
    """Align frames given their (possibly Fourier-cropped) spectra; see the module docs.

    Parameters
    ----------
    spectra : (n, my, mx//2+1) complex64 half planes (cropped from ``full_shape``).
    full_shape : (ny, nx) of the frames; shifts are in its pixels.
    initial_shifts_px : starting displacements (n, 2), e.g. the global solution when
        aligning patches; default zeros.
    max_shift_px : largest residual displacement searched per iteration (full-size px);
        default: anywhere in the grid.
    """
    n = spectra.shape[0]
    if n < 2:
        raise ValidationError(f"need at least 2 frames to align, got {n}")
    ny, nx = full_shape
    my = spectra.shape[1]
    # uncropped spectra of an odd-width frame: the half plane does not tell the width
    mx = nx if spectra.shape[1:] == (ny, nx // 2 + 1) else 2 * (spectra.shape[2] - 1)
    scale_y, scale_x = ny / my, nx / mx
    filt = bfactor_filter((my, mx), full_shape, b_factor_px2)
    shifts = np.zeros((n, 2)) if initial_shifts_px is None else np.array(initial_shifts_px, float)
    max_shift = None if max_shift_px is None else max_shift_px / min(scale_x, scale_y)
    update = math.inf
    iterations = 0
    window = None
    for iterations in range(1, max_iterations + 1):
        total = shifted_sum(spectra, full_shape, shifts)
        updates = np.zeros((n, 2))
        for i in range(n):
            dx, dy = shifts[i]
            power = fourier.cross_power(total, spectra[i], -dx / nx, -dy / ny, filt)
            peak = None if window is None else window.peak(power)
            if peak is None:  # first iterations, or a peak at the window's edge
                cc = scipy.fft.irfft2(power, s=(my, mx), workers=workers)
                peak = find_peak(cc, max_shift)
            px, py = peak
            # The peak is where the frame (shifted back) still sits relative to the
            # others: add it to the frame's displacement.
            updates[i] = (px * scale_x, py * scale_y)
        updates -= updates.mean(axis=0)  # the common translation is arbitrary
        shifts += updates
        update = float(np.max(np.hypot(updates[:, 0], updates[:, 1])))
        if update < tolerance_px:
            break
        if window is None and update < WINDOW_SWITCH_PX * min(scale_x, scale_y):
            window = PeakWindow((my, mx), WINDOW_RADIUS)
    shifts -= shifts[0]
    return GlobalAlignment(
        shifts_px=shifts,
        iterations=iterations,
        converged=update < tolerance_px,
        binning=float(nx / mx),
        last_update_px=update,
    )


def binned_shape(shape: tuple[int, int], binning: float) -> tuple[int, int]:
    """Even output size of a sum Fourier-cropped by ``binning`` (>= 1; 1 = unchanged)."""
    if not binning >= 1:
        raise ValidationError(f"output binning must be >= 1, got {binning}")
    if binning == 1:
        return tuple(shape)
    return tuple(max(2, 2 * round(n / binning / 2)) for n in shape)


def to_image(
    total_ft: np.ndarray,
    full_shape: tuple[int, int],
    workers: int = 1,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Inverse FFT of a summed half plane: the float32 image, Fourier-cropped to
    ``out_shape`` when given (each output pixel then holds the counts of the input
    pixels it covers, as a real-space sum of blocks would)."""
    if out_shape is None or tuple(out_shape) == tuple(full_shape):
        return scipy.fft.irfft2(total_ft, s=full_shape, workers=workers).astype(np.float32)
    # irfft2 divides by the *output* size, so the DC term (the total count) is spread
    # over fewer, larger pixels: no rescaling needed for counts per output pixel.
    cropped = fourier_crop(total_ft, full_shape, out_shape)
    return scipy.fft.irfft2(cropped, s=out_shape, workers=workers).astype(np.float32)


def drift_stats(
    shifts_px: np.ndarray, exposures_e_A2: np.ndarray, early_exposure_e_A2: float = 4.0
) -> tuple[float, float]:
    """``(total, early)`` path length (px) of the trajectory; *early* sums the steps
    between frames whose end exposure is at most ``early_exposure_e_A2`` (RELION's
    ``--dose_motionstats_cutoff``, 4 e⁻/Å²)."""
    steps = np.hypot(*np.diff(np.asarray(shifts_px, float), axis=0).T)
    total = float(steps.sum())
    early = float(steps[np.asarray(exposures_e_A2)[1:] <= early_exposure_e_A2].sum())
    return total, early
