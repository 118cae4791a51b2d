"""Runs on the local executor: DAG order, parallel branches, kill -9 and continue, stop,
copy, restart, and bad inputs. Every run here is a real controller process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hpcem.cli.main import main
from hpcem.errors import LockedError, RunError, ValidationError
from hpcem.execution import runs as lifecycle


def _records(out_dir: Path, name: str) -> list[dict]:
    path = out_dir / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_three_level_dag_runs_in_order_with_parallel_branches(project, tmp_path, wait_for_run):
    out = tmp_path / "out"
    out.mkdir()
    run = lifecycle.create_run(project, "test.dag", {"out_dir": str(out), "sleep_s": 1.0})
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id)
    assert done.state == "finished", done.error
    a, b1, b2, c = (_records(out, n)[0] for n in ("a", "b1", "b2", "c"))
    assert a["end"] <= b1["start"] and a["end"] <= b2["start"]
    assert max(b1["end"], b2["end"]) <= c["start"]
    # the two branches overlapped in time, in different worker processes
    assert b1["start"] < b2["end"] and b2["start"] < b1["end"]
    assert b1["pid"] != b2["pid"]
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    assert set(steps) == {"a", "b1", "b2", "c"}
    assert all(
        s["state"] == "finished" and s["exit_code"] == 0 and s["host"] for s in steps.values()
    )
    assert done.steps_done == done.steps_total == 4
    log = (project.run_dir(run.id) / "run.log").read_text()
    assert "[c] finished" in log and "[run] finished" in log


def test_kill_9_shows_failed_and_continue_redoes_only_missing_steps(
    project, tmp_path, wait_for_run
):
    out = tmp_path / "out"
    out.mkdir()
    n = 8
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": n, "sleep_s": 0.6}
    )
    lifecycle.launch(project, run.id, workers=2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until some, not all, steps are recorded finished
        if project.run(run.id).steps_done >= 2:
            break
        time.sleep(0.05)
    rec = project.run(run.id)
    assert 2 <= rec.steps_done < n
    os.killpg(os.getpgid(rec.pid), signal.SIGKILL)  # controller and its workers, no goodbye
    time.sleep(0.3)
    dead = project.run(run.id)
    assert dead.state == "running"  # what was stored ...
    assert lifecycle.effective_state(dead) == "failed"  # ... and what anyone looking sees
    assert "died" in lifecycle.diagnose(dead)[1]
    finished_before = {
        s["name"] for s in project.read_steps(run.id).to_records() if s["state"] == "finished"
    }
    assert len(finished_before) >= 2

    lifecycle.continue_run(project, run.id, workers=2)
    done = wait_for_run(project, run.id)
    assert done.state == "finished", done.error
    steps = project.read_steps(run.id).to_records()
    assert all(s["state"] == "finished" for s in steps) and len(steps) == n
    for s in steps:
        executions = _records(out, s["name"].replace("/", ""))
        assert executions, s["name"]
        if s["name"] in finished_before:
            assert len(executions) == 1, f"{s['name']} finished before the kill but ran again"
            assert s["attempts"] == 1


def test_changed_parameters_rerun_changed_steps_and_their_dependants(
    project, tmp_path, wait_for_run
):
    out = tmp_path / "out"
    out.mkdir()
    run = lifecycle.create_run(project, "test.dag", {"out_dir": str(out), "sleep_s": 0.0})
    lifecycle.launch(project, run.id, foreground=True)
    assert project.run(run.id).state == "finished"
    # b1/b2 depend on sleep_s; a and c do not: their identity is unchanged. a is kept;
    # c consumed what b1 and b2 made, and they run again, so c runs again too.
    project.set_params(run.id, {"out_dir": str(out), "sleep_s": 0.1})
    lifecycle.continue_run(project, run.id, foreground=True)
    assert project.run(run.id).state == "finished"
    assert [len(_records(out, n)) for n in ("a", "b1", "b2", "c")] == [1, 2, 2, 2]


def test_failed_step_fails_run_with_reason_then_copy_and_restart(project, tmp_path, wait_for_run):
    out = tmp_path / "out"
    out.mkdir()
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 4, "sleep_s": 0.0, "fail_index": 2}
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id)
    assert done.state == "failed"
    assert done.error == "step s/0002 failed: RuntimeError: step s0002 failed on purpose"
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    assert steps["s/0002"]["state"] == "failed"

    copy = lifecycle.copy_run(project, run.id)
    assert copy.id != run.id and copy.state == "saved"
    assert copy.params == done.params and copy.protocol == "test.sleepy"
    assert copy.label.endswith("(copy)")

    project.set_params(run.id, {**done.params, "fail_index": -1})
    lifecycle.restart_run(project, run.id, workers=2)
    again = wait_for_run(project, run.id)
    assert again.state == "finished"
    assert len(_records(out, "s0000")) == 2  # restart redid finished steps too


def test_stop_kills_processes_and_marks_aborted(project, tmp_path, wait_for_run):
    out = tmp_path / "out"
    out.mkdir()
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 4, "sleep_s": 20.0}
    )
    lifecycle.launch(project, run.id, workers=2)
    deadline = time.monotonic() + 20
    while project.run(run.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = project.run(run.id).pid
    assert "aborted: stopped by user" in lifecycle.stop_run(project, run.id)
    assert not lifecycle.pid_alive(pid)
    assert lifecycle.run_processes(project, run.id) == []  # no worker outlived the stop
    rec = project.run(run.id)
    assert rec.state == "aborted" and "stopped" in rec.error
    assert _records(out, "s0000") == []  # the 20 s steps were killed, not finished
    with pytest.raises(RunError, match="not active"):
        lifecycle.stop_run(project, run.id)


def test_cli_project_create_and_list(tmp_path, capsys):
    assert main(["project", "create", str(tmp_path / "a" / "p1")]) == 0
    assert main(["project", "create", str(tmp_path / "b")]) == 0
    (tmp_path / "notaproject").mkdir()
    capsys.readouterr()
    assert main(["project", "create", str(tmp_path / "b")]) == 6
    assert "already an hpcem project" in capsys.readouterr().err
    assert main(["project", "list", str(tmp_path), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted(Path(p["path"]).name for p in found) == ["b", "p1"]
    assert all(p["runs"] == 0 and p["error"] == "" for p in found)
    assert main(["status", str(tmp_path / "notaproject")]) == 6
    assert "is not an hpcem project" in capsys.readouterr().err


def test_cli_status_and_log(project, tmp_path, capsys, wait_for_run):
    out = tmp_path / "out"
    out.mkdir()
    assert (
        main(
            [
                "run",
                str(project.path),
                "test.dag",
                "--out-dir",
                str(out),
                "--sleep-s",
                "0",
                "--label",
                "my dag; rm -rf ~",
                "--wait",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["status", str(project.path)]) == 0
    table = capsys.readouterr().out
    assert "my dag; rm -rf ~" in table and "finished" in table and "4/4" in table
    assert main(["status", str(project.path), "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "finished" and len(info["steps"]) == 4
    assert info["params"]["sleep_s"] == 0.0
    assert main(["log", str(project.path), "1"]) == 0
    assert "[run] finished" in capsys.readouterr().out
    assert main(["status", str(project.path), "99"]) == 7
    assert "no run '99'" in capsys.readouterr().err


# --- bad inputs ------------------------------------------------------------------------------
def _make_micrographs(folder: Path, n: int = 2, size: int = 256) -> None:
    from hpcem.io.mrc import write_mrc
    from hpcem.sim.micrograph import simulate_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _ = simulate_micrograph((size, size), pixel_size_A=1.5, defocus_u_A=15000, seed=i)
        write_mrc(folder / f"m{i}.mrc", image, 1.5)


def test_bad_input_pointers(project, tmp_path, wait_for_run):
    _make_micrographs(tmp_path / "raw")
    imp = lifecycle.create_run(
        project,
        "import.micrographs",
        {"files": str(tmp_path / "raw" / "*.mrc"), "pixel_size_A": 1.5},
    )
    lifecycle.launch(project, imp.id, foreground=True)
    assert project.run(imp.id).state == "finished"
    by_label = lifecycle.create_run(
        project, "ctf.estimate", {}, {"micrographs": f"{imp.label}:micrographs"}
    )
    assert by_label.inputs == {"micrographs": [f"{imp.id}:micrographs"]}  # labels resolve to ids
    mics = project.open_set(imp.id, "micrographs")
    assert len(mics) == 2 and [Path(p).name for p in mics.column("image")] == ["m0.mrc", "m1.mrc"]

    cases = [
        ({}, "input 'micrographs' is required"),
        ({"micrographs": "7:micrographs"}, "no run '7' in this project"),
        (
            {"micrographs": f"{imp.id}:particles"},
            f"run {imp.id} has no output 'particles' (it has: micrographs)",
        ),
        ({"micrographs": "nonsense"}, "is not RUN:OUTPUT"),
    ]
    for inputs, message in cases:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            lifecycle.create_run(project, "ctf.estimate", {}, inputs)

    bad = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(tmp_path), "n": 1, "sleep_s": 0, "fail_index": 0}
    )
    lifecycle.launch(project, bad.id, foreground=True)
    with pytest.raises(ValidationError, match=f"run {bad.id} .* is failed, not finished"):
        lifecycle.create_run(project, "ctf.estimate", {}, {"micrographs": f"{bad.id}:micrographs"})
    with pytest.raises(ValidationError, match=r"is a micrograph \(256x256x1\), expected volume"):
        lifecycle.create_run(
            project,
            "import.volumes",  # a micrograph is not a volume
            {"files": str(tmp_path / "raw" / "m0.mrc"), "pixel_size_A": 1.5},
        )
    import numpy as np

    from hpcem.io.mrc import write_mrc

    write_mrc(tmp_path / "map.mrc", np.zeros((16, 16, 16), np.float32), 1.5, kind="volume")
    vol = lifecycle.create_run(
        project, "import.volumes", {"files": str(tmp_path / "map.mrc"), "pixel_size_A": 1.5}
    )
    lifecycle.launch(project, vol.id, foreground=True)
    assert project.run(vol.id).state == "finished"
    with pytest.raises(
        ValidationError,
        match=f"{vol.id}:volumes is a hpcem.SetOfVolumes, expected hpcem.SetOfMicrographs",
    ):
        lifecycle.create_run(project, "ctf.estimate", {}, {"micrographs": f"{vol.id}:volumes"})
    n_runs = len(project.runs)
    with pytest.raises(ValidationError, match="matches no file"):
        lifecycle.create_run(
            project, "import.micrographs", {"files": str(tmp_path / "none*.mrc"), "pixel_size_A": 1}
        )
    assert len(project.runs) == n_runs


def test_corrupt_image_fails_import_naming_file_then_continue_after_fix(project, tmp_path):
    raw = tmp_path / "raw"
    _make_micrographs(raw, n=3)
    good = (raw / "m1.mrc").read_bytes()
    (raw / "m1.mrc").write_bytes(good[:2000])  # truncated
    with pytest.raises(ValidationError, match="m1.mrc") as e:  # nothing stored
        lifecycle.create_run(
            project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": 1.5}
        )
    assert "--on-error skip" in str(e.value) and project.runs == []
    (raw / "m1.mrc").write_bytes(good)
    run = lifecycle.create_run(
        project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": 1.5}
    )
    (raw / "m1.mrc").write_bytes(good[:2000])  # damaged after validation
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "failed"
    assert "m1.mrc" in rec.error and "\n" not in rec.error
    # the project stays readable:
    assert [r.id for r in project.runs] == [run.id]
    (raw / "m1.mrc").write_bytes(good)
    lifecycle.continue_run(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished"
    assert len(project.open_set(run.id, "micrographs")) == 3
    steps = project.read_steps(run.id).to_records()
    assert sorted(s["attempts"] for s in steps if s["name"].startswith("inspect/")) == [1, 1, 2]


def test_import_on_error_skip_records_each_bad_file_and_imports_the_rest(project, tmp_path):
    raw = tmp_path / "raw"
    _make_micrographs(raw, n=4)
    good = (raw / "m1.mrc").read_bytes()
    (raw / "m1.mrc").write_bytes(good[:2000])
    (raw / "m3.mrc").write_bytes(b"not an image at all" * 100)
    run = lifecycle.create_run(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": 1.5, "on_error": "skip"},
    )
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished" and rec.output_sizes == {"micrographs": 2}
    assert rec.error.startswith("2 of 5 steps rejected their item")
    result = {s["name"]: s for s in project.read_steps(run.id).to_records()}["register"]["result"]
    assert [s["file"] for s in result["skipped"]] == [str(raw / "m1.mrc"), str(raw / "m3.mrc")]
    assert all("m1.mrc" in s["reason"] or "m3.mrc" in s["reason"] for s in result["skipped"])
    names = sorted(Path(p).name for p in rec.outputs["micrographs"].column("image"))
    assert names == ["m0.mrc", "m2.mrc"]


def test_import_tiff_movies_with_acquisition(project, tmp_path):
    from hpcem.io.tiff import write_tiff_movie
    from hpcem.sim.micrograph import simulate_movie

    (tmp_path / "frames").mkdir()
    for i, n in enumerate((5, 7)):
        frames, _ = simulate_movie((256, 256), n_frames=n, pixel_size_A=2.0, seed=i)
        write_tiff_movie(tmp_path / "frames" / f"mov{i}.tif", frames)
    run = lifecycle.create_run(
        project,
        "import.movies",
        {
            "files": str(tmp_path / "frames" / "*.tif"),
            "pixel_size_A": 2.0,
            "voltage_kV": 200,
            "dose_per_frame_e_A2": 1.25,
        },
    )
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    movies = rec.outputs["movies"]
    assert list(movies.column("n_frames")) == [5, 7]
    assert movies.optics["voltage_kV"][0] == 200 and movies.optics["dose_per_frame_e_A2"][0] == 1.25
    assert movies.lineage["run_id"] == run.id and movies.lineage["step"] == "register"
    lifecycle.restart_run(project, run.id, foreground=True)  # outputs wiped, then made again
    again = project.run(run.id)
    assert again.state == "finished" and again.output_types == {"movies": "hpcem.SetOfMovies"}
    assert list(again.outputs["movies"].column("n_frames")) == [5, 7]
    assert again.output_sizes == {"movies": 2}


def test_pixel_size_mismatch_is_reported(project, tmp_path):
    _make_micrographs(tmp_path / "raw", n=1)
    with pytest.raises(ValidationError) as e:  # found before anything is stored
        lifecycle.create_run(
            project,
            "import.micrographs",
            {"files": str(tmp_path / "raw" / "*.mrc"), "pixel_size_A": 2.0},
        )
    assert "m0.mrc" in str(e.value) and "1.5" in str(e.value) and project.runs == []


def test_launch_into_project_locked_by_another_process(tmp_path):
    import multiprocessing

    from hpcem.store import Project

    Project.create(tmp_path / "p")
    ready = multiprocessing.Event()
    release = multiprocessing.Event()

    def hold():
        with Project(tmp_path / "p")._index_lock():
            ready.set()
            release.wait(20)

    proc = multiprocessing.get_context("fork").Process(target=hold)
    proc.start()
    try:
        assert ready.wait(10)
        project = Project.open(tmp_path / "p", lock_timeout_s=0.3)
        with pytest.raises(LockedError, match=f"being modified by .*{proc.pid}"):
            lifecycle.create_run(project, "test.dag", {"out_dir": str(tmp_path)})
    finally:
        release.set()
        proc.join(10)
    assert Project.open(tmp_path / "p").runs == []
