"""The compiled rotational / elliptical average agrees with its numpy reference."""

import numpy as np
import pytest

from hpcem.ctf.radial_numpy import radial_average_numpy

radial = pytest.importorskip(
    "hpcem.kernels.radial", reason="Cython kernel not built (pip install -e .)"
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("scale_u", "scale_v", "angle_rad"), [(1.0, 1.0, 0.0), (1.1, 0.9, 0.6), (1.3, 0.7, 2.9)]
)
def test_cython_matches_numpy(dtype, scale_u, scale_v, angle_rad):
    rng = np.random.default_rng(0)
    spectrum = rng.random((300, 151)).astype(dtype)
    args = (150, 150.0, 0.0, scale_u, scale_v, angle_rad)
    avg_c, w_c = radial.radial_average(spectrum, *args)
    avg_n, w_n = radial_average_numpy(spectrum, *args)
    np.testing.assert_allclose(avg_c, avg_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_c, w_n, rtol=1e-5, atol=1e-5)


def test_average_of_radial_function_recovers_it():
    """A linear function of radius is reproduced exactly by linear interpolation."""
    n = 257
    yy, xx = np.mgrid[:n, :n] - n // 2
    spectrum = np.ascontiguousarray(3.0 + 0.5 * np.hypot(yy, xx))
    average, weight = radial.radial_average(spectrum, 100, n // 2, n // 2)
    r = np.arange(100)
    assert np.all(weight[1:] > 0)
    # Pixel area grows with r, so each bin is biased outwards by ~0.02 px at r=10.
    np.testing.assert_allclose(average[10:], 3.0 + 0.5 * r[10:], atol=0.01)


def test_elliptical_average_follows_ellipse():
    """Values constant on ellipses of the given axes average to a sharp profile."""
    n = 301
    yy, xx = (np.mgrid[:n, :n] - n // 2).astype(float)
    su, sv, angle = 1.15, 0.85, 0.4
    u = su * (xx * np.cos(angle) + yy * np.sin(angle))
    v = sv * (-xx * np.sin(angle) + yy * np.cos(angle))
    spectrum = np.ascontiguousarray(np.cos(np.hypot(u, v) / 3.0))
    matched, _ = radial.radial_average(spectrum, 120, n // 2, n // 2, su, sv, angle)
    round_avg, _ = radial.radial_average(spectrum, 120, n // 2, n // 2)
    expected = np.cos(np.arange(120) / 3.0)
    err_matched = np.abs(matched[10:120] - expected[10:120]).max()
    err_round = np.abs(round_avg[10:120] - expected[10:120]).max()
    assert err_matched < 0.05 < err_round


def test_bad_bin_count_raises():
    with pytest.raises(ValueError):
        radial.radial_average(np.zeros((4, 4)), 0, 2.0, 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sector_average_matches_numpy(dtype):
    from hpcem.ctf.radial_numpy import sector_average_numpy

    spectrum = np.random.default_rng(1).random((301, 151)).astype(dtype)
    avg_c, w_c = radial.sector_average(spectrum, 150, 18, 150.0, 0.0)
    avg_n, w_n = sector_average_numpy(spectrum, 150, 18, 150.0, 0.0)
    np.testing.assert_allclose(avg_c, avg_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_c, w_n, rtol=1e-5, atol=1e-5)
    # Every pixel inside the radius lands in exactly one sector: the sectors' weights
    # add up to the rotational average's.
    _, w_all = radial.radial_average(spectrum, 150, 150.0, 0.0)
    np.testing.assert_allclose(w_c.sum(axis=0), w_all, rtol=1e-9)


def test_sector_average_sees_the_azimuth():
    """A half-plane spectrum that is 1 at azimuths in [30°, 40°) and 0 elsewhere: only
    sector 3 of 18 (centred on 35°) averages to 1 away from the centre."""
    n = 201
    yy, xx = np.mgrid[:n, : n // 2 + 1]
    az = np.degrees(np.arctan2(yy - n // 2, xx)) % 180.0
    spectrum = ((az >= 30.0) & (az < 40.0)).astype(np.float64)
    avg, _ = radial.sector_average(np.ascontiguousarray(spectrum), 100, 18, n // 2, 0.0)
    np.testing.assert_allclose(avg[3, 20:], 1.0)
    assert np.all(np.delete(avg, 3, axis=0)[:, 20:] == 0.0)
