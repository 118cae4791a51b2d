"""Bad data is refused early with a clear reason: lying headers, NaN/Inf, blank and noise.

Micrographs are real MRC files (written with mrcfile, pixels or header ints patched with
numpy) and go through the real worker step, ``estimate_one``; nothing in it is mocked.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hpcem.protocols.ctf_estimate import (
    MIN_FIT_SCORE,
    EstimateCTF,
    estimate_one,
)
from hpcem.protocols.ctf_fit2d import MIN_FIT_SCORE_2D, fit_one
from hpcem.protocols.import_images import inspect_image

from hpcem.ctf.estimate import estimate_ctf
from hpcem.ctf.fit2d import fit_ctf_2d
from hpcem.errors import DataFormatError, ItemRejected
from hpcem.execution import runs as lifecycle
from hpcem.io import read_header, write_mrc
from hpcem.sim import simulate_micrograph

SIZE = 512
PIXEL_SIZE_A = 1.5
ACQUISITION = {
    "pixel_size_A": PIXEL_SIZE_A,
    "voltage_kV": 300.0,
    "cs_mm": 2.7,
    "amplitude_contrast": 0.1,
}
# The protocol's own defaults for the estimator, as steps() passes them.
OPTIONS = {
    "defocus_min_A": 3000.0,
    "defocus_max_A": 50000.0,
    "res_low_A": 30.0,
    "res_high_A": None,
    "tile_size_px": None,
    "astigmatism": True,
}
OPTIONS_2D = {k: v for k, v in OPTIONS.items() if k != "astigmatism"} | {"phase_shift": False}


def _mrc(tmp_path, name, image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile: header stats of NaN data
        return write_mrc(tmp_path / name, np.asarray(image, dtype=np.float32), PIXEL_SIZE_A)


def _estimate(path, micrograph_id=3, **kw):
    return estimate_one(str(path), micrograph_id, **ACQUISITION, options=OPTIONS, **kw)


def _fit2d(path, micrograph_id=3, **kw):
    return fit_one(str(path), micrograph_id, **ACQUISITION, options=OPTIONS_2D, **kw)


STEPS = {"ctf.estimate": _estimate, "ctf.fit2d": _fit2d}


def _good_micrograph(seed=2):
    return simulate_micrograph(
        (SIZE, SIZE), PIXEL_SIZE_A, 15000.0, 14400.0, 40.0, snr=0.1, seed=seed
    )


# --- headers that claim more data than the file holds ------------------------------------
def test_huge_header_mrc_is_refused_at_read_header_with_the_file_length(tmp_path):
    path = _mrc(tmp_path, "huge.mrc", np.zeros((64, 64)))
    header = np.fromfile(path, dtype="<i4", count=256)
    header[0:3] = 10000  # nx, ny, nz: 10^12 float32 voxels, 4 TB
    raw = bytearray(path.read_bytes())
    raw[:1024] = header.tobytes()
    path.write_bytes(bytes(raw))
    length = path.stat().st_size
    with pytest.raises(DataFormatError) as info:
        read_header(path)
    assert str(info.value) == (
        f"{path}: not an MRC file or corrupt: truncated: header claims nx=10000 ny=10000 "
        "nz=10000 mode 2 (float32), 4000000001024 bytes (3.6 TiB) with the 1024-byte header "
        f"and 0-byte extended header, but the file has {length} bytes"
    )
    # The import step refuses it the same way, before anything allocates the data.
    with pytest.raises(DataFormatError, match=f"but the file has {length} bytes"):
        inspect_image(str(path), PIXEL_SIZE_A, True, ["micrograph"])


# --- NaN / Inf / constant / noise micrographs are rejected items ------------------------
@pytest.mark.parametrize(
    ("nan", "inf", "reason"),
    [
        (SIZE * SIZE, 0, f"micrograph 3: {SIZE * SIZE} NaN pixels"),
        (0, 7, "micrograph 3: 7 Inf pixels"),
        (5, 2, "micrograph 3: 5 NaN and 2 Inf pixels"),
    ],
)
@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_non_finite_micrograph_is_rejected_with_the_counts(tmp_path, nan, inf, reason, strategy):
    image, _ = _good_micrograph()
    flat = image.reshape(-1)
    flat[:nan] = np.nan
    flat[nan : nan + inf] = np.inf
    if inf:
        flat[nan] = -np.inf  # -Inf counts as Inf too
    path = _mrc(tmp_path, "nonfinite.mrc", image)
    with pytest.raises(ItemRejected) as info:
        STEPS[strategy](path)
    assert str(info.value) == reason


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_constant_micrograph_is_rejected_before_fitting(tmp_path, strategy):
    path = _mrc(tmp_path, "blank.mrc", np.ones((SIZE, SIZE)))
    with pytest.raises(ItemRejected) as info:
        STEPS[strategy](path)
    assert str(info.value) == "micrograph 3: constant image (all pixels 1.0)"


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_micrograph_truncated_after_import_is_rejected(tmp_path, strategy):
    image, _ = _good_micrograph()
    path = _mrc(tmp_path, "cut.mrc", image)
    path.write_bytes(path.read_bytes()[: 1024 + 4 * SIZE * 10])  # header + 10 rows
    with pytest.raises(ItemRejected, match=rf"^micrograph 3: {path}: not an MRC file or corrupt"):
        STEPS[strategy](path)


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_micrograph_smaller_than_the_tile_is_rejected(tmp_path, strategy):
    image, _ = simulate_micrograph((200, 300), PIXEL_SIZE_A, 15000.0, seed=4)
    with pytest.raises(ItemRejected) as info:
        STEPS[strategy](_mrc(tmp_path, "small.mrc", image))
    assert str(info.value) == (
        "micrograph 3: 300x200 px is smaller than the 256-px tile of the power spectrum"
    )


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_fit_at_the_edge_of_the_search_range_is_rejected(tmp_path, strategy):
    """The true defocus (15,000 Å) lies above the searched 3,000–13,500 Å: the fit ends
    at the range's edge, which is a failed fit, not a result."""
    image, _ = _good_micrograph()
    path = _mrc(tmp_path, "edge.mrc", image)
    options = (OPTIONS if strategy == "ctf.estimate" else OPTIONS_2D) | {"defocus_max_A": 13500.0}
    step = estimate_one if strategy == "ctf.estimate" else fit_one
    with pytest.raises(
        ItemRejected,
        match=r"^micrograph 3: defocus .* at the edge of the "
        r"search range 3000–13500 Å$",
    ):
        step(str(path), 3, **ACQUISITION, options=options, min_fit_score=-1.0)


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_pure_noise_micrograph_is_rejected_by_min_fit_score(tmp_path, strategy):
    noise = np.random.default_rng(5).normal(size=(SIZE, SIZE)).astype(np.float32)
    if strategy == "ctf.estimate":
        score, threshold = estimate_ctf(noise, PIXEL_SIZE_A, **OPTIONS)["fit_score"], MIN_FIT_SCORE
    else:
        score = fit_ctf_2d(noise, PIXEL_SIZE_A, **OPTIONS_2D)["fit_score"]
        threshold = MIN_FIT_SCORE_2D
    assert 0.0 < score < threshold  # a real, if meaningless, fit
    path = _mrc(tmp_path, "noise.mrc", noise)
    with pytest.raises(ItemRejected) as info:
        STEPS[strategy](path)
    assert str(info.value) == (
        f"micrograph 3: CTF fit score {score:.3f} below min_fit_score {threshold}"
    )


