"""Scheduler modules on recorded real output, and one contract over every module."""

from __future__ import annotations

import inspect
import logging

import pytest

from hpcem.cluster.job import JobState
from hpcem.cluster.schedulers import BUILTIN, get_scheduler, pbs, sge, slurm
from hpcem.errors import SchedulerError

from .conftest import fixture_text

CONTRACT = (
    "NAME",
    "JOB_ID_ENV",
    "NODE_ENV",
    "PROGRAMS",
    "STATE_MAP",
    "map_state",
    "submit_argv",
    "test_submit_argv",
    "parse_submit_output",
    "status_argv",
    "status_missing_ok",
    "parse_status_output",
    "history_argv",
    "parse_history_output",
    "cancel_argv",
    "user_jobs_argv",
    "parse_user_jobs_output",
    "IDENTIFY_ARGV",
    "identify",
)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_scheduler_module_has_the_contract(name):
    mod = get_scheduler(name)
    for attr in CONTRACT:
        assert hasattr(mod, attr), f"{name} lacks {attr}"
    assert mod.NAME == name
    for argv in (
        mod.submit_argv("/x/job.sh"),
        mod.status_argv(["1", "2"]),
        mod.cancel_argv(["1", "2"]),
        mod.user_jobs_argv("alice"),
    ):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert all(isinstance(v, JobState) for v in mod.STATE_MAP.values())
    # pure functions: no subprocess/run_command in a scheduler module
    assert "run_command" not in inspect.getsource(mod) and "subprocess" not in inspect.getsource(
        mod
    )


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_state_is_unknown_with_warning(name, caplog):
    with caplog.at_level(logging.WARNING, logger="hpcem.cluster"):
        assert get_scheduler(name).map_state("WEIRD_NEW_STATE") is JobState.UNKNOWN
    assert "unknown job state" in caplog.text


def test_status_argv_is_one_call_for_many_jobs():
    ids = [str(i) for i in range(1000)]
    assert slurm.status_argv(ids)[0] == "squeue" and f"--jobs={','.join(ids)}" in slurm.status_argv(
        ids
    )
    assert pbs.status_argv(ids)[:5] == ["qstat", "-f", "-F", "json", "-x"]
    assert sge.status_argv(ids) == ["qstat", "-xml", "-u", "*"]


# ------------------------------------------------------------------------- SLURM
def test_slurm_submit_ids_exactly():
    assert slurm.parse_submit_output(fixture_text("slurm_sbatch_parsable.txt")) == "2"
    assert slurm.parse_submit_output(fixture_text("slurm_sbatch.txt")) == "1"
    assert slurm.parse_submit_output("42;cluster2\n") == "42"
    for bad in (
        "",
        "sbatch: warning: 3 nodes\nSubmitted batch job 7",
        "Job 12 queued after 3 s",
        fixture_text("slurm_sbatch_rejected.txt"),
    ):
        with pytest.raises(SchedulerError):
            slurm.parse_submit_output(bad)


def test_slurm_squeue_finished_and_active():
    st = slurm.parse_status_output(fixture_text("slurm_squeue.txt"))
    assert st["1"].state is JobState.COMPLETED and st["1"].nodes == "node1"
    assert st["4"].state is JobState.FAILED and st["4"].reason == "NonZeroExitCode"
    assert st["6"].state is JobState.TIMEOUT and st["6"].reason == "TimeLimit"
    assert st["7"].state is JobState.CANCELLED
    assert st["3"].nodes == "node[1-4]"
    act = slurm.parse_status_output(fixture_text("slurm_squeue_active.txt"))
    assert act["22"].state is JobState.RUNNING
    assert act["23"].state is JobState.QUEUED and act["23"].reason == "Resources"


def test_slurm_sacct():
    st = slurm.parse_history_output(fixture_text("slurm_sacct.txt"))
    assert st["7"].state is JobState.CANCELLED and st["7"].native_state == "CANCELLED by 0"
    assert st["4"].exit_code == 3 and st["4"].state is JobState.FAILED
    assert st["6"].state is JobState.TIMEOUT
    assert st["3"].nodes == "node[1-4]"
    assert (
        slurm.parse_history_output(fixture_text("slurm_sacct_active.txt"))["22"].state
        is JobState.QUEUED
    )
    assert slurm.parse_history_output("9|FAILED|0:9|node1|None\n")["9"].exit_code == 137


