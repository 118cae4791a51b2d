"""classify.class2d under MPI (2 ranks, the localhost site's launcher, mpi4py Allreduce)
gives the same classes, poses and averages as the one-process run for the same seed; a
rank that dies mid-run fails the step with its own error, and ``continue`` re-runs it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from hpcem.execution import runs as lifecycle
from hpcem.io import write_mrc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "science"))
from test_classify2d import particles_run, simulate_particles

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


def _two_stack_run(project, tmp_path, n=40, box=32, pixel_A=6.0):
    """A finished run of ``n`` simulated particles, the first half in ``stack0.mrcs`` and
    the second (rank 1's share on 2 ranks) in ``stack1.mrcs``."""
    data = simulate_particles(n=n, box=box, pixel_A=pixel_A, n_views=2, snr=0.5, seed=3)
    half = n // 2
    paths = [
        write_mrc(tmp_path / f"stack{k}.mrcs", part, pixel_A, kind="stack")
        for k, part in enumerate((data["images"][:half], data["images"][half:]))
    ]
    run = project.create_run("test.particles", "simulated particles")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(
        {
            "optics_group": [1],
            "voltage_kV": [300.0],
            "spherical_aberration_mm": [2.7],
            "amplitude_contrast": [0.1],
            "pixel_size_A": [pixel_A],
            "image_size_px": [box],
        }
    )
    writer.append_columns(
        {
            "image": [str(paths[0])] * half + [str(paths[1])] * (n - half),
            "image_index": np.r_[np.arange(half), np.arange(n - half)],
            **{k: data["ctf"][k] for k in ("defocus_u", "defocus_v", "defocus_angle")},
        }
    )
    writer.close()
    project.set_output(run.id, "particles", "hpcem.SetOfParticles", n)
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:particles", paths[1]


@pytest.mark.slow  # ~11 s: a failed attempt and its continuation
def test_a_dying_rank_fails_the_step_and_continue_reruns_it(project, tmp_path):
    ref, stack = _two_stack_run(project, tmp_path)
    params = {"n_classes": 2, "iterations": 3, "angle_step_deg": 10.0, "seed": 9, "ranks": 2}
    run = lifecycle.create_run(project, "classify.class2d", params, {"particles": [ref]})
    intact = stack.read_bytes()
    stack.write_bytes(intact[:1500])  # truncated after validation: rank 1 cannot read it
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "failed"
    # the rank's own error reaches the run's error, not only MPI's abort lines
    assert "(rank 1: " in (rec.error or "") and "stack1.mrcs" in (rec.error or ""), rec.error
    stack.write_bytes(intact)
    lifecycle.continue_run(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    assert len(project.open_set(run.id, "particles")) == 40
