"""End to end on the real local SLURM (scripts/start-slurm.sh): Parsl blocks on 4 nodes,
an MPI step under srun, scancel, walltime, requeue, rejects. Skipped when sinfo does not answer."""

from __future__ import annotations

import collections
import subprocess
import time

import mrcfile
import numpy as np
import pytest

from hpcem.cli.main import main as hpcem_main
from hpcem.cluster.job import JobState
from hpcem.cluster.site import load_site
from hpcem.cluster.submit import list_user_jobs, submit_job
from hpcem.cluster.tracking import JobTracker
from hpcem.errors import SubmitError
from hpcem.execution.mpi import mpi_job_spec, read_result

from .conftest import job_spec

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_up")]


@pytest.fixture(scope="module")
def site():
    return load_site("local-slurm")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def walltime_job(site, workdir):
    """Submitted early (after the 4-node Parsl test, which needs every core): SLURM's
    smallest limit is one minute, so this job takes 60-90 s while the other tests run."""
    s = job_spec(workdir, "walltime", ["sleep", "600"], walltime_s=60)
    return submit_job(site, s), s


def wait_state(tracker, job_id, states, timeout_s=60):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        st = tracker.poll([job_id])[job_id]
        if st.state in states:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: {st}")


def test_parsl_steps_run_on_all_four_nodes(site, workdir):
    from hpcem.execution.parsl_executor import ParslExecutor

    # another user's job on the shared test cluster may hold a node; then expect fewer
    others = subprocess.run(
        ["squeue", "-h", "-o", "%N"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.split()
    ex = ParslExecutor(
        site,
        max_blocks=4,
        init_blocks=4,
        run_dir=workdir / "parsl",
        max_idletime_s=2,
        strategy_period_s=0.5,
    )
    ex.start()
    try:
        futures = [
            ex.submit("hpcem.cluster.diagnostics:sleep_step", {"seconds": 0.3, "index": i}, {})
            for i in range(48)
        ]
        results = [f.result(timeout=120)["result"] for f in futures]
        assert sorted(r["index"] for r in results) == list(range(48))
        nodes = collections.Counter(r["node"] for r in results)
        if not others:
            assert set(nodes) == {"node1", "node2", "node3", "node4"}, nodes
        else:
            assert len(nodes) >= 2, (nodes, others)
        assert len(ex.job_ids()) == 4
        # idle blocks are scaled in (cancelled) by Parsl through our provider
        tracker = ex.provider.tracker
        end = time.monotonic() + 40
        while time.monotonic() < end and not all(s.state.final for s in tracker.poll().values()):
            time.sleep(1)
        assert all(s.state.final for s in tracker.statuses().values()), tracker.statuses()
    finally:
        ex.shutdown()
    # status calls: one per provider poll, not one per block
    assert ex.status_calls < 200


def test_parsl_step_error_comes_back(site, workdir, walltime_job):
    from hpcem.execution.parsl_executor import ParslExecutor

    with ParslExecutor(site, max_blocks=1, run_dir=workdir / "parsl-err", max_idletime_s=2) as ex:
        fut = ex.submit(
            "hpcem.parallel.mean_image:mean_particle_image",
            {"stack_path": str(workdir / "missing.mrcs"), "out_path": str(workdir / "x.mrc")},
            {},
        )
        with pytest.raises(Exception, match="missing.mrcs: cannot read"):
            fut.result(timeout=120)


def test_mpi_step_two_ranks_under_srun(site, workdir):
    stack = np.random.default_rng(3).normal(size=(31, 8, 8)).astype(np.float32)
    with mrcfile.new(workdir / "stack.mrcs", overwrite=True) as m:
        m.set_data(stack)
    s, result_file = mpi_job_spec(
        site,
        "hpcem.parallel.mean_image:mean_particle_image",
        {"stack_path": str(workdir / "stack.mrcs"), "out_path": str(workdir / "mean.mrc")},
        ranks=2,
        workdir=workdir,
        name="mpi2",
    )
    assert s.command[:4] == ("srun", "--mpi=pmi2", "-n", "2")
    job = submit_job(site, s)
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    st = tracker.wait([job], timeout_s=120)[job]
    assert st.state is JobState.COMPLETED, (st, (workdir / "mpi2.out").read_text())
    r = read_result(result_file)
    assert r["ranks"] == 2 and r["n_images"] == 31
    np.testing.assert_allclose(mrcfile.read(workdir / "mean.mrc"), stack.mean(axis=0), atol=1e-5)


def test_scancel_gives_cancelled(site, workdir):
    s = job_spec(workdir, "cancel", ["sleep", "300"])
    job = submit_job(site, s)
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    wait_state(tracker, job, {JobState.RUNNING})
    time.sleep(0.5)  # let the script install its traps
    tracker.cancel([job])
    st = wait_state(tracker, job, {JobState.CANCELLED, JobState.FAILED}, 60)
    assert st.state is JobState.CANCELLED
    assert st.exit_code == 143  # the trap recorded SIGTERM


def test_exit_code_and_node(site, workdir):
    s = job_spec(workdir, "exit5", ["bash", "-c", "echo $SLURMD_NODENAME; exit 5"])
    job = submit_job(site, s)
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    st = tracker.wait([job], timeout_s=60)[job]
    assert st.state is JobState.FAILED and st.exit_code == 5
    assert (workdir / "exit5.out").read_text().strip().startswith("node")


def test_job_killed_without_exit_file(site, workdir):
    # SIGKILL to the job script itself: no trap runs, no exit-code file
    s = job_spec(workdir, "sigkill", ["bash", "-c", "kill -9 $PPID; sleep 5"])
    job = submit_job(site, s)
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    st = tracker.wait([job], timeout_s=60)[job]
    assert st.state is JobState.FAILED
    assert "without writing its exit-code file" in st.reason
    assert not (workdir / "sigkill.exit").exists()


def test_requeue_is_survived(site, workdir):
    s = job_spec(workdir, "requeue", ["bash", "-c", "sleep 3; echo done"])
    job = submit_job(site, s)
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    wait_state(tracker, job, {JobState.RUNNING})
    time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    wait_state(tracker, job, {JobState.QUEUED, JobState.PREEMPTED})
    # a requeued job waits for a begin time; release it now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    st = tracker.wait([job], timeout_s=90)[job]
    assert st.state is JobState.COMPLETED, st
    assert (workdir / "requeue.out").read_text().strip().endswith("done")


def test_rejected_submit_shows_scheduler_stderr(site, workdir):
    import dataclasses

    from hpcem.cluster.site import Queue

    bad = dataclasses.replace(site, queues={**site.queues, "nosuch": Queue("nosuch", 1, 2)})
    with pytest.raises(SubmitError, match="invalid partition specified: nosuch"):
        submit_job(bad, job_spec(workdir, "rejected", ["true"], queue="nosuch"))


def test_cli_site_check_test_and_queue(site, workdir, capsys):
    assert hpcem_main(["site", "check", "local-slurm", "--test", "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "ok   test job" in out and "FAIL" not in out
    s = job_spec(workdir, "listed", ["sleep", "30"])
    job = submit_job(site, s)
    try:
        assert job in {r["job_id"] for r in list_user_jobs(site)}
        assert hpcem_main(["queue", "--site", "local-slurm"]) == 0
        assert "hpcem-listed" in capsys.readouterr().out
    finally:
        subprocess.run(["scancel", job], check=False, timeout=30)


def test_walltime_exceeded_gives_timeout(site, walltime_job):
    job, s = walltime_job
    tracker = JobTracker(site)
    tracker.add(job, s.exit_code_file)
    st = tracker.wait([job], timeout_s=150)[job]
    assert st.state is JobState.TIMEOUT, st
