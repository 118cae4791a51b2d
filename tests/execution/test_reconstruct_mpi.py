"""``reconstruct.fourier`` on MPI ranks: the same map as one process, a dying rank fails
the step with its error and ``continue`` re-runs it, and (with the local SLURM) the step
under ``srun`` across two nodes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hpcem.execution import runs as lifecycle
from hpcem.io import read_image, write_mrc
from hpcem.reconstruct.simulate import particle_columns, simulate_particles
from hpcem.sim.volume import load_volume

pytestmark = pytest.mark.mpi

PIXEL_A = 5.0
BOX = 32


@pytest.fixture(autouse=True)
def _need_mpi(request):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    if request.node.get_closest_marker("slurm"):
        return  # launched by srun: only SLURM must answer (checked in the test)
    if shutil.which("mpiexec.gforker") is None:
        pytest.skip("mpiexec.gforker (PyPI mpich wheel) is not on PATH")


@pytest.fixture(scope="module")
def sim():
    return simulate_particles(load_volume(None, PIXEL_A, BOX), 120, snr=1.0, seed=11)


def _particle_run(project, folder: Path, sim: dict, n_stacks: int = 1) -> str:
    """A finished run with ``sim`` as its particles, split over ``n_stacks`` stacks."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(sim["images"])
    bounds = np.linspace(0, n, n_stacks + 1).astype(int)
    columns, optics = particle_columns(sim, "")
    images, indices = [], []
    for k in range(n_stacks):
        path = write_mrc(
            folder / f"stack{k}.mrcs", sim["images"][bounds[k] : bounds[k + 1]], PIXEL_A
        )
        images += [str(path)] * (bounds[k + 1] - bounds[k])
        indices += list(range(bounds[k + 1] - bounds[k]))
    columns["image"], columns["image_index"] = images, np.asarray(indices)
    run = project.create_run("test.particles", "simulated particles")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(optics)
    writer.append_columns(columns)
    writer.close()
    project.set_output(run.id, "particles", "hpcem.SetOfParticles", n)
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:particles"


def _maps(project, run_id: int) -> list[np.ndarray]:
    vols = project.open_set(run_id, "volumes").read_columns()
    return [read_image(Path(project.path) / str(p)) for p in vols["image"]]


@pytest.mark.slow  # ~18 s on the shared 2-core machine: two runs, one on MPI
def test_two_ranks_give_the_map_of_one_process(project, tmp_path, sim):
    particles = _particle_run(project, tmp_path / "data", sim, n_stacks=3)
    results = {}
    for ranks in (1, 2):
        run = lifecycle.create_run(
            project, "reconstruct.fourier", {"ranks": ranks}, {"particles": [particles]}
        )
        lifecycle.launch(project, run.id, foreground=True)
        rec = project.run(run.id)
        assert rec.state == "finished", rec.error
        steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
        assert steps["reconstruct"]["result"]["ranks"] == ranks
        results[ranks] = (_maps(project, run.id), project.open_set(run.id, "fsc").read_columns())
    (serial, fsc1), (mpi, fsc2) = results[1], results[2]
    for a, b in zip(serial, mpi):
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(b, a, atol=1e-5 * scale)
    np.testing.assert_allclose(fsc2["fsc"][0], fsc1["fsc"][0], atol=1e-5)


