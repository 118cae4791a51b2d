"""``find_peaks``: local maxima with a minimum distance, numpy reference and Cython kernel.

The definition (hpcem/picking/peaks.py) is written once more here as a brute-force
double loop over pixels (the outside reference); the numpy reference and the compiled
kernel must agree with it exactly, on random maps with ties, NaNs, masks and borders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcem import kernels
from hpcem.errors import ValidationError
from hpcem.picking.peaks import find_peaks

BACKENDS = ["numpy", "cython"]


def _backend(name):
    if name == "cython" and kernels.load("peaks") is None:
        pytest.skip("compiled kernel hpcem.kernels.peaks not built (numpy reference only)")
    return name


def brute_force(score, d, threshold=-math.inf, border=0, mask=None):
    """Integer (x, y) and values of the peaks, strongest first, by the definition: a
    candidate is >= every pixel of its 3x3 neighbourhood and every pixel closer than d;
    candidates closer than d to a stronger kept one (ties: row-major order) are dropped."""
    ny, nx = score.shape
    work = np.where(np.isfinite(score), score, -np.inf)
    cands = []
    for y in range(border, ny - border):
        for x in range(border, nx - border):
            v = work[y, x]
            if not np.isfinite(v) or not v > threshold or (mask is not None and not mask[y, x]):
                continue
            ok = True
            r = math.ceil(max(d, 1.5))
            for yy in range(max(0, y - r), min(ny, y + r + 1)):
                for xx in range(max(0, x - r), min(nx, x + r + 1)):
                    near = (yy - y) ** 2 + (xx - x) ** 2 < d * d
                    adjacent = abs(yy - y) <= 1 and abs(xx - x) <= 1
                    if (near or adjacent) and work[yy, xx] > v:
                        ok = False
            if ok:
                cands.append((-v, y * nx + x, x, y))
    cands.sort()
    kept = []
    for neg_v, _, x, y in cands:
        if all((x - kx) ** 2 + (y - ky) ** 2 >= d * d for _, kx, ky in kept):
            kept.append((-neg_v, x, y))
    return (
        np.array([(x, y) for _, x, y in kept], dtype=float).reshape(-1, 2),
        np.array([v for v, _, _ in kept], dtype=float),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_brute_force_definition_on_random_maps(backend):
    backend = _backend(backend)
    rng = np.random.default_rng(7)
    for trial in range(120):
        ny, nx = (int(v) for v in rng.integers(4, 40, 2))
        score = rng.standard_normal((ny, nx))
        if trial % 3 == 0:
            score = np.round(score)  # plateaus and ties
        if trial % 4 == 0:
            score[rng.random(score.shape) < 0.05] = np.nan
        d = float(rng.choice([0.0, 0.7, 1.0, 1.5, 2.0, 3.3, 5.0, 7.5]))
        threshold = float(rng.choice([-math.inf, 0.0, 0.8]))
        border = int(rng.integers(0, 3))
        mask = rng.random(score.shape) < 0.8 if trial % 2 else None
        xy, values = find_peaks(score, d, threshold, border_px=border, mask=mask, backend=backend)
        ref_xy, ref_values = brute_force(score, d, threshold, border, mask)
        assert np.array_equal(values, ref_values), trial
        # the same integer peaks; sub-pixel refinement moves them by at most half a pixel
        assert xy.shape == ref_xy.shape and np.all(np.abs(xy - ref_xy) <= 0.5), trial


def test_kernel_equals_numpy_reference_on_large_smooth_maps():
    _backend("cython")
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for d, threshold in ((19.0, -math.inf), (8.4, 1.0), (2.0, 0.0), (33.3, 2.5)):
        score = ndimage.gaussian_filter(rng.standard_normal((300, 420)), 3.0)
        score /= score.std()
        mask = ndimage.gaussian_filter(rng.standard_normal(score.shape), 20) > -0.02
        args = (score, d, threshold, 50, 5, mask)
        a = find_peaks(*args, backend="numpy")
        b = find_peaks(*args, backend="cython")
        assert len(a[1]) > 3
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_minimum_distance_is_euclidean_not_a_square(backend):
    """Two particles touching diagonally (10 px apart along x and y, 14.14 px apart) are
    both peaks at a minimum distance of 14 px: a square window of half-width 14 would
    drop the weaker one."""
    backend = _backend(backend)
    score = np.zeros((60, 60))
    score[20, 20] = 2.0
    score[30, 30] = 1.0
    score[7, 20] = 0.5  # 13 px from the strongest: dropped
    xy, values = find_peaks(score, 14.0, threshold=0.1, backend=backend)
    assert values.tolist() == [2.0, 1.0]
    assert xy.tolist() == [[20.0, 20.0], [30.0, 30.0]]
    # exactly at the distance: kept
    xy, values = find_peaks(score, 13.0, threshold=0.1, backend=backend)
    assert values.tolist() == [2.0, 1.0, 0.5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_subpixel_position_of_a_sampled_gaussian(backend):
    """Positions are in pixels of the map, x along columns, origin at the first pixel's
    centre: a gaussian centred at (x, y) = (23.3, 11.8) on a 30x40 map peaks there."""
    backend = _backend(backend)
    y, x = np.mgrid[0:30, 0:40]
    score = np.exp(-((x - 23.3) ** 2 + (y - 11.8) ** 2) / (2 * 2.0**2))
    xy, values = find_peaks(score, 5.0, backend=backend)
    assert len(values) == 1
    assert xy[0] == pytest.approx([23.3, 11.8], abs=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_border_mask_threshold_nan_and_max_peaks(backend):
    backend = _backend(backend)
    score = np.zeros((20, 20))
    score[1, 10] = 5.0  # inside a 2-px border
    score[10, 10] = 4.0
    score[10, 16] = 3.0  # masked out
    score[16, 4] = 2.0
    score[5, 5] = np.nan
    mask = np.ones(score.shape, dtype=bool)
    mask[10, 16] = False
    xy, values = find_peaks(score, 3.0, threshold=1.0, border_px=2, mask=mask, backend=backend)
    assert values.tolist() == [4.0, 2.0]
    xy, values = find_peaks(score, 3.0, threshold=1.0, max_peaks=1, backend=backend)
    assert values.tolist() == [5.0]
    xy, values = find_peaks(np.full((8, 8), np.nan), 2.0, backend=backend)
    assert xy.shape == (0, 2) and values.shape == (0,)


def test_bad_arguments_are_validation_errors():
    with pytest.raises(ValidationError, match="2D"):
        find_peaks(np.zeros(5), 1.0)
    with pytest.raises(ValidationError, match="min_distance_px"):
        find_peaks(np.zeros((5, 5)), -1.0)
    with pytest.raises(ValidationError, match="mask shape"):
        find_peaks(np.zeros((5, 5)), 1.0, mask=np.ones((4, 5), bool))
