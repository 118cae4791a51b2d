"""Particle extraction (``particles.extract``): conventions against outside references.

* the cut: plain numpy slicing written here, and a blob at a known sub-pixel position
  (the recorded shift puts it back);
* normalisation: background statistics computed here on simulated particles;
* phase flipping: the EMX CTF formula written here, with np.sign-style flips;
* binning: centred Fourier cropping with scipy.fft written here, and a cosine of known
  period;
* RELION 3.1 ``relion_preprocess --extract`` on the same micrograph and coordinates
  (skipped where RELION is not installed);
* the protocol: steps and register on a small project (bad micrographs and coordinates
  included), and one real run (slow).
"""

from __future__ import annotations

import importlib
import math
import shutil
import warnings

import numpy as np
import pytest
import scipy.fft

from hpcem.command import run_command
from hpcem.errors import ItemRejected, ValidationError
from hpcem.io import read_header, read_image, write_mrc
from hpcem.kernels import load
from hpcem.particles import extract as ex
from hpcem.sim import simulate_micrograph

PIXEL_A = 1.5
CTF = {
    "defocus_u": 15000.0,
    "defocus_v": 13000.0,
    "defocus_angle": 30.0,
    "phase_shift": 0.0,
    "voltage_kV": 300.0,
    "cs_mm": 2.7,
    "amplitude_contrast": 0.1,
}
needs_kernel = pytest.mark.skipif(load(ex.KERNEL) is None, reason="extract kernel not built")


def _micrograph(shape=(512, 512), n=20, seed=3):
    return simulate_micrograph(
        shape, PIXEL_A, 15000.0, 13000.0, 30.0, n_particles=n, particle_diameter_A=100.0, seed=seed
    )


def _plain(**kw):
    return {"normalize": False, "invert_contrast": False} | kw


# --- the cut and the sub-pixel remainder ----------------------------------------------------
def test_cut_at_the_nearest_pixel_equals_plain_slicing():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(200, 300)).astype(np.float32)
    xy = np.array([[123.3, 101.7], [80.5, 60.49], [150.0, 99.0]])
    got = ex.extract_particles(image, xy, 32, PIXEL_A, **_plain())
    # nearest pixel, halves up: (123, 102), (81, 60), (150, 99); centre at index 16
    for box, (cx, cy) in zip(got.stack, [(123, 102), (81, 60), (150, 99)]):
        np.testing.assert_array_equal(box, image[cy - 16 : cy + 16, cx - 16 : cx + 16])
    # remainder as a shift in Å, RELION 3.1 origin sign: centre = cut pixel - shift
    expected = (np.array([[123, 102], [81, 60], [150, 99]]) - xy) * PIXEL_A
    np.testing.assert_allclose(got.shifts_A, expected, atol=1e-12)
    assert list(got.kept) == [0, 1, 2] and not got.edge_padded.any()


def test_particle_sits_at_box_centre_minus_shift():
    """A gaussian blob at a known sub-pixel position: its centroid in the box is
    box_centre - shift / pixel_size (the documented convention)."""
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    x0, y0 = 60.37, 70.81
    image = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 3.0**2)).astype(np.float32)
    got = ex.extract_particles(image, [[x0, y0]], 40, PIXEL_A, **_plain())
    box = got.stack[0].astype(np.float64)
    by, bx = np.mgrid[0:40, 0:40]
    centroid = np.array([(box * bx).sum(), (box * by).sum()]) / box.sum()
    np.testing.assert_allclose(centroid, 20 - got.shifts_A[0] / PIXEL_A, atol=1e-3)


