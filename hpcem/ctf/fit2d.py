"""``ctf.fit2d``: a full 2D fit of the background-subtracted power spectrum.

Independent of :mod:`hpcem.ctf.estimate` in method (only the tiled power spectrum and
the band rules are shared):

1. **Background**: the cropped spectrum (mirrored to the full plane) minus its 2D gaussian
   smoothing, divided by the local RMS of that difference: the rings remain, with a flat
   envelope, at every pixel — no rotational or elliptical averaging.
2. **Model**: the oscillating part of CTF², ``m = −cos 2(χ + arcsin A + φ)``, evaluated
   at every pixel of the band; ``χ`` is linear in (mean defocus, ½(U−V)cos 2θ,
   ½(U−V) sin 2θ), so one pass of the kernel ``hpcem.kernels.ctf_score2d`` gives the
   correlation of data and model (numpy reference :func:`correlate_numpy`).
3. **Exhaustive coarse search** of the mean defocus over the whole range (and of the
   phase shift, with ``phase_shift=True``) with a round model, in a band where rings of
   ``defocus_max_A`` span three spectrum samples; then of U − V (3–40 % of the mean, 5
   amplitudes) and the angle (every 15°) around the three best means, in the band for
   that defocus. The
   coarse grids score every third pixel of the band (hundreds per ring remain).
4. **Local refinement** (Nelder–Mead) of (mean, two astigmatism components[, phase]) in
   the band for the defocus found. A refinement that lowers the score or leaves the
   search range is not kept (the coarse result is); a result at an edge of the search
   range is reported in ``rejection``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy.ndimage import gaussian_filter

from hpcem.ctf.estimate import fit_resolution_from_cc, prepare_spectrum, search_band_k
from hpcem.ctf.model import electron_wavelength_A
from hpcem.ctf.spectrum import periodogram_backend, ring_period_k
from hpcem.errors import ValidationError
from hpcem.kernels import backend, load

_kernel = load("ctf_score2d")
SCORE_BACKEND = backend("ctf_score2d")
# Astigmatism amplitudes (U − V)/(U + V) and angles of the coarse grid.
_COARSE_RATIOS = (0.015, 0.04, 0.08, 0.13, 0.2)
_COARSE_ANGLES_DEG = tuple(range(0, 180, 15))
# The coarse grids use every 3rd pixel of the band.
COARSE_STRIDE = 3
# Phase shifts of the coarse grid (degrees) when the phase shift is fitted.
_COARSE_PHASES_DEG = tuple(range(0, 180, 15))


def correlate_numpy(data, k2, k2c, k2s, k4, a_mean, a_c, a_s, a_cs, offset):
    """Reference of ``ctf_score2d.correlate``: (Σ d·m, Σ m, Σ m²), m = −cos 2·phase."""
    phase = a_mean * k2 + a_c * k2c + a_s * k2s - a_cs * k4 + offset
    m = -np.cos(2.0 * phase)
    return float(data @ m), float(m.sum()), float(m @ m)


_correlate = _kernel.correlate if _kernel is not None else correlate_numpy


def full_plane(spectrum_half: np.ndarray) -> np.ndarray:
    """The centred full plane of a cropped half-plane spectrum (point symmetry):
    (2r+1, r+1) -> (2r+1, 2r+1), zero frequency at (r, r)."""
    r = spectrum_half.shape[1] - 1
    left = spectrum_half[::-1, :0:-1]  # S(ky, -kx) = S(-ky, kx)
    return np.concatenate([left, spectrum_half], axis=1)[:, : 2 * r + 1]


def background_subtracted(spectrum_half: np.ndarray, sigma_px: float) -> np.ndarray:
    """(S − G S) / sqrt(G (S − G S)²) on the half plane, G a 2D gaussian of ``sigma_px``."""
    full = full_plane(spectrum_half)
    detail = full - gaussian_filter(full, sigma_px, mode="nearest")
    local = gaussian_filter(detail * detail, sigma_px, mode="nearest")
    out = detail / np.sqrt(local + 1e-30)
    r = spectrum_half.shape[1] - 1
    return np.ascontiguousarray(out[:, r:])


class Pixels:
    """The band's pixels: normalised data and the geometry the model needs."""

    def __init__(self, data_half: np.ndarray, bin_k: float, k_low: float, k_high: float):
        r = data_half.shape[1] - 1
        ky = (np.arange(data_half.shape[0]) - r)[:, None] * bin_k
        kx = np.arange(r + 1)[None, :] * bin_k
        k2 = ky * ky + kx * kx
        # Half plane: the kx = 0 column holds ky and -ky, which are the same frequency.
        keep = (k2 >= k_low**2) & (k2 <= k_high**2) & ((kx > 0) | (ky > 0))
        az = np.arctan2(ky, kx) * np.ones_like(kx)
        self.k2 = np.ascontiguousarray(np.broadcast_to(k2, data_half.shape)[keep])
        self.k2c = np.ascontiguousarray(self.k2 * np.cos(2 * az)[keep])
        self.k2s = np.ascontiguousarray(self.k2 * np.sin(2 * az)[keep])
        self.k4 = self.k2 * self.k2
        self.radius_bin = np.sqrt(self.k2) / bin_k
        self._set_data(data_half[keep].astype(np.float64))
        self.k_high = k_high

    def _set_data(self, d: np.ndarray) -> None:
        d = d - d.mean()
        self.data = np.ascontiguousarray(d / (np.linalg.norm(d) + 1e-30))
        self.n = len(self.data)

    def every(self, step: int) -> Pixels:
        """Every ``step``-th pixel (the coarse search's cheaper score), renormalised."""
        sub = object.__new__(Pixels)
        for name in ("k2", "k2c", "k2s", "k4", "radius_bin"):
            setattr(sub, name, np.ascontiguousarray(getattr(self, name)[::step]))
        sub._set_data(self.data[::step])
        sub.k_high = self.k_high
        return sub

    def model(self, coeffs: tuple) -> np.ndarray:
        phase = (
            (coeffs[0] * self.k2 + coeffs[1] * self.k2c + coeffs[2] * self.k2s)
            - coeffs[3] * self.k4
            + coeffs[4]
        )
        return -np.cos(2.0 * phase)


