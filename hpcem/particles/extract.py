"""Particle extraction on arrays, in the order of RELION 3.1's ``relion_preprocess --extract``.

For one micrograph and its coordinates (:func:`extract_particles`):

1. **Box centres.** Each coordinate (x, y), in pixels of the micrograph with the origin at
   the first pixel, is cut at its *nearest* pixel ``(ix, iy) = floor((x, y) + 0.5)``; that
   pixel becomes the box centre, index ``box // 2`` of the box (the FFT centre, as in
   RELION). The sub-pixel remainder is kept as a shift in Å with RELION 3.1's origin sign
   (:func:`shifts_A`): ``shift = (ix − x) · pixel_size``, so the particle sits at
   ``box centre − shift`` in the box and ``ix − shift/pixel_size = x`` in the micrograph
   (RELION: centre = ``rlnCoordinateX − rlnOriginX``). RELION 3.1.3 itself *truncates*
   the coordinate (``(long int) x``, src/preprocessing.cpp) and records no remainder; both
   agree for integer coordinates and for remainders in [0, 0.5).
2. **Cut** (:func:`cut_boxes`). A box that crosses the micrograph edge is dropped, or (edge
   ``"pad"``) its outside pixels are filled with the nearest pixel inside the micrograph,
   as RELION does. A coordinate whose nearest pixel lies outside the micrograph is always
   dropped (RELION stops the whole job there).
3. **Phase flip** (:func:`phase_flip`, optional), in the box of the micrograph, before
   binning: the Fourier transform is multiplied by −1 where RELION's CTF (positive at zero
   frequency; ``−`` :func:`hpcem.ctf.model.ctf_2d`) is negative. As RELION, a padded box is
   flipped with the outside filled by the micrograph's mean and filled from its edges
   afterwards.
4. **Binning** (:func:`fourier_crop`, optional): Fourier cropping to the rescaled box
   (RELION's ``resizeMap``), pixel values keep their mean.
5. **Dust removal** (:func:`remove_dust`, optional): pixels further than ``k`` standard
   deviations of the background from its mean, on either side, are replaced by gaussian
   random values with the background's mean and standard deviation (RELION's
   ``--white_dust k --black_dust k``); before normalisation, as RELION.
6. **Normalisation** (:func:`normalise_boxes`): in the background, the pixels at
   ``di² + dj² > r²`` from the box centre (``r = bg_radius_px``, an integer), a plane is
   fitted by least squares and subtracted (RELION's default ramp; off with ``ramp=False``,
   RELION's ``--no_ramp``), then the box becomes ``(v − mean) / sd`` with the population
   mean and standard deviation of the background.
7. **Contrast inversion** (``× −1``) last, as RELION.

The cut and the normalisation have a compiled kernel (``cython_kernels/extract.pyx``, one
pass over each box while it is in cache); the numpy functions ending in ``_numpy`` are the
references (fallback and test oracle).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hpcem.errors import ValidationError
from hpcem.kernels import load

KERNEL = "extract"
EDGE_MODES = ("drop", "pad")
#: Box status codes of :func:`box_status`.
INSIDE, CROSSES_EDGE, OUTSIDE = 0, 1, 2
#: RELION warns and skips the division for a background this flat.
MIN_SD = 1e-10
#: Boxes transformed at once when phase flipping or binning (bounds the memory).
FFT_CHUNK = 64


def default_bg_radius(box_px: int) -> int:
    """RELION's default background radius: 75 % of half the box, truncated to an integer
    (its GUI: ``int(0.75 · box / 2)`` in pixels of the final box)."""
    return int(0.375 * int(box_px))


#: Where a NaN/Inf coordinate is put: far outside any micrograph (so it is dropped).
_NOWHERE = -(2**40)


def nearest_pixel(xy: np.ndarray) -> np.ndarray:
    """Box centres (n, 2) int64: the nearest pixel ``floor(v + 0.5)`` of each (x, y)
    (a NaN or infinite coordinate gets a centre far outside every micrograph)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.floor(np.where(np.isfinite(xy), xy, _NOWHERE) + 0.5).astype(np.int64)