def test_edges_dropped_or_padded_with_the_nearest_pixel():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(100, 120)).astype(np.float32)
    xy = np.array(
        [[60.0, 50.0], [5.2, 50.0], [118.0, 97.0], [-3.0, 50.0], [60.0, 100.6], [np.nan, 9.0]]
    )
    dropped = ex.extract_particles(image, xy, 32, PIXEL_A, edge="drop", **_plain())
    assert list(dropped.kept) == [0]
    assert list(dropped.status) == [ex.INSIDE, ex.CROSSES_EDGE, ex.CROSSES_EDGE] + [ex.OUTSIDE] * 3
    padded = ex.extract_particles(image, xy, 32, PIXEL_A, edge="pad", **_plain())
    assert list(padded.kept) == [0, 1, 2] and list(padded.edge_padded) == [False, True, True]
    big = np.pad(image, 16, mode="edge")  # RELION: outside = nearest pixel inside
    for box, (cx, cy) in zip(padded.stack, [(60, 50), (5, 50), (118, 97)]):
        np.testing.assert_array_equal(box, big[cy : cy + 32, cx : cx + 32])


# --- normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("ramp", [True, False])
def test_background_has_mean_0_and_sd_1_on_simulated_particles(ramp):
    image, truth = _micrograph()
    got = ex.extract_particles(image, truth["coordinates_px"], 96, PIXEL_A, ramp=ramp)
    assert len(got.kept) >= 10
    # background written here: outside the circle of radius int(0.75 * 96 / 2) = 36
    d = np.arange(96) - 48
    outside = np.hypot(d[:, None], d[None, :]) > 36
    bg = got.stack[:, outside].astype(np.float64)
    assert np.abs(bg.mean(axis=1)).max() < 0.05
    assert np.abs(bg.std(axis=1) - 1).max() < 0.05
    # inverted: the particles (dark in the micrograph) are now brighter than the background
    inside = np.hypot(d[:, None], d[None, :]) < 20
    assert (got.stack[:, inside].mean(axis=1) > 0).mean() >= 0.8


@needs_kernel
@pytest.mark.parametrize(
    "ramp, invert, normalize", [(True, True, True), (False, False, True), (True, True, False)]
)
def test_kernel_equals_the_numpy_reference(ramp, invert, normalize):
    rng = np.random.default_rng(2)
    image = (rng.normal(10, 3, (150, 170)) + np.linspace(0, 8, 170)).astype(np.float32)
    centres = np.array([[80, 70], [3, 3], [169, 149], [20, 140], [100, 10]])
    got = ex.cut_and_normalise(image, centres, 48, 18, ramp, normalize, invert)
    ref = ex.cut_boxes_numpy(image, centres, 48)
    ref = (
        ex.normalise_boxes_numpy(ref, 18, ramp, invert)
        if normalize
        else ref * (-1 if invert else 1)
    )
    np.testing.assert_allclose(got, ref, atol=2e-5)
    boxes = ex.cut_boxes_numpy(image, centres, 48)
    np.testing.assert_allclose(
        ex.normalise_boxes(boxes.copy(), 18, ramp, invert),
        ex.normalise_boxes_numpy(boxes.copy(), 18, ramp, invert),
        atol=2e-5,
    )


def test_dust_is_replaced_by_background_noise():
    rng = np.random.default_rng(4)
    image = rng.normal(0, 1, (200, 200)).astype(np.float32)
    image[50, 52] = 60.0  # white dust in the background of the first box
    image[95, 100] = -60.0  # black dust inside the particle circle of the second box
    xy = [[60, 60], [100, 100]]
    clean = ex.extract_particles(image, xy, 32, PIXEL_A, dust_sd=5.0, seed=1)
    assert clean.dust_pixels == 2
    assert np.abs(clean.stack).max() < 6
    kept = ex.extract_particles(image, xy, 32, PIXEL_A)
    assert np.abs(kept.stack).max() > 20


# --- Fourier operations against references written here ---------------------------------------
def _wavelength_A(kv):
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


