"""Reading movie frames for alignment: frame range, gain reference, defects, checks.

Everything a movie can get wrong is found here and raised as an :mod:`hpcem.errors`
exception that names the movie file and the frame (the protocol step turns it into a
rejection of that movie): a file shorter than its header says, a frame count that
differs from the one recorded at import, TIFF pages of different sizes, NaN/Inf pixels,
a frame range outside the movie, a gain reference of the wrong shape or with
non-finite, negative or all-zero values.

Frames are read one at a time (a memory map for MRC, page by page for TIFF), so a movie
never needs to be in memory twice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, ValidationError

#: Half width of the neighbourhood whose good pixels replace a defect pixel.
DEFECT_RADIUS_PX = 2


def frame_range(n_frames: int, first_frame: int = 0, last_frame: int = -1) -> tuple[int, int]:
    """Validated ``(first, last)`` 0-based inclusive frame indices; ``last_frame < 0``
    counts from the end (−1 = last frame)."""
    last = n_frames + last_frame if last_frame < 0 else last_frame
    if not 0 <= first_frame < n_frames:
        raise ValidationError(f"first frame {first_frame} outside the movie (0..{n_frames - 1})")
    if not first_frame <= last < n_frames:
        raise ValidationError(
            f"last frame {last_frame} outside the movie or before the first frame "
            f"{first_frame} (movie has frames 0..{n_frames - 1})"
        )
    if last - first_frame + 1 < 2:
        raise ValidationError(f"frame range {first_frame}..{last} has fewer than 2 frames")
    return first_frame, last


def _check_tiff_pages(path: Path) -> tuple[int, int, int]:
    """Number of pages and their common (ny, nx); DataFormatError naming the odd page."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shapes = [tuple(int(n) for n in page.shape) for page in tif.pages]
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise DataFormatError(f"{path}: not a TIFF file or corrupt: {err}") from err
    if not shapes:
        raise DataFormatError(f"{path}: TIFF file has no frames")
    first = shapes[0]
    for i, shape in enumerate(shapes):
        if shape != first:
            raise DataFormatError(
                f"{path}: frame {i} is {'x'.join(map(str, shape[::-1]))}, "
                f"frame 0 is {'x'.join(map(str, first[::-1]))}"
            )
    if len(first) != 2:
        raise DataFormatError(f"{path}: TIFF pages of shape {first}, expected 2D frames")
    return len(shapes), first[0], first[1]


@contextlib.contextmanager
def open_movie(
    path: str | os.PathLike, expected_frames: int | None = None
) -> Iterator[tuple[tuple[int, int, int], object]]:
    """The checked shape ``(n_frames, ny, nx)`` and a frame accessor ``get(i) -> 2D``.

    Raises DataFormatError for a truncated or corrupt file, TIFF frames of different
    sizes, or a frame count different from ``expected_frames`` (what the import saw).
    """
    from hpcem.io.images import _is_tiff, read_header

    path = Path(path)
    header = read_header(path)  # truncated files are refused here, before any read
    if _is_tiff(path):
        import tifffile

        nz, ny, nx = _check_tiff_pages(path)
        shape = (nz, ny, nx)
        _check_count(path, shape, expected_frames)
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages

            def get(i: int) -> np.ndarray:
                return pages[i].asarray()

            yield shape, get
        return
    from hpcem.io.mrc import mmap_mrc

    shape = tuple(int(n) for n in header.shape)
    _check_count(path, shape, expected_frames)
    with mmap_mrc(path) as (_, data):

        def get_mrc(i: int) -> np.ndarray:
            return data[i]

        yield shape, get_mrc


def _check_count(path: Path, shape: tuple[int, ...], expected_frames: int | None) -> None:
    if shape[0] < 2:
        raise DataFormatError(f"{path}: has {shape[0]} frame, a movie needs at least 2")
    if expected_frames is not None and shape[0] != expected_frames:
        raise DataFormatError(
            f"{path}: has {shape[0]} frames, the movie set says {expected_frames} "
            "(file changed or cut short since the import?)"
        )