def shifts_A(xy: np.ndarray, pixel_size_A: float) -> np.ndarray:
    """Sub-pixel remainder of the cut as shifts (n, 2) in Å, RELION 3.1 origin sign:
    ``(centre − xy) · pixel_size_A``, the particle being at ``box centre − shift``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return (nearest_pixel(xy) - xy) * float(pixel_size_A)


def box_status(centres: np.ndarray, box_px: int, shape: tuple[int, int]) -> np.ndarray:
    """Per box: :data:`INSIDE`, :data:`CROSSES_EDGE` (part of it outside the micrograph)
    or :data:`OUTSIDE` (its centre pixel is outside the micrograph)."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    ny, nx = shape
    x, y = centres[:, 0], centres[:, 1]
    x0, y0 = x - box_px // 2, y - box_px // 2
    crosses = (x0 < 0) | (y0 < 0) | (x0 + box_px > nx) | (y0 + box_px > ny)
    outside = (x < 0) | (y < 0) | (x >= nx) | (y >= ny)
    return np.where(outside, OUTSIDE, np.where(crosses, CROSSES_EDGE, INSIDE)).astype(np.int8)


def background_mask(box_px: int, bg_radius_px: int) -> np.ndarray:
    """Boolean (box, box): the background, ``di² + dj² > r²`` from the centre pixel."""
    d = np.arange(box_px) - box_px // 2
    return d[:, None] ** 2 + d[None, :] ** 2 > int(bg_radius_px) ** 2


def check_box(box_px: int, bg_radius_px: int | None = None) -> None:
    """ValidationError for a box RELION would refuse: odd or < 8 px, or a background
    radius that leaves no background (2·r must not exceed the box, as in RELION)."""
    if box_px < 8 or box_px % 2:
        raise ValidationError(f"box size must be even and >= 8 px, got {box_px}")
    if bg_radius_px is not None and not 0 <= 2 * bg_radius_px <= box_px:
        raise ValidationError(
            f"background radius {bg_radius_px} px does not fit a {box_px}-px box "
            f"(0 <= 2 x radius <= box)"
        )


# --- cutting ---------------------------------------------------------------------------------
def cut_boxes_numpy(
    image: np.ndarray, centres: np.ndarray, box_px: int, fill: float | None = None
) -> np.ndarray:
    """Reference cut: boxes (n, box, box) float32 centred on ``centres`` (x, y).

    Pixels outside the micrograph take the nearest pixel inside (``fill=None``, RELION's
    edge fill) or the value ``fill``.
    """
    image = np.asarray(image, dtype=np.float32)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    ny, nx = image.shape
    offsets = np.arange(box_px) - box_px // 2
    rows = centres[:, 1, None] + offsets  # (n, box)
    cols = centres[:, 0, None] + offsets
    boxes = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    if fill is not None:
        outside = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
        boxes[outside] = fill
    return boxes


def cut_boxes(image: np.ndarray, centres: np.ndarray, box_px: int) -> np.ndarray:
    """Boxes (n, box, box) float32 with RELION's edge fill; compiled kernel when built."""
    return cut_and_normalise(image, centres, box_px, 0, ramp=False, normalize=False)