def _emx_flip_signs(n, pixel_A, c):
    """+1/-1 on the fft2 grid: -1 where the CTF (EMX: positive contrast transfer at low
    frequency, sqrt(1-A^2) sin(chi) + A cos(chi)) is negative."""
    k = np.fft.fftfreq(n, d=pixel_A)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    k2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx)
    u, v, angle = c["defocus_u"], c["defocus_v"], math.radians(c["defocus_angle"])
    defocus = 0.5 * (u + v + (u - v) * np.cos(2 * (azimuth - angle)))
    lam = _wavelength_A(c["voltage_kV"])
    chi = math.pi * lam * defocus * k2 - 0.5 * math.pi * c["cs_mm"] * 1e7 * lam**3 * k2**2
    a = c["amplitude_contrast"]
    return np.sign(math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))


def _without_nyquist(boxes):
    """Boxes with no Fourier component at the Nyquist row or column (where a flip or a
    crop of a one-sided array and of the full array legitimately differ)."""
    ft = np.fft.fft2(boxes)
    n = boxes.shape[-1]
    ft[..., n // 2, :] = 0
    ft[..., :, n // 2] = 0
    return np.fft.ifft2(ft).real.astype(np.float32)


def test_phase_flip_matches_the_emx_formula():
    rng = np.random.default_rng(5)
    boxes = _without_nyquist(rng.normal(size=(3, 64, 64)))
    got = ex.phase_flip(boxes, PIXEL_A, CTF)
    signs = _emx_flip_signs(64, PIXEL_A, CTF)
    assert (signs == -1).mean() > 0.3  # many rings flipped
    ref = np.fft.ifft2(np.fft.fft2(boxes) * signs).real
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("new", [32, 48])
def test_fourier_crop_matches_scipy_cropping(new):
    rng = np.random.default_rng(6)
    n = 64
    ft = scipy.fft.fftshift(scipy.fft.fft2(rng.normal(size=(2, n, n))), axes=(-2, -1))
    ft[:, : (n - new) // 2 + 1] = ft[:, :, : (n - new) // 2 + 1] = 0  # band-limited below
    ft[:, (n + new) // 2 :] = ft[:, :, (n + new) // 2 :] = 0  # the new Nyquist
    boxes = scipy.fft.ifft2(scipy.fft.ifftshift(ft, axes=(-2, -1))).real.astype(np.float32)
    lo = (n - new) // 2
    centred = scipy.fft.fftshift(scipy.fft.fft2(boxes), axes=(-2, -1))[
        :, lo : lo + new, lo : lo + new
    ]
    ref = scipy.fft.ifft2(scipy.fft.ifftshift(centred, axes=(-2, -1))).real * (new / n) ** 2
    got = ex.fourier_crop(boxes, new)
    assert got.shape == (2, new, new)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got.mean() == pytest.approx(boxes.mean(), abs=1e-6)


def test_binning_by_two_resamples_a_cosine_exactly():
    n = 64
    x = np.arange(n)
    box = np.cos(2 * np.pi * 5 * x / n)[None, :] * np.ones((n, 1)) + 3.0
    got = ex.fourier_crop(box[None].astype(np.float32), 32)[0]
    x2 = np.arange(32)
    expected = np.broadcast_to(np.cos(2 * np.pi * 5 * x2 / 32) + 3.0, (32, 32))
    np.testing.assert_allclose(got, expected, atol=1e-5)


# --- bad parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"box_size_px": 300}, "box 300 px is larger than the micrograph"),
        ({"box_size_px": 33}, "box size must be even"),
        ({"rescaled_box_px": 40, "box_size_px": 32}, "larger than the box"),
        ({"bg_radius_px": 20}, "background radius 20 px does not fit a 32-px box"),
        ({"edge": "wrap"}, "edge must be one of"),
    ],
)
def test_bad_parameters_are_refused(kw, message):
    image = np.zeros((200, 256), dtype=np.float32)
    args = {"box_size_px": 32} | kw
    with pytest.raises(ValidationError, match=message):
        ex.extract_particles(image, [[100, 100]], args.pop("box_size_px"), PIXEL_A, **args)


# --- RELION 3.1 relion_preprocess --extract ----------------------------------------------------
def _relion_inputs(tmp_path, image, xy):
    write_mrc(tmp_path / "mic1.mrc", image, PIXEL_A)
    (tmp_path / "coords").mkdir()
    lines = [f"{x:.6f} {y:.6f}" for x, y in xy]
    (tmp_path / "coords" / "mic1_pick.star").write_text(
        "\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n" + "\n".join(lines) + "\n"
    )
    c = CTF
    (tmp_path / "mics.star").write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
        "_rlnMicrographPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
        f"_rlnAmplitudeContrast #6\nopticsGroup1 1 {PIXEL_A} {c['voltage_kV']} {c['cs_mm']} "
        f"{c['amplitude_contrast']}\n\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n"
        "_rlnOpticsGroup #2\n_rlnDefocusU #3\n_rlnDefocusV #4\n_rlnDefocusAngle #5\n"
        f"mic1.mrc 1 {c['defocus_u']} {c['defocus_v']} {c['defocus_angle']}\n"
    )


@pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="RELION not installed")
@pytest.mark.parametrize(
    "relion_args, ours",
    [
        (["--bg_radius", "24"], {}),
        (["--bg_radius", "24", "--no_ramp"], {"ramp": False}),
        (["--bg_radius", "12", "--scale", "32"], {"rescaled_box_px": 32, "bg_radius_px": 12}),
        (["--bg_radius", "24", "--phase_flip"], {"ctf": CTF}),
    ],
    ids=["norm", "no_ramp", "scale", "phase_flip"],
)
def test_particles_equal_relion_preprocess_extract(tmp_path, relion_args, ours):
    """Same micrograph and coordinates (sub-pixel remainders below 0.5, where RELION's
    truncation and our rounding cut at the same pixel; two boxes cross the edge)."""
    image, truth = _micrograph()
    xy = np.floor(truth["coordinates_px"]) + 0.3
    xy = np.vstack([xy, [[10.0, 200.3], [500.3, 20.0]]])
    _relion_inputs(tmp_path, image, xy)
    argv = [
        "relion_preprocess",
        "--i",
        "mics.star",
        "--coord_dir",
        "coords/",
        "--coord_suffix",
        "_pick.star",
        "--part_dir",
        "out/",
        "--part_star",
        "out/particles.star",
        "--extract",
        "--extract_size",
        "64",
        "--norm",
        "--invert_contrast",
        *relion_args,
    ]
    run_command(argv, cwd=tmp_path, timeout_s=120)  # raises with RELION's output
    relion = read_image(tmp_path / "out" / "mic1.mrcs")
    kw = {"bg_radius_px": 24, "edge": "pad"} | ours
    got = ex.extract_particles(image, xy, 64, PIXEL_A, **kw)
    assert list(got.edge_padded[-2:]) == [True, True]
    assert relion.shape == got.stack.shape
    # Measured: equal to float32 rounding (max 1e-6) in all four cases.
    np.testing.assert_allclose(got.stack, relion, atol=1e-4)