def test_slurm_user_jobs_and_states():
    rows = slurm.parse_user_jobs_output(fixture_text("slurm_squeue_user.txt"))
    assert {r["job_id"] for r in rows} == {"22", "23", "24"}
    assert slurm.map_state("REQUEUED") is JobState.PREEMPTED
    assert slurm.map_state("PREEMPTED") is JobState.PREEMPTED
    assert slurm.map_state("OUT_OF_MEMORY") is JobState.OUT_OF_MEMORY
    assert slurm.map_state("NODE_FAIL") is JobState.NODE_FAIL
    assert slurm.status_missing_ok("slurm_load_jobs error: Invalid job id specified")


def test_slurm_garbled_status_is_an_error():
    with pytest.raises(SchedulerError, match="cannot parse status line"):
        slurm.parse_status_output("12 RUNNING\n")


# ------------------------------------------------------------------------- SGE
def test_sge_submit_ids_exactly():
    assert sge.parse_submit_output(fixture_text("sge_qsub_terse.txt")) == "1"
    assert sge.parse_submit_output(fixture_text("sge_qsub.txt")) == "2"
    for bad in (
        fixture_text("sge_qsub_rejected.txt"),
        "3\n4\n",
        "Your job array 5.1-3:1 submitted",
    ):
        with pytest.raises(SchedulerError):
            sge.parse_submit_output(bad)


def test_sge_qstat_xml():
    st = sge.parse_status_output(fixture_text("sge_qstat.xml"))
    assert st["1"].state is JobState.RUNNING and st["1"].nodes == "localhost"
    assert st["5"].state is JobState.QUEUED and st["5"].native_state == "qw"
    assert set(st) == {"1", "2", "3", "4", "5"}
    assert sge.map_state("Eqw") is JobState.FAILED
    assert sge.map_state("dr") is JobState.CANCELLED
    with pytest.raises(SchedulerError):
        sge.parse_status_output("<job_info><unclosed>")


def test_sge_qacct():
    st = sge.parse_history_output(fixture_text("sge_qacct.txt"))
    assert st["1"].state is JobState.COMPLETED and st["1"].exit_code == 0
    assert st["2"].state is JobState.CANCELLED and st["2"].exit_code == 137
    assert st["3"].state is JobState.TIMEOUT and "h_rt" in st["3"].reason
    assert st["4"].state is JobState.FAILED and st["4"].exit_code == 1


# ------------------------------------------------------------------------- PBS
def test_pbs_submit_ids_exactly():
    assert pbs.parse_submit_output(fixture_text("pbs_qsub.txt")) == "1234.pbs01"
    assert pbs.parse_submit_output("77[].pbs01\n") == "77[].pbs01"
    for bad in (fixture_text("pbs_qsub_rejected.txt"), "job 12 submitted to 3.pbs"):
        with pytest.raises(SchedulerError):
            pbs.parse_submit_output(bad)


def test_pbs_qstat_json():
    st = pbs.parse_status_output(fixture_text("pbs_qstat.json"))
    assert st["1230.pbs01"].state is JobState.QUEUED and "Insufficient" in st["1230.pbs01"].reason
    assert st["1231.pbs01"].state is JobState.RUNNING and st["1231.pbs01"].nodes == "node07"
    assert st["1232.pbs01"].state is JobState.COMPLETED
    assert st["1233.pbs01"].state is JobState.FAILED and st["1233.pbs01"].exit_code == 3
    assert st["1234.pbs01"].state is JobState.CANCELLED and st["1234.pbs01"].exit_code == 143
    assert st["1235.pbs01"].state is JobState.TIMEOUT
    assert st["1236.pbs01"].state is JobState.QUEUED
    rows = pbs.parse_user_jobs_output(fixture_text("pbs_qstat.json"))
    assert {r["name"] for r in rows} >= {"hpcem-queued", "hpcem-running"}
    with pytest.raises(SchedulerError):
        pbs.parse_status_output("{not json")


def test_identify_tells_schedulers_apart():
    assert slurm.identify("slurm-wlm 22.05.8\n") and not sge.identify("slurm-wlm 22.05.8")
    assert sge.identify("SGE 8.1.9\nusage: qstat [options]") and not pbs.identify("SGE 8.1.9")
    assert pbs.identify("pbs_version = 19.1.3\n") and not sge.identify("pbs_version = 19.1.3")
