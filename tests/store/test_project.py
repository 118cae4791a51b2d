"""The project index: create/open, runs, updates, step tables, moving the folder."""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pytest

from hpcem.errors import RunError, StoreError
from hpcem.store import Project, RunRecord, StepTable


def test_create_and_open_empty_project(tmp_path):
    p = Project.create(tmp_path / "new")
    assert (p.path / "project.h5").is_file()
    q = Project.open(tmp_path / "new")
    assert q.path == p.path and q.runs == []
    with pytest.raises(StoreError, match="already an hpcem project"):
        Project.create(tmp_path / "new")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Project.create(tmp_path / "full")


def test_runs_create_update_and_reread(project):
    r1 = project.create_run("hpcem.import_movies", label="import", params={"pattern": "*.tif"})
    r2 = project.create_run(
        "hpcem.align", params={"bin": 2, "patches": [5, 5]}, inputs={"movies": f"{r1.id}:movies"}
    )
    assert (r1.id, r2.id) == (1, 2)
    assert r2.state == "saved" and r2.inputs == {"movies": ["1:movies"]}
    assert math.isnan(r2.started) and r2.pid == 0 and r2.created <= time.time()
    project.begin_attempt(2, ("saved",), site="local-slurm")
    now = time.time()
    r2b = project.transition(
        2, ("launched",), "running", attempt=1, started=now, pid=4321, host="node7"
    )
    assert r2b.state == "running" and r2b.started == now
    project.controller_commit(2, 1, steps_total=10, steps_done=3)
    runs = Project.open(project.path).runs
    assert [r.id for r in runs] == [1, 2]
    assert isinstance(runs[1], RunRecord)
    got = runs[1]
    assert (got.state, got.pid, got.host, got.steps_done, got.steps_total) == (
        "running",
        4321,
        "node7",
        3,
        10,
    )
    assert got.params == {"bin": 2, "patches": [5, 5]} and got.attempt.site == "local-slurm"
    assert got == project.run(2)
    assert runs[0].label == "import" and runs[0].state == "saved"
    with pytest.raises(RunError, match="no run 9"):
        project.run(9)
    with pytest.raises(StoreError, match="unknown run state"):
        project.transition(1, ("saved",), "exploded")
    with pytest.raises(StoreError, match="illegal transition saved -> finished"):
        project.transition(1, ("saved",), "finished")
    with pytest.raises(StoreError, match="cannot write run field"):
        project.controller_commit(2, 1, colour="red")
    assert project.run(1).state == "saved"  # refused changes wrote nothing


def test_update_and_listing_with_500_runs(project):
    """What they cost is measured by scripts (not timed here): listing by
    scripts/bench_dispatch.py (``hpcem status`` on 500 and 5,000 runs), a progress commit
    and an index commit by scripts/bench_locks.py."""
    for i in range(500):
        project.create_run("hpcem.p", label=f"r{i}", params={"i": i, "text": "x" * 40})
    project.begin_attempt(250, ("saved",))
    project.transition(250, ("launched",), "running", attempt=1)
    for k in range(10):
        project.controller_commit(250, 1, heartbeat=time.time(), steps_done=k)
    runs = Project.open(project.path).runs
    assert len(runs) == 500 and runs[249].steps_done == 9 and runs[249].label == "r249"
    assert [r.label for r in runs[:3]] == ["r0", "r1", "r2"] and runs[249].state == "running"


def test_step_table_round_trip(project, run_id):
    assert len(project.read_steps(run_id)) == 0
    recs = [
        {
            "id": "a1b2",
            "name": "estimate",
            "func": "hpcem.ctf:estimate",
            "state": "finished",
            "deps": [],
            "args": {"mic": "m1.mrc", "box": 512},
            "started": 10.0,
            "ended": 12.5,
            "host": "n1",
            "exit_code": 0,
            "job_id": "123",
            "attempts": 1,
            "result": {"ok": 1},
        },
        {"id": "c3d4", "name": "merge", "func": "hpcem.ctf:merge", "deps": ["a1b2"]},
    ]
    table = StepTable.from_records(recs)
    assert len(table) == 2 and list(table["state"]) == ["finished", "waiting"]
    project.write_steps(run_id, table)
    back = project.read_steps(run_id).to_records()
    assert back[0]["args"] == {"mic": "m1.mrc", "box": 512} and back[0]["result"] == {"ok": 1}
    assert back[0]["exit_code"] == 0 and back[0]["ended"] == 12.5
    assert back[1]["deps"] == ["a1b2"] and back[1]["exit_code"] is None
    assert math.isnan(back[1]["started"]) and back[1]["attempts"] == 0
    assert project.read_steps(run_id) == table
    with pytest.raises(StoreError, match="unknown key"):
        StepTable.from_records([{"id": "x", "colour": 1}])


def test_moved_project_opens_and_resolves_paths(tmp_path):
    p = Project.create(tmp_path / "a" / "proj")
    run = p.create_run("hpcem.extract")
    (p.path / "Extract").mkdir()
    for i in range(3):
        (p.path / "Extract" / f"s{i}.mrcs").write_bytes(b"x")
    outside = tmp_path / "raw" / "m.tif"
    outside.parent.mkdir()
    outside.write_bytes(b"y")
    with p.create_set(run.id, "particles", "hpcem.SetOfParticles") as w:
        w.append_columns(
            {
                "image": [str(p.path / "Extract" / f"s{i}.mrcs") for i in range(3)],
                "defocus_u": [1.0, 2.0, 3.0],
            }
        )
    with p.create_set(run.id, "movies", "hpcem.SetOfMovies") as w:
        w.append_columns({"image": [str(outside)]})
    assert p.open_set(run.id, "particles").files == [f"Extract/s{i}.mrcs" for i in range(3)]
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    moved = Project.open(tmp_path / "b" / "proj")
    s = moved.runs[0].outputs["particles"]
    assert list(s.columns["image"]) == [
        str(tmp_path / "b" / "proj" / "Extract" / f"s{i}.mrcs") for i in range(3)
    ]
    s.check_files()  # all present at the new place
    np.testing.assert_array_equal(s.columns["defocus_u"], [1, 2, 3])
    m = moved.open_set(run.id, "movies")
    assert m.columns["image"][0] == str(outside)  # outside the project: stays absolute
    # a copy opens too, and writes to the copy do not touch the original
    shutil.copytree(tmp_path / "b" / "proj", tmp_path / "copy")
    c = Project.open(tmp_path / "copy")
    c.set_label(run.id, "copied")
    assert moved.run(run.id).label == "" and c.run(run.id).label == "copied"
    assert c.open_set(run.id, "particles").columns["image"][0].startswith(str(tmp_path / "copy"))