# --- the protocol --------------------------------------------------------------------------------
def _finished_run(project, label, output, set_type, columns, optics):
    """A run holding one output set, finished (stands in for an import or a picker)."""
    run = project.create_run(label)
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    with project.create_set(run.id, output, set_type) as writer:
        writer.set_optics(optics)
        writer.append_columns(columns)
    project.set_output(run.id, output, set_type, len(next(iter(columns.values()))))
    project.transition(run.id, ("running",), "finished", attempt=1)
    return f"{run.id}:{output}"


OPTICS = {
    "optics_group": [1],
    "voltage_kV": [300.0],
    "spherical_aberration_mm": [2.7],
    "amplitude_contrast": [0.1],
    "pixel_size_A": [PIXEL_A],
}


def _project_inputs(project, tmp_path):
    """Micrographs 11 (good), 12 (smaller than the box), 13 (no coordinates), 14 (no
    CTF); coordinates: on 11 one outside and one crossing the edge, three on 99 (no such
    micrograph)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    image, truth = _micrograph()
    write_mrc(raw / "a.mrc", image, PIXEL_A)
    write_mrc(raw / "b.mrc", image[:64, :64], PIXEL_A)
    write_mrc(raw / "c.mrc", image, PIXEL_A)
    write_mrc(raw / "d.mrc", image, PIXEL_A)
    mics = _finished_run(
        project,
        "test.import",
        "micrographs",
        "hpcem.SetOfMicrographs",
        {"id": [11, 12, 13, 14], "image": [str(raw / f"{c}.mrc") for c in "abcd"]},
        OPTICS,
    )
    c = truth["coordinates_px"]
    good = c[np.all((c >= 48) & (c <= 512 - 48), axis=1)][:8]
    assert len(good) == 8
    xy = np.vstack([good, [[-5.0, 100.0], [20.0, 300.0]], [[100, 100]] * 2, [[50, 50]] * 3])
    mic = [11] * 10 + [12, 14] + [99] * 3
    coords = _finished_run(
        project,
        "test.pick",
        "coordinates",
        "hpcem.SetOfCoordinates",
        {
            "id": list(range(100, 100 + len(mic))),
            "micrograph_id": mic,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "score": np.linspace(0, 1, len(mic)),
        },
        OPTICS,
    )
    ctfs = _finished_run(
        project,
        "test.ctf",
        "ctfs",
        "hpcem.SetOfCTFs",
        {
            "micrograph_id": [11, 12, 13],
            "defocus_u": [15000.0, 14000.0, 13000.0],
            "defocus_v": [13000.0, 13500.0, 12000.0],
            "defocus_angle": [30.0, 10.0, 20.0],
            "fit_resolution": [4.5, 5.0, 6.0],
            "fit_score": [0.9, 0.8, 0.7],
        },
        OPTICS,
    )
    return {"micrographs": mics, "coordinates": coords, "ctfs": ctfs}, image, xy


def _run_in_process(project, params, inputs, monkeypatch):
    """Plan the run, run every step here (in the project folder, as workers do), then
    register; returns the run, the step results and rejections, and register's result."""
    from hpcem.protocols.particles_extract import ExtractParticles, register_particles

    from hpcem.execution import runs as lifecycle
    from hpcem.protocol.context import RunContext

    run = lifecycle.create_run(project, "particles.extract", params, inputs)
    ctx = RunContext(project, run.id, run.params, run.inputs)
    monkeypatch.chdir(project.path)
    results, rejections = {}, {}
    for step in ExtractParticles().steps(ctx):
        if step.controller:
            continue
        module, func = step.func.split(":")
        try:
            results[step.name] = getattr(importlib.import_module(module), func)(**step.args)
        except ItemRejected as exc:
            rejections[step.name] = str(exc)
    ctx.set_results(results, rejections)
    ctx.step_name = "register"
    return run, results, rejections, register_particles(ctx)


