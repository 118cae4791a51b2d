"""``relion.postprocess`` with the real relion_postprocess on two noisy half maps.

The half maps are the simulator's volume plus independent white noise, so their FSC is
known: the test computes it with numpy from the definition and checks that RELION's
unmasked curve, its reported resolution and hpcem's FSC set agree with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from relion_helpers import _finish, _finished_run, fsc_curve, need_relion

from hpcem.execution import runs as lifecycle
from hpcem.io import read_header, write_mrc

PIXEL_A = 4.0
BOX = 48


def _half_maps(folder: Path, noise: float = 2.0):
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, PIXEL_A, BOX).data.astype(np.float32)
    rng = np.random.default_rng(1)
    sd = noise * float(volume.std())
    halves = [volume + rng.normal(0.0, sd, volume.shape).astype(np.float32) for _ in range(2)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        write_mrc(folder / f"half{k}.mrc", h, PIXEL_A, overwrite=True)
        for k, h in ((1, halves[0]), (2, halves[1]))
    ]
    return paths, halves


def _soft_sphere(folder: Path) -> Path:
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    edge = np.clip((22.0 - np.sqrt(x * x + y * y + z * z)) / 6.0, 0.0, 1.0)
    return write_mrc(
        folder / "mask.mrc",
        (0.5 - 0.5 * np.cos(np.pi * edge)).astype(np.float32),
        PIXEL_A,
        overwrite=True,
    )


def _options(tmp_path, **params):
    from hpcem.protocols.relion_postprocess import PostprocessRelion

    options = {p.name: p.default for p in PostprocessRelion.params} | params
    return options | {"site": "localhost", "work": str(tmp_path / "relion"), "log": None}


def _expected_resolution_A(curve) -> float:
    """RELION's rule from the test's own curve: the last shell before FSC < 0.143."""
    below = np.flatnonzero(np.asarray(curve) < 0.143)
    shell = int(below[0]) if len(below) else len(curve)  # curve[0] is shell 1
    return BOX * PIXEL_A / shell


def test_step_fsc_of_the_half_maps_matches_the_definition(tmp_path):
    from hpcem.protocols.relion_postprocess import postprocess

    need_relion("relion_postprocess")
    paths, halves = _half_maps(tmp_path / "maps")
    result = postprocess(str(paths[0]), str(paths[1]), "", PIXEL_A, _options(tmp_path))
    mine = fsc_curve(*halves)  # shells 1 .. 24
    assert result["labels"] == ["unmasked"]  # no mask: one curve
    relion = np.asarray(result["fsc"][0])  # shells 0 .. 24
    np.testing.assert_allclose(relion[1 : BOX // 2], mine[: BOX // 2 - 1], atol=0.03)
    np.testing.assert_allclose(result["frequency"][1], 1.0 / (BOX * PIXEL_A), rtol=1e-4)
    # Measured: 13.7-17.5 Å with this noise; RELION's number within one shell of ours.
    expected = _expected_resolution_A(mine)
    shells = BOX * PIXEL_A / np.array([result["final_resolution_A"], expected])
    assert abs(shells[0] - shells[1]) <= 1.0, (result["final_resolution_A"], expected)
    if result["commands"][0]["returncode"] != 0:  # RELION 3.1.3 without a mask
        assert "after writing its results" in result["warning"]
    assert read_header(result["maps"][0]).pixel_size_A == pytest.approx(PIXEL_A)


@pytest.mark.slow  # about 6 s: a postprocessing run with its controller
def test_run_with_a_mask_writes_the_fsc_curves_and_sharpened_maps(project, tmp_path, wait_for_run):
    need_relion("relion_postprocess")
    paths, halves = _half_maps(tmp_path / "maps")
    mask = _soft_sphere(tmp_path / "maps")
    run = _finished_run(project, "test.volumes", "half maps")
    writer = project.create_set(run, "volumes", "hpcem.SetOfVolumes")
    writer.append_columns(
        {
            "image": [str(p) for p in paths],
            "pixel_size_A": [PIXEL_A] * 2,
            "box_size": [BOX] * 2,
            "half": [1, 2],
        }
    )
    writer.close()
    project.set_output(run, "volumes", "hpcem.SetOfVolumes", 2)
    writer = project.create_set(run, "mask", "hpcem.SetOfMasks")
    writer.append_columns({"image": [str(mask)], "pixel_size_A": [PIXEL_A], "box_size": [BOX]})
    writer.close()
    project.set_output(run, "mask", "hpcem.SetOfMasks", 1)
    _finish(project, run)
    post = lifecycle.create_run(
        project,
        "relion.postprocess",
        {"auto_bfactor": False, "bfactor_A2": -200.0},
        {"volumes": [f"{run}:volumes"], "mask": [f"{run}:mask"]},
    )
    lifecycle.launch(project, post.id, workers=1)
    done = wait_for_run(project, post.id, timeout_s=120)
    assert done.state == "finished", done.error
    fsc = project.open_set(post.id, "fsc").read_columns()
    labels = list(fsc["label"])
    assert labels[0] == "corrected" and "unmasked" in labels and "masked" in labels
    assert "phase_randomised_masked" in labels
    unmasked = np.asarray(fsc["fsc"][labels.index("unmasked")])
    np.testing.assert_allclose(
        unmasked[1 : BOX // 2], fsc_curve(*halves)[: BOX // 2 - 1], atol=0.03
    )
    # The mask removes noise outside the particle: the masked FSC is higher.
    masked = np.asarray(fsc["fsc"][labels.index("masked")])
    assert masked[5:15].mean() > unmasked[5:15].mean()
    steps = {r["name"]: r for r in project.read_steps(post.id).to_records()}
    result = steps["register"]["result"]
    assert fsc["resolution_A"][0] == pytest.approx(result["final_resolution_A"])
    assert result["bfactor_A2"] == pytest.approx(-200.0)
    volumes = project.open_set(post.id, "volumes").read_columns()
    assert len(volumes["image"]) == 2 and list(volumes["half"]) == [0, 0]
    argv = steps["postprocess"]["result"]["commands"][0]["argv"]
    assert argv[argv.index("--adhoc_bfac") + 1] == "-200" and "--mask" in argv
