"""Crash safety: a writer SIGKILLed at random moments never leaves a broken project.

After every kill the project opens, the set is a whole number of committed batches
with the right content, the run record is one committed state, and the next writer
continues where the last commit ended.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from store_helpers import MP

from hpcem.store import Project, StepTable

BATCH = 3000
ITERATIONS = 25


def checksum(ids: np.ndarray) -> np.ndarray:
    return (ids * 7919 % 100003).astype(np.float32)


def _worker(path, run_id, started):
    project = Project.open(path)
    w = project.open_set_writer(run_id, "p")
    w.compact_threshold = 4  # kills also land inside compactions
    started.set()
    while True:
        n = w.n_rows
        ids = np.arange(n, n + BATCH)
        w.append_columns(
            {
                "id": ids,
                "defocus_u": checksum(ids),
                "image": [f"Extract/mic{i // 1000}.mrcs" for i in ids],
                "image_index": ids % 1000,
            }
        )
        k = w.n_rows
        project.controller_commit(run_id, 1, steps_done=k, heartbeat=time.time())
        project.write_steps(
            run_id,
            StepTable.from_records(
                [
                    {"id": f"s{i}", "state": "finished", "args": {"k": k}}
                    for i in range(k // BATCH % 7)
                ]
            ),
        )


def _check(path, run_id, prev):
    project = Project.open(path)
    run = project.run(run_id)
    s = project.open_set(run_id, "p")
    n = len(s)
    ids = s.columns["id"]
    assert n % BATCH == 0
    np.testing.assert_array_equal(ids, np.arange(n))
    np.testing.assert_array_equal(s.columns["defocus_u"], checksum(ids))
    np.testing.assert_array_equal(s.columns["image_index"], ids % 1000)
    if n:
        assert s.columns["image"][-1] == str(project.path / f"Extract/mic{(n - 1) // 1000}.mrcs")
    # the run update follows the append it reports (a kill in between leaves it behind)
    assert run.steps_done % BATCH == 0 and run.steps_done <= n
    steps = project.read_steps(run_id).to_records()
    if steps:
        ks = {r["args"]["k"] for r in steps}
        assert len(ks) == 1 and len(steps) == next(iter(ks)) // BATCH % 7
        assert all(r["state"] == "finished" for r in steps)
    assert n >= prev[0] and run.steps_done >= prev[1]  # committed work is never lost
    s.close()
    return n, run.steps_done


def test_sigkill_at_random_moments_leaves_old_or_new_state(project, run_id):
    project.create_set(run_id, "p", "hpcem.SetOfParticles").close()
    project.begin_attempt(run_id, ("saved",))
    project.transition(run_id, ("launched",), "running", attempt=1)
    rng = np.random.default_rng(11)
    prev = (0, 0)
    history = []
    for it in range(ITERATIONS):
        started = MP.Event()
        child = MP.Process(target=_worker, args=(project.path, run_id, started))
        child.start()
        if it % 3:
            assert started.wait(20)
        time.sleep(float(rng.uniform(0, 0.25)))
        os.kill(child.pid, signal.SIGKILL)
        child.join(20)
        assert child.exitcode == -signal.SIGKILL
        prev = _check(project.path, run_id, prev)
        history.append(prev[0])
    assert history[-1] > 5 * BATCH  # the writers made real progress between kills
    # the next writer cleans what the crashed ones left behind
    w = Project.open(project.path).open_set_writer(run_id, "p")
    w.close()
    s = project.open_set(run_id, "p")
    listed = {p.name for p in s.path.iterdir()}
    assert not [name for name in listed if ".tmp-" in name]
    assert len([name for name in listed if name.startswith("seg-")]) == len(s._segments)
    project.controller_commit(run_id, 1, state="finished")
    assert project.run(run_id).state == "finished"
    assert not list(project.path.glob("*.tmp-*"))
