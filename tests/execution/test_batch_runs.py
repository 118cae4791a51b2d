"""Whole runs as batch jobs on the real local SLURM (scripts/start-slurm.sh):
submit, track, scancel mid-step then continue, walltime exceeded, hpcem stop, and a
config error that submits nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpcem.errors import ConfigError, ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.execution.batch import refresh_jobs
from hpcem.execution.placement import execution_request

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _need_slurm():
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed (scripts/start-slurm.sh installs and starts it)")
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo timed out: slurmctld is not answering")
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip(f"SLURM is not running (sinfo: {out.stderr.strip()[:200]})")


def _job_run(project, out_dir, n=4, sleep_s=1.0, walltime="0:05:00", cores=2, label=""):
    execution = execution_request(
        project, {"site": "local-slurm", "queue": "debug", "walltime": walltime, "cores": cores}
    )
    run = lifecycle.create_run(
        project,
        "test.sleepy",
        {"out_dir": str(out_dir), "n": n, "sleep_s": sleep_s},
        label=label,
        placement=execution,
    )
    lifecycle.launch(project, run.id)
    return run


def _wait_state(project, run_id, states, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        refresh_jobs(project, project.runs)
        run = project.run(run_id)
        if lifecycle.effective_state(run) in states:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} is {project.run(run_id).state}, not in {states}")


def _wait_refined(project, run_id, timeout_s=90):
    """Refresh until the run's outcome is no longer provisional (the scheduler's word)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        refresh_jobs(project, project.runs)
        run = project.run(run_id)
        if run.state not in ("launched", "running") and not run.attempt.provisional:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id}: outcome still provisional: {project.run(run_id).error}")


def _job_after_steps(project, run_id, n, timeout_s=90):
    """Wait until ``n`` steps are recorded finished; return the run's current job id."""
    deadline = time.monotonic() + timeout_s
    while project.run(run_id).steps_done < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return project.run(run_id).attempt.job_id


def _executions(out_dir: Path, name: str) -> int:
    path = out_dir / f"{name}.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_whole_run_job_finishes_and_records_job(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _job_run(project, out, n=4, sleep_s=0.2, label="label; rm -rf ~")
    rec = project.run(run.id)
    job = rec.attempt
    assert job.job_id.isdigit() and job.site == "local-slurm" and job.queue == "debug"
    done = _wait_state(project, run.id, ("finished", "failed", "aborted"))
    assert done.state == "finished", done.error
    assert done.attempt.outcome == "finished"
    deadline = time.monotonic() + 60
    while not done.attempt.scheduler_final and time.monotonic() < deadline:
        refresh_jobs(project, project.runs)  # reconciled with SLURM's accounting
        done = project.run(run.id)
        time.sleep(0.5)
    assert done.state == "finished" and done.attempt.scheduler_state == "COMPLETED"
    assert done.attempt.node.startswith("node") and done.attempt.number == 1
    assert (Path(job.exit_code_file)).read_text().strip() == "0"
    script = (project.run_dir(run.id) / "job-1.sh").read_text()
    assert "export HPCEM_LABEL='label; rm -rf ~'" in script  # quoted, harmless
    assert all(_executions(out, f"s{i:04d}") == 1 for i in range(4))


