"""The CTF formula against closed forms and textbook values."""

import math

import numpy as np
import pytest

from hpcem.ctf.model import (
    ctf_1d,
    ctf_2d,
    ctf_zeros_1d,
    electron_wavelength_A,
    frequency_grid,
)
from hpcem.errors import ValidationError


@pytest.mark.parametrize(
    ("voltage_kV", "expected_A"), [(300, 0.01969), (200, 0.02508), (100, 0.03701)]
)
def test_wavelength_matches_textbook(voltage_kV, expected_A):
    assert electron_wavelength_A(voltage_kV) == pytest.approx(expected_A, abs=1e-5)


@pytest.mark.parametrize("defocus_A", [8000.0, 15000.0, 25000.0])
@pytest.mark.parametrize("amplitude_contrast", [0.0, 0.07, 0.1])
def test_zeros_of_ctf_1d_match_closed_form(defocus_A, amplitude_contrast):
    k = np.linspace(1e-4, 0.3, 600001)
    values = ctf_1d(k, defocus_A, 300.0, 2.7, amplitude_contrast)
    crossings = k[np.flatnonzero(np.diff(np.sign(values)) != 0)][:10]
    analytic = ctf_zeros_1d(10, defocus_A, 300.0, 2.7, amplitude_contrast)
    np.testing.assert_allclose(crossings, analytic, atol=1e-6)
    assert np.allclose(ctf_1d(analytic, defocus_A, 300.0, 2.7, amplitude_contrast), 0, atol=1e-9)


def test_first_zero_without_cs_or_amplitude_contrast():
    # χ = π λ Δf k² = π  →  k = 1 / sqrt(λ Δf)
    lam = electron_wavelength_A(300.0)
    k0 = ctf_zeros_1d(1, 20000.0, 300.0, 0.0, 0.0)[0]
    assert k0 == pytest.approx(1.0 / math.sqrt(lam * 20000.0), rel=1e-12)


def test_underfocus_sign_convention():
    # Positive (under)focus with amplitude contrast: CTF is negative just above k = 0.
    assert ctf_1d(np.array([0.0, 0.005]), 15000.0)[1] < 0
    assert ctf_1d(np.array([0.0]), 15000.0, amplitude_contrast=0.1)[0] == pytest.approx(-0.1)


def test_ctf_2d_isotropic_equals_1d():
    shape, px = (96, 128), 1.3
    ky, kx = frequency_grid(shape, px)
    expected = ctf_1d(np.sqrt(ky**2 + kx**2), 12000.0, 300.0, 2.7, 0.07)
    np.testing.assert_allclose(
        ctf_2d(shape, px, 12000.0, 12000.0, 33.0, 300.0, 2.7, 0.07), expected
    )


def test_ctf_2d_astigmatism_axes():
    """Along the U axis the CTF is the 1D CTF at defocus U; at 90° from it, at V."""
    shape, px, u, v, angle = (256, 256), 1.0, 16000.0, 12000.0, 30.0
    full = ctf_2d(shape, px, u, v, angle, centered=True)
    ky, kx = frequency_grid(shape, px, centered=True)
    azimuth = np.arctan2(ky, kx) * np.ones(shape)
    k = np.sqrt(ky**2 + kx**2) * np.ones(shape)
    for axis_deg, defocus in ((angle, u), (angle + 90.0, v)):
        # Pixels within ~0.3° of the axis (either direction): defocus off by < 0.2 Å.
        mask = np.abs(np.sin(azimuth - math.radians(axis_deg))) < 0.005
        assert mask.sum() > 10
        np.testing.assert_allclose(full[mask], ctf_1d(k[mask], defocus), atol=2e-3)


def test_half_grid_matches_full_grid():
    full = ctf_2d((64, 64), 1.0, 9000.0, 8000.0, 45.0)
    half = ctf_2d((64, 64), 1.0, 9000.0, 8000.0, 45.0, half=True)
    # Column 32 is +Nyquist in rfft layout but −Nyquist in fft layout; compare the rest.
    np.testing.assert_allclose(half[:, :32], full[:, :32])


@pytest.mark.parametrize(
    "kwargs",
    [{"voltage_kV": 0}, {"cs_mm": -1}, {"amplitude_contrast": 1.0}],
)
def test_invalid_optics_raise_validation_error(kwargs):
    with pytest.raises(ValidationError):
        ctf_1d(np.array([0.1]), 10000.0, **kwargs)