def test_huge_finite_pixels_fit_like_the_original(tmp_path):
    """Finite pixels of ~1e30 (a file read with the wrong mode looks like this) used to
    overflow the float32 power spectrum into a NaN fit; |F|² is now summed in float64,
    and the fit is scale-free, so the same defocus comes out."""
    image, _ = _good_micrograph()
    plain = _estimate(_mrc(tmp_path, "plain.mrc", image))
    huge = _estimate(_mrc(tmp_path, "overflow.mrc", image * np.float32(1e30)))
    for key in ("defocus_u", "defocus_v", "fit_score"):
        assert huge[key] == pytest.approx(plain[key], rel=1e-4)


@pytest.mark.parametrize("strategy", sorted(STEPS))
def test_pixels_that_overflow_the_spectrum_are_rejected(tmp_path, strategy):
    """Finite pixels near the float32 maximum overflow the tiles' FFTs: a rejection
    naming the cause, not a NaN fit (ctf.estimate) or a crash (ctf.fit2d)."""
    image, _ = _good_micrograph()
    image = (image / np.abs(image).max() * np.float32(3e38)).astype(np.float32)
    path = _mrc(tmp_path, "huge.mrc", image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ItemRejected) as info:
            STEPS[strategy](path)
    assert str(info.value) == (
        "micrograph 3: the power spectrum overflows (pixel values up to 3e+38); "
        "rescale the micrograph"
    )


