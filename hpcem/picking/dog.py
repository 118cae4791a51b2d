"""Reference-free particle picking by size: the Difference of Gaussians (Voss et al. 2009).

The micrograph is binned by Fourier cropping so that a particle is about
:data:`TARGET_DIAMETER_PX` pixels across, band-passed by a Difference of Gaussians tuned to
the particle's size (in Fourier space, on the cropped spectrum: one full-size FFT and
small ones after), normalised robustly (median / MAD), and its local maxima at least a
minimum distance apart are the picks (:func:`hpcem.picking.peaks.find_peaks`). Particles
are dark in cryo-EM micrographs (negative contrast, see :mod:`hpcem.ctf.model`), so the
picks are maxima of the *inverted* response by default.

Scale of the filter
-------------------
The DoG ``G(σ1) − G(σ2)`` with ``σ2 = k·σ1`` applied to a 2D gaussian blob of standard
deviation ``s`` and mass ``∝ s²`` (a particle's mass grows with its area) gives, at the
blob's centre, ``s² [1/(s² + σ1²) − 1/(s² + σ2²)]`` (up to a constant); this is largest
for ``s² = σ1·σ2``, i.e. ``σ1 = s / √k``. A projected sphere of radius ``r`` has a second
moment per axis of ``r²/5``, so the blob that matches it has ``s = r/√5`` (a uniform disc
would give ``r/2``). Voss et al. also tie the two sigmas to the particle radius; this
relation is our own derivation, and ``k``, the factor on ``s`` and the diameter were
checked on simulated micrographs of a real model: F1 changed by < 0.01 for k = 1.3-2.0
and s/r = 0.35-0.55, and stays >= 0.98 for a diameter given 0.6-1.3x the true one
(docs/protocols/picking_dog.md).

Exclusion of carbon and contamination
-------------------------------------
Carbon, thick ice and ice contamination change the local mean or the local variance of
the (low-passed) image over areas much larger than a particle. Both are computed over a
square window of :data:`EXCLUSION_WINDOW_DIAMETERS` diameters, in units of the *median
local SD* S (the texture of a typical window: noise plus particles); a pick is dropped
where the local mean is more than ``exclusion_sd`` × S from the median local mean, or
the local SD is more than ``exclusion_sd`` × S. (Not the spread of the local means: a
carbon area covering a third of the micrograph is no outlier among them. Not the SD of
the pixels: strong particles would then exclude themselves.) On simulated micrographs
without carbon (1024-2048 px, 0.8-1.5 Å/px, with and without particles, diameters 0.6-1x
the true one) the largest values seen were 2.2 (mean) and 2.2 (SD); a planted carbon
area or dark band shifted by 0.25 of the pixel SD reaches 5-6.5. Default 3.5.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from hpcem.errors import ValidationError
from hpcem.picking.peaks import find_peaks

#: Particle diameter, in binned pixels, that the micrograph is binned to (Fourier
#: cropping; never up-sampled). 24 px keeps the DoG well sampled (σ1 ≈ 3.4 px) while a
#: 4096² micrograph of a 150 Å particle at 1 Å/px shrinks to 656².
TARGET_DIAMETER_PX = 24.0
#: Ratio σ2/σ1 of the two gaussians (1.6: Marr's approximation of the Laplacian of a
#: gaussian; 1.3-2.0 measured equally good).
DOG_K = 1.6
#: Matched blob scale ``s`` as a fraction of the particle radius (1/√5: projected sphere).
BLOB_SCALE = 1.0 / math.sqrt(5.0)
#: Side of the window of the local mean / variance test, in particle diameters.
EXCLUSION_WINDOW_DIAMETERS = 2.0
#: Default threshold on the normalised score (robust standard deviations of the DoG
#: response above its median); measured, see docs/protocols/picking_dog.md.
DEFAULT_THRESHOLD = 3.5
#: Default of ``exclusion_sd`` (in median local SDs, see above).
DEFAULT_EXCLUSION_SD = 3.5
#: Default minimum distance between picks, in diameters: 0.7 keeps touching particles
#: when the diameter given is up to 15 % too large (0.8 lost 5 % of them).
MIN_DISTANCE_DIAMETERS = 0.7
#: Default margin without picks along the edges, in particle diameters.
BORDER_DIAMETERS = 0.4
#: A robust SD of a normal distribution is 1.4826 × its median absolute deviation.
MAD_TO_SD = 1.4826


def binning_for(diameter_px: float, target_px: float = TARGET_DIAMETER_PX) -> float:
    """Binning factor (>= 1) that makes a particle of ``diameter_px`` about ``target_px``
    across."""
    if not diameter_px > 0:
        raise ValidationError(f"particle diameter must be > 0 px, got {diameter_px}")
    return max(1.0, diameter_px / target_px)


def binned_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Shape after Fourier cropping by ``factor`` (even sizes, at least 16 px)."""
    out = []
    for n in shape:
        m = round(n / factor / 2.0) * 2
        out.append(min(int(n), max(16, m)))
    return out[0], out[1]


