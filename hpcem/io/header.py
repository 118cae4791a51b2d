"""The format-independent description of an image file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: What an image file holds. MRC files with several sections are "stack" unless their
#: space group says "volume"; the header cannot tell an MRC movie from a particle stack.
KINDS = ("micrograph", "stack", "movie", "volume")


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image file says, read without loading the data.

    Attributes
    ----------
    path : the file.
    format : ``"mrc"`` or ``"tiff"``.
    shape : ``(nz, ny, nx)``; ``nz`` is 1 for a single image.
    dtype : the data type stored on disk.
    pixel_size_A : x pixel size in Å, or None when the header leaves it unset (0 or 1).
    voxel_size_A : ``(z, y, x)`` voxel size in Å as stored (0 where unset).
    kind : one of :data:`KINDS`.
    warnings : header oddities that were tolerated (e.g. a missing MRC map ID).
    """

    path: Path
    format: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    pixel_size_A: float | None
    voxel_size_A: tuple[float, float, float]
    kind: str
    warnings: tuple[str, ...] = ()

    @property
    def n_sections(self) -> int:
        """Number of images (frames, particles or z sections)."""
        return self.shape[0]


def pixel_size_or_none(size_A: float) -> float | None:
    """Map the "unset" header conventions (0, 1, negative, nan) to None."""
    size_A = float(size_A)
    if not np.isfinite(size_A) or size_A <= 0 or abs(size_A - 1.0) < 1e-6:
        return None
    return size_A


def format_bytes(n_bytes: int) -> str:
    """``4000000001024`` → ``"3.6 TiB"``: a size for error messages (binary units)."""
    if n_bytes < 1024:
        return f"{int(n_bytes)} bytes"
    size = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"
