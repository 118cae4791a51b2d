"""Picking consensus against a brute-force O(N^2) reference of the documented rule."""

from __future__ import annotations

import numpy as np
import pytest

from hpcem.errors import ValidationError
from hpcem.picking.consensus import consensus


def _rank01(s):
    """Rank normalisation written out: mean rank of ties, mapped to [0, 1]."""
    s = list(s)
    n = len(s)
    if n == 1:
        return np.ones(1)
    out = np.zeros(n)
    for i in range(n):
        less = sum(1 for v in s if v < s[i])
        equal = sum(1 for v in s if v == s[i])
        out[i] = (less + (equal - 1) / 2.0) / (n - 1)
    return out


def reference(sets, scores, radius_px, min_agree):
    """The module's rule, with plain loops over every pair and a sequential greedy pass."""
    r2 = float(radius_px) ** 2
    k_inputs = len(sets)
    anchors = [tuple(p) for p in sets[0]]
    members = [[i] + [-1] * (k_inputs - 1) for i in range(len(sets[0]))]
    for k in range(1, k_inputs):
        edges = []
        for c, (ax, ay) in enumerate(anchors):
            for j, (px, py) in enumerate(sets[k]):
                dx = ax - px
                dy = ay - py
                d2 = dx * dx + dy * dy
                if d2 <= r2:
                    edges.append((d2, c, j))
        edges.sort()
        used_c, used_j = set(), set()
        for _, c, j in edges:
            if c in used_c or j in used_j:
                continue
            used_c.add(c)
            used_j.add(j)
            members[c][k] = j
        for j, p in enumerate(sets[k]):
            if j not in used_j:
                anchors.append(tuple(p))
                members.append([-1] * k + [j] + [-1] * (k_inputs - 1 - k))
    norm = None if scores is None else [_rank01(s) if len(s) else np.zeros(0) for s in scores]
    pos, n_agree, score, kept = [], [], [], []
    for row in members:
        idx = [(k, j) for k, j in enumerate(row) if j >= 0]
        if len(idx) < min_agree:
            continue
        pos.append(np.mean([sets[k][j] for k, j in idx], axis=0))
        n_agree.append(len(idx))
        score.append(np.nan if norm is None else np.mean([norm[k][j] for k, j in idx]))
        kept.append(row)
    unique = [
        sorted(row[k] for row in members if row[k] >= 0 and sum(v >= 0 for v in row) == 1)
        for k in range(k_inputs)
    ]
    return {
        "positions_px": np.array(pos).reshape(-1, 2),
        "n_agree": np.array(n_agree, dtype=int),
        "score": np.array(score),
        "members": np.array(kept, dtype=int).reshape(-1, k_inputs),
        "unique": unique,
    }


