"""classify.class2d under MPI (2 ranks, the localhost site's launcher, mpi4py Allreduce)
gives the same classes, poses and averages as the one-process run for the same seed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from hpcem.execution import runs as lifecycle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "science"))
from test_classify2d import particles_run

pytestmark = pytest.mark.mpi


@pytest.fixture(autouse=True)
def _need_mpi():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    if shutil.which("mpiexec.gforker") is None:
        pytest.skip("mpiexec.gforker (PyPI mpich wheel) is not on PATH")


def _classify(project, ref, ranks):
    params = {"n_classes": 3, "iterations": 5, "angle_step_deg": 10.0, "seed": 9, "ranks": ranks}
    run = lifecycle.create_run(project, "classify.class2d", params, {"particles": [ref]})
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    particles = project.open_set(run.id, "particles")
    classes = project.open_set(run.id, "classes")
    averages = mrcfile.read(classes.column("representative")[0])
    return steps["classify"]["result"], particles, averages


def test_two_ranks_give_the_one_process_result(project, tmp_path):
    ref, _ = particles_run(project, tmp_path, n=61)  # odd: an uneven split over the ranks
    one, p1, a1 = _classify(project, ref, 1)
    two, p2, a2 = _classify(project, ref, 2)
    assert one["ranks"] == 1 and two["ranks"] == 2
    assert one["iterations_run"] == two["iterations_run"]
    np.testing.assert_array_equal(p1.column("class_id"), p2.column("class_id"))
    dpsi = (p1.column("psi") - p2.column("psi") + 180.0) % 360.0 - 180.0
    assert np.abs(dpsi).max() < 1e-2
    for key in ("shift_x", "shift_y"):
        np.testing.assert_allclose(p1.column(key), p2.column(key), atol=1e-3)
    np.testing.assert_allclose(a1, a2, atol=1e-4 * np.abs(a1).max())
