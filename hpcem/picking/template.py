"""Template matching by fast local normalised cross-correlation (Roseman 2003).

For every pixel ``x`` of a (binned, low-passed) micrograph ``f`` and every template ``t``
(a projection of a reference at one in-plane angle, multiplied by the micrograph's CTF),
the score is the Pearson correlation of the template and the image window under a
circular mask ``M`` of ``N`` pixels centred on ``x``::

    NCC(x) = Σ_{u∈M} t'(u) f(x + u) / (N σ_f(x)),
    σ_f(x)² = (1/N) Σ_{u∈M} f(x + u)² − ((1/N) Σ_{u∈M} f(x + u))²

where ``t'`` is the template made zero-mean and unit-variance inside the mask (zero
outside). Because ``Σ t' = 0`` the local mean of the image drops out of the numerator,
so the numerator is one FFT correlation per template, and the local variance of the
image is two FFT convolutions with the mask, computed once per micrograph (Roseman's
fast local correlation function). The mask is a disc of the particle's diameter, the
same for every template and angle: that is what lets the local variance be shared.

The score map kept is the best NCC over all templates and angles at each pixel
(:func:`ncc_search`); picks are its local maxima at least a minimum distance apart
(:func:`hpcem.picking.peaks.find_peaks`).

Conventions: coordinates in pixels of the micrograph given, origin at the first pixel's
centre, x along columns. Templates are projections of a density with the protein
*bright* (positive), as made by :func:`volume_templates` and as class averages are
usually stored; the CTF (:mod:`hpcem.ctf.model`, negative at low frequency) makes them
dark like the particles in a micrograph. Without a CTF they are multiplied by −1 (the
sign of the CTF at low frequency) and used as they are otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.ndimage

from hpcem.errors import ValidationError

#: Particle diameter, in pixels of the working (binned) grid the search runs on: enough
#: pixels for the shape, few enough that the FFTs stay small (issue 10 asks ~24–40 px).
#: With the default 20 Å low-pass and a 150 Å particle the grid is 6.25 Å/px, Nyquist
#: 12.5 Å: everything the low-passed templates hold is still sampled.
PARTICLE_PX = 24
#: Below this the particle is a blob of a few pixels: no template can tell its shape.
MIN_PARTICLE_PX = 8
#: Template box edge over the particle diameter: room for the CTF's delocalised fringes.
BOX_FACTOR = 1.5
#: Templates correlated per batch of FFTs (memory: batch × padded micrograph × 8 bytes).
BATCH = 8
_WORKERS = 1  # steps run in parallel, one per micrograph: one FFT thread each


def working_pixel_size_A(
    diameter_A: float, pixel_size_A: float, lowpass_A: float = 0.0, particle_px: float = PARTICLE_PX
) -> float:
    """Pixel size (Å) of the search grid: the particle ``particle_px`` across, finer when
    needed to keep ``lowpass_A`` below Nyquist (pixel <= lowpass_A / 2), never finer than
    the micrograph itself (no upsampling)."""
    if not diameter_A > 0 or not pixel_size_A > 0:
        raise ValidationError(
            f"diameter and pixel size must be > 0 Å, got {diameter_A} and {pixel_size_A}"
        )
    work = float(diameter_A) / float(particle_px)
    if lowpass_A > 0:
        work = min(work, 0.5 * float(lowpass_A))
    return max(float(pixel_size_A), work)


def fast_length(n: int) -> int:
    """Smallest even 5-smooth (2^a 3^b 5^c) integer >= n: the sizes pocketfft is fastest
    at (measured: 960 is 25 % faster than scipy's next_fast_len choice 924)."""
    m = max(2, int(n))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1 and m % 2 == 0:
            return m
        m += 1


def template_box_px(diameter_px: float) -> int:
    """Even template box edge for a particle ``diameter_px`` across (:data:`BOX_FACTOR`)."""
    half = math.ceil(0.5 * BOX_FACTOR * diameter_px)
    return int(2 * max(half, 4))


def check_particle_size(diameter_A: float, pixel_size_A: float, what: str) -> None:
    """ValidationError when a particle of ``diameter_A`` is under MIN_PARTICLE_PX pixels
    at ``pixel_size_A`` (``what`` names the images in the message)."""
    px = diameter_A / pixel_size_A
    if px < MIN_PARTICLE_PX:
        raise ValidationError(
            f"{what} at {pixel_size_A:.3g} Å/px: a {diameter_A:.0f} Å particle is only "
            f"{px:.1f} px across (at least {MIN_PARTICLE_PX} needed); the pixel size is "
            "wrong or the images are too coarse for picking"
        )


# --- Fourier resampling and filters ------------------------------------------------------


def _crop_half_spectrum(ft: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The rfft2 layout ``ft`` of an (ny, nx) image cut or zero-padded to the rfft2 layout
    of ``shape`` (frequencies beyond the smaller Nyquist dropped)."""
    ny = ft.shape[-2]
    my, mx = shape
    out = np.zeros(ft.shape[:-2] + (my, mx // 2 + 1), dtype=ft.dtype)
    m = min(ny, my)
    top, bottom = (m + 1) // 2, m // 2
    cols = min(ft.shape[-1], mx // 2 + 1)
    out[..., :top, :cols] = ft[..., :top, :cols]
    if bottom:
        out[..., my - bottom :, :cols] = ft[..., ny - bottom :, :cols]
    return out


def lowpass_filter(shape: tuple[int, int], pixel_size_A: float, lowpass_A: float) -> np.ndarray:
    """Soft low-pass on the rfft2 grid of ``shape``: 1 below ``1/lowpass_A``, a raised
    cosine down to 0 over the next 20 % of that frequency (no ringing of a hard edge)."""
    ky = np.fft.fftfreq(shape[0], d=pixel_size_A)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size_A)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    if not lowpass_A > 0:
        return np.ones(k.shape)
    k0 = 1.0 / lowpass_A
    t = np.clip((k - k0) / (0.2 * k0), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(math.pi * t))


def fourier_resize(
    images: np.ndarray, shape: tuple[int, int], weights: np.ndarray | None = None
) -> np.ndarray:
    """Images (..., ny, nx) resampled to ``shape`` by cropping (binning) or zero-padding
    their spectrum, values kept per pixel; ``weights`` (rfft2 grid of ``shape``)
    multiplies the resampled spectrum (a filter). Pixel 0 stays at position 0: pixel
    ``i`` of the result is at ``i * n / m`` in the input."""
    images = np.asarray(images, dtype=np.float32)
    ny, nx = images.shape[-2:]
    shape = (int(shape[0]), int(shape[1]))
    ft = scipy.fft.rfft2(images, workers=_WORKERS)
    out = _crop_half_spectrum(ft, shape)
    if weights is not None:
        out *= weights.astype(np.float32)
    scale = (shape[0] * shape[1]) / (ny * nx)
    return (scipy.fft.irfft2(out, s=shape, workers=_WORKERS) * scale).astype(np.float32)


def bin_micrograph(
    image: np.ndarray, pixel_size_A: float, target_pixel_A: float, lowpass_A: float
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The micrograph Fourier-cropped to about ``target_pixel_A``, low-passed at
    ``lowpass_A`` and normalised to mean 0, sd 1.

    Returns ``(binned, binned_pixel_A, (scale_x, scale_y))``: a pixel ``(x, y)`` of the
    binned image is at ``(x * scale_x, y * scale_y)`` in the micrograph.
    """
    ny, nx = image.shape
    ratio = pixel_size_A / target_pixel_A
    my, mx = max(1, round(ny * ratio)), max(1, round(nx * ratio))
    binned_pixel_A = pixel_size_A * 0.5 * (ny / my + nx / mx)
    binned = fourier_resize(image, (my, mx), lowpass_filter((my, mx), binned_pixel_A, lowpass_A))
    binned -= binned.mean()
    sd = float(binned.std())
    if sd > 0:
        binned /= sd
    return binned, binned_pixel_A, (nx / mx, ny / my)


# --- templates -----------------------------------------------------------------------------


def sphere_directions(angular_step_deg: float) -> np.ndarray:
    """Projection directions over the *whole* sphere about ``angular_step_deg`` apart,
    as (rot, tilt, psi = 0) in degrees (n, 3).

    The whole sphere, not a half: the projection along −d is the mirror image of the one
    along d, and a mirror is not an in-plane rotation, so a half sphere would miss the
    mirrored views of a chiral particle. The points are a Fibonacci spiral of
    ``n = round(4π / step²)`` points (step in radians; equal areas of about step² each).
    """
    if not 0 < angular_step_deg <= 180:
        raise ValidationError(f"angular step must be in (0, 180] degrees, got {angular_step_deg}")
    step = math.radians(angular_step_deg)
    n = max(1, round(4.0 * math.pi / (step * step)))
    i = np.arange(n, dtype=np.float64)
    cos_tilt = 1.0 - 2.0 * (i + 0.5) / n
    golden = math.pi * (3.0 - math.sqrt(5.0))
    rot = np.degrees((i * golden) % (2.0 * math.pi))
    tilt = np.degrees(np.arccos(cos_tilt))
    return np.stack([rot, tilt, np.zeros(n)], axis=1)


def resample_templates(
    stack: np.ndarray, from_A: float, to_A: float, box_px: int, lowpass_A: float = 0.0
) -> np.ndarray:
    """Templates (n, b, b) at ``from_A`` resampled to ``to_A`` (Fourier cropping or
    padding), low-passed at ``lowpass_A`` (0 = none) and cut or zero-padded to
    ``box_px``, keeping the centre pixel ``b // 2`` at ``box_px // 2``."""
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    b = stack.shape[-1]
    m = max(2, round(b * from_A / to_A))
    m += m % 2
    # Centre pixel b//2 must land on m//2: the resize keeps pixel 0, so roll there first.
    rolled = np.roll(stack, (-(b // 2), -(b // 2)), axis=(-2, -1))
    actual_A = from_A * b / m
    out = fourier_resize(rolled, (m, m), lowpass_filter((m, m), actual_A, lowpass_A))
    out = np.roll(out, (m // 2, m // 2), axis=(-2, -1))
    return _recentre(out, box_px)


def _recentre(stack: np.ndarray, box_px: int) -> np.ndarray:
    """Cut or zero-pad (n, m, m) to (n, box, box) with centre m//2 -> box//2."""
    m = stack.shape[-1]
    out = np.zeros(stack.shape[:-2] + (box_px, box_px), dtype=np.float32)
    lo_in = max(0, m // 2 - box_px // 2)
    lo_out = max(0, box_px // 2 - m // 2)
    size = min(m - lo_in, box_px - lo_out)
    out[..., lo_out : lo_out + size, lo_out : lo_out + size] = stack[
        ..., lo_in : lo_in + size, lo_in : lo_in + size
    ]
    return out


def volume_templates(
    volume, angular_step_deg: float, pixel_size_A: float, box_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Projections of ``volume`` (:class:`hpcem.sim.volume.Volume`) along
    :func:`sphere_directions`, by the Fourier-slice projector of :mod:`hpcem.sim.projection`
    (ZYZ, RELION's convention), resampled to ``pixel_size_A`` in a ``box_px`` box.

    Returns ``(templates (n, box, box) float32, angles_deg (n, 3))``.
    """
    check_particle_size(volume.diameter_A, pixel_size_A, "templates")
    angles = sphere_directions(angular_step_deg)
    projections = volume.projector().project(angles)
    return resample_templates(projections, volume.pixel_size_A, pixel_size_A, box_px), angles


def inplane_rotations(stack: np.ndarray, inplane_step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Every template of ``stack`` (n, b, b) rotated by 0, step, 2·step, … < 360° about
    its centre pixel ``b // 2`` (cubic splines, counter-clockwise with y down the rows).

    Returns ``(rotated (n·k, b, b), psi_deg (k,))``, template-major (template i at angle j
    is row ``i * k + j``).
    """
    if not 0 < inplane_step_deg <= 360:
        raise ValidationError(f"in-plane step must be in (0, 360] degrees, got {inplane_step_deg}")
    k = max(1, round(360.0 / inplane_step_deg))
    psi = np.arange(k) * (360.0 / k)
    stack = np.asarray(stack, dtype=np.float32)
    n, b, _ = stack.shape
    c = b // 2
    # Output pixel p samples the input at R(-a) (p - c) + c, for every angle at once: one
    # spline interpolation per template (its spline coefficients computed once).
    y, x = np.mgrid[:b, :b].astype(np.float64) - c
    a = np.radians(psi)[:, None, None]
    coords = np.stack(
        [(np.cos(a) * y + np.sin(a) * x + c).ravel(), (np.cos(a) * x - np.sin(a) * y + c).ravel()]
    )
    out = np.empty((n, k, b, b), dtype=np.float32)
    for i in range(n):
        out[i] = scipy.ndimage.map_coordinates(
            stack[i], coords, order=3, mode="constant", cval=0.0
        ).reshape(k, b, b)
    return out.reshape(n * k, b, b), psi


def filter_templates(
    stack: np.ndarray, pixel_size_A: float, lowpass_A: float, ctf: dict | None
) -> np.ndarray:
    """Templates multiplied by the micrograph's CTF (astigmatism included; the dict as
    in :func:`hpcem.picking.steps.picking_steps`: defocus_u, defocus_v, defocus_angle,
    phase_shift, voltage_kV, cs_mm, amplitude_contrast) and low-passed at ``lowpass_A``;
    without a CTF, low-passed and multiplied by −1 (the CTF's sign at low frequency)."""
    from hpcem.ctf.model import ctf_2d

    stack = np.asarray(stack, dtype=np.float32)
    shape = stack.shape[-2:]
    weights = lowpass_filter(shape, pixel_size_A, lowpass_A)
    if ctf is None:
        weights = -weights
    else:
        weights = weights * ctf_2d(
            shape,
            pixel_size_A,
            float(ctf["defocus_u"]),
            float(ctf["defocus_v"]),
            float(ctf["defocus_angle"]),
            voltage_kV=float(ctf["voltage_kV"]),
            cs_mm=float(ctf["cs_mm"]),
            amplitude_contrast=float(ctf["amplitude_contrast"]),
            phase_shift_deg=float(ctf.get("phase_shift") or 0.0),
            half=True,
        )
    # The transform of the centred box: the CTF acts about the template's centre pixel.
    c = shape[0] // 2
    rolled = np.roll(stack, (-c, -c), axis=(-2, -1))
    ft = scipy.fft.rfft2(rolled, workers=_WORKERS) * weights.astype(np.float32)
    out = scipy.fft.irfft2(ft, s=shape, workers=_WORKERS).astype(np.float32)
    return np.roll(out, (c, c), axis=(-2, -1))


def disc_mask(box_px: int, radius_px: float) -> np.ndarray:
    """Boolean disc of ``radius_px`` about pixel ``box_px // 2``."""
    r = np.arange(box_px) - box_px // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px * radius_px


def normalise_in_mask(stack: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Templates made zero-mean with unit variance inside ``mask``, zero outside, and
    divided by the mask's pixel count N: then ``Σ t' f / σ_f`` is the NCC directly.
    A template constant inside the mask becomes all zeros (it correlates with nothing)."""
    stack = np.asarray(stack, dtype=np.float64)
    n = int(mask.sum())
    inside = stack[..., mask]
    mean = inside.mean(axis=-1, keepdims=True)
    sd = inside.std(axis=-1, keepdims=True)
    ok = sd[..., 0] > 1e-12 * (np.abs(mean[..., 0]) + 1e-30)
    out = np.zeros(stack.shape, dtype=np.float32)
    values = np.where(ok[..., None], (inside - mean) / (np.where(sd > 0, sd, 1.0) * n), 0.0)
    out[..., mask] = values
    return out


# --- the search ----------------------------------------------------------------------------


def _running_max_numpy(
    corr: np.ndarray, inv_sigma: np.ndarray, best: np.ndarray, best_index: np.ndarray, first: int
) -> None:
    """Numpy reference of kernel ``ncc.running_max``: for each plane j of ``corr``
    (n, ≥ny, ≥nx), ``score = corr[j] * inv_sigma``; where it beats ``best``, ``best =
    score`` and ``best_index = first + j`` (in place; ties keep the earlier template)."""
    ny, nx = best.shape
    for j in range(len(corr)):
        score = corr[j, :ny, :nx] * inv_sigma
        better = score > best
        best[better] = score[better]
        best_index[better] = first + j


def _conj_multiply(ft: np.ndarray, image_ft: np.ndarray) -> None:
    """``ft[j] = conj(ft[j]) * image_ft`` in place (two ufuncs: measured twice as fast as
    a scalar Cython loop over the complex numbers)."""
    np.conjugate(ft, out=ft)
    ft *= image_ft[None]


def _corner_ft(stack: np.ndarray, shape: tuple[int, int], columns: int) -> np.ndarray:
    """The first ``columns`` columns of the rfft2 of boxes (n, b, b) in the corner of
    zeros of ``shape``, skipping the zero rows of the first pass (the row transforms of
    only b rows) and the columns not asked for in the second."""
    rows = scipy.fft.rfft(stack, n=shape[1], axis=-1, workers=_WORKERS)
    rows = np.ascontiguousarray(rows[..., :columns])  # strided input halves fft's speed
    return scipy.fft.fft(rows, n=shape[0], axis=-2, workers=_WORKERS)


def local_inverse_sigma(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """``1 / σ_f(x)`` of ``image`` under ``mask`` centred on every pixel (zeros outside
    the image count as pixels: a window over the edge sees part image, part zeros), by
    two FFT convolutions in float64; 0 where σ is below 1e-6 of the image's sd (no
    structure: the NCC is set to 0 there). Also returns the padded transform the
    correlations reuse (``{"shape", "offset", "image_ft"}``)."""
    ny, nx = image.shape
    b = mask.shape[0]
    shape = (fast_length(ny + b), fast_length(nx + b))
    offset = b // 2
    n = float(mask.sum())
    mask_ft = np.conj(scipy.fft.rfft2(mask.astype(np.float64), s=shape, workers=_WORKERS))
    padded = np.zeros(shape, dtype=np.float64)
    padded[offset : offset + ny, offset : offset + nx] = image
    f1 = scipy.fft.rfft2(padded, workers=_WORKERS)
    s1 = scipy.fft.irfft2(f1 * mask_ft, s=shape, workers=_WORKERS)[:ny, :nx] / n
    s2 = scipy.fft.rfft2(padded * padded, workers=_WORKERS)
    s2 = scipy.fft.irfft2(s2 * mask_ft, s=shape, workers=_WORKERS)[:ny, :nx] / n
    var = np.clip(s2 - s1 * s1, 0.0, None)
    sd = np.sqrt(var)
    floor = 1e-6 * float(np.std(image)) if image.size else 0.0
    inv = np.where(sd > max(floor, 1e-30), 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    return inv.astype(np.float32), {
        "shape": shape,
        "offset": offset,
        "image_ft": f1.astype(np.complex64),
    }


def ncc_search(
    image: np.ndarray,
    templates: np.ndarray,
    mask: np.ndarray,
    use_kernel: bool = True,
    max_frequency: float | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Best NCC over ``templates`` (n, b, b; any values: they are normalised in ``mask``
    here) at every pixel of ``image`` (ny, nx), with the template centred on that pixel.

    ``max_frequency`` (cycles/pixel, <= 0.5): the image is band-limited there (it was
    low-passed), so the correlations skip the Fourier columns beyond it (a quarter of the
    FFT work at the defaults); None = use every column (exact for any image).

    Returns ``(best (ny, nx) float32, best_index (ny, nx) int32, backend)``: the highest
    score and the template that gave it (−1 where no template scored above −1, e.g. a
    constant image), and ``"cython"`` or ``"numpy"`` (the running-max kernel used).
    """
    from hpcem.kernels import backend, load

    image = np.asarray(image, dtype=np.float32)
    templates = np.asarray(templates, dtype=np.float32)
    if templates.ndim != 3 or templates.shape[1] != templates.shape[2]:
        raise ValidationError(f"templates must be (n, b, b), got shape {templates.shape}")
    if mask.shape != templates.shape[1:]:
        raise ValidationError(f"mask {mask.shape} and templates {templates.shape[1:]} differ")
    ny, nx = image.shape
    inv_sigma, pad = local_inverse_sigma(image, mask)
    shape = pad["shape"]
    # Image placed at (b//2, b//2): the correlation with a corner-placed template is then
    # the NCC numerator at the template's centre pixel, rows/columns [0, ny) x [0, nx).
    image_ft = pad["image_ft"]
    columns = image_ft.shape[1]
    if max_frequency is not None:
        columns = min(columns, math.floor(max_frequency * shape[1]) + 2)
        image_ft = np.ascontiguousarray(image_ft[:, :columns])
    normalised = normalise_in_mask(templates, mask)
    kernel = load("ncc") if use_kernel else None
    best = np.full((ny, nx), -np.inf, dtype=np.float32)
    best_index = np.full((ny, nx), -1, dtype=np.int32)
    running_max = kernel.running_max if kernel is not None else _running_max_numpy
    # Full-width half spectra of the rows, zero beyond ``columns``: irfft then needs no
    # padding copy (which made it 1.8x slower than the column passes saved).
    half = np.zeros((BATCH, ny, shape[1] // 2 + 1), dtype=np.complex64)
    for start in range(0, len(normalised), BATCH):
        ft = _corner_ft(normalised[start : start + BATCH], shape, columns)
        _conj_multiply(ft, image_ft)
        n = len(ft)
        half[:n, :, :columns] = scipy.fft.ifft(ft, axis=-2, workers=_WORKERS)[:, :ny]
        corr = scipy.fft.irfft(half[:n], n=shape[1], axis=-1, workers=_WORKERS)
        running_max(corr.astype(np.float32, copy=False), inv_sigma, best, best_index, start)
    best[~np.isfinite(best)] = 0.0
    return best, best_index, backend("ncc") if use_kernel else "numpy"


def pick_micrograph(
    image: np.ndarray,
    pixel_size_A: float,
    templates: np.ndarray,
    template_pixel_A: float,
    diameter_A: float,
    ctf: dict | None = None,
    *,
    lowpass_A: float = 20.0,
    inplane_step_deg: float = 10.0,
    threshold: float = 0.0,
    min_distance_A: float = 0.0,
    max_picks: int | None = None,
    border_fraction: float = 0.4,
    use_kernel: bool = True,
) -> dict:
    """Template picking on one micrograph: bin, search, peaks.

    Parameters
    ----------
    image, pixel_size_A : the micrograph and its pixel size (Å).
    templates, template_pixel_A : (n, b, b) projections (protein bright) and their pixel
        size; resampled to the search grid (:func:`working_pixel_size_A`) here.
    diameter_A : particle diameter: sets the binning, the mask (a disc of this
        diameter) and the default minimum distance (0.8 diameter).
    ctf : the micrograph's CTF (see :func:`filter_templates`), or None.
    border_fraction : no pick closer than this × diameter to the edge.

    Returns
    -------
    dict with ``xy`` (n, 2) in micrograph pixels, ``scores`` (n,) NCC, ``n_above`` (picks
    above the threshold before the ``max_picks`` cap), ``template_index`` (n,) (row of
    the rotated stack: template ``i // n_angles`` at angle ``psi[i % n_angles]``),
    ``score_map`` and ``binned`` (search grid), ``binned_pixel_A``, ``scale`` (x, y),
    ``backend``.
    """
    from hpcem.picking.peaks import find_peaks

    work_A = working_pixel_size_A(diameter_A, pixel_size_A, lowpass_A)
    check_particle_size(diameter_A, pixel_size_A, "micrograph")
    binned, binned_A, scale = bin_micrograph(image, pixel_size_A, work_A, lowpass_A)
    diameter_px = diameter_A / binned_A
    box = template_box_px(diameter_px)
    resampled = resample_templates(templates, template_pixel_A, binned_A, box)
    rotated, psi = inplane_rotations(resampled, inplane_step_deg)
    filtered = filter_templates(rotated, binned_A, lowpass_A, ctf)
    mask = disc_mask(box, 0.5 * diameter_px)
    # bin_micrograph's low-pass is exactly zero beyond 1.2 / lowpass_A.
    band = 1.2 * binned_A / lowpass_A if lowpass_A > 0 else None
    score, index, backend = ncc_search(
        binned, filtered, mask, use_kernel=use_kernel, max_frequency=band
    )
    min_distance_px = (min_distance_A or 0.8 * diameter_A) / binned_A
    border_px = math.ceil(border_fraction * diameter_px)
    xy, values = find_peaks(score, min_distance_px, threshold=threshold, border_px=border_px)
    n_above = len(values)
    if max_picks is not None:
        xy, values = xy[:max_picks], values[:max_picks]
    iy = np.clip(np.rint(xy[:, 1]).astype(int), 0, score.shape[0] - 1)
    ix = np.clip(np.rint(xy[:, 0]).astype(int), 0, score.shape[1] - 1)
    return {
        "xy": xy * np.array(scale),
        "scores": values,
        "n_above": n_above,
        "template_index": index[iy, ix],
        "n_angles": len(psi),
        "score_map": score,
        "binned": binned,
        "binned_pixel_A": binned_A,
        "scale": scale,
        "backend": backend,
    }
