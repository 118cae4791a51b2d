"""Consensus of several particle pickers on one micrograph.

Why: pickers disagree; a particle found by two or three of them is more likely real, and
the mean of their positions is a better centre than any one of them.

Matching rule (exact, so that an O(N^2) reference can reproduce it):

1. Clusters are built input by input. The picks of input 0, in index order, found the first
   clusters; a cluster's *anchor* is the position of the pick that founded it and never moves.
2. For each next input ``k`` (``k = 1, 2, ...``), a candidate edge joins cluster ``c`` and pick
   ``j`` of input ``k`` when ``dx*dx + dy*dy <= radius_px**2`` (float64, between the anchor and
   the pick; a pick at exactly ``radius_px`` is within). Edges are taken greedily in ascending
   order of the key ``(squared distance, c, j)``; an edge is accepted when neither its cluster
   nor its pick already has an accepted edge from input ``k``. So each cluster holds at most
   one pick per input, and each pick belongs to exactly one cluster.
3. The picks of input ``k`` left unmatched found new clusters, in index order, appended after
   the existing ones.
4. Clusters with at least ``min_agree`` members are kept, in creation order.

The result depends on the order of the inputs (the first input's picks are the anchors);
put the most reliable picker first. The greedy matching is computed in vectorised rounds of
mutual best edges (an edge that is the smallest under the key among all edges touching its
cluster or its pick); with a strict total order this accepts exactly the greedy edges.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from hpcem.errors import ValidationError


def normalised_scores(scores: np.ndarray) -> np.ndarray:
    """Scores mapped to [0, 1] by rank within one input (ties get their mean rank).

    Ranks rather than values because pickers' scores live on unrelated scales; one pick
    scores 1.0.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0)
    if s.size == 1:
        return np.ones(1)
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mean_rank = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    out = np.empty(s.size)
    out[order] = mean_rank / (s.size - 1.0)
    return out


_MAX_ROUNDS = 16


def _sequential_greedy(c: np.ndarray, j: np.ndarray, d2: np.ndarray):
    """The greedy matching as a plain pass over edges sorted by (d2, c, j): O(E log E)."""
    order = np.lexsort((j, c, d2))
    used_c, used_j = set(), set()
    out_c, out_j = [], []
    for ci, ji in zip(c[order].tolist(), j[order].tolist()):
        if ci in used_c or ji in used_j:
            continue
        used_c.add(ci)
        used_j.add(ji)
        out_c.append(ci)
        out_j.append(ji)
    return np.array(out_c, dtype=np.int64), np.array(out_j, dtype=np.int64)


def _greedy_match(c: np.ndarray, j: np.ndarray, d2: np.ndarray, n_c: int, n_j: int):
    """Greedy one-to-one matching of edges (c, j) by ascending (d2, c, j).

    Returns the accepted (c, j) pairs. Done in rounds of mutual best edges; after
    ``_MAX_ROUNDS`` rounds (rare: chains of ever-longer edges) the rest is matched by a
    sequential pass, so the cost stays O(E log E).
    """
    acc_c, acc_j = [], []
    rounds = 0
    while c.size:
        rounds += 1
        if rounds > _MAX_ROUNDS:
            # chains of ever-longer edges need one round per edge; finish them in order
            fc, fj = _sequential_greedy(c, j, d2)
            acc_c.append(fc)
            acc_j.append(fj)
            break
        best_j = np.full(n_c, -1, dtype=np.int64)
        order = np.lexsort((j, d2, c))
        first = np.ones(order.size, dtype=bool)
        first[1:] = c[order][1:] != c[order][:-1]
        best_j[c[order][first]] = j[order][first]
        best_c = np.full(n_j, -1, dtype=np.int64)
        order = np.lexsort((c, d2, j))
        first = np.ones(order.size, dtype=bool)
        first[1:] = j[order][1:] != j[order][:-1]
        best_c[j[order][first]] = c[order][first]
        mutual = (best_j[c] == j) & (best_c[j] == c)
        mc, mj = c[mutual], j[mutual]
        acc_c.append(mc)
        acc_j.append(mj)
        used_c = np.zeros(n_c, dtype=bool)
        used_c[mc] = True
        used_j = np.zeros(n_j, dtype=bool)
        used_j[mj] = True
        keep = ~(used_c[c] | used_j[j])
        c, j, d2 = c[keep], j[keep], d2[keep]
    if not acc_c:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(acc_c), np.concatenate(acc_j)