def test_scancel_mid_step_then_continue_keeps_finished_steps(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _job_run(project, out, n=6, sleep_s=1.5, cores=2)
    job_id = _job_after_steps(project, run.id, 2)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    dead = _wait_refined(project, run.id)
    # the controller saw SIGTERM (provisional); SLURM's accounting says who ended it
    assert dead.state == "aborted" and "cancelled by a user or an administrator" in dead.error, (
        dead.error
    )
    assert dead.attempt.scheduler_state.startswith("CANCELLED")
    finished = {
        s["name"] for s in project.read_steps(run.id).to_records() if s["state"] == "finished"
    }
    assert 2 <= len(finished) < 6

    lifecycle.continue_run(project, run.id)
    done = _wait_state(project, run.id, ("finished", "failed", "aborted"))
    assert done.state == "finished", done.error
    assert [a.number for a in done.attempts] == [1, 2] and done.attempts[0].job_id != done.attempts[
        1
    ].job_id
    for name in finished:
        assert _executions(out, name.replace("/", "")) == 1, f"{name} ran again after continue"


def test_walltime_exceeded_is_recognised(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _job_run(project, out, n=2, sleep_s=300, walltime="0:01:00", cores=1)
    _wait_state(project, run.id, ("failed", "aborted"), timeout_s=240)
    # whether the controller (SIGTERM at the limit, provisional) or the tracker got there
    # first, the scheduler's final word names the walltime
    ended = _wait_refined(project, run.id)
    assert ended.state == "failed", ended.error
    assert ended.error.startswith("walltime exceeded (batch job "), ended.error
    assert ended.attempt.scheduler_state.startswith("TIMEOUT")
    assert ended.attempt.outcome == "failed" and not ended.attempt.provisional
    state = subprocess.run(
        ["sacct", "-X", "-n", "-j", ended.attempt.job_id, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.strip()
    assert state.startswith("TIMEOUT")  # what SLURM itself says
    assert _executions(out, "s0000") == 0


def test_stop_cancels_the_job(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _job_run(project, out, n=2, sleep_s=60)
    _wait_state(project, run.id, ("running",))
    job_id = project.run(run.id).attempt.job_id
    assert "aborted: stopped by user" in lifecycle.stop_run(project, run.id)
    rec = project.run(run.id)
    assert rec.state == "aborted" and rec.error == "stopped by user"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out_q = subprocess.run(
            ["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30, check=False
        )
        if job_id not in out_q.stdout:
            break
        time.sleep(0.5)
    assert job_id not in out_q.stdout
    # the job's end is reconciled once, and the user's word stays the run's reason
    deadline = time.monotonic() + 60
    while not project.run(run.id).attempt.scheduler_final and time.monotonic() < deadline:
        refresh_jobs(project, project.runs)
        time.sleep(0.5)
    rec = project.run(run.id)
    assert rec.attempt.scheduler_state.startswith("CANCELLED") and rec.error == "stopped by user"
    from hpcem.execution.batch import needs_refresh

    assert not needs_refresh(rec)  # no more queries for this run


def test_config_errors_submit_nothing(project):
    before = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    with pytest.raises(ConfigError, match="has no queue 'debgu' \\(did you mean 'debug'\\?\\)"):
        execution_request(project, {"site": "local-slurm", "queue": "debgu"})
    with pytest.raises(
        ValidationError,
        match="walltime 48:00:00 is over the limit 24:00:00 of site .local-slurm. queue .debug.",
    ):
        execution_request(
            project, {"site": "local-slurm", "queue": "debug", "walltime": "48:00:00"}
        )
    with pytest.raises(ConfigError, match="no-such-site"):
        execution_request(project, {"site": "no-such-site", "queue": "debug"})
    assert project.runs == []
    after = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    assert set(after.split()) <= set(before.split())
    assert json.dumps(project.runs) == "[]"


def test_parsl_dispatched_run_spreads_steps_over_nodes(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    execution = execution_request(
        project,
        {
            "site": "local-slurm",
            "queue": "debug",
            "dispatch": "parsl",
            "max_blocks": 4,
            "walltime": "0:10:00",
        },
    )
    assert execution["dispatch"] == "parsl" and execution["mode"] == "local"
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 24, "sleep_s": 0.5}, placement=execution
    )
    lifecycle.launch(project, run.id)
    done = _wait_state(project, run.id, ("finished", "failed", "aborted"), timeout_s=240)
    assert done.state == "finished", done.error
    steps = project.read_steps(run.id).to_records()
    hosts = {s["host"] for s in steps}
    assert len(steps) == 24 and all(s["state"] == "finished" for s in steps)
    assert hosts <= {"node1", "node2", "node3", "node4"}
    assert len(hosts) >= 2, hosts  # really ran on several SLURM nodes
    assert done.blocks == ()  # shut down by the controller at the end
    log = (project.run_dir(run.id) / "run.log").read_text()
    blocks = {
        b
        for line in log.splitlines()
        if "Parsl blocks (batch jobs): " in line
        for b in line.split("Parsl blocks (batch jobs): ")[1].split(", ")
    }
    assert len(blocks) >= 2 and all(b.isdigit() for b in blocks)


def test_blocks_of_a_sigkilled_parsl_controller_are_cancelled_by_status(project, tmp_path, capsys):
    import os
    import signal

    from hpcem.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    execution = execution_request(
        project,
        {
            "site": "local-slurm",
            "queue": "debug",
            "dispatch": "parsl",
            "max_blocks": 1,
            "walltime": "0:10:00",
        },
    )
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 4, "sleep_s": 60}, placement=execution
    )
    lifecycle.launch(project, run.id)
    deadline = time.monotonic() + 120
    while not project.run(run.id).blocks and time.monotonic() < deadline:
        time.sleep(0.5)
    (block,) = project.run(run.id).blocks
    os.kill(project.run(run.id).pid, signal.SIGKILL)  # no goodbye: the block stays queued/running
    time.sleep(1.0)
    assert (
        block
        in subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    )
    capsys.readouterr()
    assert main(["status", str(project.path)]) == 0
    assert f"cancelled Parsl blocks left by its dead controller: {block}" in capsys.readouterr().err
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        if block not in queue.split():
            break
        time.sleep(0.5)
    assert block not in queue.split()
    rec = project.run(run.id)
    assert rec.state == "failed" and rec.blocks == ()


def test_requeued_job_resumes_without_redoing_finished_steps(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _job_run(project, out, n=6, sleep_s=1.5, cores=2)
    job_id = _job_after_steps(project, run.id, 2)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30, capture_output=True)
    # the same job id runs again and its controller resumes the run
    done = _wait_state(project, run.id, ("finished",), timeout_s=300)
    # the requeued job took the run over as a new attempt of the same job
    assert len(done.attempts) >= 2 and {a.job_id for a in done.attempts} == {job_id}
    runs_of_each = [_executions(out, f"s{i:04d}") for i in range(6)]
    assert all(n >= 1 for n in runs_of_each)
    assert runs_of_each.count(1) >= 2  # the steps finished before the requeue ran once
    log = (project.run_dir(run.id) / "run.log").read_text()
    assert log.count(": 6 steps (") >= 2 and "already done" in log


def test_mpi_step_inside_a_whole_run_job_uses_srun(project, tmp_path):
    import mrcfile
    import numpy as np

    stack = np.random.default_rng(5).normal(size=(9, 16, 16)).astype(np.float32)
    with mrcfile.new(tmp_path / "stack.mrcs") as mrc:
        mrc.set_data(stack)
    execution = execution_request(
        project, {"site": "local-slurm", "queue": "debug", "walltime": "0:05:00", "cores": 2}
    )
    run = lifecycle.create_run(
        project,
        "particles.average_mpi",
        {"stack": str(tmp_path / "stack.mrcs"), "ranks": 2},
        placement=execution,
    )
    lifecycle.launch(project, run.id)
    done = _wait_state(project, run.id, ("finished", "failed", "aborted"))
    assert done.state == "finished", done.error
    step = {s["name"]: s for s in project.read_steps(run.id).to_records()}["average"]
    assert step["result"]["ranks"] == 2 and step["host"].startswith("node")
    mean = mrcfile.read(done.outputs["average"].column("representative")[0])
    np.testing.assert_allclose(mean, stack.mean(axis=0), atol=1e-6)


def test_ctrl_c_while_waiting_on_a_batch_run_leaves_the_job_running(project, tmp_path):
    import signal
    import sys

    out = tmp_path / "out"
    out.mkdir()
    hpcem = [sys.executable, "-c", "import sys; from hpcem.cli.main import main; sys.exit(main())"]
    proc = subprocess.Popen(
        hpcem
        + [
            "run",
            str(project.path),
            "test.sleepy",
            "--out-dir",
            str(out),
            "--n",
            "2",
            "--sleep-s",
            "60",
            "--site",
            "local-slurm",
            "--queue",
            "debug",
            "--walltime",
            "0:05:00",
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (project.runs and project.runs[0].state == "running"):
        time.sleep(0.2)
    job_id = project.run(1).attempt.job_id
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7
    assert f"stopped waiting; run 1 goes on as batch job {job_id}" in err
    refresh_jobs(project, project.runs)
    assert project.run(1).state == "running"  # the job was not touched
    assert "aborted" in lifecycle.stop_run(project, 1)
