"""TIFF images and movies (e.g. EPU/SerialEM gain-uncorrected frames) through tifffile.

Pixel size: TIFF movies rarely carry a usable one; we read the X resolution tag only
when its unit is centimetre (1 px/cm ↔ 1e8 Å/px) and otherwise report None, so the
caller must supply it (and :func:`hpcem.io.images.check_pixel_size` has nothing to check).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from hpcem.errors import DataFormatError, ValidationError
from hpcem.io.header import ImageHeader, format_bytes, pixel_size_or_none

_CM_IN_A = 1e8


def _corrupt(path: Path, reason: str) -> DataFormatError:
    return DataFormatError(f"{path}: not a TIFF file or corrupt: {reason}")


def _check_data_fits(path: Path, series, size_bytes: int) -> None:
    """Refuse a series whose tags claim more data than the file holds.

    Uncompressed data (the usual movie case) must fit in the file as a whole and page by
    page; compressed data can legitimately be larger than the file, so there only the
    strip/tile locations are checked. Done at header time, before a reader allocates what
    a corrupt tag claims.
    """
    keyframe = series.keyframe
    compressed = int(keyframe.compression) != 1
    itemsize = np.dtype(series.dtype).itemsize
    # Bytes on disk, allowing for packed samples (e.g. 4-bit) narrower than the dtype.
    bits = int(keyframe.bitspersample)
    claimed = math.ceil(int(series.nbytes) * bits / (8 * itemsize))
    per_page = math.ceil(int(keyframe.nbytes) * bits / (8 * itemsize))
    shape = "x".join(str(int(n)) for n in series.shape)
    claim = (
        f"header claims {shape} {np.dtype(series.dtype).name}, {claimed} bytes "
        f"({format_bytes(claimed)})"
    )
    if not compressed and claimed > size_bytes:
        raise _corrupt(
            path, f"truncated: {claim} uncompressed, but the file has {size_bytes} bytes"
        )
    for i, page in enumerate(series.pages):
        if page is None:
            raise _corrupt(path, f"{claim}, but page {i} is missing")
        ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
        if ends and max(ends) > size_bytes:
            raise _corrupt(
                path,
                f"truncated: page {i} data ends at byte {max(ends)}, "
                f"but the file has {size_bytes} bytes",
            )
        held = sum(int(n) for n in page.databytecounts)
        if not compressed and held < per_page:
            raise _corrupt(
                path,
                f"{claim}; page {i} should hold {per_page} bytes uncompressed but its "
                f"strips hold {held} bytes (the file has {size_bytes} bytes)",
            )


def read_tiff_header(path: str | os.PathLike) -> ImageHeader:
    """Read the shape, dtype and (if stored in cm units) pixel size of a TIFF file.

    Raises DataFormatError when the tags claim more (uncompressed) data than the file
    holds, so that no reader later tries to allocate it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: cannot read: no such file")
    size_bytes = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            dtype = np.dtype(series.dtype)
            _check_data_fits(path, series, size_bytes)
            page = tif.pages[0]
            pixel_size_A = None
            unit = page.tags.get("ResolutionUnit")
            xres = page.tags.get("XResolution")
            if unit is not None and xres is not None and int(unit.value) == 3:
                num, den = xres.value
                if num > 0:
                    pixel_size_A = pixel_size_or_none(_CM_IN_A * den / num)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as err:
        raise _corrupt(path, str(err)) from err
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise _corrupt(path, f"expected 2D image or 3D frame series, got shape {shape}")
    size = pixel_size_A or 0.0
    return ImageHeader(
        path=path,
        format="tiff",
        shape=shape,
        dtype=dtype,
        pixel_size_A=pixel_size_A,
        voxel_size_A=(0.0, size, size),
        kind="micrograph" if shape[0] == 1 else "movie",
    )


def read_tiff(path: str | os.PathLike, index: int | None = None) -> np.ndarray:
    """Read a TIFF image (2D) or movie (n_frames, ny, nx), or one frame, as float32."""
    header = read_tiff_header(path)
    nz = header.shape[0]
    if index is not None and not -nz <= index < nz:
        raise ValidationError(f"{header.path}: frame index {index} out of range (0..{nz - 1})")
    try:
        data = tifffile.imread(header.path, key=index % nz if index is not None else None)
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise _corrupt(header.path, str(err)) from err
    data = np.asarray(data, dtype=np.float32)
    return data.reshape(header.shape[1:]) if (index is not None or nz == 1) else data


def write_tiff_movie(
    path: str | os.PathLike,
    frames: np.ndarray,
    pixel_size_A: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write frames (n_frames, ny, nx) as a multi-page TIFF, atomically.

    Integer counts are kept as they are (the usual case for movies); floats become
    float32. The pixel size, if given, goes into the resolution tags in cm units.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim not in (2, 3):
        raise ValidationError(f"{path}: frames must be 2D or 3D, got shape {frames.shape}")
    if path.exists() and not overwrite:
        raise ValidationError(f"{path}: exists; pass overwrite=True to replace it")
    if frames.dtype.kind == "f":
        frames = frames.astype(np.float32)
    extra = {}
    if pixel_size_A is not None:
        if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise ValidationError(f"{path}: pixel size must be > 0 Å, got {pixel_size_A}")
        px_per_cm = _CM_IN_A / pixel_size_A
        extra = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp_name, frames, photometric="minisblack", **extra)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path
