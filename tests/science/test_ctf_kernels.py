"""The CTF kernels (periodogram, PNG picture) against their numpy references, and the
rules that pick the tile and the band."""

import math
import struct
import zlib

import numpy as np
import pytest

from hpcem.ctf import spectrum
from hpcem.ctf.diagnostic import diagnostic_image, png_bytes
from hpcem.ctf.estimate import estimate_ctf
from hpcem.ctf.model import electron_wavelength_A
from hpcem.sim import simulate_micrograph


def test_periodogram_kernel_matches_numpy(monkeypatch):
    pytest.importorskip("hpcem.kernels.ctf_periodogram", reason="kernel not built")
    image = np.random.default_rng(0).normal(size=(700, 900)).astype(np.float32) * 1e3
    compiled = spectrum.tiled_power_spectrum(image, 256)
    monkeypatch.setattr(spectrum, "load", lambda name: None)
    reference = spectrum.tiled_power_spectrum(image, 256)
    np.testing.assert_allclose(compiled, reference, rtol=1e-5)


def test_periodogram_of_white_noise_is_flat_with_the_right_level():
    """Mean-free white noise of variance σ² has E|F|² = σ² Σ taper² at every frequency."""
    sigma = 2.0
    image = np.random.default_rng(1).normal(scale=sigma, size=(2048, 2048)).astype(np.float32)
    power = spectrum.tiled_power_spectrum(image, 256)
    expected = sigma**2 * float((spectrum._taper(256).astype(np.float64) ** 2).sum())
    away_from_dc = np.delete(power, 128, axis=0)[:, 5:]
    assert away_from_dc.mean() == pytest.approx(expected, rel=0.01)


def test_tiles_cover_the_whole_micrograph():
    assert spectrum.tile_starts(3838, 1024, 0.0) == [0, 938, 1876, 2814]
    assert spectrum.tile_starts(1024, 1024, 0.0) == [0]
    assert spectrum.tile_starts(1000, 256, 0.5)[-1] == 1000 - 256


@pytest.mark.parametrize(
    ("shape", "pixel_size_A", "tile"),
    [
        ((4096, 4096), 1.0, 1024),
        ((4096, 4096), 0.67, 2048),
        ((4096, 4096), 1.5, 512),
        ((4096, 4096), 0.3, 2048),  # capped
        ((700, 900), 1.0, 512),  # no larger than the micrograph
        ((200, 300), 1.0, 256),  # the minimum: the caller rejects the micrograph
    ],
)
def test_auto_tile_size(shape, pixel_size_A, tile):
    assert spectrum.auto_tile_size(shape, pixel_size_A) == tile


def test_rings_in_the_fitted_band_span_three_samples():
    """At the band's end the ring spacing 1/(2 λ Δf k) is 3 spectrum samples (1/tile Å),
    for Δf 10 % above the defocus found (room for astigmatism; the band is set from the
    search's defocus, before the last refinement moves it by a fraction of a step)."""
    image, _ = simulate_micrograph((1024, 1024), 1.0, 30000.0, snr=0.1, seed=3)
    result = estimate_ctf(image, 1.0, tile_size_px=512, astigmatism=False)
    k_end = 1.0 / result["band_high_A"]
    spacing = 1.0 / (2 * electron_wavelength_A(300.0) * 1.1 * result["defocus_1d"] * k_end)
    assert spacing * 512 == pytest.approx(3.0, rel=0.02)
    assert result["defocus_u"] == pytest.approx(30000.0, rel=0.01)


@pytest.mark.parametrize("n_colours", [2, 300])
def test_png_bytes_is_a_valid_png(n_colours):
    """Few colours: an indexed PNG (palette); more than 256: RGB. Decoded here from the
    PNG specification and by Pillow (matplotlib's image reader)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(n_colours, 3), dtype=np.uint8)
    rgb = colours[rng.integers(0, n_colours, size=(30, 20))]
    rgb[0, :n_colours] = colours[: min(n_colours, 20)]
    data = png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth) == (20, 30, 8)
    assert colour_type == (3 if n_colours <= 256 else 2)
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8 : start - 4])
    raw = np.frombuffer(zlib.decompress(data[start : start + length]), np.uint8)
    rows = raw.reshape(30, -1)
    assert np.all(rows[:, 0] == 0)  # filter byte "none" on every row
    import io

    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decoded, rgb)


def test_diagnostic_marks_the_fitted_zeros_on_the_dark_rings():
    """The red marks (CTF zeros of the fit) fall where the spectrum's half is darker
    than average: the picture agrees with the fit it shows."""
    image, _ = simulate_micrograph((1024, 1024), 1.0, 12000.0, 11500.0, 30.0, seed=5)
    fit = estimate_ctf(image, 1.0, return_spectrum=True)
    rgb = diagnostic_image(
        fit.pop("spectrum"),
        1.0,
        fit["tile_size_px"],
        fit,
        300.0,
        2.7,
        0.1,
        30.0,
        fit["res_high_A"],
        max_size_px=4096,
    )
    red = (rgb[..., 0] == 220) & (rgb[..., 1] == 30)
    assert red.sum() > 500
    # Grey level of the data half just beside each red mark (one pixel outwards along x).
    ys, xs = np.nonzero(red)
    keep = xs + 1 < rgb.shape[1] // 2
    beside = rgb[ys[keep], xs[keep] + 1, 0].astype(float)
    data_half = rgb[:, : rgb.shape[1] // 2 - 2, 0].astype(float)
    assert beside.mean() < data_half.mean() - 5.0
    assert math.isfinite(fit["fit_resolution_A"])
