"""``relion.extract`` with the real relion_preprocess on simulated micrographs.

The particles must be what RELION documents for ``--extract --norm --invert_contrast``:
boxes centred on the coordinates truncated to pixels (checked against plain numpy
slices of the micrograph), background (outside ``bg_radius``) of mean 0 and sd 1; and hpcem's side
of the bargain: coordinate ids kept, the CTFs of the ``ctfs`` input carried unchanged,
the optics (pixel size after ``--scale``, box edge) right, bad micrographs rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from relion_helpers import (
    PIXEL_A,
    fake_program,
    need_relion,
    simulate_micrographs,
    site_file,
    truth_sets,
)

from hpcem.errors import ItemRejected, ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_image, write_mrc

OPTICS = {"pixel_size_A": PIXEL_A, "voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def _options(tmp_path, site="localhost", **params):
    from hpcem.protocols.relion_extract import ExtractRelion

    options = {p.name: p.default for p in ExtractRelion.params} | params
    return options | {"site": site, "work": str(tmp_path / "relion"), "log": None}


def _micrograph(tmp_path, size=512):
    from hpcem.sim import DatasetConfig
    from hpcem.sim.dataset import make_item, plan_items

    config = DatasetConfig(kind="micrographs", n_items=1, size_px=size, pixel_size_A=PIXEL_A)
    record = make_item(config, plan_items(config)[0], tmp_path / "mic.mrc")
    return tmp_path / "mic.mrc", record


def _background(stack: np.ndarray, radius_px: int) -> np.ndarray:
    """Pixels outside the circle of ``radius_px`` around the box centre (n, k)."""
    box = stack.shape[-1]
    yy, xx = np.mgrid[:box, :box] - box // 2
    return stack[:, xx**2 + yy**2 > radius_px**2]


# --- the step on its own -----------------------------------------------------------------
def test_step_boxes_are_the_micrographs_pixels_normalised_and_inverted(tmp_path):
    from hpcem.protocols.relion_extract import extract_one

    need_relion("relion_preprocess")
    path, record = _micrograph(tmp_path)
    image = read_image(path)
    x = [float(v) for v in record["particles"]["x"]] + [30.4, -3.0, 400.6]
    y = [float(v) for v in record["particles"]["y"]] + [250.2, 40.0, 509.0]
    result = extract_one(str(path), 4, OPTICS, {"x": x, "y": y}, None, _options(tmp_path))
    n = len(x)
    assert result["outside"] == [n - 2]  # x = -3: its pixel is outside the micrograph
    assert result["kept"] == [k for k in range(n) if k != n - 2]
    # Boxes crossing the edge (RELION fills them) are flagged. The box centre is the
    # coordinate truncated to an integer (RELION 3.1's src/preprocessing.cpp: xpos =
    # (long int) x; x0 = xpos - 64, xF = xpos + 63), not the nearest pixel.
    centre = np.trunc(np.stack([x, y], 1)).astype(int)
    crossing = ((centre - 64 < 0) | (centre + 63 >= 512)).any(axis=1)
    assert result["padded"] == [k for k in result["kept"] if crossing[k]]
    assert n - 3 in result["padded"] and n - 1 in result["padded"]
    assert result["pixel_size_A"] == PIXEL_A and result["image_size_px"] == 128
    stack = read_image(result["stack"])
    assert stack.shape == (len(result["kept"]), 128, 128)
    assert result["image_index"] == list(range(len(result["kept"])))
    # Background (outside RELION's default radius, 48 px) normalised per box.
    bg = _background(stack, 48)
    np.testing.assert_allclose(bg.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-3)
    # Each box is the micrograph around that pixel, inverted (up to RELION's
    # per-box affine normalisation and background plane): correlation with a plain
    # numpy slice, over the part of the box inside the micrograph for edge boxes.
    for k, index in zip(result["kept"], result["image_index"]):
        cx, cy = centre[k]
        x0, y0 = max(cx - 64, 0), max(cy - 64, 0)
        x1, y1 = min(cx + 64, 512), min(cy + 64, 512)
        crop = image[y0:y1, x0:x1]
        part = stack[index][y0 - (cy - 64) : y1 - (cy - 64), x0 - (cx - 64) : x1 - (cx - 64)]
        r = np.corrcoef(part.ravel(), -crop.ravel())[0, 1]
        assert r > 0.99, (k, r)
    (command,) = result["commands"]
    assert "--extract" in command["argv"] and "--invert_contrast" in command["argv"]
    assert command["argv"][command["argv"].index("--bg_radius") + 1] == "48"


def test_step_rescaled_boxes_have_the_scaled_pixel_size(tmp_path):
    from hpcem.protocols.relion_extract import extract_one

    need_relion("relion_preprocess")
    path, record = _micrograph(tmp_path)
    coords = {"x": record["particles"]["x"], "y": record["particles"]["y"]}
    options = _options(tmp_path, box_size_px=128, rescaled_box_px=64, bg_radius_px=20)
    result = extract_one(str(path), 4, OPTICS, coords, None, options)
    assert result["pixel_size_A"] == pytest.approx(2 * PIXEL_A)
    assert result["image_size_px"] == 64
    stack = read_image(result["stack"])
    assert stack.shape[1:] == (64, 64)
    bg = _background(stack, 20)
    np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-3)


def test_micrograph_without_ctf_nan_pixels_or_relion_failure_is_rejected(tmp_path):
    from hpcem.protocols.relion_extract import extract_one

    path, _ = _micrograph(tmp_path)
    coords = {"x": [200.0], "y": [200.0]}
    with pytest.raises(ItemRejected, match="^micrograph 4: no CTF for it in input ctfs"):
        extract_one(str(path), 4, OPTICS, coords, {}, _options(tmp_path))
    bad = np.ones((256, 256), np.float32)
    bad[5, 5] = np.inf
    with pytest.warns(RuntimeWarning):
        bad_path = write_mrc(tmp_path / "bad.mrc", bad, PIXEL_A)
    with pytest.raises(ItemRejected, match="^micrograph 4: 1 Inf pixels"):
        extract_one(str(bad_path), 4, OPTICS, coords, None, _options(tmp_path))
    body = 'echo " ERROR: FileName::getFileFormat: cannot find file" >&2; exit 1'
    fake_program(tmp_path / "bin", "relion_preprocess", body=body)
    site = site_file(tmp_path / "site", {"relion_bin": str(tmp_path / "bin")})
    with pytest.raises(
        ItemRejected, match=r"^micrograph 4: relion_preprocess exited with code 1: .*cannot find"
    ):
        extract_one(str(path), 4, OPTICS, coords, None, _options(tmp_path, site=str(site)))


# --- whole runs ----------------------------------------------------------------------------
@pytest.mark.slow  # about 6 s: two simulation runs
def test_validation_refuses_odd_boxes_and_coordinates_of_other_micrographs(project, wait_for_run):
    need_relion("relion_preprocess")
    sim, _ = simulate_micrographs(project, wait_for_run, n_items=1)
    other, other_truth = simulate_micrographs(project, wait_for_run, n_items=1, seed=2)
    refs = truth_sets(project, other, other_truth, with_ctfs=False)
    with pytest.raises(ValidationError) as info:
        lifecycle.create_run(
            project,
            "relion.extract",
            {"box_size_px": 127},
            {"coordinates": [refs["coordinates"]], "micrographs": [f"{sim}:micrographs"]},
        )
    text = str(info.value)
    assert "box_size_px must be even (RELION), got 127" in text
    assert f"micrographs {sim}:micrographs are not the ones the coordinates were picked on" in text


@pytest.mark.slow  # about 8 s: simulation, then extraction with its controller
def test_run_keeps_ids_carries_ctfs_and_writes_optics(project, wait_for_run):
    need_relion("relion_preprocess")
    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    refs = truth_sets(project, sim, truth)
    run = lifecycle.create_run(
        project,
        "relion.extract",
        {"box_size_px": 96},
        {
            "coordinates": [refs["coordinates"]],
            "micrographs": [f"{sim}:micrographs"],
            "ctfs": [refs["ctfs"]],
        },
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    result = steps["register"]["result"]
    coords = project.open_set(*refs["coordinates"].split(":")).read_columns()
    ctfs = project.open_set(*refs["ctfs"].split(":")).read_columns()
    particles = project.open_set(run.id, "particles")
    cols = particles.read_columns()
    n_true = sum(len(item["particles"]["x"]) for item in truth["items"])
    edge = result["padded"]
    assert result["count"] == len(cols["id"]) == n_true and result["dropped_outside"] == 0
    assert sorted(cols["id"].tolist()) == sorted(coords["id"].tolist())
    by_id = {int(i): k for k, i in enumerate(coords["id"])}
    rows = [by_id[int(i)] for i in cols["id"]]
    np.testing.assert_array_equal(cols["coord_x"], coords["x"][rows])
    np.testing.assert_array_equal(cols["coord_score"], coords["score"][rows])
    assert int(cols["edge_padded"].sum()) == edge
    # The fraction RELION drops (it cuts at the truncated coordinate) is kept as the
    # shift, RELION 3.1 sign: the particle is at box centre - shift.
    x = coords["x"][rows].astype(np.float64)
    np.testing.assert_allclose(cols["shift_x"], (np.trunc(x) - x) * PIXEL_A, atol=1e-4)
    assert np.all((cols["shift_y"] <= 0) & (cols["shift_y"] > -PIXEL_A))
    # CTFs of the input, unchanged (float32 both sides), per micrograph.
    ctf_row = {int(m): k for k, m in enumerate(ctfs["micrograph_id"])}
    for key, src in (("defocus_u", "defocus_u"), ("ctf_fit_score", "fit_score")):
        expected = [ctfs[src][ctf_row[int(m)]] for m in cols["micrograph_id"]]
        np.testing.assert_array_equal(cols[key], expected)
    assert float(particles.optics["pixel_size_A"][0]) == pytest.approx(PIXEL_A)
    assert int(particles.optics["image_size_px"][0]) == 96
    # The images the set points at are normalised boxes of 96 px.
    for stack in sorted(set(map(str, cols["image"]))):
        images = read_image(Path(project.path) / stack)
        assert images.shape[1:] == (96, 96)
        bg = _background(images, 36)
        np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-3)
    command = steps["extract/000000"]["result"]["commands"][0]
    assert command["argv"][command["argv"].index("--extract_size") + 1] == "96"
    log = (Path(project.path) / "runs" / f"{run.id:06d}" / "relion.log").read_text()
    assert log.count("relion_preprocess --i micrographs.star") == 2
