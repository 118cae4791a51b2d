"""Simulated micrographs and movies: deterministic and what they claim (speed:
scripts/bench_sim.py)."""

import numpy as np
import pytest

from hpcem.ctf.estimate import radial_profile, tiled_power_spectrum
from hpcem.ctf.model import ctf_zeros_1d
from hpcem.errors import ValidationError
from hpcem.sim import simulate_micrograph, simulate_movie


def test_micrograph_is_deterministic_and_has_truth():
    a, truth = simulate_micrograph(
        (256, 256), 1.2, 12000.0, 11000.0, 40.0, n_particles=5, particle_diameter_A=40.0, seed=7
    )
    b, _ = simulate_micrograph(
        (256, 256), 1.2, 12000.0, 11000.0, 40.0, n_particles=5, particle_diameter_A=40.0, seed=7
    )
    c, _ = simulate_micrograph(
        (256, 256), 1.2, 12000.0, 11000.0, 40.0, n_particles=5, particle_diameter_A=40.0, seed=8
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (256, 256)
    assert truth["defocus_u"] == 12000.0 and truth["defocus_v"] == 11000.0
    assert truth["defocus_angle"] == 40.0 and truth["pixel_size_A"] == 1.2
    coords = truth["coordinates_px"]
    assert coords.shape == (5, 2)
    assert np.all((coords >= 0) & (coords < 256))


def test_1024_micrograph_is_finite_float32():
    """Its speed (target: under 0.5 s) is measured by scripts/bench_sim.py, not here."""
    image, truth = simulate_micrograph((1024, 1024), seed=1)
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.std() > 0
    assert truth["coordinates_px"].shape[1] == 2


def test_thon_ring_minima_at_analytic_zeros():
    """The simulated power spectrum has its first minima where the CTF formula says."""
    px, defocus = 1.0, 20000.0
    image, _ = simulate_micrograph((1024, 1024), px, defocus, snr=1.0, n_particles=0, seed=3)
    profile = radial_profile(tiled_power_spectrum(image, 512))
    k = np.arange(len(profile)) / (512 * px)
    for zero in ctf_zeros_1d(4, defocus)[1:]:
        near = np.abs(k - zero) < 0.25 / np.sqrt(0.0197 * defocus)
        assert abs(k[near][np.argmin(profile[near])] - zero) <= 1.5 / 512


def test_dose_mode_gives_counts():
    image, truth = simulate_micrograph(
        (128, 128), 1.0, dose_e_per_A2=40.0, n_particles=2, particle_diameter_A=40.0, seed=2
    )
    assert np.all(image == np.round(image)) and image.min() >= 0
    assert image.mean() == pytest.approx(40.0, rel=0.05)
    assert truth["dose_e_per_A2"] == 40.0


def test_movie_shifts_are_recoverable():
    frames, truth = simulate_movie(
        (256, 256),
        n_frames=6,
        dose_per_frame_e_per_A2=50.0,
        drift_px_per_frame=(2.0, -1.0),
        jitter_px=0.0,
        n_particles=10,
        seed=5,
    )
    assert frames.shape == (6, 256, 256) and frames.dtype == np.float32
    shifts = truth["shifts_px"]
    np.testing.assert_allclose(shifts[0], [0.0, 0.0])
    np.testing.assert_allclose(shifts[-1], [10.0, -5.0])
    # Phase correlation of the last frame against the first finds the known (dx, dy).
    f0, f1 = (np.fft.fft2(f - f.mean()) for f in (frames[0], frames[-1]))
    cc = np.fft.ifft2(f1 * np.conj(f0) / (np.abs(f1 * np.conj(f0)) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(cc), cc.shape)
    dy, dx = (dy + 128) % 256 - 128, (dx + 128) % 256 - 128
    assert (dx, dy) == (10, -5)


@pytest.mark.parametrize("kwargs", [{"shape": (8, 8)}, {"pixel_size_A": 0}, {"snr": 0}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValidationError):
        simulate_micrograph(**{"shape": (64, 64), "n_particles": 0, **kwargs})
