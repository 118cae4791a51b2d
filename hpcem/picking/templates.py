"""Templates for the template picker from its references: a 3D map (projected over the
sphere) or a stack of 2D class averages, at the search grid's pixel size.

The pixel size of the references is the one their set declares; a file header that
disagrees with it (by more than 1 %), or references so coarse that the particle is under
:data:`hpcem.picking.template.MIN_PARTICLE_PX` pixels, are refused with a message saying
which, since templates of a wrong scale would pick nothing useful.
"""

from __future__ import annotations

import os

import numpy as np

from hpcem.errors import ValidationError
from hpcem.picking.template import (
    check_particle_size,
    resample_templates,
    template_box_px,
    volume_templates,
)

KINDS = ("volume", "averages")
#: Relative difference of header and set pixel sizes that is refused.
PIXEL_SIZE_TOLERANCE = 0.01


def check_reference_pixel_size(path: str, pixel_size_A: float, diameter_A: float) -> None:
    """ValidationError when the header of ``path`` gives a pixel size that differs from the
    set's ``pixel_size_A`` by more than 1 %, or when a ``diameter_A`` particle is under
    MIN_PARTICLE_PX pixels at ``pixel_size_A``."""
    from hpcem.io import read_header

    header = read_header(path)
    stated = header.pixel_size_A
    if stated is not None and abs(stated - pixel_size_A) > PIXEL_SIZE_TOLERANCE * pixel_size_A:
        raise ValidationError(
            f"references: {path} has {stated:.4g} Å/px in its header but its set says "
            f"{pixel_size_A:.4g} Å/px; templates of the wrong scale pick nothing useful "
            "(re-import the references with the right pixel size)"
        )
    check_particle_size(diameter_A, pixel_size_A, f"references {os.path.basename(path)}")


def reference_templates(
    kind: str,
    files: list[str],
    indices: list[int],
    pixel_size_A: float,
    diameter_A: float,
    work_pixel_A: float,
    angular_step_deg: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Templates (n, box, box) at ``work_pixel_A`` (protein bright, no CTF, no low-pass).

    ``kind`` ``"volume"``: the first of ``files`` is a map, resampled to the working
    pixel size and projected along :func:`hpcem.picking.template.sphere_directions`
    (returns the angles too). ``"averages"``: image ``indices[i]`` of ``files[i]`` (class
    averages), resampled (returns None for the angles).
    """
    from hpcem.io.mrc import read_mrc
    from hpcem.sim.volume import volume_from_map

    if kind not in KINDS:
        raise ValidationError(f"reference kind must be one of {KINDS}, got {kind!r}")
    if not files:
        raise ValidationError("references: the set is empty")
    for path in sorted(set(files)):
        check_reference_pixel_size(path, pixel_size_A, diameter_A)
    box = template_box_px(diameter_A / work_pixel_A)
    if kind == "volume":
        # Resampled to the working grid first: projecting a fine map would need its
        # padded transform (8 N³ voxels) for nothing the low-passed templates keep.
        volume = volume_from_map(
            files[0], max(work_pixel_A, pixel_size_A), map_pixel_size_A=pixel_size_A
        )
        return volume_templates(volume, angular_step_deg, work_pixel_A, box)
    images = []
    for path, index in zip(files, indices):
        data = read_mrc(path)
        image = data if data.ndim == 2 else data[int(index)]
        if image.shape[0] != image.shape[1]:
            raise ValidationError(f"references: {path} image {index} is not square")
        images.append(image)
    sizes = {im.shape[0] for im in images}
    if len(sizes) > 1:
        raise ValidationError(f"references: class averages of different sizes {sorted(sizes)}")
    return resample_templates(np.stack(images), pixel_size_A, work_pixel_A, box), None


def write_gallery_png(path: str | os.PathLike, stack: np.ndarray, title: str = "") -> str:
    """A PNG grid of the templates (each scaled to its own range), up to 64 of them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stack = np.asarray(stack)[:64]
    n = len(stack)
    cols = min(8, max(1, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(1.2 * cols, 1.2 * rows + (0.35 if title else 0)), dpi=100)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < n:
            ax.imshow(stack[i], cmap="gray", interpolation="nearest")
    top = 1.0 - (0.3 / (1.2 * rows + 0.35) if title else 0.0)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.05, hspace=0.05)
    if title:
        fig.suptitle(title, fontsize=9)
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return str(path)
