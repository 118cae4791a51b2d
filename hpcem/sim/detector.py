"""Writing simulated movies as a detector would: integer counts in MRC stacks or TIFF,
and a gain reference.

Counts are stored in the smallest integer type that holds them: 8 bits (int8 in MRC,
mode 0, identical whether a reader takes mode 0 as signed or unsigned while counts stay
below 128; uint8 in TIFF), else uint16. ``dtype="float32"`` keeps MRC mode 2.

The gain reference is written so that **raw × gain = corrected**, the convention of
RELION (``--gainref``) and MotionCor2 (``-Gain``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hpcem.errors import ValidationError

MOVIE_FORMATS = ("mrc", "tiff")


def _integer_counts(path: Path, frames: np.ndarray, signed_8bit: bool) -> np.ndarray:
    if frames.size and (np.any(frames < 0) or np.any(frames != np.round(frames))):
        raise ValidationError(f"{path}: frames must be non-negative integer counts")
    top = float(frames.max()) if frames.size else 0.0
    if top <= (127 if signed_8bit else 255):
        return frames.astype(np.int8 if signed_8bit else np.uint8)
    if top <= 65535:
        return frames.astype(np.uint16)
    raise ValidationError(f"{path}: counts up to {top:.0f} do not fit in 16 bits")


def write_movie(
    path: str | os.PathLike,
    frames: np.ndarray,
    pixel_size_A: float,
    dtype: str = "counts",
    overwrite: bool = False,
) -> Path:
    """Write frames (n, ny, nx) as an MRC stack (``.mrc``/``.mrcs``) or a TIFF
    (``.tif``/``.tiff``), chosen by the suffix.

    ``dtype="counts"`` stores integers (8 or 16 bits, see the module doc);
    ``"float32"`` stores floats (MRC only: TIFF movies are integer counts here).
    """
    from hpcem.io.mrc import write_mrc
    from hpcem.io.tiff import write_tiff_movie

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValidationError(f"{path}: frames must be (n, ny, nx), got shape {frames.shape}")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        if dtype != "counts":
            raise ValidationError(f"{path}: TIFF movies are written as counts, not {dtype}")
        return write_tiff_movie(
            path, _integer_counts(path, frames, False), pixel_size_A, overwrite=overwrite
        )
    if suffix not in (".mrc", ".mrcs"):
        raise ValidationError(f"{path}: movie files end in .mrc, .mrcs, .tif or .tiff")
    if dtype == "counts":
        data = _integer_counts(path, frames, True)
    elif dtype == "float32":
        data = frames.astype(np.float32)
    else:
        raise ValidationError(f"{path}: dtype must be 'counts' or 'float32', got {dtype!r}")
    return write_mrc(path, data, pixel_size_A, kind="movie", overwrite=overwrite)


def write_gain_reference(
    path: str | os.PathLike, gain: np.ndarray, pixel_size_A: float, overwrite: bool = False
) -> Path:
    """Write a gain reference (ny, nx) as float32 MRC: multiply raw frames by it."""
    from hpcem.io.mrc import write_mrc

    gain = np.asarray(gain, dtype=np.float32)
    if gain.ndim != 2 or not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise ValidationError(f"{path}: a gain reference is a 2D array of positive numbers")
    return write_mrc(path, gain, pixel_size_A, overwrite=overwrite)
