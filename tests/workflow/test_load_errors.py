"""Bad workflow templates: every problem in one message, nothing created."""

from __future__ import annotations

import json
import os

import pytest

from hpcem.errors import DataFormatError, ValidationError
from hpcem.workflow.load import check, instantiate, read_document


def _doc(runs, **extra):
    return {"format": "hpcem.workflow", "schema_version": 1, "runs": runs, **extra}


def _imp(key="1", files="raw/*.mrc"):
    return {
        "key": key,
        "protocol": "import.micrographs",
        "params": {"files": files, "pixel_size_A": 1.0},
    }


def _ctf(key, src, **params):
    return {
        "key": key,
        "protocol": "ctf.estimate",
        "params": params,
        "inputs": {"micrographs": [f"@{src}:micrographs"]},
    }


def test_every_problem_in_one_message_and_nothing_created(project):
    doc = _doc(
        [
            _imp("1", files="../outside/*.mrc"),
            _ctf("2", "9"),  # a run not in the file
            _ctf("3", "4", defocus_min_A=-5.0),  # out of range
            _ctf("4", "3"),  # 3 <-> 4: not micrographs either way, and a cycle
            {"key": "5", "protocol": "no.such", "params": {}},
            {
                "key": "6",
                "protocol": "import.movies",
                "params": {
                    "files": "/etc/*.mrc",
                    "pixel_size_A": {"placeholder": "pixel_size"},
                },
            },
        ],
        schema_version=7,
    )
    with pytest.raises(ValidationError) as info:
        wf = check(doc, {"dose": "1"}, project)
        instantiate(project, wf)
    text = str(info.value)
    problems = info.value.problems
    for needle in (
        "schema_version 7 is unknown",
        "leaves the project folder",
        "refers to run '9', which is not in the file",
        "defocus_min_A",
        "unknown protocol 'no.such'",
        "is absolute",
        "placeholder 'pixel_size' is not set",
        "no placeholder 'dose'",
    ):
        assert needle in text, needle
    assert len(problems) >= 8
    assert project.runs == []


def test_cycle_is_named(project):
    doc = _doc([_imp("1"), _ctf("2", "1")])
    doc["runs"][1]["protocol"] = "ctf.estimate"
    cyc = _doc(
        [
            {
                "key": "a",
                "protocol": "picking.consensus",
                "inputs": {"coordinates": ["@b:coordinates"]},
            },
            {
                "key": "b",
                "protocol": "picking.consensus",
                "inputs": {"coordinates": ["@a:coordinates"]},
            },
        ]
    )
    with pytest.raises(ValidationError, match=r"cycle: a -> b -> a"):
        check(cyc, {}, project)
    assert project.runs == []


def test_schema_violations_and_not_json(tmp_path, project):
    with pytest.raises(ValidationError) as info:
        check(
            {
                "format": "hpcem.workflow",
                "schema_version": 1,
                "runs": [{"key": "1"}],
                "run_this": "rm -rf /",
            },
            {},
            project,
        )
    assert "'protocol' is a required property" in str(info.value)
    assert "Additional properties are not allowed ('run_this'" in str(info.value)
    bad = tmp_path / "wf.json"
    bad.write_bytes(b"\x80\x04\x95 a pickle, not JSON")
    with pytest.raises(DataFormatError):
        read_document(bad)
    bad.write_text('{"schema_version": NaN}')
    with pytest.raises(DataFormatError, match="NaN"):
        read_document(bad)


def test_symlink_out_of_the_project(tmp_path, project):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, project.path / "raw")
    with pytest.raises(ValidationError, match="symbolic link"):
        check(_doc([_imp("1", files="raw/*.mrc")]), {}, project)


def test_placeholders_set_and_text_substitution(project):
    doc = _doc(
        [
            {
                "key": "1",
                "protocol": "import.micrographs",
                "params": {
                    "files": "${folder}/mic_*.mrc",
                    "pixel_size_A": {"placeholder": "px", "default": 1.5},
                },
            }
        ],
        placeholders={"folder": {"help": "where the micrographs are"}},
    )
    wf = check(doc, {"folder": "data"}, project)
    assert wf.runs[0].params == {"files": "data/mic_*.mrc", "pixel_size_A": 1.5}
    wf = check(doc, {"folder": "data", "px": "0.8"}, project)
    assert wf.runs[0].params["pixel_size_A"] == "0.8"  # converted by the protocol's type
    json.dumps(doc)  # still plain data


def _downstream(box=128, rescaled=64, symmetry="C1"):
    """import -> DoG picking -> extraction -> (reconstruction, 2D classification): runs
    that read runs of the template, whose inputs do not exist at import."""
    return _doc(
        [
            _imp("imp", files="raw/*.mrc"),
            {
                "key": "pick",
                "protocol": "picking.dog",
                "params": {"diameter_A": 40.0},
                "inputs": {"micrographs": "@imp:micrographs"},
            },
            {
                "key": "ext",
                "protocol": "particles.extract",
                "params": {"box_size_px": box, "rescaled_box_px": rescaled},
                "inputs": {"coordinates": "@pick:coordinates", "micrographs": "@imp:micrographs"},
            },
            {
                "key": "rec",
                "protocol": "reconstruct.fourier",
                "params": {"symmetry": symmetry},
                "inputs": {"particles": "@ext:particles"},
            },
            # its own check opens the particles: it must not count as a problem
            {
                "key": "cls",
                "protocol": "classify.class2d",
                "inputs": {"particles": "@ext:particles"},
            },
        ]
    )


@pytest.mark.parametrize("run", [False, True])
def test_downstream_runs_are_validated_at_import_without_their_inputs(project, run):
    """Problems that only the protocols' own checks see (an odd box, a rescaled box
    larger than the box, an unknown point group) in runs whose inputs are made by other
    runs of the template: one message with all of them, nothing created, with or
    without --run."""
    import numpy as np

    from hpcem.io import write_mrc

    (project.path / "raw").mkdir()
    for i in range(2):
        image = np.random.default_rng(i).normal(size=(128, 128)).astype(np.float32)
        write_mrc(project.path / "raw" / f"mic_{i}.mrc", image, 1.0)
    bad = _downstream(box=127, rescaled=200, symmetry="Q2")
    wf = check(bad, {}, project)  # types and ranges are fine: the template itself passes
    with pytest.raises(ValidationError) as info:
        instantiate(project, wf, run=run, workers=1)
    problems = info.value.problems
    assert any(
        p.startswith("run ext: ") and "box_size_px must be even, got 127" in p for p in problems
    )
    assert any(
        p.startswith("run ext: ") and "rescaled_box_px must be 0 or even" in p for p in problems
    )
    assert any(
        p.startswith("run rec: ") and "'Q2' is not a supported point group" in p for p in problems
    )
    assert len(problems) == 3, problems  # nothing about inputs that do not exist yet
    assert project.runs == []

    if not run:  # the same template with good values is stored, every run saved
        ids = instantiate(project, check(_downstream(), {}, project))
        assert [project.run(i).state for i in ids.values()] == ["saved"] * 5
        assert project.run(ids["ext"]).inputs["micrographs"] == [f"{ids['imp']}:micrographs"]