class Scorer:
    """Correlation of the band's data with the model for (mean, c, s, phase) in Å, Å, Å, rad;
    (c, s) = ½(U − V)(cos 2θ, sin 2θ)."""

    def __init__(self, voltage_kV: float, cs_mm: float, amplitude_contrast: float):
        lam = electron_wavelength_A(voltage_kV)
        self.pl = math.pi * lam
        self.a_cs = 0.5 * math.pi * cs_mm * 1e7 * lam**3
        self.asin_a = math.asin(amplitude_contrast)
        self.lam = lam
        self.calls = 0

    def coeffs(self, mean: float, c: float, s: float, phase: float) -> tuple:
        pl = self.pl
        return (pl * mean, pl * c, pl * s, self.a_cs, self.asin_a + phase)

    def __call__(self, px: Pixels, mean: float, c: float, s: float, phase: float = 0.0) -> float:
        self.calls += 1
        sdm, sm, smm = _correlate(
            px.data, px.k2, px.k2c, px.k2s, px.k4, *self.coeffs(mean, c, s, phase)
        )
        var = smm - sm * sm / px.n
        return sdm / math.sqrt(var) if var > 1e-12 else 0.0


def fit_ctf_2d(
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
    phase_shift: bool = False,
    return_spectrum: bool = False,
) -> dict:
    """Fit defocus U, V, astigmatism angle (and optionally a phase shift) in 2D.

    Parameters as :func:`hpcem.ctf.estimate.estimate_ctf`; ``phase_shift`` also fits an
    additional phase shift in [0, 180)° (phase plates).

    Returns
    -------
    dict with ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle`` (deg),
    ``phase_shift`` (deg, 0 unless fitted), ``fit_score`` (correlation of the
    background-subtracted spectrum and the model over every pixel of the band, −1..1;
    lower than ``ctf.estimate``'s, which averages pixels first), ``fit_resolution_A``,
    ``refinement``, ``rejection`` (None, or why not to trust the fit), ``tile_size_px``,
    ``band_high_A``, ``backends`` and ``n_evaluations`` (model evaluations); with
    ``return_spectrum`` also ``spectrum`` (see :func:`hpcem.ctf.estimate.estimate_ctf`).
    """
    prep = prepare_spectrum(
        image, pixel_size_A, defocus_min_A, defocus_max_A, res_low_A, res_high_A, tile_size_px
    )
    spectrum, bin_k, tile = prep["spectrum"], prep["bin_k"], prep["tile"]
    tile_A = tile * pixel_size_A
    k_low, k_high = prep["k_low"], prep["k_high"]
    sigma = max(3.0, (k_high - k_low) / bin_k / 12.0)
    data = background_subtracted(spectrum, sigma)
    score = Scorer(voltage_kV, cs_mm, amplitude_contrast)

    # 1. Round model over the whole range in a band that samples defocus_max_A's rings.
    k_search = search_band_k(k_low, k_high, defocus_max_A, voltage_kV, tile_A)
    # The coarse grids score every COARSE_STRIDE-th pixel (a ring still holds hundreds).
    px_search = Pixels(data, bin_k, k_low, k_search).every(COARSE_STRIDE)
    step = min(250.0, 0.25 / (score.lam * k_search**2))
    means = np.arange(defocus_min_A, defocus_max_A + 0.5 * step, step)
    phases = np.radians(_COARSE_PHASES_DEG) if phase_shift else np.zeros(1)
    table = np.array([[score(px_search, m, 0.0, 0.0, p) for p in phases] for m in means])
    best_per_mean = table.max(axis=1)
    peaks = [
        i
        for i in range(len(means))
        if best_per_mean[i] >= best_per_mean[max(i - 1, 0)]
        and best_per_mean[i] >= best_per_mean[min(i + 1, len(means) - 1)]
    ]
    peaks = sorted(peaks, key=lambda i: -best_per_mean[i])[:3]

    # 2. Astigmatism grid around the best means, each in the band for its defocus.
    best = (-2.0, None, None)
    for i in peaks:
        mean0, phase0 = float(means[i]), float(phases[int(np.argmax(table[i]))])
        k_fit = search_band_k(k_low, k_high, 1.1 * mean0, voltage_kV, tile_A)
        px = Pixels(data, bin_k, k_low, k_fit).every(COARSE_STRIDE)
        local_step = min(step, 0.25 / (score.lam * k_fit**2))
        for mean in mean0 + local_step * np.arange(-2, 3):
            candidates = [(mean, 0.0, 0.0)]
            for ratio in _COARSE_RATIOS:
                for angle in np.radians(_COARSE_ANGLES_DEG):
                    h = ratio * mean
                    candidates.append((mean, h * math.cos(2 * angle), h * math.sin(2 * angle)))
            for m, c, s in candidates:
                value = score(px, m, c, s, phase0)
                if value > best[0]:
                    best = (value, (m, c, s, phase0), k_fit)
    coarse_score, start, _ = best
    if start is None:  # every score NaN: nothing to refine
        raise ValidationError("the 2D fit found no finite score in the search range")

    # 3. Local refinement in the band for the defocus found.
    k_fit = search_band_k(k_low, k_high, 1.1 * start[0], voltage_kV, tile_A)
    px = Pixels(data, bin_k, k_low, k_fit)
    coarse_score = score(px, *start)
    x0 = np.array(start if phase_shift else start[:3], dtype=np.float64)
    scale = np.array([0.01 * start[0], 0.01 * start[0], 0.01 * start[0], 0.2][: len(x0)])

    def negative(x):
        p = x * scale + x0
        return -score(px, p[0], p[1], p[2], p[3] if phase_shift else start[3])

    result = optimize.minimize(
        negative,
        np.zeros_like(x0),
        method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-7, "maxiter": 600},
    )
    p = result.x * scale + x0
    refined = (float(p[0]), float(p[1]), float(p[2]), float(p[3]) if phase_shift else start[3])
    refined_score = -float(result.fun)
    mean, c, s, phase = refined
    half = math.hypot(c, s)
    u, v = mean + half, mean - half
    refinement = f"2D refinement (score {refined_score:.4f} >= coarse {coarse_score:.4f})"
    if refined_score < coarse_score:
        refinement = f"coarse grid kept: refinement lowered the score to {refined_score:.4f}"
    elif not (defocus_min_A <= v and u <= defocus_max_A):
        refinement = f"coarse grid kept: refinement left the search range (U/V {u:.0f}/{v:.0f} Å)"
    if refinement.startswith("coarse"):
        mean, c, s, phase = start
        refined_score = coarse_score
        half = math.hypot(c, s)
        u, v = mean + half, mean - half
    angle = (0.5 * math.degrees(math.atan2(s, c))) % 180.0 if half > 0 else 0.0
    rejection = None
    if min(v - defocus_min_A, defocus_max_A - u) < max(step, 0.01 * mean):
        rejection = (
            f"defocus {v:.0f}–{u:.0f} Å at the edge of the search range "
            f"{defocus_min_A:.0f}–{defocus_max_A:.0f} Å"
        )
    full = Pixels(data, bin_k, k_low, k_high)
    fit_res = _fit_resolution_2d(full, score, (mean, c, s, phase), bin_k)
    result = {
        "defocus_u": u,
        "defocus_v": v,
        "defocus_angle": angle,
        "phase_shift": math.degrees(phase) % 180.0,
        "fit_score": refined_score,
        "fit_resolution_A": fit_res,
        "refinement": refinement,
        "rejection": rejection,
        "tile_size_px": tile,
        "res_high_A": prep["res_high_A"],
        "band_high_A": 1.0 / k_fit,
        "n_evaluations": score.calls,
        "coarse_score": coarse_score,
        "backends": {"ctf_score2d": SCORE_BACKEND, "ctf_periodogram": periodogram_backend()},
    }
    if return_spectrum:
        result["spectrum"] = spectrum
    return result


