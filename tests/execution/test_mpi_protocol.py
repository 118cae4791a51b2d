"""The MPI path end to end on this machine: a protocol step declared MPI, launched with
the localhost site's launcher (mpiexec.gforker from the MPICH wheel), mpi4py reduction."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

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
    run = lifecycle.create_run(
        project, "particles.average_mpi", {"stack": str(tmp_path / "stack.mrcs"), "ranks": 2}
    )
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


def _live_processes_mentioning(marker: str) -> list[str]:
    """Command lines of the processes (zombies aside) whose argv contains ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # ended while we looked
        if marker in argv and state not in ("Z", "X"):
            found.append(argv)
    return found


def test_mpi_step_past_its_limit_ends_every_rank_and_what_they_started(tmp_path):
    """Each rank starts a program that would sleep for minutes; the step's own limit is a
    few seconds. After the error nothing of the step is left: no rank, no program."""
    from hpcem.cluster.site import load_site
    from hpcem.errors import StepError
    from hpcem.execution.mpi import run_mpi_step

    started = tmp_path / "started"
    started.mkdir()
    code = (
        "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close();"
        " time.sleep(600)"
    )
    program = [sys.executable, "-c", code, str(started)]
    with pytest.raises(StepError) as err:
        # subprocess.run(args=...) on each rank: a step body that starts a program.
        run_mpi_step(
            load_site("localhost"),
            "subprocess:run",
            {"args": program},
            ranks=2,
            workdir=tmp_path / "mpi",
            timeout_s=8,
        )
    assert len(list(started.iterdir())) == 2  # both ranks had started their program
    deadline = time.monotonic() + 10  # the kernel finishes SIGKILLed processes soon after
    while _live_processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _live_processes_mentioning(str(tmp_path))
    for pid in (int(p.name) for p in started.iterdir()):  # do not leave them to a failed test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == []
    assert "on 2 ranks failed: mpiexec.gforker ran past its limit of 8 s" in str(err.value)


def test_mpi_steps_have_no_hidden_time_limit():
    """No hidden cap: timeout_s defaults to None (a batch job's walltime bounds the step)."""
    import inspect

    from hpcem.execution.mpi import run_launcher, run_mpi_step

    assert inspect.signature(run_mpi_step).parameters["timeout_s"].default is None
    result = run_launcher([sys.executable, "-c", "print('done')"])
    assert result.returncode == 0 and result.stdout.strip() == "done"


def test_mpi_average_of_a_stack_without_map_id(project, tmp_path):
    """RELION/EMAN-style stacks lack the 'MAP ' id; the MPI step reads them like read_image."""
    stack = np.random.default_rng(8).normal(size=(6, 16, 16)).astype(np.float32)
    path = tmp_path / "relion-style.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
        mrc.voxel_size = 1.5
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"\0\0\0\0"  # no MAP id
    path.write_bytes(bytes(raw))
    run = lifecycle.create_run(project, "particles.average_mpi", {"stack": str(path), "ranks": 2})
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    mean = mrcfile.read(project.open_set(run.id, "average").column("representative")[0])
    np.testing.assert_allclose(mean, stack.mean(axis=0), atol=1e-6)
