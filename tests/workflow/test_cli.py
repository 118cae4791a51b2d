"""The workflow commands: --help, export/show/import (saved, not run), refusals."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from hpcem.cli.commands_workflow import COMMANDS


def _cli(args):
    group = click.Group("hpcem", commands={c.name: c for c in COMMANDS})
    return CliRunner().invoke(group, args)


@pytest.mark.parametrize(
    "args",
    [["workflow", "export"], ["workflow", "import"], ["workflow", "show"], ["branch"], ["diff"]],
)
def test_every_command_has_help(args):
    result = _cli([*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_export_show_import_saved(tmp_path, project):
    from hpcem.execution import runs as lifecycle
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.store import Project
    from hpcem.workflow.load import wait_for

    cfg = DatasetConfig(kind="movies", n_items=2, size_px=64, n_frames=3, seed=1)
    simulate_dataset(project.path / "raw", cfg)
    imp = lifecycle.create_run(
        project, "import.movies", {"files": str(project.path / "raw/*.mrc"), "pixel_size_A": 1.0}
    )
    lifecycle.launch(project, imp.id, 1)
    assert wait_for(project, imp.id) == "finished"
    ali = lifecycle.create_run(
        project, "motion.align", {"iterations": 3}, {"movies": f"{imp.id}:movies"}
    )
    wf = tmp_path / "wf.json"
    # motion.align is saved, not run: export takes the request, not the outputs
    assert _cli(["workflow", "export", str(project.path), "-o", str(wf)]).exit_code == 0
    shown = _cli(["workflow", "show", str(wf), "--json"])
    names = {p["name"]: p for p in json.loads(shown.output)["placeholders"]}
    assert set(names) == {"files", "pixel_size_A", "dose_per_frame_e_A2"}
    assert "default" not in names["files"] and names["pixel_size_A"]["default"] == 1.0

    target = Project.create(tmp_path / "target")
    refused = _cli(["workflow", "import", str(target.path), str(wf)])
    assert refused.exit_code != 0 and "placeholder 'files' is not set" in str(refused.exception)
    assert target.runs == []
    ok = _cli(
        [
            "workflow",
            "import",
            str(target.path),
            str(wf),
            "--set",
            f"files={project.path}/raw/movie_*.mrc",
        ]
    )
    assert ok.exit_code == 0, ok.output
    new = target.runs
    assert [r.protocol for r in new] == ["import.movies", "motion.align"]
    assert all(r.state == "saved" for r in new)
    assert new[1].inputs == {"movies": [f"{new[0].id}:movies"]}
    assert new[1].params["iterations"] == 3 == project.run(ali.id).params["iterations"]


def test_import_scipion_reports_what_is_not_mapped(tmp_path, project):
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    simulate_dataset(
        tmp_path / "raw", DatasetConfig(kind="movies", n_items=1, size_px=64, n_frames=3, seed=2)
    )
    scipion = [
        {
            "object.className": "ProtImportMovies",
            "object.id": "2",
            "filesPath": "/x",
            "filesPattern": "*.tif",
            "samplingRate": 1.0,
            "dosePerFrame": 1.5,
        },
        {
            "object.className": "ProtMotionCorr",
            "object.id": "40",
            "patchY": 5,
            "inputMovies": "2.outputMovies",
        },
        {"object.className": "ProtMonitorSummary", "object.id": "99"},
    ]
    wf = tmp_path / "scipion.json"
    wf.write_text(json.dumps(scipion))
    result = _cli(
        [
            "workflow",
            "import",
            str(project.path),
            str(wf),
            "--scipion",
            "--set",
            f"files_2={tmp_path}/raw/movie_*.mrc",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "not imported: 99 ProtMonitorSummary" in result.output
    assert "parameters not carried over: patchY" in result.output
    assert [r.protocol for r in project.runs] == ["import.movies", "motion.align"]


def test_import_refuses_a_bad_downstream_run_and_creates_nothing(tmp_path, project):
    """A run two steps downstream with a parameter only its protocol's own check refuses
    (an odd box): `workflow import` without --run lists it and creates nothing."""
    import numpy as np

    from hpcem.io import write_mrc

    (project.path / "raw").mkdir()
    write_mrc(project.path / "raw" / "mic.mrc", np.ones((64, 64), np.float32), 1.0)
    doc = {
        "format": "hpcem.workflow",
        "schema_version": 1,
        "runs": [
            {
                "key": "imp",
                "protocol": "import.micrographs",
                "params": {"files": "raw/*.mrc", "pixel_size_A": 1.0},
            },
            {
                "key": "pick",
                "protocol": "picking.dog",
                "inputs": {"micrographs": "@imp:micrographs"},
            },
            {
                "key": "ext",
                "protocol": "particles.extract",
                "params": {"box_size_px": 63},
                "inputs": {"coordinates": "@pick:coordinates", "micrographs": "@imp:micrographs"},
            },
        ],
    }
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(doc))
    refused = _cli(["workflow", "import", str(project.path), str(wf)])
    assert refused.exit_code != 0
    assert "run ext: box_size_px must be even, got 63" in str(refused.exception)
    assert project.runs == []
