"""``relion.class3d`` with the real relion_refine on projections of the simulator's
volume at random, known orientations.

RELION searches all orientations (healpix order 2, 15°, oversampled to 7.5°) against
the true map low-pass filtered to 30 Å; its orientations must be those of the
simulator (median rotation error well below the sampling step), which holds only if
hpcem reads RELION's Euler angles as RELION means them. Every particle is in one of
the K classes, and the class maps are RELION's, with the particles' box and pixel size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from refine_helpers import angular_error_deg, reference_volumes, view_particles
from relion_helpers import need_relion

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_header

PIXEL_A, BOX = 6.0, 32
PARAMS = {
    "classes": 2,
    "iterations": 2,
    "particle_diameter_A": 160.0,
    "ini_high_A": 30.0,
    "offset_step_px": 1.0,
    "offset_range_px": 2.0,
    "threads": 2,
}


@pytest.mark.slow  # about 30 s (3 min on a loaded machine): 2 iterations, 40 particles
def test_classes_hold_every_particle_and_poses_are_the_simulators(project, tmp_path, wait_for_run):
    need_relion("relion_refine")
    particles, truth = view_particles(
        project, tmp_path / "data", n=40, pixel_A=PIXEL_A, box=BOX, random_views=True
    )
    reference = reference_volumes(project, truth["map"], PIXEL_A, BOX)
    inputs = {"particles": [particles], "reference": [reference]}
    with pytest.raises(ValidationError, match="symmetry 'X3' is not a point group"):
        lifecycle.create_run(project, "relion.class3d", PARAMS | {"symmetry": "X3"}, inputs)
    run = lifecycle.create_run(project, "relion.class3d", PARAMS, inputs)
    lifecycle.launch(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=300)
    assert done.state == "finished", done.error
    out = project.open_set(run.id, "particles").read_columns()
    classes = project.open_set(run.id, "classes").read_columns()
    assert classes["id"].tolist() == [1, 2]
    assert set(out["class_id"].tolist()) <= {1, 2}
    assert sum(classes["size"].tolist()) == 40
    for k, cid in enumerate(classes["id"]):
        assert sorted(np.asarray(classes["member_ids"][k]).tolist()) == sorted(
            out["id"][out["class_id"] == cid].tolist()
        )
    for k in range(2):
        path = Path(project.path) / str(classes["representative"][k])
        assert path.name == f"run_it002_class00{k + 1}.mrc"
        header = read_header(path)
        assert header.shape == (BOX, BOX, BOX) and header.pixel_size_A == pytest.approx(PIXEL_A)
    assert np.isfinite(classes["resolution_A"]).all()
    true_angles = np.stack([truth["rot"], truth["tilt"], truth["psi"]], 1)
    error = angular_error_deg(np.stack([out["rot"], out["tilt"], out["psi"]], 1), true_angles)
    # Measured: median error 11° (80 particles, 3 iterations, 7.5° after oversampling);
    # orientations unrelated to the truth would give a median near 126°.
    assert np.median(error) < 20.0, np.median(error)
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    argv = steps["refine"]["result"]["commands"][0]["argv"]
    assert argv[argv.index("--ref") + 1] == "reference.mrc"
    assert argv[argv.index("--K") + 1] == "2" and "--firstiter_cc" in argv
    link = Path(project.path) / steps["reference"]["result"]["link"]
    assert link.resolve() == Path(truth["map"]).resolve()