def _compare(got, ref):
    np.testing.assert_array_equal(got["members"], ref["members"])
    np.testing.assert_array_equal(got["n_agree"], ref["n_agree"])
    np.testing.assert_allclose(got["positions_px"], ref["positions_px"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["score"], ref["score"], rtol=0, atol=1e-12)
    assert len(got["unique"]) == len(ref["unique"])
    for g, r in zip(got["unique"], ref["unique"]):
        np.testing.assert_array_equal(g, np.array(r, dtype=int))


def _random_sets(rng, k_inputs, sizes, box, integer):
    """Picks around shared 'particles' plus noise; integer grids make ties and d == R common."""
    n_true = max(sizes) if sizes else 0
    truth = rng.uniform(0, box, size=(n_true, 2))
    sets = []
    for n in sizes:
        take = rng.permutation(n_true)[: int(0.7 * n)]
        pts = truth[take] + rng.normal(0, 3.0, size=(take.size, 2))
        extra = rng.uniform(0, box, size=(n - take.size, 2))
        pts = np.concatenate([pts, extra])[rng.permutation(n)]
        if integer:
            pts = np.round(pts)
        sets.append(pts)
    del k_inputs
    return sets


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k_inputs", [2, 3, 4])
@pytest.mark.parametrize("integer", [False, True])
def test_matches_reference_random(seed, k_inputs, integer):
    rng = np.random.default_rng(1000 * seed + 10 * k_inputs + integer)
    # M = N for even seeds, M < N (and unequal) for odd ones
    sizes = [60] * k_inputs if seed % 2 == 0 else list(rng.integers(10, 80, size=k_inputs))
    sets = _random_sets(rng, k_inputs, sizes, box=200.0, integer=integer)
    # integer scores: many ties in the rank normalisation
    scores = [rng.integers(0, 5, size=len(s)).astype(float) for s in sets]
    radius = 5.0 if integer else 6.0
    for min_agree in range(1, k_inputs + 1):
        for sc in (scores, None):
            got = consensus(sets, sc, radius, min_agree, return_unique=True)
            _compare(got, reference(sets, sc, radius, min_agree))


def test_exactly_at_radius_and_ties():
    # 3-4-5 triangles: squared distances are exact; both B picks are at exactly R from a0,
    # and the tie (same distance) goes to the lower pick index, j = 0.
    a = np.array([[10.0, 10.0], [40.0, 10.0]])
    b = np.array([[13.0, 14.0], [7.0, 6.0], [40.0, 15.000001]])
    got = consensus([a, b], None, 5.0, 1, return_unique=True)
    ref = reference([a, b], None, 5.0, 1)
    _compare(got, ref)
    np.testing.assert_array_equal(got["members"], [[0, 0], [1, -1], [-1, 1], [-1, 2]])
    # a cluster tie (two anchors at the same distance from one pick): lower cluster index wins
    a = np.array([[0.0, 0.0], [6.0, 8.0]])
    b = np.array([[3.0, 4.0]])
    got = consensus([a, b], None, 5.0, 2)
    np.testing.assert_array_equal(got["members"], [[0, 0]])
    np.testing.assert_allclose(got["positions_px"], [[1.5, 2.0]])


def test_known_answer():
    # two particles all three pickers find, one only A and C find, one pick only B has
    a = np.array([[100.0, 100.0], [300.0, 300.0], [500.0, 100.0]])
    b = np.array([[302.0, 300.0], [102.0, 100.0], [900.0, 900.0]])
    c = np.array([[101.0, 103.0], [501.0, 99.0], [299.0, 297.0]])
    sa, sb, sc = [1.0, 2.0, 3.0], [10.0, 30.0, 20.0], [0.5, 0.1, 0.9]
    got = consensus([a, b, c], [sa, sb, sc], 5.0, 2, return_unique=True)
    np.testing.assert_array_equal(got["members"], [[0, 1, 0], [1, 0, 2], [2, -1, 1]])
    np.testing.assert_array_equal(got["n_agree"], [3, 3, 2])
    np.testing.assert_allclose(
        got["positions_px"], [[101.0, 101.0], [901.0 / 3, 299.0], [500.5, 99.5]], atol=1e-12
    )
    # ranks: A 0, .5, 1; B 0, 1, .5; C .5, 0, 1
    np.testing.assert_allclose(got["score"], [(0 + 1 + 0.5) / 3, (0.5 + 0 + 1) / 3, (1 + 0) / 2])
    assert [u.tolist() for u in got["unique"]] == [[], [2], []]


def test_empty_inputs():
    e = np.zeros((0, 2))
    got = consensus([e, e, e], None, 5.0, 2, return_unique=True)
    assert got["positions_px"].shape == (0, 2)
    assert got["members"].shape == (0, 3)
    assert got["n_agree"].size == 0 and got["score"].size == 0
    a = np.array([[1.0, 2.0], [50.0, 50.0]])
    for sets in ([e, a], [a, e], [e, a, e]):
        got = consensus(sets, [np.ones(len(s)) for s in sets], 5.0, 1, return_unique=True)
        _compare(got, reference(sets, [np.ones(len(s)) for s in sets], 5.0, 1))
        assert got["n_agree"].tolist() == [1, 1]
        assert consensus(sets, None, 5.0, 2)["positions_px"].shape == (0, 2)


def test_bad_input_is_validation_error():
    a = np.zeros((3, 2))
    with pytest.raises(ValidationError):
        consensus([a, np.zeros((3, 3))], None, 5.0, 1)
    with pytest.raises(ValidationError):
        consensus([a, a], None, 5.0, 3)
    with pytest.raises(ValidationError):
        consensus([a, a], [np.ones(3)], 5.0, 1)
    with pytest.raises(ValidationError):
        consensus([a, a], [np.ones(3), np.ones(2)], 5.0, 1)
    with pytest.raises(ValidationError):
        consensus([a, a], None, -1.0, 1)


def test_chain_of_growing_gaps_matches_reference():
    # A0 B0 A1 B1 ... on a line with ever-larger gaps: greedy must settle the edges one by
    # one (each accepted edge frees the next), which exercises the sequential fallback.
    n = 60
    gaps = 1.0 + 0.01 * np.arange(2 * n)
    x = np.concatenate([[0.0], np.cumsum(gaps)])[: 2 * n]
    a = np.stack([x[0::2], np.zeros(n)], axis=1)
    b = np.stack([x[1::2], np.zeros(n)], axis=1)
    for sets in ([a, b], [b, a], [a, b, a + [0.0, 0.5]]):
        got = consensus(sets, None, 3.0, 1, return_unique=True)
        _compare(got, reference(sets, None, 3.0, 1))
    got = consensus([a, b], None, 3.0, 2)
    np.testing.assert_array_equal(got["members"], np.stack([np.arange(n)] * 2, axis=1))
