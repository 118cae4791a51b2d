"""Picking accuracy against a ground truth: precision, recall and F1.

A pick and a true particle match when they are within a radius (by convention half the
particle diameter); matching is one-to-one, closest pairs first, so two picks on one
particle count one true positive and one false positive.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from hpcem.errors import ValidationError


def _points(xy) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return np.zeros((0, 2))
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValidationError(f"points must be (n, 2) (x, y), got shape {xy.shape}")
    return xy


def match_pairs(picked_xy, true_xy, radius_px: float) -> list[tuple[int, int]]:
    """One-to-one pairs ``(pick, truth)`` within ``radius_px`` (inclusive), closest
    first (ties broken by pick index, then truth index)."""
    picked, truth = _points(picked_xy), _points(true_xy)
    if not len(picked) or not len(truth):
        return []
    pairs = cKDTree(picked).sparse_distance_matrix(cKDTree(truth), radius_px, output_type="ndarray")
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))
    used_pick = np.zeros(len(picked), dtype=bool)
    used_true = np.zeros(len(truth), dtype=bool)
    matched = []
    for k in order:
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if not used_pick[i] and not used_true[j]:
            used_pick[i] = used_true[j] = True
            matched.append((i, j))
    return matched


def scores(tp: int, fp: int, fn: int) -> dict:
    """``{"tp", "fp", "fn", "precision", "recall", "f1"}`` from the counts (precision or
    recall of an empty denominator is 1: nothing picked is not a wrong pick)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if tp else (1.0 if not fp + fn else 0.0)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def match_picks(picked_xy, true_xy, radius_px: float) -> dict:
    """Precision, recall and F1 of ``picked_xy`` against ``true_xy`` (both (n, 2) x, y
    in pixels) matched one-to-one within ``radius_px``."""
    picked, truth = _points(picked_xy), _points(true_xy)
    tp = len(match_pairs(picked, truth, radius_px))
    return scores(tp, len(picked) - tp, len(truth) - tp)


def truth_xy(truth: dict, name: str) -> np.ndarray:
    """True particle centres (n, 2) of the item whose file is called ``name`` in a ground
    truth read from ``ground_truth.json`` (:mod:`hpcem.sim.truth`)."""
    for item in truth["items"]:
        if item["name"] == name:
            p = item["particles"]
            return np.stack([np.asarray(p["x"], float), np.asarray(p["y"], float)], axis=1)
    raise ValidationError(f"ground truth has no item {name!r}")


def pooled(results: list[dict]) -> dict:
    """Scores of several micrographs pooled (sums of tp, fp, fn)."""
    return scores(*(sum(r[k] for r in results) for k in ("tp", "fp", "fn")))