def read_gain(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A gain reference (multiplied into every frame) as float32, checked against
    ``shape = (ny, nx)``.

    Raises ValidationError for a shape mismatch, NaN/Inf, negative values or an
    all-zero gain. Zero pixels (dead pixels in some gain files) are allowed; they
    become defects (see :func:`gain_defects`).
    """
    from hpcem.io.images import read_image

    gain = read_image(path)
    if gain.ndim == 3 and gain.shape[0] == 1:
        gain = gain[0]
    if gain.shape != tuple(shape):
        raise ValidationError(
            f"gain reference {path} is {'x'.join(map(str, gain.shape[::-1]))}, "
            f"frames are {shape[1]}x{shape[0]}"
        )
    bad = int(np.count_nonzero(~np.isfinite(gain)))
    if bad:
        raise ValidationError(f"gain reference {path}: {bad} NaN/Inf pixels")
    if np.any(gain < 0):
        raise ValidationError(
            f"gain reference {path}: {int(np.count_nonzero(gain < 0))} negative pixels"
        )
    if not np.any(gain > 0):
        raise ValidationError(f"gain reference {path}: all pixels are 0")
    return gain.astype(np.float32, copy=False)


def gain_defects(gain: np.ndarray) -> np.ndarray:
    """Pixels a gain reference marks as dead (gain 0), as a boolean mask."""
    return gain == 0


def read_defects(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A defect mask (True = bad pixel) from a MotionCor2-style text file of
    ``x y width height`` rectangles (pixels, origin at the first pixel) or from an
    image of the frame size whose non-zero pixels are bad (as RELION accepts)."""
    path = Path(path)
    ny, nx = shape
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        text = None
    except OSError as err:
        raise DataFormatError(f"defect file {path}: cannot read: {err.strerror or err}") from err
    if text is None or path.suffix.lower() in (".mrc", ".tif", ".tiff"):
        from hpcem.io.images import read_image

        image = read_image(path)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.shape != (ny, nx):
            raise ValidationError(
                f"defect map {path} is {'x'.join(map(str, image.shape[::-1]))}, "
                f"frames are {nx}x{ny}"
            )
        return image != 0
    mask = np.zeros((ny, nx), dtype=bool)
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            x, y, w, h = (int(float(f)) for f in fields)
        except ValueError:
            raise DataFormatError(
                f"defect file {path}, line {number}: expected 'x y width height', got {line!r}"
            ) from None
        if w <= 0 or h <= 0 or x >= nx or y >= ny or x + w <= 0 or y + h <= 0:
            raise ValidationError(
                f"defect file {path}, line {number}: rectangle {x} {y} {w} {h} is empty or "
                f"outside the {nx}x{ny} frame"
            )
        mask[max(y, 0) : y + h, max(x, 0) : x + w] = True
    return mask


class DefectFiller:
    """Replaces defect pixels of a frame by the mean of the good pixels within
    ``DEFECT_RADIUS_PX`` (the frame mean where none is good).

    Neighbour indices are computed once per movie; filling a frame costs
    O(defects · neighbourhood), not O(frame).
    """

    def __init__(self, mask: np.ndarray):
        self.mask = np.asarray(mask, dtype=bool)
        ny, nx = self.mask.shape
        ys, xs = np.nonzero(self.mask)
        self.flat = ys * nx + xs
        r = DEFECT_RADIUS_PX
        oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
        ny_idx = np.clip(ys[:, None] + oy.ravel()[None, :], 0, ny - 1)
        nx_idx = np.clip(xs[:, None] + ox.ravel()[None, :], 0, nx - 1)
        neighbours = ny_idx * nx + nx_idx
        self.good = ~self.mask.ravel()[neighbours]
        self.neighbours = neighbours
        self.count = self.good.sum(axis=1)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Fill ``frame`` (float32, modified in place) and return it."""
        if not len(self.flat):
            return frame
        flat = frame.reshape(-1)
        values = np.where(self.good, flat[self.neighbours], 0.0).sum(axis=1)
        good_pixels = flat[~self.mask.ravel()]
        fallback = float(good_pixels.mean()) if good_pixels.size else 0.0
        flat[self.flat] = np.where(self.count > 0, values / np.maximum(self.count, 1), fallback)
        return frame


def corrected_frames(
    get,
    path: str | os.PathLike,
    first: int,
    last: int,
    gain: np.ndarray | None = None,
    defects: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for frames ``first..last`` as float32: gain multiplied,
    defects filled. Raises DataFormatError naming the frame on NaN/Inf pixels.

    The same float32 buffer is yielded every time (one allocation per movie, not per
    frame): use or copy each frame before asking for the next.
    """
    mask = None if defects is None else np.asarray(defects, dtype=bool)
    if gain is not None:
        dead = gain_defects(gain)
        if dead.any():
            mask = dead if mask is None else (mask | dead)
    filler = DefectFiller(mask) if mask is not None and mask.any() else None
    buffer = None
    for i in range(first, last + 1):
        raw = np.asarray(get(i))
        if buffer is None:
            buffer = np.empty(raw.shape, dtype=np.float32)
        np.copyto(buffer, raw, casting="unsafe")
        # Integer counts cannot be NaN/Inf; float data (and its conversion) can.
        if raw.dtype.kind not in "iub" and not np.isfinite(buffer).all():
            bad = int(np.count_nonzero(~np.isfinite(buffer)))
            raise DataFormatError(f"{path}: frame {i} has {bad} NaN/Inf pixels")
        if gain is not None:
            buffer *= gain
        if filler is not None:
            filler(buffer)
        yield i, buffer
