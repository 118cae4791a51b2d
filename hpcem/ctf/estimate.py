"""``ctf.estimate``: defocus from rotational averages, astigmatism from sector averages.

1. **Power spectrum** (:mod:`hpcem.ctf.spectrum`): periodograms of tiles covering the
   micrograph, tile size from the pixel size (:func:`~hpcem.ctf.spectrum.auto_tile_size`),
   cropped to the fit band.
2. **Rotational average** with linear interpolation between radial bins
   (kernel ``hpcem.kernels.radial``, numpy reference :mod:`hpcem.ctf.radial_numpy`).
3. **Background subtraction and normalisation**: ``H(p) = (p − G*p) / sqrt(G*(p − G*p)²)``
   with ``G`` a gaussian smoother. The *same* operator is applied to the model ``CTF²``
   (averaged over each radial bin), so the partial removal of wide, low-frequency rings
   by the smoother biases neither side.
4. **1D fit**: grid search of the defocus over ``[defocus_min_A, defocus_max_A]``
   maximising the correlation of ``H(data)`` and ``H(CTF²)`` in a band whose high end
   keeps the rings of ``defocus_max_A`` sampled (:data:`~hpcem.ctf.spectrum.SAMPLES_PER_RING`
   samples per ring), then the band is set for the defocus found and the fit refined.
5. **Astigmatism**: the spectrum is averaged in 18 azimuthal sectors of 10°; the 1D score
   of each sector is tabulated on a fine defocus grid around the 1D result, and the
   sinusoid ``Δf(α) = mean + ½(U − V) cos 2(α − angle)`` that maximises the summed sector
   scores is found by exhaustive search then Nelder–Mead. The result is kept only if the
   *elliptical* average (ellipses following the fitted rings) scores at least as well as
   the rotational one, stays in the search range and near the 1D defocus; otherwise the
   fit falls back to the 1D result and says why (``refinement``).

The result uses EMX conventions (Å, positive underfocus, ``defocus_u >= defocus_v``,
angle of the U axis in degrees from x towards y, in [0, 180)).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import optimize

from hpcem.ctf.model import ctf_1d, electron_wavelength_A
from hpcem.ctf.radial_numpy import radial_average_numpy, sector_average_numpy
from hpcem.ctf.spectrum import (
    auto_tile_size,
    crop_half_spectrum,
    highpass_normalise,
    micrograph_defect,
    periodogram_backend,
    ring_limited_k,
    ring_period_k,
    tiled_power_spectrum,
)
from hpcem.errors import ValidationError
from hpcem.kernels import backend, load

__all__ = [
    "estimate_ctf",
    "estimate_ctf_from_file",
    "load_micrograph",
    "micrograph_defect",
    "radial_profile",
    "tiled_power_spectrum",
]

_radial_kernel = load("radial")
_radial_average = _radial_kernel.radial_average if _radial_kernel else radial_average_numpy
_sector_average = _radial_kernel.sector_average if _radial_kernel else sector_average_numpy
RADIAL_BACKEND = backend("radial")

# Oversampling of the 1D model inside each radial bin (model averaged like the data).
_MODEL_OVERSAMPLING = 8
# Local correlation above which a frequency counts as "fitted" for fit_resolution_A.
FIT_RESOLUTION_CC = 0.3
# Sectors of the astigmatism search and the largest (U − V) / (U + V) searched.
N_SECTORS = 18
MAX_ASTIGMATISM_RATIO = 0.15
# An astigmatic result whose mean defocus moves further than this fraction of the 1D
# fit plus half its astigmatism is not believed: the rotational average of astigmatic
# rings peaks between V and U (nearer U when the rings blur: 5 % off at U − V = 2000 Å).
MAX_MEAN_SHIFT = 0.05
# Median distance (1D grid steps) of the sectors' own best defoci from the fitted
# astigmatism above which the rings are not consistent: measured <= 1.1 on simulated
# micrographs of 512-2048 px (SNR 0.1) and 2.5-25 on pure noise of 512-1024 px.
MAX_SECTOR_SPREAD_STEPS = 2.0


def radial_profile(
    spectrum_half: np.ndarray,
    scale_u: float = 1.0,
    scale_v: float = 1.0,
    angle_rad: float = 0.0,
) -> np.ndarray:
    """Rotational (or elliptical) average of a centred half-plane spectrum (whole, as
    from :func:`tiled_power_spectrum`, or cropped); bin i = radius i px."""
    centre = spectrum_half.shape[0] // 2
    average, _ = _radial_average(
        np.ascontiguousarray(spectrum_half),
        spectrum_half.shape[1] - 1,
        centre,
        0.0,
        scale_u,
        scale_v,
        angle_rad,
    )
    return average


def sector_profiles(spectrum_half: np.ndarray, n_sectors: int = N_SECTORS) -> np.ndarray:
    """Radial averages in ``n_sectors`` azimuthal sectors, shape (n_sectors, n_bins);
    sector s is centred on azimuth (s + ½)·180°/n_sectors."""
    centre = spectrum_half.shape[0] // 2
    average, _ = _sector_average(
        np.ascontiguousarray(spectrum_half), spectrum_half.shape[1] - 1, n_sectors, centre, 0.0
    )
    return average


class Fitter1D:
    """The 1D score: correlation of background-subtracted radial profiles and model CTF².

    ``bin_k`` is the radial bin width (1/Å), the band is ``[k_low, k_high]`` (1/Å).
    """

    def __init__(
        self,
        n_bins: int,
        bin_k: float,
        voltage_kV: float,
        cs_mm: float,
        amplitude_contrast: float,
        k_low: float,
        k_high: float,
    ):
        self.n_bins = n_bins
        self.bin_k = bin_k
        self.k_high = k_high
        self.optics = {
            "voltage_kV": voltage_kV,
            "cs_mm": cs_mm,
            "amplitude_contrast": amplitude_contrast,
        }
        k = np.arange(n_bins) * bin_k
        self.band = (k >= k_low) & (k <= k_high)
        if self.band.sum() < 16:
            raise ValidationError(
                f"the band {1 / k_low:.1f}–{1 / k_high:.1f} Å holds only "
                f"{int(self.band.sum())} spectrum bins; widen it or use larger tiles"
            )
        # Work on the band plus a margin so that the smoother sees real neighbours.
        first, last = np.flatnonzero(self.band)[[0, -1]]
        self.sigma_bins = max(3.0, (last - first) / 12.0)
        margin = int(3 * self.sigma_bins)
        self.lo = max(1, first - margin)
        self.hi = min(n_bins, last + margin + 1)
        self.in_band = self.band[self.lo : self.hi]
        # Sample points inside each bin, weighted by the triangle of linear interpolation.
        offsets = (
            np.arange(2 * _MODEL_OVERSAMPLING + 1) - _MODEL_OVERSAMPLING
        ) / _MODEL_OVERSAMPLING
        self.tri_w = (1.0 - np.abs(offsets)) / _MODEL_OVERSAMPLING
        bins = np.arange(self.lo, self.hi)
        self.k_fine = np.abs(bins[:, None] + offsets[None, :]) * bin_k
        self.k = bins * bin_k

    def prepare(self, profiles: np.ndarray) -> np.ndarray:
        """H(profile) in the band, zero mean, unit norm (one row per profile)."""
        data = highpass_normalise(profiles[..., self.lo : self.hi], self.sigma_bins)
        data = data[..., self.in_band]
        data = data - data.mean(axis=-1, keepdims=True)
        return data / (np.linalg.norm(data, axis=-1, keepdims=True) + 1e-30)

    def raw_models(self, defoci_A: np.ndarray) -> np.ndarray:
        """Bin-averaged CTF² on bins lo..hi, one row per defocus."""
        defoci_A = np.atleast_1d(np.asarray(defoci_A, dtype=np.float64))
        return np.stack([ctf_1d(self.k_fine, d, **self.optics) ** 2 @ self.tri_w for d in defoci_A])

    def models(self, defoci_A: np.ndarray) -> np.ndarray:
        """H(bin-averaged CTF²) in the band, one row per defocus, zero mean, unit norm."""
        m = highpass_normalise(self.raw_models(defoci_A), self.sigma_bins)[:, self.in_band]
        m -= m.mean(axis=1, keepdims=True)
        return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-30)

    def scores(self, data: np.ndarray, defoci_A: np.ndarray) -> np.ndarray:
        return self.models(defoci_A) @ data

    def search(
        self, data: np.ndarray, low_A: float, high_A: float, step_A: float
    ) -> tuple[float, float]:
        """Grid search of the defocus in [low_A, high_A] then bounded refinement:
        (defocus Å, score)."""
        grid = np.arange(low_A, high_A + 0.5 * step_A, step_A)
        scores = self.models(grid) @ data
        best = float(grid[int(np.argmax(scores))])
        refined = optimize.minimize_scalar(
            lambda d: -self.scores(data, np.array([d]))[0],
            bounds=(max(low_A, best - step_A), min(high_A, best + step_A)),
            method="bounded",
            options={"xatol": 1.0},
        )
        return float(refined.x), float(-refined.fun)

    def grid_step_A(self) -> float:
        """Defocus step that moves the ring phase at the band's high end by < π/4."""
        lam = electron_wavelength_A(self.optics["voltage_kV"])
        return min(250.0, 0.25 / (lam * self.k_high**2))


