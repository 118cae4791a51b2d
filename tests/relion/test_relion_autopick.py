"""``relion.autopick_log`` with the real relion_autopick on simulated micrographs, and the
RELION plumbing it stands on (finding the program, its version, the log, the errors).

Picks are checked against the simulator's true particle centres; scores against the
figures of merit in RELION's own coordinate files. The failure paths use small shell
scripts that answer ``--version`` like RELION, named by a site's ``[programs]`` table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from relion_helpers import (
    PIXEL_A,
    fake_program,
    need_relion,
    simulate_micrographs,
    site_file,
)

from hpcem.errors import ItemRejected, ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import write_mrc
from hpcem.picking.evaluate import match_pairs, match_picks, truth_xy
from hpcem.relion import programs
from hpcem.relion.runner import RelionError, run_relion

# The simulator's particle (PDB 7DDO) is about 131 Å across.
PARAMS = {"diameter_min_A": 110.0, "diameter_max_A": 150.0}


# --- programs and versions -----------------------------------------------------------------
def test_version_text_of_relion_is_parsed():
    assert programs.parse_version("RELION version: 3.1.3 \nPrecision: BASE=double\n") == (
        3,
        1,
        3,
        "",
    )
    assert programs.parse_version("RELION version: 4.0-beta-2-commit-5cd6ab")[:2] == (4, 0)
    assert programs.parse_version("relion_autopick: command not found") is None


def test_site_relion_bin_that_does_not_exist_is_refused_naming_the_folder(tmp_path):
    site = site_file(tmp_path, {"relion_bin": str(tmp_path / "no-relion" / "bin")})
    problems = programs.program_problems(["relion_autopick"], str(site))
    assert len(problems) == 1
    assert "relion_autopick not found" in problems[0]
    assert str(tmp_path / "no-relion" / "bin") in problems[0]


def test_unsupported_version_and_a_program_that_is_not_relion_are_refused(tmp_path):
    fake_program(tmp_path / "bin", "relion_autopick", version="4.0.1")
    site = site_file(tmp_path, {"relion_bin": str(tmp_path / "bin")})
    (problem,) = programs.program_problems(["relion_autopick"], str(site))
    assert "version 4.0.1" in problem and "support 3.1.x" in problem
    other = tmp_path / "other"
    other.mkdir()
    script = other / "relion_preprocess"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    site = site_file(tmp_path / "s2", {"relion_preprocess": str(script)})
    (problem,) = programs.program_problems(["relion_preprocess"], str(site))
    assert "no 'RELION version: X.Y.Z' line" in problem and str(script) in problem


def test_a_program_named_by_the_site_wins_over_its_relion_bin_folder(tmp_path):
    fake_program(tmp_path / "old", "relion_autopick", version="3.0.8")
    chosen = fake_program(tmp_path / "new", "relion_autopick", version="3.1.4")
    site = site_file(
        tmp_path,
        {"relion_bin": str(tmp_path / "old"), "relion_autopick": str(chosen)},
    )
    assert programs.check_program("relion_autopick", str(site)) == (str(chosen), "3.1.4")
    # relion_bin still serves the programs the site does not name.
    (problem,) = programs.program_problems(["relion_preprocess"], str(site))
    assert f"relion_bin = '{tmp_path / 'old'}'" in problem


def test_installed_relion_is_found_on_path_with_its_version():
    need_relion("relion_autopick")
    path, version = programs.check_program("relion_autopick", "localhost")
    assert os.path.basename(path) == "relion_autopick"
    assert version.startswith("3.1.")


def test_runner_logs_the_command_and_ends_its_error_with_relions_stderr(tmp_path):
    body = 'echo "working on $2"; echo "ERROR: cannot read mic.mrc" >&2; exit 3'
    fake_program(tmp_path / "bin", "relion_autopick", body=body)
    site = site_file(tmp_path, {"relion_bin": str(tmp_path / "bin")})
    log = tmp_path / "runs" / "000001" / "relion.log"
    log.parent.mkdir(parents=True)
    with pytest.raises(RelionError, match=r"exited with code 3: ERROR: cannot read mic\.mrc$"):
        run_relion(
            "relion_autopick",
            ["--i", "mic.mrc"],
            workdir=tmp_path / "work",
            site=str(site),
            log=log,
            label="micrograph 4",
        )
    text = log.read_text()
    assert f"micrograph 4: $ {tmp_path / 'bin' / 'relion_autopick'} --i mic.mrc" in text
    assert "working on mic.mrc" in text and "ERROR: cannot read mic.mrc" in text


# --- the step on its own ---------------------------------------------------------------------
def _options(tmp_path, site="localhost", **params):
    from hpcem.protocols.relion_autopick_log import AutopickLoG

    options = {p.name: p.default for p in AutopickLoG.params} | PARAMS | params
    return options | {"site": site, "work": str(tmp_path / "relion"), "log": None}


def _micrograph(tmp_path, seed=3):
    from hpcem.sim import DatasetConfig
    from hpcem.sim.dataset import make_item, plan_items

    config = DatasetConfig(kind="micrographs", n_items=1, size_px=512, pixel_size_A=PIXEL_A)
    item = plan_items(config)[0]
    record = make_item(config, item, tmp_path / "mic.mrc")
    return tmp_path / "mic.mrc", record


def test_step_with_a_threshold_nothing_passes_gives_zero_picks_and_a_warning(tmp_path):
    from hpcem.protocols.relion_autopick_log import pick_one

    need_relion("relion_autopick")
    path, _ = _micrograph(tmp_path)
    result = pick_one(str(path), 5, PIXEL_A, None, _options(tmp_path, adjust_threshold=50.0))
    assert result["count"] == 0
    # RELION 3.1.3 aborts plotting the summary of zero picks; a warning, not a rejection.
    if result["commands"][0]["returncode"] != 0:
        assert "no LoG picks" in result["warning"]


def test_micrograph_relion_fails_on_is_rejected_with_relions_last_lines(tmp_path):
    from hpcem.protocols.relion_autopick_log import pick_one

    body = 'echo "in: $*"; echo "ERROR: Image::read: inconsistent header" >&2; exit 1'
    fake_program(tmp_path / "bin", "relion_autopick", body=body)
    site = site_file(tmp_path, {"relion_bin": str(tmp_path / "bin")})
    path, _ = _micrograph(tmp_path)
    with pytest.raises(
        ItemRejected,
        match=r"^micrograph 5: relion_autopick exited with code 1: .*inconsistent header$",
    ):
        pick_one(str(path), 5, PIXEL_A, None, _options(tmp_path, site=str(site)))


def test_unreadable_micrograph_is_rejected_before_relion(tmp_path):
    from hpcem.protocols.relion_autopick_log import pick_one

    image = np.ones((256, 256), dtype=np.float32)
    image[3, 4] = np.nan
    with pytest.warns(RuntimeWarning):  # mrcfile: header statistics of NaN data
        path = write_mrc(tmp_path / "nan.mrc", image, PIXEL_A)
    with pytest.raises(ItemRejected, match=r"^micrograph 9: .*NaN"):
        pick_one(str(path), 9, PIXEL_A, None, _options(tmp_path))


# --- whole runs ----------------------------------------------------------------------------
@pytest.mark.slow  # about 5 s: a simulation run
def test_validation_reports_a_missing_relion_before_the_run(
    project, tmp_path, wait_for_run, monkeypatch
):
    sim, _ = simulate_micrographs(project, wait_for_run, n_items=1)
    site = site_file(tmp_path / "site", {"relion_bin": str(tmp_path / "nowhere")})
    monkeypatch.setenv("HPCEM_SITE", str(site))
    with pytest.raises(ValidationError) as info:
        lifecycle.create_run(
            project,
            "relion.autopick_log",
            {"diameter_min_A": 300.0, "diameter_max_A": 250.0},
            {"micrographs": [f"{sim}:micrographs"]},
        )
    text = str(info.value)
    assert "relion_autopick not found" in text and str(tmp_path / "nowhere") in text
    assert "diameter_min_A 300 Å is above diameter_max_A 250 Å" in text


@pytest.mark.slow  # about 8 s: a simulation run and a picking run with their controllers
def test_run_picks_the_true_particles_with_relions_figures_of_merit(project, wait_for_run):
    import starfile

    need_relion("relion_autopick")
    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    run = lifecycle.create_run(
        project, "relion.autopick_log", PARAMS, {"micrographs": [f"{sim}:micrographs"]}
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    mics = project.open_set(sim, "micrographs")
    coords = project.open_set(run.id, "coordinates").read_columns()
    root = Path(project.path)
    radius_px = 0.5 * truth["volume"]["diameter_A"] / PIXEL_A
    for row, (mic_id, image) in enumerate(zip(mics.column("id"), mics.column("image"))):
        result = steps[f"pick/{row:06d}"]["result"]
        (command,) = result["commands"]
        assert command["argv"][1:3] == ["--i", f"mic_{int(mic_id):06d}.mrc"]
        assert "--LoG" in command["argv"] and command["version"].startswith("3.1.")
        mine = coords["micrograph_id"] == mic_id
        xy = np.stack([coords["x"][mine], coords["y"][mine]], axis=1)
        # The scores are RELION's own figures of merit, from its coordinate file.
        star = starfile.read(root / command["cwd"] / f"mic_{int(mic_id):06d}_autopick.star")
        np.testing.assert_allclose(
            coords["score"][mine], star["rlnAutopickFigureOfMerit"], atol=1e-5
        )
        true_xy = truth_xy(truth, Path(str(image)).name)
        # Measured with seed 1: 24 and 23 true particles, LoG F1 0.75-0.80 (RELION's
        # default threshold keeps ~16 extra blobs of noise per 768-px micrograph) and
        # recall 1.0; the bound leaves room for another RELION 3.1 build.
        scores = match_picks(xy, true_xy, radius_px)
        assert scores["recall"] >= 0.9 and scores["f1"] >= 0.6, scores
        # RELION's coordinates are hpcem's (particle centres): LoG picks scatter around
        # the true centres (measured: median distance 13 px, SD 8-10 px per axis, as
        # RELION filters at ~7 px per binned pixel) with no systematic offset beyond
        # 3 standard errors; a box-corner or 1-based convention would shift them all.
        pairs = np.array(match_pairs(xy, true_xy, radius_px))
        offset = xy[pairs[:, 0]] - true_xy[pairs[:, 1]]
        assert np.median(np.hypot(*offset.T)) < 0.5 * radius_px
        standard_error = offset.std(axis=0) / np.sqrt(len(offset))
        assert np.all(np.abs(offset.mean(axis=0)) < 3 * standard_error), offset.mean(axis=0)
    log = (root / "runs" / f"{run.id:06d}" / "relion.log").read_text()
    assert log.count("$ ") == 2 and "relion_autopick --i mic_" in log
