"""The MPI path end to end on this machine: a protocol step declared MPI, launched with
the localhost site's launcher (mpiexec.gforker from the MPICH wheel), mpi4py reduction."""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np
import pytest

from hpcem.execution import runs as lifecycle

pytestmark = pytest.mark.mpi


@pytest.fixture(autouse=True)
def _need_mpi():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    if shutil.which("mpiexec.gforker") is None:
        pytest.skip("mpiexec.gforker (PyPI mpich wheel) is not on PATH")


def test_mpi_average_matches_numpy_on_two_ranks(project, tmp_path):
    rng = np.random.default_rng(7)
    stack = rng.normal(size=(13, 24, 20)).astype(np.float32)  # 13 images: uneven split
    with mrcfile.new(tmp_path / "stack.mrcs") as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = 1.5
    run = lifecycle.create_run(project, "particles.average_mpi",
                               {"stack": str(tmp_path / "stack.mrcs"), "ranks": 2})
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    assert steps["average"]["result"]["ranks"] == 2
    assert steps["register"]["result"] == {"n_images": 13, "ranks": 2}
    classes = project.open_set(run.id, "average")
    item = classes[0]
    assert item.size == 13 and list(item.member_ids) == list(range(13))
    mean = mrcfile.read(classes.column("representative")[0])
    np.testing.assert_allclose(mean, stack.mean(axis=0), atol=1e-6)