def local_correlation(data: np.ndarray, model: np.ndarray, half_window: np.ndarray) -> np.ndarray:
    """Correlation of ``data`` and ``model`` in the window ``i ± half_window[i]`` at each i."""
    n = len(data)
    idx = np.arange(n)
    lo = np.clip(idx - half_window, 0, n)
    hi = np.clip(idx + half_window + 1, 0, n)

    def window_sum(values):
        c = np.concatenate([[0.0], np.cumsum(values)])
        return c[hi] - c[lo]

    count = hi - lo
    sd, sm = window_sum(data), window_sum(model)
    sdm, sdd, smm = window_sum(data * model), window_sum(data * data), window_sum(model * model)
    cov = sdm - sd * sm / count
    var = (sdd - sd * sd / count) * (smm - sm * sm / count)
    return cov / np.sqrt(np.maximum(var, 1e-30))


def fit_resolution_from_cc(
    k: np.ndarray,
    cc: np.ndarray,
    period_bins: np.ndarray,
    threshold: float | np.ndarray = FIT_RESOLUTION_CC,
) -> float:
    """Where the fit stops agreeing with the data: the frequency (1/Å) before the first
    run of at least one ring period (>= 3 samples) in which the local correlation
    ``cc`` stays below ``threshold`` (a number or one per sample); the last frequency if
    none.

    A lone dip (a ring where both data and model are near zero, a noisy bin) does not
    end the fit; a sustained loss of agreement does. Returns ``k[0]`` if the very first
    samples disagree.
    """
    below = cc < threshold
    n = len(k)
    i = 0
    while i < n:
        if below[i]:
            run = max(3, math.ceil(period_bins[i]))
            j = min(n, i + run)
            if below[i:j].all():
                return float(k[max(i - 1, 0)])
        i += 1
    return float(k[-1])