@pytest.mark.slow  # ~9 s: a failed attempt and its continuation
def test_a_dying_rank_fails_the_step_and_continue_reruns_it(project, tmp_path, sim):
    particles = _particle_run(project, tmp_path / "data", sim, n_stacks=2)
    run = lifecycle.create_run(
        project, "reconstruct.fourier", {"ranks": 2}, {"particles": [particles]}
    )
    stack = tmp_path / "data" / "stack1.mrcs"  # rank 1's share
    intact = stack.read_bytes()
    stack.write_bytes(intact[:2000])  # truncated after validation: rank 1 cannot read it
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "failed"
    # the rank's own error reaches the run's error, not only MPI's abort lines
    assert "(rank 1: " in (rec.error or "") and "stack1.mrcs" in (rec.error or ""), rec.error
    stack.write_bytes(intact)
    lifecycle.continue_run(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    assert len(_maps(project, run.id)) == 3


def _slurm_answers() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if out.returncode == 0 else (out.stderr.strip() or "sinfo failed")


def _step_placement(job: str, timeout_s: float = 30.0) -> list[tuple[int, list[str]]]:
    """(tasks, node names) of each ``srun`` step of ``job`` from SLURM's accounting
    (``sacct``), waiting for the records to arrive; the nodes listed by ``scontrol show
    hostnames``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks,NodeList"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        steps = [
            line.split("|")
            for line in out.splitlines()
            if line.split("|")[0].split(".")[-1].isdigit() and "." in line.split("|")[0]
        ]
        if steps or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    found = []
    for _, tasks, nodes in steps:
        names = subprocess.run(
            ["scontrol", "show", "hostnames", nodes],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        found.append((int(tasks or 0), names))
    return found


@pytest.mark.slurm
@pytest.mark.slow  # ~5 s: a batch job
def test_reconstruction_under_srun_on_two_nodes(tmp_path, sim):
    """The step body on 2 ranks, one per node (2 threads each fill a 2-core node), in a
    batch job on the local SLURM; SLURM's own accounting says the MPI step ran 2 tasks
    on 2 different nodes; the map equals the one-process map."""
    why = _slurm_answers()
    if why:
        pytest.skip(f"local SLURM not answering ({why}); start it: bash scripts/start-slurm.sh")
    from hpcem.cluster.job import JobState
    from hpcem.cluster.site import load_site
    from hpcem.cluster.submit import submit_job
    from hpcem.cluster.tracking import JobTracker
    from hpcem.execution.mpi import mpi_job_spec, read_result
    from hpcem.reconstruct.mpi import reconstruct_step, write_table

    stack = write_mrc(tmp_path / "stack.mrcs", sim["images"], PIXEL_A)
    columns, _ = particle_columns(sim, str(stack))
    n = len(sim["images"])
    table = {
        "stack": columns["image"],
        "image_index": columns["image_index"],
        **{k: columns[k] for k in ("rot", "tilt", "psi", "shift_x", "shift_y")},
        **{k: columns[k] for k in ("defocus_u", "defocus_v", "defocus_angle")},
        "phase_shift": np.zeros(n),
        "half": columns["half_set"],
        "voltage_kV": np.full(n, 300.0),
        "spherical_aberration_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.1),
    }
    write_table(str(tmp_path / "table.npz"), table, {"pixel_size_A": PIXEL_A, "image_size_px": BOX})
    options = {"symmetry": "C1", "pad": 2, "wiener": 0.001, "max_res_A": 0.0, "ctf": True}

    def outputs(name: str) -> dict:
        folder = tmp_path / name
        return {
            k: str(folder / f"{k}.{ext}")
            for k, ext in (("full", "mrc"), ("half1", "mrc"), ("half2", "mrc"), ("fsc", "npz"))
        } | {"plot": str(folder / "fsc.png")}

    serial = reconstruct_step(str(tmp_path / "table.npz"), outputs("serial"), options, False)
    site = load_site("local-slurm")
    spec, result_file = mpi_job_spec(
        site,
        "hpcem.reconstruct.mpi:reconstruct_step",
        {"table": str(tmp_path / "table.npz"), "out": outputs("slurm"), "options": options},
        ranks=2,
        threads=2,
        workdir=tmp_path,
        name="recon2",
    )
    assert spec.nodes == 2 and spec.command[:4] == ("srun", "--mpi=pmi2", "-n", "2")
    job = submit_job(site, spec)
    tracker = JobTracker(site)
    tracker.add(job, spec.exit_code_file)
    state = tracker.wait([job], timeout_s=180)[job]
    assert state.state is JobState.COMPLETED, (state, (tmp_path / "recon2.out").read_text())
    result = read_result(result_file)
    assert result["ranks"] == 2
    placement = _step_placement(job)
    assert [(tasks, len(set(nodes))) for tasks, nodes in placement] == [(2, 2)], placement
    a = read_image(serial["maps"]["full"])
    b = read_image(result["maps"]["full"])
    np.testing.assert_allclose(b, a, atol=1e-5 * float(np.abs(a).max()))
