"""Defocus estimation on simulated micrographs with known ground truth (and one real one)."""

import numpy as np
import pytest
from hpcem.protocols.ctf_estimate import MIN_FIT_SCORE

from hpcem.ctf import estimate_ctf, estimate_ctf_from_file
from hpcem.ctf.estimate import micrograph_defect
from hpcem.ctf.model import electron_wavelength_A
from hpcem.errors import ValidationError
from hpcem.io import write_mrc
from hpcem.sim import simulate_micrograph

SHAPE = (2048, 2048)


@pytest.mark.parametrize(
    ("defocus_A", "pixel_size_A", "snr", "seed"),
    [
        (8000.0, 1.0, 0.05, 11),
        (15000.0, 1.25, 0.05, 12),
        (25000.0, 1.5, 0.05, 13),
        (25000.0, 1.0, 0.05, 14),
        (15000.0, 1.0, 0.01, 15),
    ],
)
def test_defocus_within_1_percent(defocus_A, pixel_size_A, snr, seed):
    image, truth = simulate_micrograph(SHAPE, pixel_size_A, defocus_A, snr=snr, seed=seed)
    result = estimate_ctf(image, pixel_size_A, astigmatism=False)
    assert result["defocus_u"] == result["defocus_v"] and result["defocus_angle"] == 0.0
    assert result["defocus_u"] == pytest.approx(truth["defocus_u"], rel=0.01)
    assert result["fit_score"] > MIN_FIT_SCORE
    assert result["fit_resolution_A"] < 8.0


@pytest.mark.parametrize("seed", [0, 1])
def test_pure_noise_scores_as_failed(seed):
    """The score must tell a failed fit from a good one (ctf.estimate's min_fit_score)."""
    noise = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
    result = estimate_ctf(noise, 1.0)
    assert result["fit_score"] < MIN_FIT_SCORE


def test_non_finite_pixels_raise_instead_of_a_nan_fit():
    image, _ = simulate_micrograph((512, 512), 1.0, 12000.0, seed=61)
    image[10, :3] = np.nan
    image[20, 5] = -np.inf
    with pytest.raises(ValidationError, match="with 3 NaN and 1 Inf pixels"):
        estimate_ctf(image, 1.0)


def test_micrograph_defect_names_what_is_wrong():
    image = np.full((8, 8), 2.5, dtype=np.float32)
    assert micrograph_defect(image) == "constant image (all pixels 2.5)"
    image[0, 0] = np.inf
    assert micrograph_defect(image) == "1 Inf pixels"
    assert micrograph_defect(np.arange(16.0).reshape(4, 4)) is None


def test_numpy_fallback_gives_the_same_answer(monkeypatch):
    import hpcem.ctf.estimate as estimate_module
    import hpcem.ctf.spectrum as spectrum_module
    from hpcem.ctf.radial_numpy import radial_average_numpy, sector_average_numpy

    image, _ = simulate_micrograph((1024, 1024), 1.0, 12000.0, 11000.0, 60.0, seed=51)
    compiled = estimate_ctf(image, 1.0)
    monkeypatch.setattr(estimate_module, "_radial_average", radial_average_numpy)
    monkeypatch.setattr(estimate_module, "_sector_average", sector_average_numpy)
    monkeypatch.setattr(spectrum_module, "load", lambda name: None)
    reference = estimate_ctf(image, 1.0)
    for key in ("defocus_u", "defocus_v", "defocus_angle", "fit_score", "fit_resolution_A"):
        assert reference[key] == pytest.approx(compiled[key], rel=1e-5, abs=1e-4)
    assert compiled["backends"] == {"radial": "cython", "ctf_periodogram": "cython"}


def angle_error_deg(estimated: float, true: float) -> float:
    """|estimated − true| for axes (modulo 180°)."""
    return abs((estimated - true + 90.0) % 180.0 - 90.0)


@pytest.mark.parametrize(
    ("u", "v", "angle"),
    [(16000.0, 14000.0, 30.0), (25000.0, 23500.0, 120.0), (9000.0, 8400.0, 75.0)],
)
def test_astigmatism_recovered(u, v, angle):
    """Amplitude U − V within ±50 Å and angle within ±5° (issue 9), U and V within 1 %."""
    image, _ = simulate_micrograph(SHAPE, 1.2, u, v, angle, snr=0.05, seed=21)
    result = estimate_ctf(image, 1.2)
    assert result["defocus_u"] == pytest.approx(u, rel=0.01)
    assert result["defocus_v"] == pytest.approx(v, rel=0.01)
    assert result["defocus_u"] - result["defocus_v"] == pytest.approx(u - v, abs=50.0)
    assert angle_error_deg(result["defocus_angle"], angle) < 5.0
    assert result["refinement"].startswith("astigmatic")


def test_no_astigmatism_stays_small():
    image, _ = simulate_micrograph(SHAPE, 1.0, 12000.0, snr=0.05, seed=31)
    result = estimate_ctf(image, 1.0)
    for key in ("defocus_u", "defocus_v"):
        assert result[key] == pytest.approx(12000.0, rel=0.01)
    assert result["defocus_u"] - result["defocus_v"] < 50.0