def refill_edges(boxes: np.ndarray, centres: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill, in place, the pixels of each box that lie outside the micrograph with the
    nearest pixel of the box that lies inside it (RELION, after phase flipping)."""
    n, box_px = len(boxes), boxes.shape[-1]
    ny, nx = shape
    offsets = np.arange(box_px) - box_px // 2
    for k in range(n):
        x, y = int(centres[k, 0]), int(centres[k, 1])
        rows = np.clip(offsets + y, 0, ny - 1) - (y - box_px // 2)
        cols = np.clip(offsets + x, 0, nx - 1) - (x - box_px // 2)
        boxes[k] = boxes[k][rows[:, None], cols[None, :]]
    return boxes


# --- Fourier operations ----------------------------------------------------------------------
def flip_signs(box_px: int, pixel_size_A: float, ctf: dict) -> np.ndarray:
    """The phase-flip factors (box, box // 2 + 1) in ``numpy.fft.rfft2`` layout: −1 where
    RELION's CTF (``−ctf_2d``, positive at zero frequency) is negative, else +1."""
    from hpcem.ctf.model import ctf_2d

    full = ctf_2d(
        (box_px, box_px),
        pixel_size_A,
        ctf["defocus_u"],
        ctf["defocus_v"],
        ctf["defocus_angle"],
        voltage_kV=ctf["voltage_kV"],
        cs_mm=ctf["cs_mm"],
        amplitude_contrast=ctf["amplitude_contrast"],
        phase_shift_deg=ctf.get("phase_shift", 0.0),
    )
    half = box_px // 2
    ours = full[:, : half + 1].copy()
    # RELION's FFTW grid gives the Nyquist row frequency +1/2 (numpy's grid: -1/2); the
    # CTF is point-symmetric, so ctf(+1/2, kx) = ctf(-1/2, -kx). Astigmatism makes it
    # differ from numpy's row, and with it the flipped pixels (measured against RELION).
    ours[half] = full[half, (-np.arange(half + 1)) % box_px]
    return np.where(ours > 0, -1.0, 1.0)


def phase_flip(boxes: np.ndarray, pixel_size_A: float, ctf: dict) -> np.ndarray:
    """Phase-flipped boxes (n, box, box) float32; ``ctf`` has ``defocus_u``, ``defocus_v``
    (Å), ``defocus_angle``, ``phase_shift`` (deg), ``voltage_kV``, ``cs_mm``,
    ``amplitude_contrast`` (the optics of the micrograph's group)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    box_px = boxes.shape[-1]
    signs = flip_signs(box_px, pixel_size_A, ctf)
    ft = np.fft.rfft2(boxes)
    ft *= signs
    return np.fft.irfft2(ft, s=(box_px, box_px)).astype(np.float32)


def fourier_crop(boxes: np.ndarray, new_box_px: int) -> np.ndarray:
    """Bin boxes (n, box, box) to (n, new, new) by Fourier cropping, as RELION's
    ``resizeMap``: the ``rfft2`` rows of frequency 0..new/2 and −new/2+1..−1 and columns
    0..new/2 are kept (the new Nyquist row takes frequency +new/2), and the result is
    scaled by (new/box)² so that pixel values keep their mean."""
    boxes = np.asarray(boxes, dtype=np.float32)
    box_px = boxes.shape[-1]
    if new_box_px == box_px:
        return boxes
    if new_box_px > box_px or new_box_px % 2:
        raise ValidationError(
            f"rescaled box must be even and at most the box ({box_px} px), got {new_box_px}"
        )
    half = new_box_px // 2
    ft = np.fft.rfft2(boxes)
    cropped = np.concatenate(
        [ft[:, : half + 1, : half + 1], ft[:, box_px - half + 1 :, : half + 1]], 1
    )
    out = np.fft.irfft2(cropped, s=(new_box_px, new_box_px))
    out *= (new_box_px / box_px) ** 2
    return out.astype(np.float32)


# --- dust and normalisation ------------------------------------------------------------------
def remove_dust(boxes: np.ndarray, k_sd: float, bg_radius_px: int, rng: np.random.Generator) -> int:
    """Replace, in place, pixels beyond ``mean ± k_sd · sd`` of each box's background by
    gaussian random values of that mean and sd (RELION's white and black dust removal with
    the same k). Returns how many pixels were replaced."""
    mask = background_mask(boxes.shape[-1], bg_radius_px)
    bg = boxes[:, mask].astype(np.float64)
    avg = bg.mean(axis=1)
    sd = np.sqrt(np.maximum((bg * bg).mean(axis=1) - avg * avg, 0.0))
    dev = boxes - avg[:, None, None]
    dust = np.abs(dev) > k_sd * sd[:, None, None]
    n = int(np.count_nonzero(dust))
    if n:
        which = np.nonzero(dust)[0]
        boxes[dust] = rng.normal(avg[which], sd[which]).astype(np.float32)
    return n


def normalise_boxes_numpy(
    boxes: np.ndarray, bg_radius_px: int, ramp: bool = True, invert: bool = False
) -> np.ndarray:
    """Reference normalisation, in place and returned: per box, subtract the least-squares
    plane of the background (``ramp``), then ``(v − mean) / sd`` over the background
    (population sd; a box with sd < 1e-10 is left without the division, as RELION does);
    then ``× −1`` when ``invert``."""
    box_px = boxes.shape[-1]
    mask = background_mask(box_px, bg_radius_px)
    d = (np.arange(box_px) - box_px // 2).astype(np.float64)
    values = boxes.astype(np.float64)
    if ramp:
        jj, ii = np.meshgrid(d, d)
        design = np.stack([jj[mask], ii[mask], np.ones(int(mask.sum()))], axis=1)
        coef, *_ = np.linalg.lstsq(design, values[:, mask].T, rcond=None)  # (3, n)
        values -= coef[0][:, None, None] * jj + coef[1][:, None, None] * ii + coef[2][:, None, None]
    bg = values[:, mask]
    avg = bg.mean(axis=1)
    sd = bg.std(axis=1)
    ok = sd >= MIN_SD
    values[ok] = (values[ok] - avg[ok, None, None]) / sd[ok, None, None]
    if invert:
        values *= -1.0
    boxes[...] = values
    return boxes


@dataclasses.dataclass(frozen=True)
class NormGeometry:
    """What the kernel needs about a box's background, computed once per box size:
    the half-width of the disc in each row (``-1`` = the whole row is background), the
    number of background pixels and the inverse of the ramp fit's normal matrix."""

    box_px: int
    bg_radius_px: int
    ramp: bool
    half_widths: np.ndarray
    n_bg: int
    normal_inverse: np.ndarray


def norm_geometry(box_px: int, bg_radius_px: int, ramp: bool) -> NormGeometry:
    """The :class:`NormGeometry` of a box (exact integer disc, as :func:`background_mask`)."""
    r2 = int(bg_radius_px) ** 2
    d = np.arange(box_px) - box_px // 2
    widths = np.array(
        [math.isqrt(r2 - int(di) ** 2) if di * di <= r2 else -1 for di in d], dtype=np.int64
    )
    mask = background_mask(box_px, bg_radius_px)
    n_bg = int(mask.sum())
    inverse = np.zeros((3, 3))
    if ramp and n_bg:
        jj, ii = np.meshgrid(d.astype(np.float64), d.astype(np.float64))
        design = np.stack([jj[mask], ii[mask], np.ones(n_bg)], axis=1)
        inverse = np.linalg.pinv(design.T @ design)
    return NormGeometry(box_px, int(bg_radius_px), bool(ramp), widths, n_bg, inverse)


def _no_norm(box_px: int) -> NormGeometry:
    return NormGeometry(box_px, 0, False, np.full(box_px, -1, dtype=np.int64), 0, np.zeros((3, 3)))


def normalise_boxes(
    boxes: np.ndarray, bg_radius_px: int, ramp: bool = True, invert: bool = False
) -> np.ndarray:
    """:func:`normalise_boxes_numpy` with the compiled kernel when built (in place)."""
    kernel = load(KERNEL)
    if kernel is None:
        return normalise_boxes_numpy(boxes, bg_radius_px, ramp, invert)
    geometry = norm_geometry(boxes.shape[-1], bg_radius_px, ramp)
    kernel.normalise(boxes, _kernel_geometry(geometry), True, invert)
    return boxes


def _kernel_geometry(g: NormGeometry) -> tuple:
    return (g.half_widths, g.n_bg, g.ramp, np.ascontiguousarray(g.normal_inverse, np.float64))


def cut_and_normalise(
    image: np.ndarray,
    centres: np.ndarray,
    box_px: int,
    bg_radius_px: int,
    ramp: bool = True,
    normalize: bool = True,
    invert: bool = False,
) -> np.ndarray:
    """Cut (edge fill), normalise and invert in one pass per box (compiled kernel), or
    :func:`cut_boxes_numpy` then :func:`normalise_boxes_numpy`."""
    kernel = load(KERNEL)
    if kernel is None:
        boxes = cut_boxes_numpy(image, centres, box_px)
        if normalize:
            return normalise_boxes_numpy(boxes, bg_radius_px, ramp, invert)
        return -boxes if invert else boxes
    image = np.ascontiguousarray(image, dtype=np.float32)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    out = np.empty((len(centres), box_px, box_px), dtype=np.float32)
    geometry = norm_geometry(box_px, bg_radius_px, ramp) if normalize else _no_norm(box_px)
    kernel.cut_normalise(
        image,
        np.ascontiguousarray(centres[:, 0]),
        np.ascontiguousarray(centres[:, 1]),
        out,
        _kernel_geometry(geometry),
        normalize,
        invert,
    )
    return out


# --- the whole pipeline ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Steps:
    """The settings of the general pipeline (phase flip, binning, dust) for one micrograph."""

    box_px: int
    pixel_size_A: float
    rescaled_box_px: int
    ctf: dict | None
    fill: float  # outside pixels before phase flipping: the micrograph's mean
    normalize: bool
    radius: int
    ramp: bool
    dust_sd: float
    invert: bool

    def run(self, image, centres, padded, rng) -> tuple[np.ndarray, int]:
        """Boxes at ``centres`` through every step; returns them and the dust count."""
        if self.ctf is not None:
            boxes = cut_boxes_numpy(image, centres, self.box_px, fill=self.fill)
            boxes = phase_flip(boxes, self.pixel_size_A, self.ctf)
            if padded.any():
                boxes[padded] = refill_edges(boxes[padded], centres[padded], image.shape)
        else:
            boxes = cut_boxes(image, centres, self.box_px)
        if self.rescaled_box_px:
            boxes = fourier_crop(boxes, self.rescaled_box_px)
        dust = remove_dust(boxes, self.dust_sd, self.radius, rng) if self.dust_sd > 0 else 0
        if self.normalize:
            normalise_boxes(boxes, self.radius, self.ramp, self.invert)
        elif self.invert:
            boxes *= -1.0
        return boxes, dust


@dataclasses.dataclass
class Extraction:
    """The particles of one micrograph: ``stack`` (n_kept, box, box) float32, ``kept``
    (indices of the input coordinates, in stack order), ``edge_padded`` (bool per kept
    particle), ``shifts_A`` (n_kept, 2: x, y in Å, see :func:`shifts_A`), ``status`` (per
    input coordinate, :func:`box_status`), ``dust_pixels`` (replaced by dust removal)."""

    stack: np.ndarray
    kept: np.ndarray
    edge_padded: np.ndarray
    shifts_A: np.ndarray
    status: np.ndarray
    dust_pixels: int = 0


def extract_particles(
    image: np.ndarray,
    xy: np.ndarray,
    box_size_px: int,
    pixel_size_A: float,
    *,
    rescaled_box_px: int = 0,
    ctf: dict | None = None,
    normalize: bool = True,
    bg_radius_px: int = 0,
    ramp: bool = True,
    dust_sd: float = 0.0,
    invert_contrast: bool = True,
    edge: str = "drop",
    seed: int | tuple[int, ...] = 0,
) -> Extraction:
    """Extract the particles at ``xy`` (n, 2: x, y in pixels) from one micrograph.

        ``rescaled_box_px`` = 0 keeps the box; ``ctf`` (see :func:`phase_flip`) turns phase
        flipping on; ``bg_radius_px`` = 0 means :func:`default_bg_radius` of the final box;
        ``dust_sd`` = 0 is no dust removal (random values from ``numpy.random.default_rng(seed)``;
    the protocol passes (run seed, micrograph id), so a micrograph's noise does not depend on
    which worker extracts it or when); ``edge`` is
        ``"drop"`` or ``"pad"``. Raises ValidationError when the box does not fit in the
        micrograph at all or a parameter is out of range.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValidationError(f"a micrograph is 2D, got shape {image.shape}")
    if edge not in EDGE_MODES:
        raise ValidationError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
    ny, nx = image.shape
    out_box = rescaled_box_px or box_size_px
    radius = bg_radius_px or default_bg_radius(out_box)
    check_box(box_size_px)
    check_box(out_box, radius if normalize else None)
    if rescaled_box_px > box_size_px:
        raise ValidationError(
            f"rescaled box {rescaled_box_px} px is larger than the box {box_size_px} px"
        )
    if box_size_px > min(ny, nx):
        raise ValidationError(f"box {box_size_px} px is larger than the micrograph ({nx}x{ny} px)")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    centres = nearest_pixel(xy)
    status = box_status(centres, box_size_px, (ny, nx))
    keep = status == INSIDE if edge == "drop" else status != OUTSIDE
    kept = np.flatnonzero(keep)
    c = centres[kept]
    padded = status[kept] == CROSSES_EDGE
    simple = ctf is None and rescaled_box_px in (0, box_size_px) and not dust_sd
    dust = 0
    if simple:
        stack = cut_and_normalise(image, c, box_size_px, radius, ramp, normalize, invert_contrast)
    else:
        # A chunk of boxes at a time: the Fourier transforms are complex128, 4x the boxes.
        steps = _Steps(
            box_size_px,
            pixel_size_A,
            rescaled_box_px,
            ctf,
            float(image.mean()) if ctf is not None else 0.0,
            normalize,
            radius,
            ramp,
            dust_sd,
            invert_contrast,
        )
        stack = np.empty((len(c), out_box, out_box), dtype=np.float32)
        rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
        for lo in range(0, len(c), FFT_CHUNK):
            part = slice(lo, lo + FFT_CHUNK)
            stack[part], n_dust = steps.run(image, c[part], padded[part], rng)
            dust += n_dust
    return Extraction(
        stack=np.ascontiguousarray(stack, dtype=np.float32),
        kept=kept,
        edge_padded=padded,
        shifts_A=shifts_A(xy[kept], pixel_size_A),
        status=status,
        dust_pixels=dust,
    )
