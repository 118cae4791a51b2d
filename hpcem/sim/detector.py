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
import tempfile
from pathlib import Path

import numpy as np

from hpcem.errors import ValidationError

MOVIE_FORMATS = ("mrc", "tiff")
#: The one header label of files written here (mrcfile's default label holds the time
#: of writing, which would make two runs of the same simulation differ).
MRC_LABEL = "hpcem.sim: simulated data"


def write_mrc_file(
    path: str | os.PathLike,
    array: np.ndarray,
    pixel_size_A: float,
    kind: str = "image",
    overwrite: bool = False,
) -> Path:
    """Write MRC like :func:`hpcem.io.mrc.write_mrc` (atomic; int8, uint16 or float32)
    but byte-for-byte reproducible: the header label is :data:`MRC_LABEL`, no date.

    ``kind``: ``"image"`` (2D), ``"movie"``/``"stack"`` (space group 0) or ``"volume"``.
    """
    import mrcfile

    path = Path(path)
    array = np.asarray(array)
    if array.dtype not in (np.int8, np.uint16, np.float32):
        array = array.astype(np.float32)
    if path.exists() and not overwrite:
        raise ValidationError(f"{path}: exists; pass overwrite=True to replace it")
    if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValidationError(f"{path}: pixel size must be > 0 Å, got {pixel_size_A}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with mrcfile.new(tmp_name, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(array))
            if array.ndim == 3:
                mrc.set_volume() if kind == "volume" else mrc.set_image_stack()
            mrc.voxel_size = pixel_size_A
            mrc.header.label[:] = b""
            mrc.header.label[0] = MRC_LABEL.encode()
            mrc.header.nlabl = 1
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


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
    return write_mrc_file(path, data, pixel_size_A, kind="movie", overwrite=overwrite)


def write_gain_reference(
    path: str | os.PathLike, gain: np.ndarray, pixel_size_A: float, overwrite: bool = False
) -> Path:
    """Write a gain reference (ny, nx) as float32 MRC: multiply raw frames by it."""
    gain = np.asarray(gain, dtype=np.float32)
    if gain.ndim != 2 or not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise ValidationError(f"{path}: a gain reference is a 2D array of positive numbers")
    return write_mrc_file(path, gain, pixel_size_A, overwrite=overwrite)
