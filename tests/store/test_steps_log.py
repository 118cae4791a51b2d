"""The step table as a log: base ``steps.h5`` + delta files, merged on read.

A commit writes only the records that changed; compaction is tiered; a writer SIGKILLed
at any moment leaves a log whose merged view is the state after a whole number of commits;
a reader racing the writer's compactions always sees one committed state.
"""

from __future__ import annotations

import os
import random
import signal
import time

import h5py
import numpy as np
import pytest
from store_helpers import MP

from hpcem.errors import CorruptStoreError
from hpcem.store import StepTable
from hpcem.store import steps as st

N_IDS = 300


def changes(k: int) -> list[dict]:
    """The records commit ``k`` changes (a pure function of k), plus a counter record."""
    rng = random.Random(k)
    m = rng.choice([1, 1, 1, 2, 3, 10, 60])
    recs = []
    for _ in range(m):
        i = rng.randrange(N_IDS)
        recs.append(
            {
                "id": f"s{i:04d}",
                "name": f"step{i}",
                "func": "m:f",
                "state": rng.choice(["running", "finished", "failed"]),
                "args": {"k": k, "i": i},
                "attempts": k,
                "started": float(k),
                "exit_code": None if k % 3 else k,
                "result": [k, i],
            }
        )
    recs.append({"id": "counter", "attempts": k})
    return recs


def initial() -> list[dict]:
    return [
        {"id": f"s{i:04d}", "name": f"step{i}", "func": "m:f", "args": {"i": i}}
        for i in range(0, N_IDS, 2)
    ]


class Replay:
    """The expected table after K commits (advanced incrementally; K only grows)."""

    def __init__(self) -> None:
        self.k = 0
        self.records = {r["id"]: r for r in initial()}

    def at(self, k: int) -> StepTable:
        assert k >= self.k
        while self.k < k:
            self.k += 1
            for r in changes(self.k):
                self.records[r["id"]] = r  # an existing id keeps its position
        return StepTable.from_records(self.records.values())


def counter(table: StepTable) -> int:
    ids = table["id"].tolist()
    return int(table["attempts"][ids.index("counter")]) if "counter" in ids else 0


@pytest.fixture
def steps_path(project, run_id):
    path = project.run_dir(run_id) / "steps.h5"
    st.write_steps_file(path, run_id, StepTable.from_records(initial()))
    return path


def deltas(path):
    return sorted(p.name for p in path.parent.iterdir() if st.DELTA_RE.match(p.name))


def test_merged_view_is_latest_record_per_id_in_first_seen_order(project, run_id, steps_path):
    replay = Replay()
    for k in range(1, 400):
        st.append_steps(steps_path, run_id, changes(k))
        if k % 37 == 0 or k < 10:
            assert project.read_steps(run_id) == replay.at(k)
    assert project.read_steps(run_id) == replay.at(399)
    assert counter(st.read_steps_file(steps_path, run_id)) == 399


def test_a_commit_writes_only_the_records_that_changed(run_id, steps_path, monkeypatch):
    big = [{"id": f"b{i}", "state": "waiting"} for i in range(3000)]
    st.write_steps_file(steps_path, run_id, big)
    written = []
    real = st._write_table

    def counting(path, run_id, table, attrs):
        written.append((path.name, len(table)))
        real(path, run_id, table, attrs)

    monkeypatch.setattr(st, "_write_table", counting)
    n_commits = 1000
    for k in range(n_commits):
        st.append_steps(
            steps_path, run_id, [{"id": f"b{k * 7 % 3000}", "state": "finished", "attempts": k}]
        )
    first = written[0]
    assert first == ("steps-000001.h5", 1)  # the delta holds the one changed record
    total = sum(n for _, n in written)
    # tiered: each record rewritten O(log) times; full rewrites would be 3 M rows
    assert total < 12 * n_commits, total
    assert all(n < 3000 for _, n in written)  # 1000 records < 3000 rows: never the base
    # and the log stays short: at most (fanout - 1) deltas per size class
    assert len(deltas(steps_path)) <= (st.DELTA_FANOUT - 1) * 7
    table = st.read_steps_file(steps_path, run_id)
    assert len(table) == 3000
    states = dict(zip(table["id"].tolist(), table["state"].tolist(), strict=True))
    assert sum(s == "finished" for s in states.values()) == n_commits
    assert states["b7"] == "finished" and states["b1"] == "waiting"


