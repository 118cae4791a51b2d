"""Diagnostic picture of a CTF fit: the spectrum with the fitted model on one half.

Left half: the micrograph's power spectrum up to the band's high end, background
removed and envelope flattened (as :mod:`hpcem.ctf.fit2d` sees it), with the zeros of
the fitted CTF marked in red on a 60° wedge (they must continue the dark Thon rings);
right half: the fitted model's CTF² oscillation; blue marks show the fit band's ends.
Written as an RGB PNG by a few lines of zlib (no plotting library, so one picture per
micrograph costs little next to the fit).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from hpcem.ctf.model import ctf_2d, ctf_zeros_1d, defocus_at_azimuth
from hpcem.errors import ValidationError


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as a PNG file's bytes: an indexed (palette) PNG
    when it has at most 256 colours (a third of the size), RGB otherwise."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValidationError(f"expected an (h, w, 3) image, got shape {rgb.shape}")
    h, w, _ = rgb.shape
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
    packed |= rgb[..., 2]
    colours, index = np.unique(packed, return_inverse=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    if len(colours) <= 256:
        palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
        rows = index.reshape(h, w).astype(np.uint8)
        header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
        extra = chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    else:
        rows = rgb.reshape(h, 3 * w)
        header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        extra = b""
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def diagnostic_image(
    spectrum_half: np.ndarray,
    pixel_size_A: float,
    tile_px: int,
    fit: dict,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    res_low_A: float,
    res_high_A: float,
    min_size_px: int = 384,
    max_size_px: int = 420,
) -> np.ndarray:
    """The picture as an (n, n, 3) uint8 array (see the module docstring), between
    ``min_size_px`` (small spectra are enlarged) and ``max_size_px`` (large ones binned).

    ``spectrum_half`` is a cropped centred half plane (as fitted by either strategy);
    ``fit`` has ``defocus_u``, ``defocus_v``, ``defocus_angle`` (and ``phase_shift``).
    """
    from hpcem.ctf.fit2d import background_subtracted, full_plane

    bin_k = 1.0 / (tile_px * pixel_size_A)
    r_data = spectrum_half.shape[1] - 1
    r = min(r_data, math.ceil(1.0 / (res_high_A * bin_k)) + 2)
    c = r_data
    sigma = max(3.0, r / 12.0)
    data = full_plane(background_subtracted(spectrum_half, sigma))[
        c - r : c + r + 1, c - r : c + r + 1
    ]
    u, v, angle = (float(fit[k]) for k in ("defocus_u", "defocus_v", "defocus_angle"))
    phase = float(fit.get("phase_shift", 0.0) or 0.0)
    n = 2 * r + 1
    model = ctf_2d(
        (n, n),
        1.0 / (n * bin_k),
        u,
        v,
        angle,
        voltage_kV,
        cs_mm,
        amplitude_contrast,
        phase,
        centered=True,
    )
    model = 2.0 * (model**2 - 0.5)  # the CTF² oscillation, -1..1
    from scipy.ndimage import gaussian_filter

    # Smoothed by 1 px for the eye (rings are wider than that); the fit used raw pixels.
    data = gaussian_filter(data, 1.0)
    data = data / (3.0 * data.std() + 1e-30)
    picture = np.where(np.arange(n)[None, :] < r, np.clip(data, -1, 1), model)
    # Large spectra are shown binned (box mean, keeping zero frequency on a pixel): a
    # noisy 600-px RGB picture would cost ~0.5 MB per micrograph.
    f = max(1, math.ceil(n / max_size_px))
    if f > 1:
        from scipy.ndimage import uniform_filter

        start = r % f
        picture = uniform_filter(picture, f, mode="nearest")[start::f, start::f]
        r, n, bin_k = r // f, picture.shape[0], bin_k * f
    picture[:, r] = 1.0  # the dividing line
    # 64 grey levels are plenty for a noisy spectrum and keep the PNG small (palette).
    gray = (np.round(31.5 * (picture + 1.0)) * (255.0 / 63.0)).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)

    # Zeros of the fitted CTF on a wedge of the data half (azimuths 150°..210°, the rest
    # left bare to show the rings), band ends in blue.
    azimuth = np.radians(np.linspace(150.0, 210.0, 240))
    defocus = defocus_at_azimuth(azimuth, u, v, angle)
    marks = []
    for d, a in zip(defocus, azimuth):
        try:
            zeros = ctf_zeros_1d(60, d, voltage_kV, cs_mm, amplitude_contrast, phase)
        except ValidationError:
            zeros = np.zeros(0)
        zeros = zeros[(zeros >= 1.0 / res_low_A) & (zeros <= 1.0 / res_high_A)]
        marks.append((zeros / bin_k, a, (220, 30, 30)))
        band = np.array([1.0 / res_low_A, 1.0 / res_high_A]) / bin_k
        marks.append((band, a, (40, 90, 255)))
    for radii, a, colour in marks:
        # Rows go with ky (+y up after the flip below), columns with kx.
        ys = np.round(r + radii * math.sin(a)).astype(np.intp)
        xs = np.round(r + radii * math.cos(a)).astype(np.intp)
        ok = (ys >= 0) & (ys < n) & (xs >= 0) & (xs < r)
        rgb[ys[ok], xs[ok]] = colour
    rgb = rgb[::-1]  # +ky up, as in a plot with origin="lower"
    scale = max(1, math.ceil(min_size_px / n))
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return rgb


def write_diagnostic_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write the picture to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(png_bytes(rgb))
    os.replace(tmp, path)
    return path
