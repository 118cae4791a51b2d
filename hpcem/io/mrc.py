"""MRC / MRCS files through mrcfile, with checks that name the file on failure.

mrcfile is opened in permissive mode so that *we* decide what is fatal: files written
by older programs without the ``MAP`` ID (e.g. some RELION ``.mrcs``) are accepted when
every other header field is plausible and the file size matches; anything else raises
:class:`~hpcem.errors.DataFormatError` with one line naming the file and the reason.
Reading the header returns what was tolerated (``ImageHeader.warnings``); reading the
data (:func:`read_mrc`, :func:`mmap_mrc`) also warns with :class:`ToleratedFormatWarning`.
Input files are only ever opened read-only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from hpcem.errors import DataFormatError, ValidationError
from hpcem.io.header import ImageHeader, format_bytes, pixel_size_or_none

HEADER_BYTES = 1024
# Modes we can turn into real-valued images (complex and 4-bit packed are refused).
READABLE_MODES = {0, 1, 2, 6, 12}
# A sanity bound that stops a random header from describing a petabyte file.
MAX_DIM = 1 << 20


class ToleratedFormatWarning(UserWarning):
    """A data file was read although its header breaks the format (e.g. no ``MAP`` ID)."""


def _corrupt(path: Path, reason: str) -> DataFormatError:
    return DataFormatError(f"{path}: not an MRC file or corrupt: {reason}")


def _kind(path: Path, nz: int, ispg: int) -> str:
    if nz == 1:
        return "micrograph"
    if path.suffix.lower() == ".mrcs" or ispg == 0:
        return "stack"
    return "volume"


def read_mrc_header(path: str | os.PathLike) -> ImageHeader:
    """Read and check an MRC header; raise DataFormatError naming the file if bad."""
    path = Path(path)
    try:
        size_bytes = path.stat().st_size
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read: {err.strerror or err}") from err
    if size_bytes < HEADER_BYTES:
        raise _corrupt(path, f"file has {size_bytes} bytes, shorter than the 1024-byte header")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
                voxel = mrc.voxel_size.copy()
        except (ValueError, OSError) as err:
            raise _corrupt(path, str(err)) from err
    tolerated = tuple(str(w.message) for w in caught)
    if header is None:
        raise _corrupt(path, "; ".join(tolerated) or "header unreadable")

    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    mode, nsymbt = int(header.mode), int(header.nsymbt)
    if mode not in READABLE_MODES:
        raise _corrupt(path, f"unsupported or invalid MRC mode {mode}")
    if not all(0 < n <= MAX_DIM for n in (nx, ny, nz)):
        raise _corrupt(path, f"implausible dimensions nx={nx} ny={ny} nz={nz}")
    if nsymbt < 0:
        raise _corrupt(path, f"negative extended header size {nsymbt}")
    dtype = mrcfile.utils.dtype_from_mode(mode).newbyteorder("=")
    # Checked here, before any reader allocates what a corrupt header claims.
    expected = HEADER_BYTES + nsymbt + nx * ny * nz * dtype.itemsize
    if size_bytes < expected:
        raise _corrupt(
            path,
            f"truncated: header claims nx={nx} ny={ny} nz={nz} mode {mode} ({dtype.name}), "
            f"{expected} bytes ({format_bytes(expected)}) with the {HEADER_BYTES}-byte header "
            f"and {nsymbt}-byte extended header, but the file has {size_bytes} bytes",
        )
    if size_bytes > expected:
        tolerated += (f"{size_bytes - expected} trailing bytes after the data block",)

    voxel_zyx = (float(voxel.z), float(voxel.y), float(voxel.x))
    return ImageHeader(
        path=path,
        format="mrc",
        shape=(nz, ny, nx),
        dtype=dtype,
        pixel_size_A=pixel_size_or_none(voxel.x),
        voxel_size_A=voxel_zyx,
        kind=_kind(path, nz, int(header.ispg)),
        warnings=tolerated,
    )


def _warn_tolerated(header: ImageHeader) -> None:
    if header.warnings:  # one warning per read, listing every oddity
        warnings.warn(
            f"{header.path}: read despite: {'; '.join(header.warnings)}",
            ToleratedFormatWarning,
            stacklevel=4,
        )


@contextlib.contextmanager
def mmap_mrc(path: str | os.PathLike) -> Iterator[tuple[ImageHeader, np.ndarray]]:
    """The checked header and a read-only memory map of the data, shape (nz, ny, nx).

    For large stacks read in parts (e.g. by MPI ranks); the map is valid inside the
    ``with`` block only. Header oddities that are tolerated (see :func:`read_mrc_header`)
    are warned about (:class:`ToleratedFormatWarning`).
    """
    header = read_mrc_header(path)
    _warn_tolerated(header)
    with warnings.catch_warnings():
        # Oddities were already checked and recorded by read_mrc_header.
        warnings.simplefilter("ignore")
        try:
            mrc = mrcfile.mmap(header.path, mode="r", permissive=True)
        except (ValueError, OSError) as err:
            raise _corrupt(header.path, str(err)) from err
    with mrc:
        if mrc.data is None:
            raise _corrupt(header.path, "no data block")
        try:
            data = mrc.data.reshape(header.shape)
        except ValueError as err:
            raise _corrupt(header.path, str(err)) from err
        yield header, data


def read_mrc(path: str | os.PathLike, index: int | None = None) -> np.ndarray:
    """Read an MRC file (or one section of it) as float32, shape (nz, ny, nx) or (ny, nx).

    A single-image file reads as 2D. ``index`` selects one section of a stack, movie or
    volume. The header is checked first (see :func:`read_mrc_header`); tolerated
    oddities are warned about (:class:`ToleratedFormatWarning`).
    """
    with mmap_mrc(path) as (header, data):
        nz = header.shape[0]
        if index is not None:
            if not -nz <= index < nz:
                raise ValidationError(
                    f"{header.path}: section index {index} out of range (0..{nz - 1})"
                )
            return np.array(data[index], dtype=np.float32)
        out = np.array(data, dtype=np.float32)
    return out[0] if nz == 1 else out


def mrc_label() -> str:
    """The text label :func:`write_mrc` puts in every header: the writer and its version,
    deterministic (MRC labels are free text of at most 80 ASCII characters)."""
    from hpcem import __version__

    return f"hpcem {__version__}"[:80]


def write_mrc(
    path: str | os.PathLike,
    array: np.ndarray,
    pixel_size_A: float,
    kind: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 2D image or 3D stack/volume as MRC, atomically (temporary name + rename).

    Parameters
    ----------
    array : 2D (ny, nx) or 3D (nz, ny, nx); float data is stored as float32 (mode 2),
        int8/int16/uint16 are kept.
    pixel_size_A : written to the header voxel size (x, y, and z for volumes).
    kind : for 3D data, ``"stack"``/``"movie"`` (space group 0) or ``"volume"``
        (space group 1); default: ``"stack"`` for ``.mrcs`` names, else ``"volume"``.
    overwrite : refuse to replace an existing file unless True.

    The header carries one text label, :func:`mrc_label` (``hpcem VERSION``, no time of
    writing, unlike mrcfile's default label): the same array written twice gives the same
    bytes, so re-running a workflow can be checked file for file.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValidationError(f"{path}: can only write 2D or 3D arrays, got shape {array.shape}")
    if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValidationError(f"{path}: pixel size must be > 0 Å, got {pixel_size_A}")
    if path.exists() and not overwrite:
        raise ValidationError(f"{path}: exists; pass overwrite=True to replace it")
    if array.dtype not in (np.int8, np.int16, np.uint16, np.float32):
        array = array.astype(np.float32)
    if kind is None:
        kind = "stack" if path.suffix.lower() == ".mrcs" else "volume"
    if array.ndim == 3 and kind not in ("stack", "movie", "volume"):
        raise ValidationError(f"{path}: unknown kind {kind!r} for 3D data")

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with mrcfile.new(tmp_name, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(array))
            if array.ndim == 3:
                if kind == "volume":
                    mrc.set_volume()
                else:
                    mrc.set_image_stack()
            mrc.voxel_size = pixel_size_A
            # mrcfile stamps label 0 with the time of writing; ours is the same every run
            mrc.header.label[:] = b""
            mrc.header.label[0] = mrc_label().encode("ascii")
            mrc.header.nlabl = 1
            mrc.flush()
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path
