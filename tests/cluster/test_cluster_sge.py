"""The same contract on the real local Grid Engine (scripts/start-sge.sh).
Skipped when qstat does not answer."""

from __future__ import annotations

import dataclasses
import time

import pytest

from hpcem.cli.main import main as hpcem_main
from hpcem.cluster.job import JobState
from hpcem.cluster.site import Queue, load_site
from hpcem.cluster.submit import cancel_jobs, list_user_jobs, submit_job
from hpcem.cluster.tracking import JobTracker
from hpcem.errors import SubmitError

from .conftest import job_spec

pytestmark = [pytest.mark.sge, pytest.mark.usefixtures("sge_up")]


@pytest.fixture(scope="module")
def site():
    return load_site("local-sge")


def run(site, specs, timeout_s=90, before_wait=None):
    tracker = JobTracker(site)
    ids = []
    for s in specs:
        j = submit_job(site, s)
        tracker.add(j, s.exit_code_file)
        ids.append(j)
    if before_wait:
        before_wait(tracker, ids)
    return ids, tracker.wait(ids, timeout_s=timeout_s)


def test_outcomes_from_exit_code_file(site, tmp_path):
    ids, st = run(
        site,
        [
            job_spec(tmp_path, "ok", ["echo", "; rm -rf ~"], label="; rm -rf ~"),
            job_spec(tmp_path, "fail", ["bash", "-c", "exit 4"]),
            job_spec(tmp_path, "pe", ["bash", "-c", "echo $NSLOTS"], tasks_per_node=2),
        ],
    )
    assert st[ids[0]].state is JobState.COMPLETED
    assert (tmp_path / "ok.out").read_text() == "; rm -rf ~\n"
    assert st[ids[1]].state is JobState.FAILED and st[ids[1]].exit_code == 4
    assert st[ids[2]].state is JobState.COMPLETED
    assert (tmp_path / "pe.out").read_text().strip() == "2"


def test_qdel_gives_cancelled(site, tmp_path):
    def cancel_when_running(tracker, ids):
        end = time.monotonic() + 60
        while tracker.poll(ids)[ids[0]].state is not JobState.RUNNING:
            assert time.monotonic() < end, "job never ran"
            time.sleep(0.5)
        time.sleep(0.5)
        tracker.cancel(ids)

    ids, st = run(
        site, [job_spec(tmp_path, "cancel", ["sleep", "300"])], before_wait=cancel_when_running
    )
    # SGE kills with SIGKILL (no -notify): no exit-code file, qacct says why
    assert st[ids[0]].state is JobState.CANCELLED, st[ids[0]]


def test_walltime_gives_timeout(site, tmp_path):
    ids, st = run(site, [job_spec(tmp_path, "walltime", ["sleep", "300"], walltime_s=3)])
    assert st[ids[0]].state is JobState.TIMEOUT, st[ids[0]]
    assert not (tmp_path / "walltime.exit").exists()


def test_rejected_submit_shows_stderr(site, tmp_path):
    bad = dataclasses.replace(site, queues={**site.queues, "nosuch.q": Queue("nosuch.q", 1, 2)})
    with pytest.raises(SubmitError, match='job requests unknown queue "nosuch.q"'):
        submit_job(bad, job_spec(tmp_path, "rejected", ["true"], queue="nosuch.q"))


def test_listing_and_cli_check(site, tmp_path, capsys):
    assert hpcem_main(["site", "check", "local-sge", "--test", "--timeout", "60"]) == 0
    assert "ok   test job" in capsys.readouterr().out
    s = job_spec(tmp_path, "listed", ["sleep", "20"])
    job = submit_job(site, s)
    try:
        assert job in {r["job_id"] for r in list_user_jobs(site)}
    finally:
        cancel_jobs(site, [job])


def test_parsl_on_sge(site, tmp_path):
    from hpcem.execution.parsl_executor import ParslExecutor

    with ParslExecutor(site, max_blocks=1, run_dir=tmp_path / "parsl", max_idletime_s=2) as ex:
        results = [
            f.result(timeout=120)["result"]
            for f in [
                ex.submit("hpcem.cluster.diagnostics:sleep_step", {"seconds": 0.1, "index": i}, {})
                for i in range(10)
            ]
        ]
        assert sorted(r["index"] for r in results) == list(range(10))
        assert len(ex.job_ids()) == 1
