"""``relion.refine3d`` with the real relion_refine_mpi (3 MPI ranks) on projections of
the simulator's volume.

The particles start near their true orientations (true angles plus 3° errors, true
shifts, half sets 1, 2, ...) and RELION refines them with local searches, so the run
stays small. The refined map is compared with the true volume by an FSC computed in the
test, the refined orientations with the true ones as rotation angles, the shifts with
the true shifts: these hold only if hpcem's Euler angles and shift sign reach RELION as
RELION reads them and come back as RELION wrote them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from refine_helpers import (
    angular_error_deg,
    loopback_open_mpi_site,
    reference_volumes,
    view_particles,
)
from relion_helpers import fsc_curve, need_relion

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_header, read_image, write_mrc

PIXEL_A, BOX = 6.0, 32
PARAMS = {
    "particle_diameter_A": 160.0,
    "ini_high_A": 30.0,
    "healpix_order": 3,
    "local_searches_from": 3,
    "offset_range_px": 3.0,
    "offset_step_px": 1.0,
    "mpi_ranks": 3,
}


def _first_below(curve, level=0.5) -> int:
    below = np.flatnonzero(np.asarray(curve) < level)
    return int(below[0]) + 1 if len(below) else len(curve) + 1


def test_refinement_needs_three_ranks_and_a_matching_reference(project, tmp_path):
    particles, truth = view_particles(
        project, tmp_path / "data", n=8, pixel_A=PIXEL_A, box=BOX, random_views=True
    )
    small = write_mrc(tmp_path / "small.mrc", np.zeros((24, 24, 24), np.float32), PIXEL_A)
    inputs = {"particles": [particles], "reference": [reference_volumes(project, small, 6, 24)]}
    with pytest.raises(ValidationError, match="is 24 px at 6 Å/px; the particles are 32 px"):
        lifecycle.create_run(project, "relion.refine3d", PARAMS, inputs)
    inputs["reference"] = [reference_volumes(project, truth["map"], PIXEL_A, BOX)]
    with pytest.raises(ValidationError, match="mpi_ranks 2: RELION needs at least 3"):
        lifecycle.create_run(project, "relion.refine3d", PARAMS | {"mpi_ranks": 2}, inputs)


@pytest.mark.slow  # about 85 s on two shared cores: auto-refine, 100 particles of 32 px
def test_auto_refine_recovers_the_map_the_poses_and_keeps_the_half_sets(
    project, tmp_path, wait_for_run, monkeypatch
):
    need_relion("relion_refine_mpi")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")  # test machines run as root
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    particles, truth = view_particles(
        project,
        tmp_path / "data",
        n=100,
        pixel_A=PIXEL_A,
        box=BOX,
        noise=0.5,
        random_views=True,
        start_pose_sd_deg=3.0,
    )
    reference = reference_volumes(project, truth["map"], PIXEL_A, BOX)
    site = loopback_open_mpi_site(tmp_path / "site")
    run = lifecycle.create_run(
        project,
        "relion.refine3d",
        PARAMS,
        {"particles": [particles], "reference": [reference]},
        placement={"site": str(site)},
    )
    lifecycle.launch(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=400)
    assert done.state == "finished", done.error
    volumes = project.open_set(run.id, "volumes").read_columns()
    assert volumes["half"].tolist() == [0, 1, 2]
    names = [Path(str(p)).name for p in volumes["image"]]
    assert names == [
        "run_class001.mrc",
        "run_half1_class001_unfil.mrc",
        "run_half2_class001_unfil.mrc",
    ]
    header = read_header(Path(project.path) / str(volumes["image"][0]))
    assert header.shape == (BOX, BOX, BOX) and header.pixel_size_A == pytest.approx(PIXEL_A)
    refined = read_image(Path(project.path) / str(volumes["image"][0]))
    curve = fsc_curve(refined, read_image(truth["map"]))
    # Measured: FSC(map, truth) >= 0.5 up to shell 12 of 16 (16 Å at 6 Å/px).
    assert curve[:3].min() > 0.95
    assert _first_below(curve) >= 10, curve
    out = project.open_set(run.id, "particles").read_columns()
    source = project.open_set(*particles.split(":")).read_columns()
    assert out["id"].tolist() == source["id"].tolist()
    np.testing.assert_array_equal(out["half_set"], source["half_set"])
    np.testing.assert_array_equal(out["defocus_v"], source["defocus_v"])
    true_angles = np.stack([truth["rot"], truth["tilt"], truth["psi"]], 1)
    start = angular_error_deg(
        np.stack([source["rot"], source["tilt"], source["psi"]], 1), true_angles
    )
    error = angular_error_deg(np.stack([out["rot"], out["tilt"], out["psi"]], 1), true_angles)
    shift_err = np.hypot(
        out["shift_x"] + truth["shift_px"][:, 0] * PIXEL_A,
        out["shift_y"] + truth["shift_px"][:, 1] * PIXEL_A,
    )
    print(
        "angles start", np.median(start), "refined", np.median(error), "shift", np.median(shift_err)
    )
    assert np.median(error) < 5.0
    assert np.median(shift_err) < 0.5 * PIXEL_A
    fsc = project.open_set(run.id, "fsc").read_columns()
    assert fsc["label"].tolist() == ["gold_standard"]
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    result = steps["register"]["result"]
    assert fsc["resolution_A"][0] == pytest.approx(result["resolution_A"])
    assert 2 * PIXEL_A <= result["resolution_A"] <= 25.0  # measured 17.5 Å
    assert result["half_sets_kept"] is True and result["half_set_sizes"] == [50, 50]
    argv = steps["refine"]["result"]["commands"][0]["argv"]
    at = argv.index("orterun")
    assert argv[0] == "unshare" and argv[at + 1 : at + 3] == ["-n", "3"]
    assert Path(argv[at + 3]).name == "relion_refine_mpi"
    for flag in ("--auto_refine", "--split_random_halves", "--firstiter_cc", "--ctf"):
        assert flag in argv


def test_the_last_iteration_is_the_highest_model_star(tmp_path):
    from hpcem.relion.refine import last_iteration

    # run_itNNN_model.star, or an auto-refine's half1 model.
    for name in ("run_it000_model.star", "run_it003_half1_model.star", "run_it002_model.star"):
        (tmp_path / name).touch()
    assert last_iteration(tmp_path) == 3


def test_step_names_recorded_by_older_runs_still_resolve_to_the_shared_functions():
    """Runs store a step's function as "module:function" (part of its identity); the
    names of the first version (in protocols/relion_class2d.py, relion_class3d.py) must
    keep resolving, to the functions now in hpcem.relion.refine."""
    import importlib

    from hpcem.relion import refine as shared

    recorded = {
        "hpcem.protocols.relion_class2d:write_particles": shared.write_particles,
        "hpcem.protocols.relion_class2d:refine": shared.refine,
        "hpcem.protocols.relion_class3d:link_reference": shared.link_reference,
    }
    assert set(shared.STEP_FUNCS.values()) == set(recorded)
    for name, func in recorded.items():
        module, _, attr = name.partition(":")
        assert getattr(importlib.import_module(module), attr) is func
