"""The contrast transfer function, in EMX / RELION / CTFFIND conventions.

Conventions
-----------
* Spatial frequency ``k`` in 1/Å. Arrays are indexed ``[y, x]`` (row, column); the
  azimuth of a frequency is ``atan2(k_y, k_x)`` with k_y along the row index.
* Defocus in Å, **positive = underfocus**. ``defocus_u_A`` is the defocus along the
  direction at ``angle_deg`` from the x axis (towards +y), ``defocus_v_A`` the one
  perpendicular to it; ``Δf(α) = ½[(U+V) + (U−V)·cos 2(α − angle)]``.
* Voltage in kV (relativistic electron wavelength), Cs in mm, amplitude contrast as a
  fraction (0.07–0.1 for ice), additional phase shift in degrees (phase plates).
* ``χ(k) = π λ Δf k² − ½ π Cs λ³ k⁴ + φ``, and
  ``CTF = −[√(1−A²) sin χ + A cos χ] = −sin(χ + arcsin A)`` (negative at low frequency
  for underfocus, as in CTFFIND). RELION 3.1's CTF has the opposite overall sign:
  ``relion_ctf_toolbox --simulate`` gives exactly ``−ctf_2d(..., centered=True)`` (+A at
  zero frequency; same U, V and angle geometry), measured in
  ``tests/science/test_ctf_relion.py``. Fits of CTF² do not see the sign; images made
  with this model have the contrast of CTFFIND's convention.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem.errors import ValidationError

# h / sqrt(2 m0 e) in Å·V^0.5 and e / (2 m0 c²) in 1/V.
_WAVELENGTH_CONST_A = 12.2643247
_RELATIVISTIC_PER_V = 0.978466e-6


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å (0.01969 Å at 300 kV)."""
    if not voltage_kV > 0:
        raise ValidationError(f"voltage must be > 0 kV, got {voltage_kV}")
    volts = voltage_kV * 1e3
    return _WAVELENGTH_CONST_A / math.sqrt(volts * (1.0 + _RELATIVISTIC_PER_V * volts))


def _check_optics(voltage_kV: float, cs_mm: float, amplitude_contrast: float) -> None:
    if not voltage_kV > 0:
        raise ValidationError(f"voltage must be > 0 kV, got {voltage_kV}")
    if not cs_mm >= 0:
        raise ValidationError(f"spherical aberration must be >= 0 mm, got {cs_mm}")
    if not 0 <= amplitude_contrast < 1:
        raise ValidationError(f"amplitude contrast must be in [0, 1), got {amplitude_contrast}")


def _chi(
    k2: np.ndarray,
    defocus_A: np.ndarray | float,
    wavelength_A: float,
    cs_mm: float,
    phase_shift_deg: float,
) -> np.ndarray:
    cs_A = cs_mm * 1e7
    return (
        math.pi * wavelength_A * defocus_A * k2
        - 0.5 * math.pi * cs_A * wavelength_A**3 * k2 * k2
        + math.radians(phase_shift_deg)
    )


def ctf_1d(
    freq_1_per_A: np.ndarray,
    defocus_A: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
    b_factor_A2: float = 0.0,
) -> np.ndarray:
    """CTF along a radial line (no astigmatism) at frequencies ``freq_1_per_A`` (1/Å).

    ``b_factor_A2`` > 0 multiplies by the envelope ``exp(−B k² / 4)``.
    """
    _check_optics(voltage_kV, cs_mm, amplitude_contrast)
    k = np.asarray(freq_1_per_A, dtype=np.float64)
    k2 = k * k
    chi = _chi(k2, defocus_A, electron_wavelength_A(voltage_kV), cs_mm, phase_shift_deg)
    ctf = -np.sin(chi + math.asin(amplitude_contrast))
    if b_factor_A2:
        ctf *= np.exp(-0.25 * b_factor_A2 * k2)
    return ctf


