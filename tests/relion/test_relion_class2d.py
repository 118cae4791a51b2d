"""``relion.class2d`` with the real relion_refine on projections from three known views.

Each particle is one of three views of the simulator's volume at a random in-plane
angle, shifted, with its own CTF and noise. RELION's classes must recover the views
(class purity against the simulator's truth), and its in-plane angles must differ from
the true ones by one constant per class: that holds only if hpcem's psi is RELION's
(with the sign flipped the difference would spread over the circle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from refine_helpers import circular_spread_deg, view_particles
from relion_helpers import need_relion

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_image

PARAMS = {
    "classes": 3,
    "iterations": 6,
    "particle_diameter_A": 160.0,
    "psi_step_deg": 10.0,
    "offset_step_px": 2.0,
    "threads": 2,
}


def test_a_mask_larger_than_the_box_is_refused(project, tmp_path):
    particles, _ = view_particles(project, tmp_path / "data", n=6)
    with pytest.raises(ValidationError, match="larger than the box"):
        lifecycle.create_run(
            project,
            "relion.class2d",
            {"particle_diameter_A": 400.0},
            {"particles": [particles]},
        )


@pytest.mark.slow  # about 15 s: relion_refine on 150 particles of 48 px
def test_classes_recover_the_true_views_and_psi_follows_relion(project, tmp_path, wait_for_run):
    need_relion("relion_refine")
    particles, truth = view_particles(project, tmp_path / "data", n=150)
    run = lifecycle.create_run(project, "relion.class2d", PARAMS, {"particles": [particles]})
    lifecycle.launch(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=240)
    assert done.state == "finished", done.error
    out = project.open_set(run.id, "particles").read_columns()
    source = project.open_set(*particles.split(":")).read_columns()
    classes = project.open_set(run.id, "classes").read_columns()
    # Every particle is assigned; ids, images and CTFs are the input's.
    assert out["id"].tolist() == source["id"].tolist()
    assert set(out["class_id"].tolist()) <= {1, 2, 3} and (out["class_id"] > 0).all()
    np.testing.assert_array_equal(out["defocus_u"], source["defocus_u"])
    assert sum(classes["size"].tolist()) == 150
    members = classes["member_ids"]
    for k, cid in enumerate(classes["id"]):
        ids = np.asarray(members[k])
        assert sorted(ids.tolist()) == sorted(out["id"][out["class_id"] == cid].tolist())
    # Purity: each populated class holds one true view (measured: 1.0 for all three).
    view = truth["view"]
    purity = []
    for cid in np.unique(out["class_id"]):
        inside = view[out["class_id"] == cid]
        purity.append(np.bincount(inside).max() / len(inside))
    assert len(purity) == 3 and min(purity) >= 0.9, purity
    # The in-plane angle: RELION's psi - true psi is one constant per class (measured
    # spread ~2-3 deg; with the sign flipped, psi + true psi spreads over ~100 deg).
    for cid in np.unique(out["class_id"]):
        inside = out["class_id"] == cid
        same = circular_spread_deg(out["psi"][inside] - truth["psi"][inside])
        flipped = circular_spread_deg(out["psi"][inside] + truth["psi"][inside])
        assert same < 10.0 and flipped > 40.0, (cid, same, flipped)
    # The averages are images of the stack RELION wrote (one per class, not empty).
    stack = Path(project.path) / str(classes["representative"][0])
    assert stack.name.startswith("run_it006_classes")
    averages = read_image(stack)
    assert averages.shape == (3, 48, 48)
    assert classes["representative_index"].tolist() == [0, 1, 2]
    for k in range(3):
        assert averages[k].std() > 0
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    argv = steps["refine"]["result"]["commands"][0]["argv"]
    for flag, value in (("--K", "3"), ("--iter", "6"), ("--j", "2"), ("--psi_step", "10")):
        assert argv[argv.index(flag) + 1] == value
    assert "--ctf" in argv and "--zero_mask" in argv
    result = steps["register"]["result"]
    assert result["iteration"] == 6 and result["particles"] == 150
    assert 0.0 < result["max_value_prob"]["median"] <= 1.0
    assert (Path(project.run_dir(run.id)) / "relion.log").is_file()


def _prepared_outputs(folder: Path, n: int, k: int = 2) -> Path:
    """What a 1-iteration relion_refine run writes (model, data, averages), made with
    hpcem's writers, for a fake relion_refine to copy: particle i in class 1 + i % k."""
    from hpcem.convert.relion import write_particles
    from hpcem.convert.relion_results import write_classes
    from hpcem.io import write_mrc

    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "run_it001_classes.mrcs", np.ones((k, 48, 48), np.float32), 4.0,
              kind="stack", overwrite=True)  # fmt: skip
    write_classes(
        folder / "run_it001_model.star",
        {
            "representative": ["refine/run_it001_classes.mrcs"] * k,
            "representative_index": np.arange(k),
            "size": np.full(k, n // k),
        },
        2,
    )
    optics = {"optics_group": [1], "pixel_size_A": [4.0], "image_size_px": [48],
              "voltage_kV": [300.0], "spherical_aberration_mm": [2.7],
              "amplitude_contrast": [0.1]}  # fmt: skip
    write_particles(
        folder / "run_it001_data.star",
        {
            "image": np.asarray(["views.mrcs"] * n, dtype=object),
            "image_index": np.arange(n),
            "psi": np.full(n, 30.0),
            "shift_x": np.full(n, 1.5),
            "class_id": 1 + np.arange(n) % k,
        },
        optics,
    )
    return folder


@pytest.mark.slow  # about 15 s: two attempts of a run, with fake relion_refine programs
def test_a_failed_refinement_fails_the_step_with_relions_error_and_continues_whole(
    project, tmp_path, wait_for_run
):
    from relion_helpers import fake_program, site_file

    particles, _ = view_particles(project, tmp_path / "data", n=6)
    prepared = _prepared_outputs(tmp_path / "prepared", 6)
    program = fake_program(
        tmp_path / "bin",
        "relion_refine",
        # a crash in iteration 2, leaving that iteration's model behind
        body="touch refine/run_it002_model.star; echo 'ERROR: out of memory in iteration 2' >&2;"
        " exit 1",
    )
    site = site_file(tmp_path / "site", {"relion_refine": str(program)})
    run = lifecycle.create_run(
        project,
        "relion.class2d",
        PARAMS | {"classes": 2},
        {"particles": [particles]},
        placement={"site": str(site)},
    )
    lifecycle.launch(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "failed"
    assert "relion_refine exited with code 1" in done.error
    assert "out of memory in iteration 2" in done.error
    # The fixed program finishes one iteration; `continue` re-runs the step whole: the
    # earlier attempt's iteration-2 file is removed, not taken for the last iteration.
    fake_program(tmp_path / "bin", "relion_refine", body=f"cp {prepared}/* refine/")
    lifecycle.continue_run(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    refined = steps["refine"]["result"]
    assert refined["iteration"] == 1 and refined["removed_earlier_files"] == 1
    out = project.open_set(run.id, "particles").read_columns()
    assert out["class_id"].tolist() == [1, 2, 1, 2, 1, 2]
    np.testing.assert_allclose(out["psi"], 30.0)
    np.testing.assert_allclose(out["shift_x"], 1.5)
    assert project.open_set(run.id, "classes").read_columns()["size"].tolist() == [3, 3]
