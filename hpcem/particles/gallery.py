"""A gallery of particle images (PNG): the first particles of a set, side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from hpcem.errors import ValidationError


def first_images(stacks: Sequence[str], n: int) -> np.ndarray:
    """The first ``n`` images of the given MRCS stacks, in order (fewer if they hold
    fewer), as a float32 array (k, ny, nx)."""
    import mrcfile

    images: list[np.ndarray] = []
    for stack in stacks:
        if len(images) >= n:
            break
        with mrcfile.mmap(stack, permissive=True, mode="r") as mrc:
            data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            images += [np.array(im, dtype=np.float32) for im in data[: n - len(images)]]
    if not images:
        return np.zeros((0, 1, 1), np.float32)
    return np.stack(images)


def write_gallery(
    path: str | os.PathLike, images: np.ndarray, title: str = "", columns: int = 8
) -> str:
    """Write the images (k, ny, nx) as a grid PNG, each with its own contrast (1st–99th
    percentile), particle 0 at the top left. Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or not len(images):
        raise ValidationError(f"a gallery needs (k, ny, nx) images, got shape {images.shape}")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    ny, nx = images.shape[1:]
    grid = np.ones((rows * (ny + 2), columns * (nx + 2)), np.float32)
    for k, image in enumerate(images):
        lo, hi = np.percentile(image, [1, 99])
        tile = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        r, c = divmod(k, columns)
        grid[r * (ny + 2) + 1 : r * (ny + 2) + 1 + ny, c * (nx + 2) + 1 : c * (nx + 2) + 1 + nx] = (
            tile
        )
    scale = max(1.0, 96.0 / max(ny, nx))  # small boxes drawn at least ~96 px wide
    height = grid.shape[0] * scale / 100 + (0.3 if title else 0)
    fig = Figure(figsize=(grid.shape[1] * scale / 100, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 - (0.3 / height if title else 0)))
    ax.imshow(grid, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        fig.text(0.01, 1 - 0.15 / height, title, fontsize=9, va="center")
    FigureCanvasAgg(fig)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return str(path)
