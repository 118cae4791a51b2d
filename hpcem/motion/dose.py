"""Dose weighting with the critical-exposure curve of Grant & Grigorieff (2015).

Radiation damage fades high-resolution signal first: at spatial frequency ``k`` (1/Å) the
signal of a frame that has seen a cumulative exposure ``N`` (e⁻/Å²) is attenuated by
``exp(−N / (2 Nₑ(k)))`` with the critical exposure ``Nₑ(k) = 0.245 k^−1.665 + 2.81`` e⁻/Å²
(their eq. 3, fitted at 300 kV; at lower voltages Nₑ is multiplied by 0.8, as Unblur does
for 200 kV). Weighting each frame's Fourier components by that attenuation and
normalising per frequency is the optimal (matched-filter) sum.

Normalisation (a choice, kept from Unblur): per frequency the weights are scaled so that
``Σᵢ wᵢ(k)² = n`` (``n`` frames summed). White noise then has the same power in the
dose-weighted sum as in the plain sum at every frequency, and at ``k = 0`` (``Nₑ = ∞``)
every weight is 1, so the mean and low frequencies keep the scale of the plain sum.

Exposure of frame ``i`` (0-based index in the *movie*): ``pre_exposure + (i + 1) · dose``,
the exposure at the end of the frame (as RELION's own motion correction does). Frames
left out of the sum still count towards the exposure of later frames.

Weights are tabulated on a fine grid of ``|k|`` (a quarter of the finest Fourier step)
and looked up by a per-pixel bin index (:func:`frequency_bins`): the numpy reference and
the compiled kernel share the same table and index, so they give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem.errors import ValidationError

#: Grant & Grigorieff (2015), eq. 3: Nₑ(k) = A k^B + C (k in 1/Å, Nₑ in e⁻/Å²).
CRITICAL_A = 0.245
CRITICAL_B = -1.665
CRITICAL_C = 2.81
#: Bins per finest Fourier step in the weight table.
BINS_PER_STEP = 4


def critical_exposure(k_per_A: np.ndarray, voltage_kV: float = 300.0) -> np.ndarray:
    """Critical exposure Nₑ(k) in e⁻/Å² (infinite at k = 0)."""
    k = np.asarray(k_per_A, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ne = CRITICAL_A * np.power(k, CRITICAL_B, where=k > 0, out=np.full(k.shape, np.inf))
    ne = ne + CRITICAL_C
    return ne * (0.8 if voltage_kV < 250.0 else 1.0)


def frame_exposures(
    frames: np.ndarray | list[int], dose_per_frame_e_A2: float, pre_exposure_e_A2: float = 0.0
) -> np.ndarray:
    """Cumulative exposure (e⁻/Å²) at the end of each given movie frame (0-based)."""
    if not (math.isfinite(dose_per_frame_e_A2) and dose_per_frame_e_A2 > 0):
        raise ValidationError(f"dose per frame must be > 0 e/Å², got {dose_per_frame_e_A2}")
    if not (math.isfinite(pre_exposure_e_A2) and pre_exposure_e_A2 >= 0):
        raise ValidationError(f"pre-exposure must be >= 0 e/Å², got {pre_exposure_e_A2}")
    idx = np.asarray(frames, dtype=np.float64)
    return pre_exposure_e_A2 + (idx + 1.0) * dose_per_frame_e_A2


def frequency_bins(shape: tuple[int, int], pixel_size_A: float) -> tuple[np.ndarray, float]:
    """Bin index (int32, rfft half plane ``(ny, nx//2+1)``) of ``|k|`` and the bin width.

    The bin width is ``1 / (BINS_PER_STEP · max(ny, nx) · pixel_size_A)`` in 1/Å; the
    index is the nearest bin.
    """
    ny, nx = shape
    step = 1.0 / (BINS_PER_STEP * max(ny, nx) * pixel_size_A)
    ky = np.fft.fftfreq(ny, d=pixel_size_A)
    kx = np.fft.rfftfreq(nx, d=pixel_size_A)
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return np.rint(k / step).astype(np.int32), step


def dose_weight_table(
    exposures_e_A2: np.ndarray,
    n_bins: int,
    bin_width_per_A: float,
    voltage_kV: float = 300.0,
) -> np.ndarray:
    """Weights (float32, ``(n_frames, n_bins)``) of each frame at each ``|k|`` bin.

    ``exp(−N/(2Nₑ(k)))`` normalised per bin so that the squares sum to ``n_frames``.
    """
    exposures = np.asarray(exposures_e_A2, dtype=np.float64)
    k = np.arange(n_bins, dtype=np.float64) * bin_width_per_A
    ne = critical_exposure(k, voltage_kV)
    raw = np.exp(-exposures[:, None] / (2.0 * ne[None, :]))
    norm = np.sqrt(len(exposures) / np.sum(raw * raw, axis=0))
    return (raw * norm[None, :]).astype(np.float32)


def dose_weights(
    shape: tuple[int, int],
    pixel_size_A: float,
    exposures_e_A2: np.ndarray,
    voltage_kV: float = 300.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The weight table and the per-pixel bin index of an image of ``shape``.

    Returns ``(table, bins)``; the weight of frame ``i`` at half-plane pixel ``(y, x)``
    is ``table[i, bins[y, x]]``.
    """
    bins, width = frequency_bins(shape, pixel_size_A)
    table = dose_weight_table(exposures_e_A2, int(bins.max()) + 1, width, voltage_kV)
    return table, bins
