"""Diagnostic picture of picks: circles over a binned, low-passed micrograph (PNG)."""

from __future__ import annotations

import os

import numpy as np

from hpcem.errors import ValidationError


def display_image(image: np.ndarray, max_edge_px: int = 1024) -> tuple[np.ndarray, int]:
    """The micrograph binned by an integer factor to at most ``max_edge_px`` (mean of
    blocks, which also low-passes) and a further mild gaussian low-pass, contrast
    clipped to the 1st–99th percentile; returns ``(picture, bin_factor)``."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValidationError(f"a micrograph must be a 2D image, got shape {image.shape}")
    factor = max(1, int(np.ceil(max(image.shape) / max_edge_px)))
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    binned = image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
    binned = np.where(np.isfinite(binned), binned, np.nanmean(binned[np.isfinite(binned)]))
    smooth = ndimage.gaussian_filter(binned, 1.0)
    lo, hi = np.percentile(smooth, [1, 99])
    return np.clip((smooth - lo) / (hi - lo if hi > lo else 1.0), 0, 1), factor


def write_picks_png(
    path: str | os.PathLike,
    image: np.ndarray,
    xy: np.ndarray,
    diameter_px: float,
    title: str = "",
    truth_xy: np.ndarray | None = None,
    max_edge_px: int = 1024,
) -> str:
    """Write a PNG of ``image`` with a circle of ``diameter_px`` at each pick ``xy``
    ((n, 2) x, y in pixels of ``image``) and, when given, a cross at each true position.
    Returns the path written."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    picture, factor = display_image(image, max_edge_px)
    height, width = picture.shape
    fig = Figure(figsize=(width / 100, height / 100 + (0.3 if title else 0)), dpi=100)
    ax = fig.add_axes((0, 0, 1, height / (height + (30 if title else 0))))
    ax.imshow(picture, cmap="gray", origin="upper", interpolation="nearest")
    # Pixel centres of the binned picture sit at (factor - 1) / 2 in micrograph pixels.
    offset = (factor - 1) / 2.0
    radius = 0.5 * diameter_px / factor
    for x, y in np.asarray(xy, dtype=float).reshape(-1, 2):
        ax.add_patch(
            Circle(
                ((x - offset) / factor, (y - offset) / factor),
                radius,
                fill=False,
                lw=1.2,
                ec="#00d0ff",
            )
        )
    if truth_xy is not None and len(truth_xy):
        t = np.asarray(truth_xy, dtype=float).reshape(-1, 2)
        ax.plot(
            (t[:, 0] - offset) / factor,
            (t[:, 1] - offset) / factor,
            "+",
            ms=10,
            mew=1.2,
            color="#ff7000",
            linestyle="none",
        )
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        fig.text(0.01, 1 - 0.15 / (height / 100 + 0.3), title, fontsize=9, va="center")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return str(path)
