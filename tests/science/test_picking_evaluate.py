"""Picking accuracy (hpcem.picking.evaluate) against references written here: a plain
O(N²) closest-first matching, and scipy's optimal assignment where the two must agree."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from hpcem.picking.evaluate import match_pairs, match_picks, pooled, truth_xy


def brute_force_pairs(picked, truth, radius):
    """Closest pairs first over all pairs (ties: pick index, then truth index)."""
    edges = []
    for i, p in enumerate(picked):
        for j, t in enumerate(truth):
            d = float(np.hypot(p[0] - t[0], p[1] - t[1]))
            if d <= radius:
                edges.append((d, i, j))
    used_i, used_j, pairs = set(), set(), []
    for _, i, j in sorted(edges):
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((i, j))
    return pairs


@pytest.mark.parametrize("seed", range(8))
def test_matching_equals_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 300, (rng.integers(0, 60), 2))
    picked = np.vstack(
        [
            truth[: len(truth) // 2] + rng.normal(0, 6, (len(truth) // 2, 2)),
            rng.uniform(0, 300, (rng.integers(0, 30), 2)),
        ]
    )
    pairs = match_pairs(picked, truth, 12.0)
    assert sorted(pairs) == sorted(brute_force_pairs(picked, truth, 12.0))
    s = match_picks(picked, truth, 12.0)
    tp = len(pairs)
    assert (s["tp"], s["fp"], s["fn"]) == (tp, len(picked) - tp, len(truth) - tp)
    if tp:
        p, r = tp / len(picked), tp / len(truth)
        assert s["f1"] == pytest.approx(2 * p * r / (p + r))


def test_well_separated_particles_match_the_optimal_assignment():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(10) * 100.0, np.arange(10) * 100.0), -1).reshape(-1, 2)
    picked = grid[rng.permutation(100)[:70]] + rng.normal(0, 8, (70, 2))
    picked = np.vstack([picked, rng.uniform(0, 1000, (20, 2))])
    d = np.hypot(*(picked[:, None, :] - grid[None, :, :]).transpose(2, 0, 1))
    cost = np.where(d <= 40.0, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    optimal = int(np.sum(cost[rows, cols] < 1e6))
    assert match_picks(picked, grid, 40.0)["tp"] == optimal


def test_edges_radius_inclusive_empty_sets_and_doubles():
    assert match_picks([[3.0, 4.0]], [[0.0, 0.0]], 5.0)["tp"] == 1
    assert match_picks([[3.0, 4.0]], [[0.0, 0.0]], 4.999)["tp"] == 0
    assert match_picks(np.zeros((0, 2)), [[1, 1]], 5)["recall"] == 0.0
    assert match_picks(np.zeros((0, 2)), np.zeros((0, 2)), 5)["f1"] == 1.0
    two_on_one = match_picks([[0, 0], [1, 0]], [[0, 0]], 5)
    assert (two_on_one["tp"], two_on_one["fp"]) == (1, 1)
    pooled_scores = pooled([two_on_one, match_picks([[9, 9]], [[50, 50]], 5)])
    assert (pooled_scores["tp"], pooled_scores["fp"], pooled_scores["fn"]) == (1, 2, 1)


def test_truth_of_an_item_by_file_name():
    truth = {"items": [{"name": "mic_000.mrc", "particles": {"x": [1.5, 2], "y": [3, 4.5]}}]}
    assert truth_xy(truth, "mic_000.mrc").tolist() == [[1.5, 3.0], [2.0, 4.5]]
    with pytest.raises(Exception, match="no item 'mic_001.mrc'"):
        truth_xy(truth, "mic_001.mrc")