def test_protocol_registers_particles_with_their_lineage(project, tmp_path, monkeypatch):
    inputs, image, xy = _project_inputs(project, tmp_path)
    params = {"box_size_px": 96, "rescaled_box_px": 48, "phase_flip": True}
    run, results, rejections, result = _run_in_process(project, params, inputs, monkeypatch)
    assert sorted(results) == ["extract/000000"]  # 13 has no coordinates: no step
    assert "box 96 px is larger than the micrograph (64x64 px)" in rejections["extract/000001"]
    assert "micrograph 14: no CTF for it in input ctfs" in rejections["extract/000003"]
    assert result["count"] == 8 and result["per_micrograph"] == {"11": 8}
    assert [r["micrograph_id"] for r in result["rejected"]] == [12, 14]
    assert result["dropped_outside"] == 1 and result["dropped_edge"] == 1
    assert result["dropped_ids"] == [
        {"id": 108, "reason": "outside the micrograph"},
        {"id": 109, "reason": "box crosses the edge"},
    ]
    assert result["no_coordinates"] == [13] and result["coordinates_without_micrograph"] == 3
    assert result["backend"] in ("cython", "numpy")
    # the gallery: a PNG of the 8 particles, 8 tiles of 48 px drawn at least 96 px wide
    gallery = project.path / result["gallery"]
    head = gallery.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(head[16:20], "big") >= 8 * 96

    particles = project.open_set(run.id, "particles")
    cols = particles.read_columns()
    assert list(cols["id"]) == list(range(100, 108))  # the coordinates' ids: lineage
    assert list(cols["micrograph_id"]) == [11] * 8 and list(cols["image_index"]) == list(range(8))
    # coord = the box centre, the nearest pixel (RELION's rlnCoordinateX/Y), and the
    # remainder as an origin: picked position = coord - shift / pixel size
    np.testing.assert_array_equal(cols["coord_x"], np.floor(xy[:8, 0] + 0.5))
    np.testing.assert_array_equal(cols["coord_y"], np.floor(xy[:8, 1] + 0.5))
    picked = (
        np.stack([cols["coord_x"], cols["coord_y"]], 1)
        - np.stack([cols["shift_x"], cols["shift_y"]], 1) / PIXEL_A
    )
    np.testing.assert_allclose(picked, xy[:8], atol=1e-4)
    np.testing.assert_allclose(cols["coord_score"], np.linspace(0, 1, 15)[:8], rtol=1e-6)
    assert set(cols["defocus_u"]) == {15000.0} and set(cols["defocus_angle"]) == {30.0}
    np.testing.assert_allclose(cols["ctf_fit_resolution"], 4.5)
    np.testing.assert_allclose(cols["ctf_fit_score"], 0.9, rtol=1e-6)
    assert list(cols["edge_padded"]) == [0] * 8 and list(cols["optics_group"]) == [1] * 8
    # binned 96 -> 48: twice the pixel size, in the optics and in the stack header
    assert float(particles.optics["pixel_size_A"][0]) == pytest.approx(2 * PIXEL_A)
    assert int(particles.optics["image_size_px"][0]) == 48
    stack_path = cols["image"][0]
    assert read_header(stack_path).pixel_size_A == pytest.approx(2 * PIXEL_A)
    expected = ex.extract_particles(
        image, xy[:10], 96, PIXEL_A, rescaled_box_px=48, ctf=CTF, seed=11
    ).stack
    np.testing.assert_allclose(read_image(stack_path), expected, atol=1e-6)


