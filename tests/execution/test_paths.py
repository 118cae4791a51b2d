"""Paths and step identity (issue 8 §2): path parameters resolved once at validation, the
same way from the API and the CLI; steps carry project-relative paths, so a moved
project keeps its finished steps; a protocol's version is part of its steps' identity."""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np

from hpcem.cli.main import main
from hpcem.execution import runs as lifecycle
from hpcem.store import Project


def _mics(folder, n=3):
    folder.mkdir(parents=True)
    for i in range(n):
        with mrcfile.new(folder / f"m{i}.mrc") as m:
            m.set_data(np.full((32, 32), i, np.float32))
            m.voxel_size = 1.0


def test_api_relative_glob_is_resolved_in_the_callers_folder(tmp_path, monkeypatch):
    project = Project.create(tmp_path / "proj")
    _mics(tmp_path / "elsewhere" / "raw")
    monkeypatch.chdir(tmp_path / "elsewhere")
    run = lifecycle.create_run(
        project, "import.micrographs", {"files": "raw/*.mrc", "pixel_size_A": 1.0}
    )
    assert run.params["files"] == str(tmp_path / "elsewhere" / "raw" / "*.mrc")
    monkeypatch.chdir(tmp_path)  # the controller runs elsewhere: the stored path still holds
    lifecycle.launch(project, run.id, foreground=True)
    done = project.run(run.id)
    assert done.state == "finished" and done.output_sizes == {"micrographs": 3}


def test_cli_and_api_store_the_same_parameters(tmp_path, monkeypatch):
    project = Project.create(tmp_path / "proj")
    _mics(project.path / "raw")
    monkeypatch.chdir(project.path)
    api = lifecycle.create_run(
        project, "import.micrographs", {"files": "raw/*.mrc", "pixel_size_A": 1.0}
    )
    assert (
        main(
            [
                "run",
                str(project.path),
                "import.micrographs",
                "--files",
                "raw/*.mrc",
                "--pixel-size-A",
                "1.0",
                "--save-only",
            ]
        )
        == 0
    )
    cli = project.run(api.id + 1)
    assert api.params == cli.params and api.params["files"] == "raw/*.mrc"  # project-relative


def test_a_moved_project_keeps_its_finished_steps(tmp_path):
    project = Project.create(tmp_path / "a" / "proj")
    _mics(project.path / "raw")
    imp = lifecycle.create_run(
        project,
        "import.micrographs",
        {"files": str(project.path / "raw" / "*.mrc"), "pixel_size_A": 1.0},
    )
    lifecycle.launch(project, imp.id, foreground=True)
    steps_before = {s["name"]: s for s in project.read_steps(imp.id).to_records()}
    assert all(
        not s["args"]["path"].startswith("/") for n, s in steps_before.items() if n != "register"
    )
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    moved = Project.open(tmp_path / "b" / "proj")
    plan_ids = _plan_ids(moved, imp.id)
    assert plan_ids == {n: s["id"] for n, s in steps_before.items()}  # identities unchanged
    mics = moved.run(imp.id).outputs["micrographs"]
    assert [str(p).startswith(str(tmp_path / "b" / "proj")) for p in mics.column("image")] == [
        True
    ] * 3


def _plan_ids(project, run_id):
    from hpcem.execution.controller import Controller

    c = Controller(project, run_id, 0, executor=None)
    c.plan()
    return c.ids


def test_protocol_version_is_part_of_step_identity(project, tmp_path, monkeypatch):
    from hpcem.protocol.registry import get_protocol

    out = tmp_path / "out"
    out.mkdir()
    run = lifecycle.create_run(project, "test.dag", {"out_dir": str(out), "sleep_s": 0.0})
    lifecycle.launch(project, run.id, foreground=True)
    ids_v1 = _plan_ids(project, run.id)
    stored = {s["name"]: s["id"] for s in project.read_steps(run.id).to_records()}
    assert ids_v1 == stored
    monkeypatch.setattr(get_protocol("test.dag"), "version", "2")
    ids_v2 = _plan_ids(project, run.id)
    assert set(ids_v2) == set(ids_v1) and all(ids_v2[n] != ids_v1[n] for n in ids_v1)