def _fit_resolution_2d(px: Pixels, score: Scorer, params: tuple, bin_k: float) -> float:
    """fit_resolution (Å): local correlation of data and model over rings of pixels."""
    model = px.model(score.coeffs(*params))
    shell = np.round(px.radius_bin).astype(np.intp)
    first, n = int(shell.min()), int(shell.max()) + 1

    def sums(values):
        return np.bincount(shell, values, n)[first:]

    d, m = px.data, model
    per = [sums(x) for x in (np.ones_like(d), d, m, d * m, d * d, m * m)]
    k = np.arange(first, n) * bin_k
    period = ring_period_k(k, params[0], score.lam) / bin_k
    half = np.clip(np.round(0.5 * period), 1, 20).astype(np.intp)
    idx = np.arange(len(k))
    lo, hi = np.clip(idx - half, 0, len(k)), np.clip(idx + half + 1, 0, len(k))
    cum = [np.concatenate([[0.0], np.cumsum(x)]) for x in per]
    cnt, sd, sm, sdm, sdd, smm = (c[hi] - c[lo] for c in cum)
    cov = sdm - sd * sm / cnt
    var = (sdd - sd * sd / cnt) * (smm - sm * sm / cnt)
    cc = cov / np.sqrt(np.maximum(var, 1e-30))
    # Pixels are noisy one by one: a window agrees when its correlation is 4 standard
    # deviations of pure noise's (1/sqrt(n) for n pixels) above zero.
    return 1.0 / fit_resolution_from_cc(k, cc, period, 4.0 / np.sqrt(np.maximum(cnt, 1.0)))