def test_protocol_pads_edges_when_asked(project, tmp_path, monkeypatch):
    inputs, _, _ = _project_inputs(project, tmp_path)
    del inputs["ctfs"]
    run, _, _, result = _run_in_process(
        project, {"box_size_px": 96, "edge": "pad"}, inputs, monkeypatch
    )
    # 11: 8 inside and 1 padded kept, 1 outside dropped; 14: 1 kept (no CTF needed)
    assert result["count"] == 10 and result["padded"] == 1
    cols = project.open_set(run.id, "particles").read_columns(["id", "edge_padded"])
    assert list(cols["id"][cols["edge_padded"] == 1]) == [109]
    assert [r["micrograph_id"] for r in result["rejected"]] == [12]


def test_protocol_validation(project, tmp_path):
    from hpcem.execution import runs as lifecycle

    inputs, _, _ = _project_inputs(project, tmp_path)
    del inputs["ctfs"]
    with pytest.raises(ValidationError) as info:
        lifecycle.create_run(
            project,
            "particles.extract",
            {"box_size_px": 95, "rescaled_box_px": 100, "phase_flip": True},
            inputs,
        )
    text = str(info.value)
    assert "box_size_px must be even, got 95" in text
    assert "rescaled_box_px must be 0 or even" in text
    assert "phase_flip needs input ctfs" in text


@pytest.mark.slow  # a controller, workers and the import: about 5 s
def test_protocol_run_on_the_local_executor(project, tmp_path, wait_for_run):
    from hpcem.execution import runs as lifecycle

    inputs, _, _ = _project_inputs(project, tmp_path)
    run = lifecycle.create_run(project, "particles.extract", {"box_size_px": 64}, inputs)
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    particles = project.open_set(run.id, "particles")
    assert len(particles) == 8 and int(particles.optics["image_size_px"][0]) == 64
    assert read_image(particles.column("image")[0]).shape == (8, 64, 64)