def _check(coordinate_sets, scores, radius_px, min_agree):
    if len(coordinate_sets) == 0:
        raise ValidationError("consensus needs at least one set of coordinates")
    sets = []
    for k, xy in enumerate(coordinate_sets):
        a = np.asarray(xy, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, 2)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValidationError(f"coordinate set {k}: shape {a.shape}, expected (n, 2) x, y px")
        if not np.all(np.isfinite(a)):
            raise ValidationError(f"coordinate set {k}: non-finite coordinates")
        sets.append(a)
    if not (np.isfinite(radius_px) and radius_px >= 0):
        raise ValidationError(f"radius_px must be a finite number >= 0, got {radius_px}")
    if not (1 <= int(min_agree) <= len(sets)):
        raise ValidationError(f"min_agree must be in 1..{len(sets)}, got {min_agree}")
    norm = None
    if scores is not None:
        if len(scores) != len(sets):
            raise ValidationError(f"{len(scores)} score arrays for {len(sets)} coordinate sets")
        norm = []
        for k, s in enumerate(scores):
            s = np.asarray(s, dtype=np.float64).reshape(-1)
            if s.size != sets[k].shape[0]:
                raise ValidationError(
                    f"score set {k}: {s.size} scores for {sets[k].shape[0]} coordinates"
                )
            norm.append(normalised_scores(s))
    return sets, norm


def consensus(
    coordinate_sets: list[np.ndarray],
    scores: list[np.ndarray] | None,
    radius_px: float,
    min_agree: int,
    return_unique: bool = False,
) -> dict:
    """Merge the picks of several pickers on one micrograph (rule: module docstring).

    Parameters
    ----------
    coordinate_sets
        One ``(n_k, 2)`` array of x, y pixel positions per picker (``n_k`` may be 0).
    scores
        One ``(n_k,)`` array per picker, or None. Each is normalised to [0, 1] by rank
        within its picker (:func:`normalised_scores`).
    radius_px
        Picks closer than or at this distance (px) from a cluster's anchor can join it.
    min_agree
        Clusters with fewer members (pickers) are dropped; 1 keeps every pick.
    return_unique
        Also return, per picker, the indices of its picks that no other picker found.

    Returns
    -------
    dict with
        ``positions_px`` ``(m, 2)`` mean x, y of the members of each kept cluster;
        ``n_agree`` ``(m,)`` number of pickers in each cluster;
        ``score`` ``(m,)`` mean normalised score of the members (NaN when ``scores`` is None);
        ``members`` ``(m, K)`` index of each picker's pick in the cluster, -1 where none;
        ``unique`` (only with ``return_unique``) list of K index arrays, increasing.
    """
    sets, norm = _check(coordinate_sets, scores, radius_px, min_agree)
    n_inputs = len(sets)
    r2 = float(radius_px) * float(radius_px)
    # query slightly beyond R, then decide with the exact float64 rule below
    query_r = float(radius_px) * (1.0 + 1e-9) + 1e-9

    anchors = sets[0]
    member_cols = [np.arange(anchors.shape[0], dtype=np.int64)]
    for k in range(1, n_inputs):
        pts = sets[k]
        n_c = anchors.shape[0]
        n_j = pts.shape[0]
        col = np.full(n_c, -1, dtype=np.int64)
        if n_c and n_j:
            # unbalanced, non-compact trees build faster; the pairs found are the same
            tree_opts = {"balanced_tree": False, "compact_nodes": False}
            pairs = cKDTree(anchors, **tree_opts).sparse_distance_matrix(
                cKDTree(pts, **tree_opts), query_r, output_type="ndarray"
            )
            c = pairs["i"].astype(np.int64)
            j = pairs["j"].astype(np.int64)
            dx = anchors[c, 0] - pts[j, 0]
            dy = anchors[c, 1] - pts[j, 1]
            d2 = dx * dx + dy * dy
            ok = d2 <= r2
            mc, mj = _greedy_match(c[ok], j[ok], d2[ok], n_c, n_j)
            col[mc] = mj
        matched = np.zeros(n_j, dtype=bool)
        matched[col[col >= 0]] = True
        new = np.flatnonzero(~matched)
        anchors = np.concatenate([anchors, pts[new]])
        member_cols = [np.concatenate([m, np.full(new.size, -1, np.int64)]) for m in member_cols]
        member_cols.append(np.concatenate([col, new]))

    members = np.stack(member_cols, axis=1) if anchors.shape[0] else np.zeros((0, n_inputs), int)
    present = members >= 0
    n_agree = present.sum(axis=1)
    pos_sum = np.zeros((members.shape[0], 2))
    score_sum = np.zeros(members.shape[0])
    for k in range(n_inputs):
        rows = np.flatnonzero(present[:, k])
        idx = members[rows, k]
        pos_sum[rows] += sets[k][idx]
        if norm is not None:
            score_sum[rows] += norm[k][idx]
    keep = n_agree >= int(min_agree)
    n_keep = n_agree[keep]
    out = {
        "positions_px": pos_sum[keep] / np.maximum(n_keep, 1)[:, None],
        "n_agree": n_keep.astype(np.int64),
        "score": (
            score_sum[keep] / np.maximum(n_keep, 1)
            if norm is not None
            else np.full(n_keep.size, np.nan)
        ),
        "members": members[keep].astype(np.int64),
    }
    if return_unique:
        alone = n_agree == 1
        out["unique"] = [np.sort(members[alone & present[:, k], k]) for k in range(n_inputs)]
    return out