def _fit_resolution_1d(fitter: Fitter1D, profile: np.ndarray, defocus_A: float) -> float:
    """fit_resolution (Å) of a 1D (rotational or elliptical) fit over the whole band."""
    data = highpass_normalise(profile[fitter.lo : fitter.hi], fitter.sigma_bins)
    model = highpass_normalise(fitter.raw_models([defocus_A]), fitter.sigma_bins)[0]
    lam = electron_wavelength_A(fitter.optics["voltage_kV"])
    period = ring_period_k(fitter.k, defocus_A, lam) / fitter.bin_k
    # The window spans about half a ring each side (at least 3 bins, at most 40).
    half = np.clip(np.round(0.5 * period), 3, 40).astype(np.intp)
    cc = local_correlation(data, model, half)
    band = fitter.in_band
    return 1.0 / fit_resolution_from_cc(fitter.k[band], cc[band], period[band])


def _check_band(pixel_size_A: float, res_low_A: float, res_high_A: float | None) -> float:
    if res_high_A is None:
        res_high_A = max(4.0, 2.5 * pixel_size_A)
    if not 2.0 * pixel_size_A <= res_high_A < res_low_A:
        raise ValidationError(
            f"fitting band must satisfy Nyquist ({2 * pixel_size_A:.2f} Å) <= high "
            f"< low, got {res_low_A}–{res_high_A} Å"
        )
    return float(res_high_A)