def test_deltas_are_folded_into_the_base_once_as_big_as_it(run_id, steps_path):
    rows = len(initial())
    k = 0
    while True:
        k += 1
        st.append_steps(steps_path, run_id, changes(k))
        if not deltas(steps_path):
            break
        assert k < 10 * rows
    with h5py.File(steps_path, "r") as f:
        assert f.attrs["hpcem_type"] == "hpcem.StepTable"
        assert int(f.attrs["log_seq"]) == k and int(f.attrs["n_rows"]) == len(f["steps/id"])
    assert st.read_steps_file(steps_path, run_id) == Replay().at(k)


def test_write_steps_file_replaces_everything_and_numbers_go_on(run_id, steps_path):
    for k in range(1, 6):
        st.append_steps(steps_path, run_id, changes(k))
    assert deltas(steps_path)
    st.write_steps_file(steps_path, run_id, [{"id": "only"}])
    assert deltas(steps_path) == []
    assert st.read_steps_file(steps_path, run_id)["id"].tolist() == ["only"]
    st.append_steps(steps_path, run_id, [{"id": "next"}])
    assert deltas(steps_path) == ["steps-000006.h5"]  # never reuses a number
    assert st.read_steps_file(steps_path, run_id)["id"].tolist() == ["only", "next"]
    st.compact_steps(steps_path, run_id)
    assert deltas(steps_path) == []
    assert st.read_steps_file(steps_path, run_id)["id"].tolist() == ["only", "next"]


def test_leftovers_of_a_crashed_compaction_are_ignored_then_cleaned(
    run_id, steps_path, monkeypatch
):
    monkeypatch.setattr(st, "DELTA_FANOUT", 2)
    st.append_steps(steps_path, run_id, [{"id": "a", "state": "running"}])
    # a merge killed after its new file, before deleting its inputs: keep them all
    monkeypatch.setattr(st._Log, "_remove", lambda self, names: list(names))
    st.append_steps(steps_path, run_id, [{"id": "a", "state": "finished"}])
    monkeypatch.undo()
    assert deltas(steps_path) == ["steps-000001-000002.h5", "steps-000001.h5", "steps-000002.h5"]
    (steps_path.parent / "steps-000003.h5.tmp-1-abcd1234").write_bytes(b"half")
    (steps_path.parent / "steps.h5.tmp-1-0123abcd").write_bytes(b"half")
    table = st.read_steps_file(steps_path, run_id)
    assert table["state"].tolist()[-1] == "finished" and table["id"].tolist().count("a") == 1
    st.append_steps(steps_path, run_id, [{"id": "b"}])
    left = sorted(p.name for p in steps_path.parent.iterdir() if p.name.startswith("steps"))
    assert left == ["steps-000001-000002.h5", "steps-000003.h5", "steps.h5"]
    assert st.read_steps_file(steps_path, run_id)["id"].tolist()[-2:] == ["a", "b"]


def test_a_missing_delta_is_reported_not_skipped(run_id, steps_path):
    for k in range(1, 4):
        st.append_steps(steps_path, run_id, [{"id": f"x{k}"}])
    (steps_path.parent / "steps-000002.h5").unlink()
    with pytest.raises(CorruptStoreError, match="gap after commit 0"):
        st.read_steps_file(steps_path, run_id)
    with pytest.raises(CorruptStoreError, match="write the whole table again"):
        st.append_steps(steps_path, run_id, [{"id": "y"}])
    st.write_steps_file(steps_path, run_id, [{"id": "fresh"}])  # the way out: a restart
    assert st.read_steps_file(steps_path, run_id)["id"].tolist() == ["fresh"]


def test_a_table_written_before_the_log_reads_and_appends(run_id, steps_path):
    with h5py.File(steps_path, "a") as f:  # the attributes older versions did not write
        del f.attrs["log_seq"], f.attrs["n_rows"]
    before = st.read_steps_file(steps_path, run_id)
    assert before == Replay().at(0)
    st.append_steps(steps_path, run_id, changes(1))
    assert st.read_steps_file(steps_path, run_id) == Replay().at(1)