def frequency_grid(
    shape: tuple[int, int], pixel_size_A: float, centered: bool = False, half: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return (k_y, k_x) in 1/Å, broadcastable to the Fourier grid of an image.

    ``half`` gives the ``numpy.fft.rfft2`` layout, ``centered`` the ``fftshift`` layout
    (zero frequency at ``(ny // 2, nx // 2)``); the default is the ``fft2`` layout.
    """
    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    if half and centered:
        raise ValidationError("a half (rfft) grid cannot be centred")
    ny, nx = (int(n) for n in shape)
    ky = np.fft.fftfreq(ny, d=pixel_size_A)
    kx = np.fft.rfftfreq(nx, d=pixel_size_A) if half else np.fft.fftfreq(nx, d=pixel_size_A)
    if centered:
        ky, kx = np.fft.fftshift(ky), np.fft.fftshift(kx)
    return ky[:, None], kx[None, :]


def defocus_at_azimuth(
    azimuth_rad: np.ndarray, defocus_u_A: float, defocus_v_A: float, angle_deg: float
) -> np.ndarray:
    """Defocus (Å) seen along frequency direction ``azimuth_rad`` for an astigmatic CTF."""
    mean = 0.5 * (defocus_u_A + defocus_v_A)
    half_diff = 0.5 * (defocus_u_A - defocus_v_A)
    return mean + half_diff * np.cos(2.0 * (azimuth_rad - math.radians(angle_deg)))


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    angle_deg: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
    b_factor_A2: float = 0.0,
    centered: bool = False,
    half: bool = False,
) -> np.ndarray:
    """CTF on the Fourier grid of an image of ``shape`` (ny, nx), float64.

    Layout as in :func:`frequency_grid` (default ``fft2``; ``half=True`` for ``rfft2``,
    ``centered=True`` for an ``fftshift``-ed power spectrum).
    """
    _check_optics(voltage_kV, cs_mm, amplitude_contrast)
    ky, kx = frequency_grid(shape, pixel_size_A, centered=centered, half=half)
    k2 = ky * ky + kx * kx
    defocus = defocus_at_azimuth(np.arctan2(ky, kx), defocus_u_A, defocus_v_A, angle_deg)
    chi = _chi(k2, defocus, electron_wavelength_A(voltage_kV), cs_mm, phase_shift_deg)
    ctf = -np.sin(chi + math.asin(amplitude_contrast))
    if b_factor_A2:
        ctf *= np.exp(-0.25 * b_factor_A2 * k2)
    return ctf


def ctf_zeros_1d(
    n_zeros: int,
    defocus_A: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
) -> np.ndarray:
    """Frequencies (1/Å) of the first ``n_zeros`` CTF zeros, from the closed form.

    Zero n solves ``χ(k) + arcsin A = nπ``, a quadratic in ``k²``; the smaller root is
    the one on the rising branch of χ (below the Scherzer turnaround).
    """
    _check_optics(voltage_kV, cs_mm, amplitude_contrast)
    if not defocus_A > 0:
        raise ValidationError(f"zeros are computed for underfocus (> 0 Å), got {defocus_A}")
    lam = electron_wavelength_A(voltage_kV)
    cs_A = cs_mm * 1e7
    offset = math.asin(amplitude_contrast) + math.radians(phase_shift_deg)
    n = np.arange(1, n_zeros + 1, dtype=np.float64) - offset / math.pi
    # ½ Cs λ³ s² − λ Δf s + n' = 0 with s = k².
    if cs_A == 0:
        s = n / (lam * defocus_A)
    else:
        disc = (lam * defocus_A) ** 2 - 2.0 * cs_A * lam**3 * n
        if np.any(disc < 0):
            raise ValidationError(
                f"only {int(np.sum(disc >= 0))} zeros exist before the Cs turnaround"
            )
        s = (lam * defocus_A - np.sqrt(disc)) / (cs_A * lam**3)
    return np.sqrt(s)
