"""Peaks of a 2D score map with a minimum distance between them (both pickers use it).

A peak is a pixel that is the maximum of its (2r+1)² neighbourhood (r = the minimum
distance, rounded down), above the threshold, away from the border and inside the mask;
peaks closer than the minimum distance to a stronger peak are then dropped, strongest
first (greedy non-maximum suppression with exact Euclidean distances). Positions are
refined to sub-pixel by a parabola through the peak and its two neighbours in x and in y.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from hpcem.errors import ValidationError


def _refine(score: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Sub-pixel (x, y) of integer peaks: vertex of the parabola through the peak and its
    two neighbours along each axis (no shift at the image border or on a flat top)."""
    ny, nx = score.shape
    xy = np.stack([ix, iy], axis=1).astype(np.float64)
    for axis, (pos, size) in enumerate(((ix, nx), (iy, ny))):
        inner = (pos > 0) & (pos < size - 1)
        if not inner.any():
            continue
        y, x = iy[inner], ix[inner]
        if axis == 0:
            left, right = score[y, x - 1], score[y, x + 1]
        else:
            left, right = score[y - 1, x], score[y + 1, x]
        centre = score[y, x].astype(np.float64)
        left = left.astype(np.float64)
        right = right.astype(np.float64)
        curvature = left - 2.0 * centre + right
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
        offset = np.where(np.isfinite(offset), offset, 0.0)
        xy[inner, axis] += np.clip(offset, -0.5, 0.5)
    return xy


def suppress(xy: np.ndarray, values: np.ndarray, min_distance_px: float) -> np.ndarray:
    """Indices of the points kept by greedy non-maximum suppression: in order of
    descending value, a point is kept unless a kept point lies closer than
    ``min_distance_px`` (a point at exactly the distance is kept). Ties in value keep the
    earlier point."""
    order = np.argsort(-values, kind="stable")
    if len(order) == 0 or min_distance_px <= 0:
        return order
    tree = cKDTree(xy)
    # Pairs closer than the distance (strictly): query a hair inside the radius.
    radius = min_distance_px * (1.0 - 1e-12)
    neighbours = tree.query_ball_point(xy[order], r=radius)
    removed = np.zeros(len(xy), dtype=bool)
    kept = []
    for i, near in zip(order, neighbours):
        if removed[i]:
            continue
        kept.append(i)
        removed[near] = True
    return np.asarray(kept, dtype=np.intp)


def find_peaks(
    score: np.ndarray,
    min_distance_px: float,
    threshold: float = -math.inf,
    max_peaks: int | None = None,
    border_px: int = 0,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``score`` at least ``min_distance_px`` apart, strongest first.

    Returns ``(xy, values)``: ``xy`` (n, 2) float64 positions (x along columns, y along
    rows, in pixels of ``score``, origin at the first pixel's centre), refined to
    sub-pixel; ``values`` (n,) the score at the integer peak, descending. At most
    ``max_peaks`` (None: all). Pixels closer than ``border_px`` to the edge and, when
    ``mask`` (bool, same shape) is given, pixels where it is False are never peaks.
    Non-finite scores are never peaks.
    """
    score = np.asarray(score)
    if score.ndim != 2:
        raise ValidationError(f"score map must be 2D, got shape {score.shape}")
    if not min_distance_px >= 0:
        raise ValidationError(f"min_distance_px must be >= 0, got {min_distance_px}")
    if mask is not None and np.shape(mask) != score.shape:
        raise ValidationError(f"mask shape {np.shape(mask)} differs from score {score.shape}")
    work = np.where(np.isfinite(score), score, -np.inf).astype(np.float64, copy=False)
    half = max(1, math.floor(min_distance_px))
    local_max = ndimage.maximum_filter(work, size=2 * half + 1, mode="constant", cval=-np.inf)
    candidate = (work == local_max) & np.isfinite(work) & (work > threshold)
    if border_px > 0:
        b = int(border_px)
        candidate[:b, :] = False
        candidate[-b:, :] = False
        candidate[:, :b] = False
        candidate[:, -b:] = False
    if mask is not None:
        candidate &= np.asarray(mask, dtype=bool)
    iy, ix = np.nonzero(candidate)
    values = work[iy, ix]
    # Plateaus give several equal maxima; suppression keeps one of them.
    keep = suppress(np.stack([ix, iy], axis=1).astype(np.float64), values, min_distance_px)
    if max_peaks is not None:
        keep = keep[: max(0, int(max_peaks))]
    iy, ix, values = iy[keep], ix[keep], values[keep]
    return _refine(work, iy, ix), values.astype(np.float64)