def prepare_spectrum(
    image: np.ndarray,
    pixel_size_A: float,
    defocus_min_A: float,
    defocus_max_A: float,
    res_low_A: float,
    res_high_A: float | None,
    tile_size_px: int | None,
) -> dict:
    """Checks shared by both strategies, then the cropped spectrum and its band.

    Returns ``spectrum`` (cropped centred half plane), ``tile`` (px), ``bin_k`` (1/Å),
    ``k_low``, ``k_high`` (the user's band, 1/Å) and ``res_high_A``.
    """
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if not 0 < defocus_min_A < defocus_max_A:
        raise ValidationError(
            f"defocus range must satisfy 0 < min < max, got {defocus_min_A}..{defocus_max_A} Å"
        )
    res_high_A = _check_band(pixel_size_A, res_low_A, res_high_A)
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValidationError(f"expected a 2D micrograph, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValidationError(
            f"cannot estimate the CTF of a micrograph with {micrograph_defect(image)}"
        )
    tile = int(tile_size_px) if tile_size_px else auto_tile_size(image.shape, pixel_size_A)
    spectrum = tiled_power_spectrum(image, tile)
    if not np.isfinite(spectrum).all():  # float32 FFTs of pixels near 1e38 overflow
        raise ValidationError(
            f"the power spectrum overflows (pixel values up to {np.abs(image).max():.3g}); "
            "rescale the micrograph"
        )
    bin_k = 1.0 / (tile * pixel_size_A)
    k_high = 1.0 / res_high_A
    # Room for the smoother's margin beyond the band's high end.
    radius = math.ceil(1.2 * k_high / bin_k) + 8
    return {
        "spectrum": crop_half_spectrum(spectrum, radius),
        "tile": tile,
        "bin_k": bin_k,
        "k_low": 1.0 / res_low_A,
        "k_high": k_high,
        "res_high_A": res_high_A,
    }


def search_band_k(k_low: float, k_high: float, defocus_A: float, voltage_kV: float, tile_A: float):
    """High end (1/Å) of a band in which rings of ``defocus_A`` span enough samples, but
    at least 2.5× the low end (a band must hold a few rings to be fitted at all)."""
    limited = ring_limited_k(defocus_A, voltage_kV, tile_A)
    return min(k_high, max(limited, 2.5 * k_low))