def crop_spectrum(spectrum: np.ndarray, shape: tuple[int, int], out: tuple[int, int]):
    """Crop an ``rfft2`` half-plane spectrum of an image of ``shape`` to that of an image
    of ``out`` (smaller or equal): keeps frequencies below the new Nyquist. Rows of
    negative frequencies are taken from the end. Scaled so that pixel values keep their
    amplitude (the mean of the image is unchanged)."""
    ny, nx = shape
    my, mx = out
    if (my, mx) == (ny, nx):
        return spectrum
    h = my // 2
    rows = np.concatenate([np.arange(0, my - h), np.arange(ny - h, ny)])
    cropped = spectrum[rows, : mx // 2 + 1]
    return cropped * np.float32((my * mx) / (ny * nx))


def dog_sigmas_px(diameter_px: float, k: float = DOG_K, blob_scale: float = BLOB_SCALE):
    """``(σ1, σ2)`` in pixels of the DoG matched to a particle ``diameter_px`` across
    (module docstring: σ1 = s/√k with s = blob_scale × radius, σ2 = k σ1)."""
    s = blob_scale * 0.5 * diameter_px
    sigma1 = s / math.sqrt(k)
    return sigma1, k * sigma1


def gaussian_ft(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Fourier transform (``rfft2`` half plane) of a unit-mass gaussian of ``sigma_px``."""
    ky = sfft.fftfreq(shape[0])[:, None]
    kx = sfft.rfftfreq(shape[1])[None, :]
    k2 = (ky * ky + kx * kx).astype(np.float32)
    return np.exp(np.float32(-2.0 * math.pi**2 * sigma_px**2) * k2)


def robust_normalise(values: np.ndarray) -> np.ndarray:
    """``(values − median) / (1.4826 × MAD)`` (float32); a constant map gives zeros."""
    flat = values.ravel()
    median = float(np.median(flat))
    mad = float(np.median(np.abs(flat - median)))
    scale = MAD_TO_SD * mad
    if not scale > 0:
        scale = float(np.std(flat)) or 1.0
    return ((values - np.float32(median)) / np.float32(scale)).astype(np.float32, copy=False)


def _minus_gradient(values: np.ndarray, lag_px: int) -> np.ndarray:
    """``values`` minus a linear gradient and its median: the slopes along x and y are
    the medians of the differences between pixels ``lag_px`` apart (a step such as a
    carbon edge changes only the differences that straddle it, a minority, and so not
    the median; a gradient of illumination or ice thickness changes them all)."""
    ny, nx = values.shape
    lag_x, lag_y = max(1, min(int(lag_px), nx - 1)), max(1, min(int(lag_px), ny - 1))
    slope_x = float(np.median(values[:, lag_x:] - values[:, :-lag_x])) / lag_x if nx > 1 else 0.0
    slope_y = float(np.median(values[lag_y:, :] - values[:-lag_y, :])) / lag_y if ny > 1 else 0.0
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    residual = values - (np.float32(slope_x) * x + np.float32(slope_y) * y)
    return residual - np.float32(np.median(residual))


def exclusion_mask(
    lowpass: np.ndarray, window_px: int, exclusion_sd: float
) -> tuple[np.ndarray, dict]:
    """True where a pick may be: over a square of ``window_px`` around it, the local mean
    of ``lowpass`` is within ``exclusion_sd`` × S of the median local mean after removing
    a linear gradient (:func:`_minus_gradient`: gradients are not excluded, steps are),
    and the local
    SD is below ``exclusion_sd`` × S, where S is the median local SD (the texture of a
    typical area: noise and particles).

    Returns the mask and ``{"excluded_fraction", "max_mean_dev", "max_local_sd"}`` (the
    largest values seen, in units of S, for choosing ``exclusion_sd``).
    ``exclusion_sd`` <= 0 turns the test off (all True)."""
    img = lowpass.astype(np.float32, copy=False)
    window = max(3, int(window_px) | 1)
    mean = ndimage.uniform_filter(img, size=window, mode="reflect")
    mean_sq = ndimage.uniform_filter(img * img, size=window, mode="reflect")
    local_sd = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    scale = float(np.median(local_sd))
    if not scale > 0:
        scale = float(np.std(img)) or 1.0
    local_sd /= np.float32(scale)
    mean_dev = np.abs(_minus_gradient(mean, max(1, window // 8))) / np.float32(scale)
    info = {"max_mean_dev": float(mean_dev.max()), "max_local_sd": float(local_sd.max())}
    if exclusion_sd <= 0:
        return np.ones(img.shape, dtype=bool), {"excluded_fraction": 0.0, **info}
    ok = (mean_dev <= exclusion_sd) & (local_sd <= exclusion_sd)
    return ok, {"excluded_fraction": float(1.0 - ok.mean()), **info}


def phase_flip_ft(shape: tuple[int, int], pixel_size_A: float, ctf: dict) -> np.ndarray:
    """``sign(CTF(k))·sign(CTF(0))`` on the ``rfft2`` grid of ``shape`` at
    ``pixel_size_A``: phase flipping that keeps the low-frequency contrast (dark
    particles stay dark)."""
    from hpcem.ctf.model import ctf_2d

    values = ctf_2d(
        shape,
        pixel_size_A,
        defocus_u_A=float(ctf["defocus_u"]),
        defocus_v_A=float(ctf["defocus_v"]),
        angle_deg=float(ctf["defocus_angle"]),
        voltage_kV=float(ctf.get("voltage_kV", 300.0)),
        cs_mm=float(ctf.get("cs_mm", 2.7)),
        amplitude_contrast=float(ctf.get("amplitude_contrast", 0.1)),
        phase_shift_deg=float(ctf.get("phase_shift", 0.0)),
        half=True,
    )
    sign = np.sign(values)
    sign[sign == 0] = 1.0
    return (sign * sign[0, 0]).astype(np.float32)


def dog_maps(
    image: np.ndarray,
    pixel_size_A: float,
    diameter_A: float,
    *,
    invert: bool = True,
    ctf: dict | None = None,
    k: float = DOG_K,
    blob_scale: float = BLOB_SCALE,
    target_px: float = TARGET_DIAMETER_PX,
) -> dict:
    """The normalised DoG score map and a low-passed image, both binned.

    Returns ``{"score", "lowpass", "bin_yx", "diameter_px"}``: ``score`` is the robust
    z-score of the DoG response (inverted when ``invert``: dark particles score high),
    ``lowpass`` the binned image low-passed by the wider gaussian (for the exclusion
    test), ``bin_yx`` the binning factors along y and x (a binned pixel (i, j) is at
    original (i·bin_y, j·bin_x), origin at the first pixel's centre), ``diameter_px``
    the particle diameter in binned pixels. With ``ctf`` (dict of
    :func:`phase_flip_ft`'s keys) the image is phase-flipped first.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValidationError(f"micrograph must be 2D, got shape {image.shape}")
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if not diameter_A > 0:
        raise ValidationError(f"particle diameter must be > 0 Å, got {diameter_A}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    factor = binning_for(diameter_A / pixel_size_A, target_px)
    out = binned_shape(shape, factor)
    bin_y, bin_x = shape[0] / out[0], shape[1] / out[1]
    spectrum = sfft.rfft2(image.astype(np.float32, copy=False), workers=1)
    small = crop_spectrum(spectrum, shape, out)
    del spectrum
    binned_px_A = pixel_size_A * 0.5 * (bin_y + bin_x)
    if ctf is not None:
        small = small * phase_flip_ft(out, binned_px_A, ctf)
    diameter_px = diameter_A / binned_px_A
    sigma1, sigma2 = dog_sigmas_px(diameter_px, k, blob_scale)
    g1 = gaussian_ft(out, sigma1)
    g2 = gaussian_ft(out, sigma2)
    response = sfft.irfft2(small * (g1 - g2), s=out, workers=1)
    # The exclusion test's low-pass is done in real space with mirrored edges: through
    # the FFT, a carbon area touching one edge of the micrograph would leak into the
    # opposite edge (the transform is periodic).
    binned = sfft.irfft2(small, s=out, workers=1)
    lowpass = ndimage.gaussian_filter(binned, sigma2, mode="reflect", truncate=3.0)
    if invert:
        response = -response
    return {
        "score": robust_normalise(response),
        "lowpass": lowpass,
        "bin_yx": (bin_y, bin_x),
        "diameter_px": diameter_px,
    }


def pick_dog(
    image: np.ndarray,
    pixel_size_A: float,
    diameter_A: float,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_distance_A: float = 0.0,
    max_picks: int = 1000,
    n_picks: int = 0,
    invert: bool = True,
    exclusion_sd: float = DEFAULT_EXCLUSION_SD,
    border_A: float | None = None,
    ctf: dict | None = None,
    k: float = DOG_K,
    blob_scale: float = BLOB_SCALE,
) -> dict:
    """Pick particles of ``diameter_A`` in one micrograph.

    Parameters
    ----------
    image : the micrograph (2D), pixels of ``pixel_size_A``.
    threshold : keep maxima whose normalised score (robust SDs above the median of the
        DoG response) exceeds this; ignored when ``n_picks`` > 0.
    min_distance_A : picks at least this far apart (0: 0.7 × diameter).
    max_picks : at most this many picks (the strongest); more above the threshold is
        reported in ``capped_from`` (ice contamination, a wrong diameter).
    n_picks : a fixed number of picks per micrograph (the strongest), 0 = threshold.
    invert : particles are darker than the background (cryo-EM); False for bright ones.
    exclusion_sd : drop picks where the local mean or variance over 2 diameters is more
        than this many robust SDs from the micrograph's median (0 = off).
    border_A : no picks closer than this to an edge (None: 0.4 diameters; particles
        that touch the edge cannot be extracted, and the FFT wraps around there).
    ctf : optional CTF dict (defocus_u, defocus_v, defocus_angle, phase_shift,
        voltage_kV, cs_mm, amplitude_contrast): the image is phase-flipped first.

    Returns
    -------
    dict with ``xy`` (n, 2) float64 positions in pixels of ``image`` (x along columns,
    origin at the first pixel's centre), ``scores`` (n,) normalised scores (descending),
    ``capped_from`` (number above the threshold when more than ``max_picks``, else 0),
    ``bin`` (the binning factor), ``excluded_fraction`` (area dropped by the exclusion
    test).
    """
    if max_picks < 0 or n_picks < 0:
        raise ValidationError("max_picks and n_picks must be >= 0")
    maps = dog_maps(
        image, pixel_size_A, diameter_A, invert=invert, ctf=ctf, k=k, blob_scale=blob_scale
    )
    bin_y, bin_x = maps["bin_yx"]
    diameter_px = maps["diameter_px"]
    scale = 0.5 * (bin_y + bin_x)  # original px per binned px
    min_distance_px = (min_distance_A / pixel_size_A / scale) if min_distance_A > 0 else None
    if min_distance_px is None:
        min_distance_px = MIN_DISTANCE_DIAMETERS * diameter_px
    if border_A is None:
        border_A = BORDER_DIAMETERS * diameter_A
    border_binned = border_A / pixel_size_A / scale
    mask, info = exclusion_mask(
        maps["lowpass"],
        round(EXCLUSION_WINDOW_DIAMETERS * diameter_px),
        exclusion_sd,
    )
    border_px = math.ceil(border_binned)
    if border_px > 0:
        mask[:border_px, :] = False
        mask[-border_px:, :] = False
        mask[:, :border_px] = False
        mask[:, -border_px:] = False
    # Excluded areas and the border do not compete with the rest: the DoG's response to a
    # carbon edge (or to the step where the periodic FFT wraps a carbon area around to
    # the opposite edge) would otherwise hide particles within the minimum distance.
    score = np.where(mask, maps["score"], np.float32(np.nan))
    fixed = n_picks > 0
    limit = n_picks if fixed else max_picks
    xy, values = find_peaks(
        score,
        min_distance_px,
        threshold=-math.inf if fixed else threshold,
        max_peaks=None,
    )
    capped_from = len(values) if (not fixed and len(values) > limit) else 0
    xy, values = xy[:limit], values[:limit]
    xy = xy * np.array([bin_x, bin_y])
    return {
        "xy": xy,
        "scores": values,
        "capped_from": int(capped_from),
        "bin": float(scale),
        "excluded_fraction": info["excluded_fraction"],
    }