def test_numpy_fallback_gives_the_same_particles(monkeypatch):
    """Without the compiled kernel (a checkout never built) the pipeline is the same."""
    image, truth = _micrograph()
    xy = truth["coordinates_px"]
    compiled = ex.extract_particles(image, xy, 64, PIXEL_A, edge="pad")
    monkeypatch.setattr(ex, "load", lambda name: None)
    fallback = ex.extract_particles(image, xy, 64, PIXEL_A, edge="pad")
    np.testing.assert_allclose(fallback.stack, compiled.stack, atol=2e-5)
    np.testing.assert_array_equal(fallback.kept, compiled.kept)


def test_boxes_transformed_in_chunks_equal_all_at_once(monkeypatch):
    image, truth = _micrograph()
    xy = np.vstack([truth["coordinates_px"], [[10.0, 200.3]]])
    kw = {"rescaled_box_px": 32, "ctf": CTF, "edge": "pad", "dust_sd": 4.0}
    whole = ex.extract_particles(image, xy, 64, PIXEL_A, **kw)
    monkeypatch.setattr(ex, "FFT_CHUNK", 3)
    chunked = ex.extract_particles(image, xy, 64, PIXEL_A, **kw)
    assert len(xy) > 3 * ex.FFT_CHUNK
    np.testing.assert_array_equal(chunked.stack, whole.stack)


OPTIONS = {
    "box_size_px": 32,
    "rescaled_box_px": 0,
    "phase_flip": False,
    "normalize": True,
    "bg_radius_px": 0,
    "ramp": True,
    "dust_sd": 0.0,
    "invert_contrast": True,
    "edge": "drop",
}


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", r"truncated"),
        ("nan", r"3 NaN pixels"),
        ("constant", r"constant image"),
        ("missing", r"cannot read"),
        ("pixel", r"header pixel size 1\.5000 Å differs from the given 2\.0000 Å"),
    ],
)
def test_unreadable_micrograph_is_rejected_naming_it(tmp_path, damage, message):
    from hpcem.protocols.particles_extract import extract_one

    image = np.random.default_rng(7).normal(size=(128, 128)).astype(np.float32)
    if damage == "nan":
        image[5, :3] = np.nan
    if damage == "constant":
        image[:] = 2.0
    path = tmp_path / "m.mrc"
    if damage != "missing":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile: header stats of NaN
            write_mrc(path, image, PIXEL_A)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    pixel = 2.0 if damage == "pixel" else PIXEL_A
    coords = {"x": [64.0], "y": [64.0]}
    with pytest.raises(ItemRejected, match=rf"^micrograph 5: .*{message}"):
        extract_one(str(path), 5, pixel, coords, None, OPTIONS, str(tmp_path / "s.mrcs"))


def test_coordinates_of_other_pixel_size_are_refused(project, tmp_path):
    from hpcem.execution import runs as lifecycle

    inputs, _, _ = _project_inputs(project, tmp_path)
    binned = _finished_run(
        project,
        "test.pick_binned",
        "coordinates",
        "hpcem.SetOfCoordinates",
        {"micrograph_id": [11], "x": [50.0], "y": [50.0]},
        OPTICS | {"pixel_size_A": [2 * PIXEL_A]},
    )
    with pytest.raises(ValidationError, match="coordinates are in pixels of 3 Å but the"):
        lifecycle.create_run(
            project, "particles.extract", {"box_size_px": 64}, inputs | {"coordinates": binned}
        )