def estimate_ctf(
    image: np.ndarray,
    pixel_size_A: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    defocus_min_A: float = 3000.0,
    defocus_max_A: float = 50000.0,
    res_low_A: float = 30.0,
    res_high_A: float | None = None,
    tile_size_px: int | None = None,
    astigmatism: bool = True,
    return_spectrum: bool = False,
) -> dict:
    """Estimate defocus (and astigmatism) of a micrograph.

    Parameters
    ----------
    image : 2D micrograph (any real dtype).
    pixel_size_A : Å per pixel.
    defocus_min_A, defocus_max_A : search range (Å, underfocus positive).
    res_low_A, res_high_A : the fitting band in Å; ``res_high_A`` defaults to
        ``max(4, 2.5 * pixel_size_A)``. The band actually fitted ends earlier where the
        rings of the fitted defocus would span fewer than 3 spectrum samples
        (``band_high_A`` in the result).
    tile_size_px : periodogram tile; None or 0 picks it from the pixel size
        (:func:`hpcem.ctf.spectrum.auto_tile_size`: >= 700 Å, a power of two).
    astigmatism : fit U, V and angle on sector averages; if False, U = V and angle 0.

    Returns
    -------
    dict with ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle`` (deg),
    ``fit_resolution_A`` (highest resolution before the fitted rings stop matching the
    data: local correlation < 0.3 over a whole ring), ``fit_score`` (correlation of data
    and model in the band, −1..1), ``defocus_1d`` and ``score_1d`` (the rotational-average
    fit), ``refinement`` (how the astigmatic result was accepted, or why the 1D fit was
    kept), ``rejection`` (None, or why the fit must not be trusted: it lies at an edge
    of the search range, or the 18 sectors' own fits disagree — no consistent rings),
    ``tile_size_px``, ``band_high_A`` and ``backends`` (the kernel
    behind each stage: ``"cython"`` or ``"numpy"``); with ``return_spectrum`` also
    ``spectrum``, the cropped half-plane power spectrum that was fitted (for
    :mod:`hpcem.ctf.diagnostic`).

    Raises ValidationError for NaN or Inf pixels (they would make every number NaN),
    pixels so large that the spectrum overflows, a micrograph smaller than the tile, or
    an impossible band or range.
    """
    prep = prepare_spectrum(
        image, pixel_size_A, defocus_min_A, defocus_max_A, res_low_A, res_high_A, tile_size_px
    )
    spectrum, bin_k, tile = prep["spectrum"], prep["bin_k"], prep["tile"]
    tile_A = tile * pixel_size_A
    n_bins = spectrum.shape[1] - 1
    optics = (voltage_kV, cs_mm, amplitude_contrast)
    rotational = radial_profile(spectrum)

    # 1. Search the whole range in a band where even defocus_max_A is sampled.
    k_search = search_band_k(prep["k_low"], prep["k_high"], defocus_max_A, voltage_kV, tile_A)
    search = Fitter1D(n_bins, bin_k, *optics, prep["k_low"], k_search)
    d_search, _ = search.search(
        search.prepare(rotational), defocus_min_A, defocus_max_A, search.grid_step_A()
    )
    # 2. Band for the defocus found (U may be larger than the mean: 10 % margin).
    k_fit = search_band_k(prep["k_low"], prep["k_high"], 1.1 * d_search, voltage_kV, tile_A)
    fitter = Fitter1D(n_bins, bin_k, *optics, prep["k_low"], k_fit)
    step = fitter.grid_step_A()
    data = fitter.prepare(rotational)
    defocus_1d, score_1d = fitter.search(
        data, max(defocus_min_A, d_search - 2 * step), min(defocus_max_A, d_search + 2 * step), step
    )
    rejection = None
    edge = min(defocus_1d - defocus_min_A, defocus_max_A - defocus_1d)
    if edge < max(step, 0.01 * defocus_1d):
        rejection = (
            f"defocus {defocus_1d:.0f} Å at the edge of the search range "
            f"{defocus_min_A:.0f}–{defocus_max_A:.0f} Å"
        )
    u, v, angle, score = defocus_1d, defocus_1d, 0.0, score_1d
    refinement = "1D fit (astigmatism off)"
    if astigmatism:
        u, v, angle, score, refinement, inconsistent = _fit_astigmatism(
            spectrum, fitter, defocus_1d, score_1d, defocus_min_A, defocus_max_A
        )
        rejection = rejection or inconsistent
    mean = 0.5 * (u + v)
    profile = radial_profile(
        spectrum, math.sqrt(u / mean), math.sqrt(v / mean), math.radians(angle)
    )
    full = Fitter1D(n_bins, bin_k, *optics, prep["k_low"], prep["k_high"])
    result = {
        "defocus_u": u,
        "defocus_v": v,
        "defocus_angle": angle,
        "fit_resolution_A": _fit_resolution_1d(full, profile, mean),
        "fit_score": score,
        "defocus_1d": defocus_1d,
        "score_1d": score_1d,
        "refinement": refinement,
        "rejection": rejection,
        "tile_size_px": tile,
        "res_high_A": prep["res_high_A"],
        "band_high_A": 1.0 / k_fit,
        "radial_backend": RADIAL_BACKEND,
        "backends": {"radial": RADIAL_BACKEND, "ctf_periodogram": periodogram_backend()},
    }
    if return_spectrum:
        result["spectrum"] = spectrum
    return result


