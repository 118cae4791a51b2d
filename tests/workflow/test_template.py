"""Export: the document's content, its schema, placeholders, and the --branch selection."""

from __future__ import annotations

import json
from pathlib import Path

from hpcem.workflow.load import schema, schema_problems
from hpcem.workflow.template import downstream, dumps, export_runs, select_runs

DOCS_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "workflow.schema.json"


def _graph(project):
    """Saved runs (export needs no outputs): 1 import -> 2 align -> 3 ctf, 4 fit2d -> 5."""
    imp = project.create_run(
        "import.movies",
        "movies",
        {"files": "raw/*.mrc", "pixel_size_A": 0.9, "dose_per_frame_e_A2": 1.1},
    )
    ali = project.create_run(
        "motion.align",
        "align",
        {"patches": 0},
        {"movies": f"{imp.id}:movies"},
        placement={
            "mode": "job",
            "site": "cluster1",
            "resources": {"queue": "gpu", "walltime": "2:00:00"},
        },
    )
    est = project.create_run("ctf.estimate", "ctf", {}, {"micrographs": f"{ali.id}:micrographs"})
    fit = project.create_run("ctf.fit2d", "fit", {}, {"micrographs": f"{ali.id}:micrographs"})
    con = project.create_run(
        "ctf.consensus", "cons", {}, {"ctfs": f"{est.id}:ctfs", "other_ctfs": f"{fit.id}:ctfs"}
    )
    return imp, ali, est, fit, con


def test_export_document(project):
    _graph(project)
    doc = export_runs(project, project.runs, name="pre-processing")
    assert schema_problems(doc) == []
    assert doc["schema_version"] == 1 and doc["hpcem_version"]
    runs = {r["key"]: r for r in doc["runs"]}
    assert runs["5"]["inputs"] == {"ctfs": ["@3:ctfs"], "other_ctfs": ["@4:ctfs"]}
    assert runs["2"]["execution"] == {
        "mode": "job",
        "dispatch": "local",
        "site": "cluster1",
        "resources": {"queue": "gpu", "walltime": "2:00:00"},
    }
    assert runs["3"]["protocol_version"] == "2"  # ctf.estimate's declared version
    p = runs["1"]["params"]
    assert p["files"] == {"placeholder": "files", "help": p["files"]["help"]}  # no default
    assert p["pixel_size_A"]["default"] == 0.9
    assert p["dose_per_frame_e_A2"]["default"] == 1.1
    # text is stable: two exports are byte-identical
    assert dumps(doc) == dumps(export_runs(project, project.runs, name="pre-processing"))


def test_branch_selection_and_outside_inputs(project):
    _imp, _ali, est, _fit, con = _graph(project)
    assert downstream(project.runs, est.id) == [est.id, con.id]
    chosen = select_runs(project, branch=str(est.id))
    assert [r.id for r in chosen] == [est.id, con.id]
    doc = export_runs(project, chosen)
    runs = {r["key"]: r for r in doc["runs"]}
    # inputs from runs outside the file become input placeholders
    assert runs["3"]["inputs"] == {"micrographs": ["${micrographs_3}"]}
    assert runs["5"]["inputs"] == {"ctfs": ["@3:ctfs"], "other_ctfs": ["${other_ctfs_5}"]}
    assert doc["placeholders"]["other_ctfs_5"]["kind"] == "input"
    assert schema_problems(doc) == []


def test_published_schema_is_the_shipped_one():
    assert json.loads(DOCS_SCHEMA.read_text()) == schema()


def test_branch_refusal_lists_every_problem_and_creates_nothing(project):
    import pytest

    from hpcem.errors import ValidationError
    from hpcem.workflow.branch import branch

    _imp, _ali, est, _fit, _con = _graph(project)
    before = len(project.runs)
    with pytest.raises(ValidationError) as info:
        branch(project, est.id, {"defocus_max_A": -4, "nope": 1})
    assert "unknown parameter 'nope'" in str(info.value)
    assert "'defocus_max_A' = -4 is below the minimum" in str(info.value)
    assert str(info.value).startswith(f"branch of run {est.id}: ")
    assert len(project.runs) == before