@pytest.mark.parametrize("kind", ["float32", "int16", "tiff"])
def test_step_reads_float_int_and_tiff_micrographs_alike(tmp_path, kind):
    """Float32 MRC files are memory-mapped, others read whole: same particles."""
    from hpcem.protocols.particles_extract import extract_one

    from hpcem.io import write_tiff_movie

    counts = np.random.default_rng(8).poisson(20.0, size=(128, 160)).astype(np.int16)
    if kind == "tiff":
        path = write_tiff_movie(tmp_path / "m.tif", counts[None], PIXEL_A)
    else:
        path = write_mrc(tmp_path / "m.mrc", counts.astype(kind), PIXEL_A)
    coords = {"x": [40.0, 80.4, 150.0], "y": [60.0, 64.6, 60.0]}
    out = tmp_path / "s.mrcs"
    result = extract_one(str(path), 3, PIXEL_A, coords, None, OPTIONS, str(out))
    assert result["count"] == 2 and result["edge"] == [2]
    expected = ex.extract_particles(
        counts.astype(np.float32), np.stack([coords["x"], coords["y"]], 1), 32, PIXEL_A
    )
    np.testing.assert_allclose(read_image(out), expected.stack, atol=1e-6)


def test_dust_noise_comes_from_the_run_seed_and_the_micrograph_id(tmp_path):
    """Dust is replaced by noise drawn from numpy.random.default_rng([run seed, micrograph
    id]): the same seed and micrograph give the same stack file byte for byte, whoever
    extracts it; another seed or another micrograph id changes only the dust pixels."""
    from hpcem.protocols.particles_extract import extract_one

    image = np.random.default_rng(9).normal(size=(128, 128)).astype(np.float32)
    image[30, 30] = 80.0  # dust in the background of the first box
    image[90, 100] = -80.0  # and of the second
    path = write_mrc(tmp_path / "m.mrc", image, PIXEL_A)
    coords = {"x": [40.0, 96.0], "y": [40.0, 96.0]}

    def stack(name, micrograph_id, seed):
        out = tmp_path / f"{name}.mrcs"
        options = OPTIONS | {"dust_sd": 5.0, "seed": seed}
        result = extract_one(str(path), micrograph_id, PIXEL_A, coords, None, options, str(out))
        assert result["dust_pixels"] == 2
        return out

    a, again = stack("a", 7, 5), stack("again", 7, 5)
    assert a.read_bytes() == again.read_bytes()
    expected = ex.extract_particles(
        image, np.stack([coords["x"], coords["y"]], 1), 32, PIXEL_A, dust_sd=5.0, seed=(5, 7)
    )
    np.testing.assert_array_equal(read_image(a), expected.stack)
    for other in (stack("seed", 7, 6), stack("micrograph", 8, 5)):
        differ = read_image(other) != read_image(a)
        # the dust pixels differ (and, through the normalisation, so does the rest)
        assert differ[0, 30 - 24, 30 - 24] and differ[1, 90 - 80, 100 - 80]


def test_seed_is_a_recorded_parameter_carried_by_every_step(project, tmp_path):
    from hpcem.protocols.particles_extract import ExtractParticles

    from hpcem.execution import runs as lifecycle
    from hpcem.protocol.context import RunContext

    inputs, _, _ = _project_inputs(project, tmp_path)
    run = lifecycle.create_run(
        project, "particles.extract", {"box_size_px": 32, "dust_sd": 3.0, "seed": 42}, inputs
    )
    assert project.run(run.id).params["seed"] == 42
    steps = ExtractParticles().steps(RunContext(project, run.id, run.params, run.inputs))
    assert {s.args["options"]["seed"] for s in steps if not s.controller} == {42}
    # a run stored before the parameter existed plans with the default seed
    old = {k: v for k, v in run.params.items() if k != "seed"}
    steps = ExtractParticles().steps(RunContext(project, run.id, old, run.inputs))
    assert {s.args["options"]["seed"] for s in steps if not s.controller} == {0}
    # without dust removal nothing is random: the steps do not carry (depend on) the seed
    plain = run.params | {"dust_sd": 0.0}
    steps = ExtractParticles().steps(RunContext(project, run.id, plain, run.inputs))
    assert all("seed" not in s.args["options"] for s in steps if not s.controller)
