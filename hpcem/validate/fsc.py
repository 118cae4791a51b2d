"""Fourier shell correlation, resolution, masks, mask correction and sharpening.

* :func:`fsc_curve`: FSC of two cubic maps by shells of rounded radius 0 .. N/2
  (frequency ``i / (N · pixel)`` in 1/Å), from the half-transforms with each voxel counted
  with its Friedel mate (as the full-transform sum does).
* :func:`resolution_at`: where the curve first falls below a threshold (0.143 for two
  half maps, Rosenthal & Henderson 2003; 0.5 against a reference), interpolated linearly
  in frequency between the shells on either side.
* :func:`soft_sphere_mask` and :func:`soft_mask_from_map`: masks with a raised-cosine edge.
* :func:`masked_fsc_corrected`: the masked FSC corrected for the mask's own correlation by
  phase randomisation beyond the resolution where the unmasked FSC falls below 0.8
  (Chen et al. 2013): ``FSC_true = (FSC_masked − FSC_randomised) / (1 − FSC_randomised)``.
* :func:`guinier_bfactor` and :func:`sharpen`: the B-factor fitted to ln|F| against 1/d²
  between a low-resolution limit and the resolution (Rosenthal & Henderson 2003), applied
  with the FSC weighting √(2 FSC / (1 + FSC)) and a low-pass at the resolution.

B-factors follow RELION's postprocess sign: the *applied* B-factor is negative to sharpen
(amplitudes multiplied by ``exp(−B s² / 4)``, s = 1/d).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from hpcem.errors import ValidationError

#: Threshold of the gold-standard (half-map) FSC and of the FSC against a reference map.
HALF_MAP_THRESHOLD = 0.143
REFERENCE_THRESHOLD = 0.5
#: The unmasked FSC value below which phases are randomised (RELION's default).
RANDOMISE_BELOW = 0.8


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 3 or a.shape != b.shape or len(set(a.shape)) != 1:
        raise ValidationError(f"FSC needs two cubic maps of one shape, got {a.shape} and {b.shape}")


def _shells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shell index (rounded radius) and Friedel multiplicity of each rfftn voxel."""
    k = np.fft.fftfreq(n, 1.0 / n)
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    mult = np.full(n // 2 + 1, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    return np.rint(r).astype(np.intp), np.broadcast_to(mult[None, None, :], r.shape)


def fsc_curve(a: np.ndarray, b: np.ndarray, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in 1/Å, FSC) for shells 0 .. N/2 of the maps ``a`` and ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _check_pair(a, b)
    n = a.shape[0]
    fa = scipy.fft.rfftn(a, workers=1)
    fb = scipy.fft.rfftn(b, workers=1)
    shell, mult = _shells(n)
    keep = shell <= n // 2
    s = shell[keep]
    w = mult[keep]
    num = np.bincount(s, w * (fa * np.conj(fb)).real[keep], n // 2 + 1)
    da = np.bincount(s, w * (np.abs(fa) ** 2)[keep], n // 2 + 1)
    db = np.bincount(s, w * (np.abs(fb) ** 2)[keep], n // 2 + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(da * db > 0, num / np.sqrt(da * db), 0.0)
    return np.arange(n // 2 + 1) / (n * pixel_size_A), fsc


def resolution_at(frequency: np.ndarray, fsc: np.ndarray, threshold: float) -> float:
    """Resolution in Å where ``fsc`` first falls below ``threshold`` after shell 0,
    interpolated linearly in frequency; the last shell's resolution if it never does."""
    f = np.asarray(frequency, dtype=np.float64)
    c = np.asarray(fsc, dtype=np.float64)
    below = np.flatnonzero(c[1:] < threshold)
    if len(below) == 0:
        return float(1.0 / f[-1])
    i = int(below[0]) + 1  # first shell below
    if i == 1 and c[0] < threshold:
        return float(1.0 / f[1])
    c0, c1 = c[i - 1], c[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    return float(1.0 / (f[i - 1] + t * (f[i] - f[i - 1])))


def soft_sphere_mask(box_px: int, radius_px: float, edge_px: float = 6.0) -> np.ndarray:
    """A sphere of ``radius_px`` about voxel N//2, 1 inside, falling to 0 over ``edge_px``
    with a raised cosine; float32 (N, N, N)."""
    c = np.arange(box_px) - box_px // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return _cosine_edge(r - radius_px, edge_px)


def _cosine_edge(distance: np.ndarray, edge_px: float) -> np.ndarray:
    if edge_px <= 0:
        return (distance <= 0).astype(np.float32)
    t = np.clip(distance / edge_px, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(math.pi * t)).astype(np.float32)


def soft_mask_from_map(
    volume: np.ndarray,
    threshold: float,
    extend_px: float = 3.0,
    edge_px: float = 6.0,
    lowpass_px: float = 2.0,
) -> np.ndarray:
    """A solvent mask: the map (smoothed by a gaussian of ``lowpass_px``) above
    ``threshold``, grown by ``extend_px`` and given a raised-cosine edge of ``edge_px``."""
    import scipy.ndimage

    smooth = scipy.ndimage.gaussian_filter(np.asarray(volume, np.float64), lowpass_px)
    inside = smooth > threshold
    if not inside.any():
        raise ValidationError(f"no voxel of the map is above the mask threshold {threshold:g}")
    distance = scipy.ndimage.distance_transform_edt(~inside)
    return _cosine_edge(distance - extend_px, edge_px)


def phase_randomise(
    volume: np.ndarray, pixel_size_A: float, from_res_A: float, seed: int = 0
) -> np.ndarray:
    """``volume`` with the phases of every Fourier component beyond ``from_res_A``
    replaced by uniform random ones (amplitudes kept; a real map again)."""
    n = volume.shape[0]
    ft = scipy.fft.rfftn(np.asarray(volume, np.float64), workers=1)
    shell, _ = _shells(n)
    beyond = shell / (n * pixel_size_A) > 1.0 / from_res_A
    rng = np.random.default_rng(seed)
    phases = np.exp(2j * math.pi * rng.random(int(beyond.sum())))
    ft[beyond] = np.abs(ft[beyond]) * phases
    return scipy.fft.irfftn(ft, s=volume.shape, workers=1).astype(np.float32)


def masked_fsc_corrected(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, pixel_size_A: float, seed: int = 0
) -> dict:
    """Unmasked, masked, phase-randomised masked and corrected FSC curves (Chen 2013).

    Phases are randomised beyond the resolution where the unmasked FSC first falls below
    :data:`RANDOMISE_BELOW`. Returns ``{"frequency", "unmasked", "masked",
    "phase_randomised_masked", "corrected", "randomise_from_A"}``."""
    freq, unmasked = fsc_curve(half1, half2, pixel_size_A)
    from_res = resolution_at(freq, unmasked, RANDOMISE_BELOW)
    _, masked = fsc_curve(half1 * mask, half2 * mask, pixel_size_A)
    r1 = phase_randomise(half1, pixel_size_A, from_res, seed)
    r2 = phase_randomise(half2, pixel_size_A, from_res, seed + 1)
    _, randomised = fsc_curve(r1 * mask, r2 * mask, pixel_size_A)
    corrected = masked.copy()
    beyond = freq > 1.0 / from_res
    with np.errstate(invalid="ignore", divide="ignore"):
        fix = (masked - randomised) / (1.0 - randomised)
    corrected[beyond] = np.where(np.isfinite(fix[beyond]), fix[beyond], 0.0)
    return {
        "frequency": freq,
        "unmasked": unmasked,
        "masked": masked,
        "phase_randomised_masked": randomised,
        "corrected": corrected,
        "randomise_from_A": from_res,
    }


def radial_amplitudes(volume: np.ndarray, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequency 1/Å, mean |F| per shell) for shells 0 .. N/2."""
    n = volume.shape[0]
    ft = np.abs(scipy.fft.rfftn(np.asarray(volume, np.float64), workers=1))
    shell, mult = _shells(n)
    keep = shell <= n // 2
    sums = np.bincount(shell[keep], (mult * ft)[keep], n // 2 + 1)
    counts = np.bincount(shell[keep], mult[keep], n // 2 + 1)
    return np.arange(n // 2 + 1) / (n * pixel_size_A), sums / np.maximum(counts, 1)


def guinier_bfactor(
    volume: np.ndarray, pixel_size_A: float, low_res_A: float, high_res_A: float
) -> dict:
    """Fit ``ln mean|F| = a + slope · s²`` between ``low_res_A`` and ``high_res_A``.

    Returns ``{"bfactor_A2", "intercept", "correlation", "n_shells"}``; ``bfactor_A2`` is
    ``4 · slope``, the B-factor to *apply* (negative for a map that falls off, RELION's
    postprocess sign)."""
    if not high_res_A < low_res_A:
        raise ValidationError(
            f"Guinier fit needs high_res_A < low_res_A (Å), got {high_res_A} and {low_res_A}"
        )
    freq, amp = radial_amplitudes(volume, pixel_size_A)
    use = (freq >= 1.0 / low_res_A) & (freq <= 1.0 / high_res_A) & (amp > 0)
    if use.sum() < 3:
        raise ValidationError(
            f"fewer than 3 shells between {low_res_A:g} and {high_res_A:g} Å for the Guinier "
            "fit: lower low_res_A or use a larger box"
        )
    s2 = freq[use] ** 2
    y = np.log(amp[use])
    slope, intercept = np.polyfit(s2, y, 1)
    corr = float(np.corrcoef(s2, y)[0, 1])
    return {
        "bfactor_A2": float(4.0 * slope),
        "intercept": float(intercept),
        "correlation": corr,
        "n_shells": int(use.sum()),
    }


def sharpen(
    volume: np.ndarray,
    pixel_size_A: float,
    bfactor_A2: float,
    fsc: np.ndarray | None = None,
    lowpass_A: float = 0.0,
    edge_shells: float = 2.0,
) -> np.ndarray:
    """``volume`` with amplitudes times ``exp(−B s² / 4)`` (B = ``bfactor_A2``, negative
    sharpens), times √(2 FSC / (1 + FSC)) per shell when ``fsc`` (shells 0 .. N/2 of the
    half maps) is given, and low-passed at ``lowpass_A`` with a cosine edge of
    ``edge_shells`` shells (0 = no low-pass)."""
    n = volume.shape[0]
    ft = scipy.fft.rfftn(np.asarray(volume, np.float64), workers=1)
    k = np.fft.fftfreq(n, 1.0 / n)
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    s = r / (n * pixel_size_A)
    factor = np.exp(-0.25 * bfactor_A2 * s * s)
    if fsc is not None:
        c = np.clip(np.asarray(fsc, np.float64), 0.0, 1.0)
        weight = np.sqrt(2 * c / (1 + c))
        factor *= np.interp(r, np.arange(len(weight)), weight, right=0.0)
    if lowpass_A > 0:
        edge = n * pixel_size_A / lowpass_A
        t = np.clip((r - edge) / max(edge_shells, 1e-6), 0.0, 1.0)
        factor *= 0.5 + 0.5 * np.cos(math.pi * t)
    return scipy.fft.irfftn(ft * factor, s=volume.shape, workers=1).astype(np.float32)


def plot_fsc_png(
    path: str,
    frequency: np.ndarray,
    curves: dict[str, np.ndarray],
    thresholds: tuple[float, ...] = (HALF_MAP_THRESHOLD,),
    title: str = "",
) -> str:
    """Write a PNG of FSC ``curves`` (label -> values) against frequency with dashed
    threshold lines and the resolution axis labelled in Å; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    try:
        for label, values in curves.items():
            ax.plot(frequency, values, label=label, lw=1.6)
        for t in thresholds:
            ax.axhline(t, color="grey", ls="--", lw=0.8)
            ax.text(frequency[-1], t + 0.02, f"{t:g}", ha="right", fontsize=8, color="grey")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlim(0, frequency[-1])
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("Fourier shell correlation")
        ticks = ax.get_xticks()
        top = ax.secondary_xaxis("top", functions=(lambda f: f, lambda f: f))
        top.set_xticks([t for t in ticks if 0 < t <= frequency[-1]])
        top.set_xticklabels([f"{1 / t:.1f}" for t in ticks if 0 < t <= frequency[-1]])
        top.set_xlabel("resolution (Å)")
        if title:
            ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
