"""The typed run record: the state machine, compare-and-swap transitions, fencing, and
several processes racing to continue, stop, start, commit and refresh one run."""

from __future__ import annotations

import json
import multiprocessing as mp
import random

import pytest

from hpcem.errors import FencedError, RunError, StoreError
from hpcem.store import Project
from hpcem.store.project import StateConflict
from hpcem.store.record import ACTIVE_STATES, TRANSITIONS

MP = mp.get_context("spawn")


def test_every_edge_of_the_state_machine_and_only_those(project):
    run = project.create_run("test.trivial")
    # walk saved -> launched -> running -> finished -> launched -> failed -> launched -> aborted
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    project.controller_commit(run.id, 1, state="finished")
    project.begin_attempt(run.id, ("finished",))
    project.transition(run.id, ("launched",), "failed", "no controller", attempt=2)
    project.begin_attempt(run.id, ("failed",))
    project.transition(run.id, ("launched",), "aborted", "stopped by user", attempt=3)
    rec = project.run(run.id)
    assert (rec.state, rec.error, [a.number for a in rec.attempts]) == (
        "aborted",
        "stopped by user",
        [1, 2, 3],
    )
    for state, allowed in TRANSITIONS.items():
        for target in TRANSITIONS:
            if target in allowed:
                continue
            with pytest.raises(StoreError, match=f"illegal transition {state} -> {target}"):
                from hpcem.store.record import check_transition

                check_transition(1, state, target)


def test_cas_refuses_a_stale_expectation_and_writes_nothing(project):
    run = project.create_run("test.trivial")
    project.begin_attempt(run.id, ("saved",))
    before = project.index_path.read_bytes()
    with pytest.raises(StateConflict) as e:
        project.begin_attempt(run.id, ("saved", "failed", "aborted"))  # a second `continue`
    assert e.value.record.state == "launched"
    with pytest.raises(StateConflict, match="attempt 7 is not the latest"):
        project.transition(run.id, ("launched",), "running", attempt=7)
    with pytest.raises(FencedError, match="attempt 2 was taken over"):
        project.controller_commit(run.id, 2, steps_done=1)
    assert project.index_path.read_bytes() == before


def test_a_fenced_controller_cannot_write_steps_or_progress(project):
    from hpcem.store import StepTable

    run = project.create_run("test.trivial")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    project.controller_commit(
        run.id,
        1,
        steps=StepTable.from_records([{"id": "a", "state": "finished"}]),
        steps_done=1,
        steps_total=2,
    )
    project.transition(run.id, ("running",), "aborted", "stopped by user", attempt=1)

    def files():
        steps = {p.name: p.read_bytes() for p in project.run_dir(run.id).glob("steps*.h5")}
        return steps, project.index_path.read_bytes()

    before = files()
    with pytest.raises(FencedError, match="is aborted .stopped by user."):
        project.controller_commit(run.id, 1, steps=StepTable.from_records([]), steps_done=0)
    with pytest.raises(FencedError):
        project.controller_commit(run.id, 1, changed_steps=[{"id": "a", "state": "failed"}])
    assert files() == before
    assert project.run(run.id).steps_done == 1  # the progress was copied in at the transition


# --- racing processes ----------------------------------------------------------------------
def _racer(path, run_id, who, n_ops, seed, log_path):
    """Random continue / start / commit / finish / stop / refresh / output operations."""
    project = Project.open(path, lock_timeout_s=60)
    rng = random.Random(seed)
    log = []
    for i in range(n_ops):
        op = rng.choice(["continue", "start", "commit", "finish", "stop", "refresh", "output"])
        rec = project.run(run_id)
        n = rec.attempt.number if rec.attempt else 0
        try:
            if op == "continue":
                new = project.begin_attempt(run_id, ("saved", "failed", "aborted", "finished"))
                log.append(["begin", new.attempt.number])
            elif op == "start":
                project.transition(run_id, ("launched",), "running", attempt=n, pid=who)
                log.append(["start", n, who])
            elif op == "commit":
                project.controller_commit(run_id, n, steps_done=i, heartbeat=float(i))
                log.append(["commit", n])
            elif op == "finish":
                project.controller_commit(
                    run_id, n, state="finished", reason="", attempt_fields={"outcome": "finished"}
                )
                log.append(["finish", n])
            elif op == "stop":
                project.transition(run_id, ACTIVE_STATES, "aborted", "stopped by user", attempt=n)
                log.append(["stop", n])
            elif op == "refresh":
                project.update_attempt(run_id, n, only_active=True, scheduler_state=f"S{who}-{i}")
                log.append(["refresh", n])
            else:
                project.set_output(run_id, f"out_{who}_{i}", "hpcem.SetOfParticles", i)
                log.append(["output", f"out_{who}_{i}"])
        except (StateConflict, FencedError, StoreError, RunError):
            log.append(["refused", op])
        state = project.run(run_id).state
        log.append(["state", state])
    with open(log_path, "w") as fh:
        json.dump(log, fh)


def test_racing_processes_lose_no_update_and_make_no_illegal_transition(project, tmp_path):
    run = project.create_run("test.trivial")
    n_procs, n_ops = 4, 60  # 240 operations interleaved across 4 processes
    logs = [tmp_path / f"log{i}.json" for i in range(n_procs)]
    procs = [
        MP.Process(target=_racer, args=(project.path, run.id, i + 1, n_ops, 100 + i, str(logs[i])))
        for i in range(n_procs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    entries = [e for path in logs for e in json.loads(path.read_text())]
    ops = [e for e in entries if e[0] not in ("state", "refused")]
    assert len([e for e in entries if e[0] != "state"]) == n_procs * n_ops
    assert len(ops) > 50 and {e[0] for e in ops} >= {"begin", "start", "commit", "stop", "output"}
    final = project.run(run.id)
    # every begun attempt exists exactly once, numbered without gaps
    begun = sorted(e[1] for e in ops if e[0] == "begin")
    assert [a.number for a in final.attempts] == begun == list(range(1, len(begun) + 1))
    # at most one controller took each attempt over, and it is the one recorded
    starts = [e for e in ops if e[0] == "start"]
    assert len({e[1] for e in starts}) == len(starts)
    by_number = {a.number: a for a in final.attempts}
    for _, number, who in starts:
        assert by_number[number].pid == who
    # no lost update: every output any process listed is there, with its size
    listed = {e[1] for e in ops if e[0] == "output"}
    assert set(final.output_types) == listed
    assert all(final.output_sizes[name] == int(name.rsplit("_", 1)[1]) for name in listed)
    # every state anyone saw is a real state
    assert {e[1] for e in entries if e[0] == "state"} <= set(TRANSITIONS)
