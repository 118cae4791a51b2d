"""The one entry point for image files: headers, data, pixel-size checks, writing.

The format is chosen by file name (``.tif``/``.tiff`` → TIFF, otherwise MRC), falling
back to the TIFF magic bytes for unknown suffixes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, ValidationError
from hpcem.io.header import ImageHeader
from hpcem.io.mrc import read_mrc, read_mrc_header, write_mrc
from hpcem.io.tiff import read_tiff, read_tiff_header, write_tiff_movie

__all__ = [
    "ImageHeader",
    "check_pixel_size",
    "read_header",
    "read_image",
    "write_mrc",
    "write_tiff_movie",
]

_TIFF_SUFFIXES = {".tif", ".tiff"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path: Path) -> bool:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read: {err.strerror or err}") from err


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read the header of an MRC/MRCS or TIFF file without loading the data.

    Raises DataFormatError (one line, naming the file) if the file is missing, not of
    the format, truncated or corrupt.
    """
    path = Path(path)
    return read_tiff_header(path) if _is_tiff(path) else read_mrc_header(path)


def read_image(path: str | os.PathLike, index: int | None = None) -> np.ndarray:
    """Read an image file as float32: 2D for single images, 3D (n, ny, nx) otherwise.

    ``index`` selects one section (particle, frame or z slice) and returns it as 2D.
    """
    path = Path(path)
    return read_tiff(path, index) if _is_tiff(path) else read_mrc(path, index)


def check_pixel_size(header: ImageHeader, given_A: float, rel_tol: float = 0.01) -> list[str]:
    """Check a user-given pixel size against the file header.

    Returns a list of notes (empty when the header agrees; one note when the header
    has no pixel size, so the given value is used unchecked). Raises ValidationError
    when the header's pixel size differs from ``given_A`` by more than ``rel_tol``.
    """
    if not (math.isfinite(given_A) and given_A > 0):
        raise ValidationError(f"{header.path}: pixel size must be > 0 Å, got {given_A}")
    if header.pixel_size_A is None:
        return [f"{header.path}: header has no pixel size; using the given {given_A:g} Å"]
    if not math.isclose(header.pixel_size_A, given_A, rel_tol=rel_tol):
        raise ValidationError(
            f"{header.path}: header pixel size {header.pixel_size_A:.4f} Å differs from the "
            f"given {given_A:.4f} Å by more than {100 * rel_tol:g}%; check the acquisition "
            "parameters (or the file)"
        )
    return []