def _sector_scores(
    spectrum: np.ndarray, fitter: Fitter1D, defocus_1d: float, low_A: float, high_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """Score of each sector's profile on a fine defocus grid: (grid (n,), scores (n, s))."""
    data = fitter.prepare(sector_profiles(spectrum))
    step = max(5.0, min(0.0015 * defocus_1d, 0.3 * fitter.grid_step_A()))
    grid = np.arange(low_A, high_A + 0.5 * step, step)
    return grid, fitter.models(grid) @ data.T


def _fit_astigmatism(
    spectrum: np.ndarray,
    fitter: Fitter1D,
    defocus_1d: float,
    score_1d: float,
    defocus_min_A: float,
    defocus_max_A: float,
) -> tuple[float, float, float, float, str, str | None]:
    """(U, V, angle, score, refinement, rejection) from sector averages; the 1D fit if
    the astigmatic result scores worse, leaves the range or moves far from the 1D fit;
    a rejection reason when the sectors' own fits disagree with each other."""
    low = max(defocus_min_A * 0.5, defocus_1d * (1 - 1.3 * MAX_ASTIGMATISM_RATIO))
    high = defocus_1d * (1 + 1.3 * MAX_ASTIGMATISM_RATIO)
    grid, table = _sector_scores(spectrum, fitter, defocus_1d, low, high)
    n_sectors = table.shape[1]
    centres = (np.arange(n_sectors) + 0.5) * math.pi / n_sectors
    # A sector averages cos 2(α − angle) over its width w: the defocus it sees is
    # shrunk towards the mean by sin(w)/w.
    width = math.pi / n_sectors
    shrink = math.sin(width) / width
    step = grid[1] - grid[0]

    def total(mean, half_diff, angle_rad):
        """Mean sector score for arrays of (mean, half_diff, angle), broadcast."""
        d = mean[..., None] + shrink * half_diff[..., None] * np.cos(
            2.0 * (centres - angle_rad[..., None])
        )
        pos = np.clip((d - grid[0]) / step, 0.0, len(grid) - 1.000001)
        i0 = pos.astype(np.intp)
        f = pos - i0
        cols = np.arange(n_sectors)
        return ((1 - f) * table[i0, cols] + f * table[i0 + 1, cols]).mean(axis=-1)

    # Exhaustive search: mean within ±6 % (0.6 % steps, finer than a score peak), U − V
    # up to 2·15 % of the mean (1.5 % steps), angle per 4°; Nelder–Mead refines.
    means = defocus_1d * (1.0 + np.linspace(-0.06, 0.06, 21))
    half_diffs = np.linspace(0.0, MAX_ASTIGMATISM_RATIO * defocus_1d, 21)
    angles = np.radians(np.arange(0.0, 180.0, 4.0))
    m, h, a = np.meshgrid(means, half_diffs, angles, indexing="ij")
    values = total(m, h, a)
    i = np.unravel_index(int(np.argmax(values)), values.shape)
    start = np.array([means[i[0]], half_diffs[i[1]], angles[i[2]]])
    result = optimize.minimize(
        lambda p: -float(total(np.array(p[0]), np.array(p[1]), np.array(p[2]))),
        start,
        method="Nelder-Mead",
        options={
            "initial_simplex": [
                start,
                start + [0.005 * defocus_1d, 0, 0],
                start + [0, 0.005 * defocus_1d, 0],
                start + [0, 0, math.radians(4.0)],
            ],
            "xatol": 0.5,
            "fatol": 1e-7,
        },
    )
    mean, half_diff, angle_rad = (float(x) for x in result.x)
    if half_diff < 0:  # keep U the larger defocus: swap axes
        half_diff, angle_rad = -half_diff, angle_rad + 0.5 * math.pi
    u, v = mean + half_diff, mean - half_diff
    angle_deg = math.degrees(angle_rad) % 180.0
    # How far each sector's own best defocus lies from the fitted sinusoid, in 1D grid
    # steps (a step moves the ring phase at the band's end by π/4): real rings put
    # every sector within ~1 step, noise scatters them by 2.5-25 steps.
    predicted = mean + shrink * half_diff * np.cos(2.0 * (centres - angle_rad))
    peaks = grid[np.argmax(table, axis=0)]
    spread = float(np.median(np.abs(peaks - predicted))) / fitter.grid_step_A()
    if spread > MAX_SECTOR_SPREAD_STEPS:
        reason = (
            f"the {n_sectors} sector fits disagree (median {spread:.1f} defocus steps from "
            f"the fitted astigmatism, > {MAX_SECTOR_SPREAD_STEPS:g}): no consistent Thon rings"
        )
        return defocus_1d, defocus_1d, 0.0, score_1d, f"1D fit kept: {reason}", reason

    # The elliptical average along the fitted rings, its mean defocus refined in 1D.
    profile = radial_profile(spectrum, math.sqrt(u / mean), math.sqrt(v / mean), angle_rad)
    data = fitter.prepare(profile)
    refined = optimize.minimize_scalar(
        lambda d: -fitter.scores(data, np.array([d]))[0],
        bounds=(mean - 2 * step, mean + 2 * step),
        method="bounded",
        options={"xatol": 1.0},
    )
    new_mean, score = float(refined.x), float(-refined.fun)
    u, v, mean = u + new_mean - mean, v + new_mean - mean, new_mean
    fallback = None
    if score < score_1d:
        fallback = f"elliptical score {score:.4f} below the rotational {score_1d:.4f}"
    elif not (defocus_min_A <= v and u <= defocus_max_A):
        fallback = (
            f"U/V {u:.0f}/{v:.0f} Å outside the search range "
            f"{defocus_min_A:.0f}–{defocus_max_A:.0f} Å"
        )
    elif abs(mean - defocus_1d) > MAX_MEAN_SHIFT * defocus_1d + 0.5 * (u - v):
        fallback = f"mean defocus {mean:.0f} Å far from the 1D fit {defocus_1d:.0f} Å"
    if fallback is not None:
        return defocus_1d, defocus_1d, 0.0, score_1d, f"1D fit kept: {fallback}", None
    how = (
        f"astigmatic (sector fit; score {score:.4f} >= rotational {score_1d:.4f}; "
        f"sectors within {spread:.2f} steps)"
    )
    return u, v, angle_deg, score, how, None


def load_micrograph(
    path: str | os.PathLike,
    pixel_size_A: float | None = None,
    pixel_size_rel_tol: float = 0.01,
) -> tuple[np.ndarray, float]:
    """Read a micrograph file (MRC or TIFF; movies are averaged) and its pixel size.

    The pixel size is ``pixel_size_A`` if given (checked against the header with
    :func:`hpcem.io.images.check_pixel_size`), otherwise the header's. Returns the 2D
    float32 image and the pixel size in Å.
    """
    from hpcem.io.images import check_pixel_size, read_header, read_image

    path = Path(path)
    header = read_header(path)
    if pixel_size_A is None:
        if header.pixel_size_A is None:
            raise ValidationError(f"{path}: header has no pixel size; give pixel_size_A")
        pixel_size_A = header.pixel_size_A
    else:
        check_pixel_size(header, pixel_size_A, rel_tol=pixel_size_rel_tol)
    if header.kind == "volume":
        raise ValidationError(f"{path}: is a volume, not a micrograph")
    image = read_image(path)
    if image.ndim == 3:
        image = image.mean(axis=0)
    return image, float(pixel_size_A)


def estimate_ctf_from_file(
    path: str | os.PathLike,
    pixel_size_A: float | None = None,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    pixel_size_rel_tol: float = 0.01,
    **options,
) -> dict:
    """Estimate the CTF of a micrograph file (read with :func:`load_micrograph`).

    ``options`` go to :func:`estimate_ctf`. The result also has ``path`` and
    ``pixel_size_A``.
    """
    image, pixel_size_A = load_micrograph(path, pixel_size_A, pixel_size_rel_tol)
    result = estimate_ctf(
        image,
        pixel_size_A,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        **options,
    )
    result.update(path=str(Path(path)), pixel_size_A=pixel_size_A)
    return result