def test_good_simulated_micrograph_passes_above_the_default_threshold(tmp_path):
    default = next(p.default for p in EstimateCTF.params if p.name == "min_fit_score")
    assert default == MIN_FIT_SCORE
    image, truth = _good_micrograph()
    result = _estimate(_mrc(tmp_path, "good.mrc", image))
    assert result["micrograph_id"] == 3
    assert result["fit_score"] > default + 0.1
    mean = 0.5 * (result["defocus_u"] + result["defocus_v"])
    assert mean == pytest.approx(0.5 * (truth["defocus_u"] + truth["defocus_v"]), rel=0.03)
    # A stricter threshold turns the same fit into a rejection with its score.
    with pytest.raises(
        ItemRejected,
        match=r"^micrograph 3: CTF fit score 0\.\d{3} below "
        r"min_fit_score 0\.99$",
    ):
        _estimate(tmp_path / "good.mrc", min_fit_score=0.99)


def test_noise_whose_sectors_disagree_is_rejected_whatever_its_score(tmp_path):
    """ctf.estimate: 512-px noise at 0.85 Å/px scored up to 0.77 with an astigmatic fit;
    its 18 sector fits scatter far from that astigmatism, which rejects it."""
    noise = np.random.default_rng(1).normal(size=(SIZE, SIZE)).astype(np.float32)
    path = write_mrc(tmp_path / "noise.mrc", noise, 0.85)
    acquisition = ACQUISITION | {"pixel_size_A": 0.85}
    with pytest.raises(
        ItemRejected,
        match=r"^micrograph 3: the 18 sector fits disagree \(median \d+\.\d defocus steps "
        r"from the fitted astigmatism, > 2\): no consistent Thon rings$",
    ):
        estimate_one(str(path), 3, **acquisition, options=OPTIONS, min_fit_score=-1.0)


# --- register_ctfs: accepted CTFs only, rejections listed -------------------------------
def _import(project, raw, wait_for_run):
    imp = lifecycle.create_run(
        project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": PIXEL_SIZE_A}
    )
    lifecycle.launch(project, imp.id, workers=1)
    assert wait_for_run(project, imp.id).state == "finished"
    return imp, [int(i) for i in project.open_set(imp.id, "micrographs").column("id")]


def test_run_with_a_nan_micrograph_goes_on_and_registers_the_others(
    project, tmp_path, wait_for_run
):
    """End to end, real controller and workers: the NaN micrograph is a rejected item."""
    raw = tmp_path / "raw"
    raw.mkdir()
    truths = []
    for i in range(3):
        image, truth = _good_micrograph(seed=2 + i)
        if i == 1:
            image[:16] = np.nan
        _mrc(raw, f"mic_{i}.mrc", image)
        truths.append(truth)
    imp, ids = _import(project, raw, wait_for_run)
    run = lifecycle.create_run(
        project, "ctf.estimate", {}, {"micrographs": [f"{imp.id}:micrographs"]}
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    reason = f"micrograph {ids[1]}: {16 * SIZE} NaN pixels"
    assert steps["estimate/000001"]["state"] == "rejected"
    assert steps["estimate/000001"]["error"] == reason
    assert steps["register"]["result"] == {
        "count": 2,
        "rejected": [{"micrograph_id": ids[1], "reason": reason}],
    }
    assert "ctfs" in project.run(run.id).outputs
    ctfs = project.open_set(run.id, "ctfs").read_columns()
    assert [int(i) for i in ctfs["micrograph_id"]] == [ids[0], ids[2]]
    for u, v, truth in zip(ctfs["defocus_u"], ctfs["defocus_v"], (truths[0], truths[2])):
        assert 0.5 * (u + v) == pytest.approx(
            0.5 * (truth["defocus_u"] + truth["defocus_v"]), rel=0.03
        )


def test_run_fails_with_the_first_reason_when_every_micrograph_is_rejected(
    project, tmp_path, wait_for_run
):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        _mrc(raw, f"blank_{i}.mrc", np.zeros((64, 64)))
    imp, ids = _import(project, raw, wait_for_run)
    run = lifecycle.create_run(
        project, "ctf.estimate", {}, {"micrographs": [f"{imp.id}:micrographs"]}
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "failed"
    first = f"micrograph {ids[0]}: constant image (all pixels 0.0)"
    assert f"all 3 micrographs were rejected: {first}" in done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    assert [steps[f"estimate/{i:06d}"]["state"] for i in range(3)] == ["rejected"] * 3
    assert steps["register"]["error"] == f"all 3 micrographs were rejected: {first}"
    assert "ctfs" not in project.run(run.id).outputs