def test_delta_files_carry_their_type_and_range(run_id, steps_path):
    st.append_steps(steps_path, run_id, changes(1))
    with h5py.File(steps_path.parent / "steps-000001.h5", "r") as f:
        assert f.attrs["hpcem_type"] == "hpcem.StepDelta" and int(f.attrs["schema_version"]) == 1
        assert (int(f.attrs["first_seq"]), int(f.attrs["last_seq"])) == (1, 1)
        assert int(f.attrs["weight"]) == int(f.attrs["n_rows"]) == len(changes(1))
        assert set(f["steps"]) == set(st.COLUMN_NAMES)


# --- crashes and racing readers --------------------------------------------------------------
def _appender(path, run_id, started, restart_every):
    st.DELTA_FANOUT = 2  # many merges and folds, so kills land inside them too
    st.BASE_MIN_ROWS = 8
    started.set()
    while True:
        current = st.read_steps_file(path, run_id)
        k = counter(current) + 1
        if restart_every and k % restart_every == 0:
            # a restart: the whole table replaced, same content as the commit would give
            st.write_steps_file(
                path, run_id, st.merge_tables([current, StepTable.from_records(changes(k))])
            )
        else:
            st.append_steps(path, run_id, changes(k))


def test_sigkill_at_random_moments_leaves_each_commit_whole_or_absent(run_id, steps_path):
    rng = np.random.default_rng(5)
    replay, prev = Replay(), 0
    for it in range(25):
        started = MP.Event()
        child = MP.Process(target=_appender, args=(steps_path, run_id, started, 23))
        child.start()
        if it % 3:
            assert started.wait(20)
        if it % 3 == 2:
            # Progress that does not depend on the machine's speed: on a loaded machine a
            # fixed sleep may see few commits; here the writer makes 6 before the kill.
            deadline = time.monotonic() + 60
            while counter(st.read_steps_file(steps_path, run_id)) < prev + 6:
                assert time.monotonic() < deadline, "the writer made no progress in 60 s"
                time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.3)))
        os.kill(child.pid, signal.SIGKILL)
        child.join(20)
        assert child.exitcode == -signal.SIGKILL
        table = st.read_steps_file(steps_path, run_id)
        k = counter(table)
        assert k >= prev  # a committed step change is never lost
        assert table == replay.at(k)  # exactly the state after commit k
        prev = k
    # the writers made real progress between kills: at least 8 × 6 commits, so kills also
    # landed after whole-table rewrites (every 23rd commit) and merges
    assert prev >= 48
    # the next writer removes what the killed ones left (temp files, merged inputs)
    st.append_steps(steps_path, run_id, changes(prev + 1))
    names = [p.name for p in steps_path.parent.iterdir()]
    assert not [n for n in names if ".tmp-" in n]
    with h5py.File(steps_path, "r") as f:
        base_seq = int(f.attrs["log_seq"])
    ranges = sorted(
        (int(m[1]), int(m[2] or m[1])) for m in map(st.DELTA_RE.match, deltas(steps_path))
    )
    assert all(first > base_seq for first, _ in ranges)  # nothing folded is left
    expected = base_seq + 1
    for first, last in ranges:  # one chain, no merged inputs left over
        assert first == expected
        expected = last + 1
    assert st.read_steps_file(steps_path, run_id) == replay.at(prev + 1)


def _writer(path, run_id, n, done):
    st.DELTA_FANOUT = 2
    st.BASE_MIN_ROWS = 8
    for k in range(1, n + 1):
        st.append_steps(path, run_id, changes(k))
    done.set()


def test_reader_sees_whole_commits_while_the_writer_compacts(run_id, steps_path):
    done = MP.Event()
    child = MP.Process(target=_writer, args=(steps_path, run_id, 600, done))
    child.start()
    replay, seen = Replay(), []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished = done.is_set()
        table = st.read_steps_file(steps_path, run_id)
        k = counter(table)
        assert table == replay.at(k)
        seen.append(k)
        if finished:
            break
    child.join(30)
    assert child.exitcode == 0
    assert seen[-1] == 600 and seen == sorted(seen)
    assert len(set(seen)) > 20  # really read while it changed
