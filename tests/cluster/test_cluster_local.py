"""The localhost site end to end (no scheduler), and the real MPI step (mpiexec.gforker)."""

from __future__ import annotations

import shutil
import time

import mrcfile
import numpy as np
import pytest

from hpcem.cluster.job import JobState
from hpcem.cluster.site import load_site
from hpcem.cluster.submit import submit_job
from hpcem.cluster.tracking import JobTracker
from hpcem.errors import ConfigError, DataFormatError, StepError
from hpcem.execution.mpi import mpi_launch_argv, run_mpi_step

from .conftest import job_spec


def test_local_jobs_outcomes_and_cancel(tmp_path):
    site = load_site("localhost")
    tracker = JobTracker(site)
    jobs = {}
    for name, cmd in {
        "ok": ["echo", "hello"],
        "fail": ["bash", "-c", "exit 7"],
        "long": ["sleep", "60"],
    }.items():
        s = job_spec(tmp_path, name, cmd)
        jobs[name] = submit_job(site, s)
        tracker.add(jobs[name], s.exit_code_file)
    time.sleep(0.5)
    tracker.cancel([jobs["long"]])
    st = tracker.wait(timeout_s=30)
    assert st[jobs["ok"]].state is JobState.COMPLETED
    assert (tmp_path / "ok.out").read_text() == "hello\n"
    assert st[jobs["fail"]].state is JobState.FAILED and st[jobs["fail"]].exit_code == 7
    # SIGTERM reached the trap: 143 recorded, and no scheduler reason -> FAILED with the code
    assert st[jobs["long"]].exit_code == 143


def test_mpi_launch_argv_from_site():
    assert mpi_launch_argv(load_site("local-slurm"), 4, 2) == [
        "srun",
        "--mpi=pmi2",
        "-n",
        "4",
        "--cpus-per-task=2",
    ]
    assert mpi_launch_argv(load_site("localhost"), 2) == ["mpiexec.gforker", "-n", "2"]
    with pytest.raises(ConfigError, match="no \\[mpi\\] command"):
        import dataclasses

        mpi_launch_argv(dataclasses.replace(load_site("localhost"), mpi_command=()), 2)


def write_stack(path, n=23, shape=(12, 10), seed=1):
    stack = np.random.default_rng(seed).normal(3.0, 2.0, size=(n, *shape)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(stack)
        m.voxel_size = 1.34
    return stack


def test_mean_particle_image_one_rank_matches_numpy(tmp_path):
    from hpcem.parallel.mean_image import mean_particle_image

    stack = write_stack(tmp_path / "s.mrcs")
    r = mean_particle_image(str(tmp_path / "s.mrcs"), str(tmp_path / "mean.mrc"))
    assert r["n_images"] == 23 and r["ranks"] == 1
    np.testing.assert_allclose(mrcfile.read(tmp_path / "mean.mrc"), stack.mean(axis=0), atol=1e-5)
    with pytest.raises(DataFormatError):
        mean_particle_image(str(tmp_path / "missing.mrcs"), str(tmp_path / "m.mrc"))


@pytest.mark.mpi
@pytest.mark.skipif(
    shutil.which("mpiexec.gforker") is None, reason="mpiexec.gforker (pip mpich) missing"
)
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_step_mean_image_matches_numpy(tmp_path, ranks):
    stack = write_stack(tmp_path / "s.mrcs")
    r = run_mpi_step(
        load_site("localhost"),
        "hpcem.parallel.mean_image:mean_particle_image",
        {"stack_path": str(tmp_path / "s.mrcs"), "out_path": str(tmp_path / "mean.mrc")},
        ranks=ranks,
        workdir=tmp_path,
        timeout_s=120,
    )
    assert r["ranks"] == ranks and r["n_images"] == 23
    with mrcfile.open(tmp_path / "mean.mrc") as m:
        np.testing.assert_allclose(m.data, stack.mean(axis=0), atol=1e-5)
        assert float(m.voxel_size.x) == pytest.approx(1.34, abs=1e-3)
    assert r["mean"] == pytest.approx(float(stack.mean()), abs=1e-4)


@pytest.mark.mpi
@pytest.mark.skipif(
    shutil.which("mpiexec.gforker") is None, reason="mpiexec.gforker (pip mpich) missing"
)
def test_mpi_step_failure_is_a_step_error(tmp_path):
    with pytest.raises(StepError, match="MPI step .* failed"):
        run_mpi_step(
            load_site("localhost"),
            "hpcem.parallel.mean_image:mean_particle_image",
            {"stack_path": str(tmp_path / "none.mrcs"), "out_path": str(tmp_path / "m.mrc")},
            ranks=2,
            workdir=tmp_path,
            timeout_s=60,
        )


def test_parsl_executor_contract_on_localhost(tmp_path):
    """The executor contract without a batch scheduler: one local block, results back."""
    from hpcem.errors import ValidationError
    from hpcem.execution.parsl_executor import ParslExecutor

    ex = ParslExecutor(
        load_site("localhost"),
        max_blocks=1,
        workers_per_node=2,
        run_dir=tmp_path / "parsl",
        max_idletime_s=1,
    )
    assert ex.job_ids() == []  # constructing does nothing
    with ex:
        futures = [
            ex.submit("hpcem.cluster.diagnostics:sleep_step", {"seconds": 0.05, "index": i}, {})
            for i in range(8)
        ]
        assert sorted(f.result(timeout=60)["result"]["index"] for f in futures) == list(range(8))
        assert len(ex.job_ids()) == 1
        with pytest.raises(ValidationError, match="not 'module:function'"):
            ex.submit("no_colon", {}, {})
        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            ex.submit("hpcem.cluster.diagnostics:sleep_step", {"seconds": object()}, {})
