"""JobTracker without a scheduler: a fake run_command answers like squeue/sacct."""

from __future__ import annotations

import pytest

from hpcem.cluster import submit
from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.site import load_site
from hpcem.cluster.tracking import JobTracker, final_status
from hpcem.command import CommandResult
from hpcem.errors import CommandError


class FakeScheduler:
    """Answers squeue with ``states`` ({id: "STATE"}) and sacct with ``history``."""

    def __init__(self):
        self.states: dict[str, str] = {}
        self.history: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.fail = False

    def __call__(self, argv, **kw):
        self.calls.append(list(argv))
        if self.fail:
            raise CommandError("squeue timed out", argv)
        if argv[0] == "squeue":
            ids = argv[3].split("=", 1)[1].split(",")
            out = "".join(f"{j}|{self.states[j]}|None|node1\n" for j in ids if j in self.states)
            return CommandResult(list(argv), 0, out, "")
        if argv[0] == "sacct":
            ids = argv[4].split("=", 1)[1].split(",")
            out = "".join(
                f"{j}|{self.history[j]}|0:0|node2|None\n" for j in ids if j in self.history
            )
            return CommandResult(list(argv), 0, out, "")
        if argv[0] == "scancel":
            return CommandResult(list(argv), 0, "", "")
        raise AssertionError(argv)


@pytest.fixture
def fake(monkeypatch):
    f = FakeScheduler()
    monkeypatch.setattr(submit, "run_command", f)
    return f


def make(tmp_path, n, fake, state="RUNNING"):
    tracker = JobTracker(load_site("local-slurm"), failure_threshold=3, sleep=lambda s: None)
    for i in range(n):
        tracker.add(str(i), str(tmp_path / f"{i}.exit"))
        fake.states[str(i)] = state
    return tracker


def test_one_status_call_per_poll_whatever_the_number_of_jobs(tmp_path, fake):
    tracker = make(tmp_path, 500, fake)
    for _ in range(3):
        statuses = tracker.poll()
    assert len(fake.calls) == 3 and tracker.status_calls == 3
    assert all(s.state is JobState.RUNNING for s in statuses.values())


def test_outcome_comes_from_exit_code_file(tmp_path, fake):
    tracker = make(tmp_path, 3, fake)
    (tmp_path / "0.exit").write_text("0\n")
    (tmp_path / "1.exit").write_text("3\n")
    fake.states.update({"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"})  # squeue can lie
    st = tracker.poll()
    assert st["0"].state is JobState.COMPLETED
    assert st["1"].state is JobState.FAILED and st["1"].exit_code == 3
    # no file although the scheduler says COMPLETED: that is a failure, with the reason
    assert (
        st["2"].state is JobState.FAILED and "without writing its exit-code file" in st["2"].reason
    )


def test_scheduler_reason_when_killed(tmp_path, fake):
    tracker = make(tmp_path, 3, fake)
    (tmp_path / "0.exit").write_text("143\n")  # the trap wrote 128+SIGTERM
    fake.states.update({"0": "TIMEOUT", "1": "OUT_OF_MEMORY", "2": "NODE_FAIL"})
    st = tracker.poll()
    assert st["0"].state is JobState.TIMEOUT and st["0"].exit_code == 143
    assert st["1"].state is JobState.OUT_OF_MEMORY
    assert st["2"].state is JobState.NODE_FAIL


def test_requeued_job_is_followed_until_it_finishes(tmp_path, fake):
    tracker = make(tmp_path, 1, fake, state="REQUEUED")
    (tmp_path / "0.exit").write_text("143\n")  # from the preempted first attempt
    assert tracker.poll()["0"].state is JobState.PREEMPTED
    fake.states["0"] = "RUNNING"
    assert tracker.poll()["0"].state is JobState.RUNNING
    (tmp_path / "0.exit").write_text("0\n")
    fake.states["0"] = "COMPLETED"
    assert tracker.poll()["0"].state is JobState.COMPLETED


def test_job_gone_uses_accounting_then_threshold(tmp_path, fake):
    tracker = make(tmp_path, 2, fake)
    tracker.poll()
    del fake.states["0"], fake.states["1"]
    fake.history["0"] = "CANCELLED by 0"
    st = tracker.poll()
    assert st["0"].state is JobState.CANCELLED
    assert st["1"].state is JobState.RUNNING  # not yet: maybe the file system is slow
    tracker.poll()
    st = tracker.poll()
    assert st["1"].state is JobState.FAILED
    assert "without writing its exit-code file" in st["1"].reason


def test_poll_failures_counted_and_fatal_only_past_threshold(tmp_path, fake):
    tracker = make(tmp_path, 2, fake)
    tracker.poll()
    fake.fail = True
    assert tracker.poll()["0"].state is JobState.RUNNING
    assert tracker.poll()["0"].state is JobState.RUNNING
    (tmp_path / "1.exit").write_text("0\n")
    st = tracker.poll()  # third failure in a row: the threshold
    assert st["0"].state is JobState.FAILED and "failed 3 times in a row" in st["0"].reason
    assert st["1"].state is JobState.COMPLETED  # its exit-code file still says how it ended
    assert tracker.poll_failures == 3


def test_one_poll_failure_is_forgotten_after_success(tmp_path, fake):
    tracker = make(tmp_path, 1, fake)
    fake.fail = True
    tracker.poll()
    tracker.poll()
    fake.fail = False
    assert tracker.poll()["0"].state is JobState.RUNNING and tracker.poll_failures == 0
    fake.fail = True
    assert tracker.poll()["0"].state is JobState.RUNNING


def test_backoff_while_nothing_changes(tmp_path, fake):
    tracker = make(tmp_path, 1, fake)
    tracker.poll()
    first = tracker.interval_s
    for _ in range(20):
        tracker.poll()
    assert tracker.interval_s == tracker.site.poll_max_interval_s > first
    fake.states["0"] = "COMPLETED"
    (tmp_path / "0.exit").write_text("0")
    tracker.poll()
    assert tracker.interval_s == tracker.site.poll_interval_s


def test_final_polls_make_no_more_calls(tmp_path, fake):
    tracker = make(tmp_path, 1, fake)
    (tmp_path / "0.exit").write_text("0")
    fake.states["0"] = "COMPLETED"
    tracker.wait()
    calls = len(fake.calls)
    tracker.poll()
    assert len(fake.calls) == calls


def test_final_status_rules():
    assert final_status("1", None, None) is None
    assert final_status("1", None, JobStatus("1", JobState.RUNNING)) is None
    st = final_status("1", 1, JobStatus("1", JobState.TIMEOUT, "TIMEOUT"))
    assert st.state is JobState.FAILED  # exit 1 is the step's own failure, not a kill