def test_estimate_from_file_checks_pixel_size(tmp_path):
    image, _ = simulate_micrograph((1024, 1024), 1.1, 18000.0, snr=0.1, seed=41)
    path = write_mrc(tmp_path / "sim.mrc", image, pixel_size_A=1.1)
    result = estimate_ctf_from_file(path, astigmatism=False)
    assert result["pixel_size_A"] == pytest.approx(1.1, rel=1e-6)
    assert result["defocus_u"] == pytest.approx(18000.0, rel=0.02)
    with pytest.raises(ValidationError, match="sim.mrc: header pixel size 1.1000"):
        estimate_ctf_from_file(path, pixel_size_A=1.3)


def test_invalid_band_raises():
    image = np.zeros((512, 512), dtype=np.float32)
    with pytest.raises(ValidationError, match="Nyquist"):
        estimate_ctf(image, 2.0, res_high_A=3.0)
    with pytest.raises(ValidationError, match="smaller than the tile"):
        estimate_ctf(image[:100, :100], 1.0, tile_size_px=256)


def test_real_krios_micrograph_plausible(shared_file):
    """No ground truth here: EPU's nominal defocus is ~0.9 µm, so we only check that the
    estimate is in the plausible range around it and that the rings fit well (the two
    strategies' agreement is in test_ctf_fit2d.py)."""
    result = estimate_ctf_from_file(shared_file("mrcfile-1.5.4/fei-extended.mrc"))
    assert 5000.0 < result["defocus_u"] < 16000.0
    assert result["fit_score"] > MIN_FIT_SCORE
    assert result["fit_resolution_A"] < 8.0


def test_small_pixels_large_defocus_does_not_collapse():
    """Issue 9: at 0.67 Å/px and 27,200 Å the old defaults (512-px tiles, band to 4 Å) left
    1.3 spectrum samples per ring and the astigmatism stage ran to 3,700 Å. The automatic
    tile and the ring-limited band keep >= 3 samples per ring; forcing the old tile, the
    band is cut where rings get too dense and the result stays near the 1D fit."""
    image, _ = simulate_micrograph(SHAPE, 0.67, 27400.0, 27000.0, 50.0, snr=0.1, seed=71)
    auto = estimate_ctf(image, 0.67)
    assert auto["tile_size_px"] == 2048
    forced = estimate_ctf(image, 0.67, tile_size_px=512)
    for result in (auto, forced):
        assert 0.5 * (result["defocus_u"] + result["defocus_v"]) == pytest.approx(27200.0, rel=0.01)
        assert abs(result["defocus_u"] - result["defocus_1d"]) < 0.05 * result["defocus_1d"]
    # The band of the forced 512-px tile (343 Å) ends where rings span 3 samples.
    lam = electron_wavelength_A(300.0)
    assert forced["band_high_A"] == pytest.approx(
        2 * lam * 1.1 * forced["defocus_1d"] * 3 / 343.04, rel=0.02
    )


def rings_ending_at(cutoff_A: float, pixel_size_A: float, seed: int) -> np.ndarray:
    """A micrograph whose 15,000-Å Thon rings end at ``cutoff_A``: beyond it, its Fourier
    transform is that of another micrograph at 9,000 Å. The power and noise stay
    continuous across the cut (a sharp edge in power would be a feature of its own)."""
    near, _ = simulate_micrograph(SHAPE, pixel_size_A, 15000.0, snr=0.1, seed=seed)
    far, _ = simulate_micrograph(SHAPE, pixel_size_A, 9000.0, snr=0.1, seed=seed + 1)
    ky = np.fft.fftfreq(SHAPE[0], pixel_size_A)[:, None]
    kx = np.fft.rfftfreq(SHAPE[1], pixel_size_A)[None, :]
    beyond = ky**2 + kx**2 > cutoff_A**-2
    ft = np.where(beyond, np.fft.rfft2(far), np.fft.rfft2(near))
    return np.fft.irfft2(ft, s=SHAPE).astype(np.float32)


@pytest.mark.parametrize("cutoff_A", [7.0, 12.0])
def test_fit_resolution_is_where_the_rings_end(cutoff_A):
    """Issue 9: fit_resolution was the band's low end (~30 Å) even on good fits. Here the
    rings end at a known resolution; the reported one must be within 15 % of it."""
    image = rings_ending_at(cutoff_A, 1.0, seed=81)
    # The search range excludes the other micrograph's defocus: this tests where the
    # fit of the 15,000-Å rings stops, not which rings the search prefers.
    result = estimate_ctf(
        image, 1.0, defocus_min_A=12000.0, defocus_max_A=20000.0, astigmatism=False
    )
    # The other micrograph's rings beyond the cut pull the fit a little.
    assert result["defocus_u"] == pytest.approx(15000.0, rel=0.02)
    assert result["fit_resolution_A"] == pytest.approx(cutoff_A, rel=0.15)
