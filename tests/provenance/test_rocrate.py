"""The Workflow Run RO-Crate of real runs, read back with the ``rocrate`` package's own
reader: the profiles, the main workflow, one action per run with its protocol, inputs,
parameters and outputs, and every file entity pointing to a file with its sha256."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from urllib.parse import unquote, urlparse

import pytest
from click.testing import CliRunner

from hpcem.errors import StoreError
from hpcem.provenance import bibtex, export_crate, methods_text

rocrate = pytest.importorskip(
    "rocrate.rocrate", reason="the rocrate package (test extra) is needed to read the crate"
)

PROCESS = "https://w3id.org/ro/wfrun/process/0.5"
WORKFLOW = "https://w3id.org/ro/wfrun/workflow/0.5"


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _ids(value) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [getattr(v, "id", v) for v in items]


def _local_path(crate_dir, ident: str) -> str:
    if ident.startswith("file:"):
        return unquote(urlparse(ident).path)
    return os.path.join(crate_dir, unquote(ident))


@pytest.fixture(scope="module")
def crate(workflow, tmp_path_factory):
    """The crate of the picking run and everything upstream of it, read by rocrate."""
    dest = tmp_path_factory.mktemp("crate") / "out"
    path = export_crate(workflow["project"], [workflow["dog"].id], dest)
    assert path == dest / "ro-crate-metadata.json"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        c = rocrate.ROCrate(str(dest))
    assert [str(w.message) for w in seen] == []  # the reader has nothing to say
    return dest, c


@pytest.mark.slow
def test_profiles_and_the_main_workflow(crate, workflow):
    dest, c = crate
    conforms = _ids(c.root_dataset["conformsTo"])
    assert PROCESS in conforms and WORKFLOW in conforms
    main = c.mainEntity
    assert main.id == "workflow.json"
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow"} <= set(main.type)
    doc = json.loads((dest / "workflow.json").read_text())
    text = json.dumps(doc)
    for protocol in ("sim.dataset", "ctf.estimate", "picking.dog"):
        assert protocol in text
    assert "relion.autopick_log" not in text  # not upstream of the picking run
    mentions = _ids(c.root_dataset["mentions"])
    runs = [workflow[k].id for k in ("sim", "ctf", "dog")]
    assert mentions == ["#workflow-run"] + [f"#run-{i:06d}" for i in runs]
    wf = c.get("#workflow-run")
    assert _ids(wf["instrument"]) == ["workflow.json"]
    assert wf["startTime"] <= wf["endTime"]
    # everything the runs read was made by the simulation run inside the crate
    assert _ids(wf.get("object") or []) == []
    made = {i for m in mentions[1:] for i in _ids(c.get(m)["result"])}
    assert set(_ids(wf["result"])) == made
    assert f"runs/{runs[0]:06d}/sets/micrographs/manifest.h5" in made


@pytest.mark.slow
def test_every_run_is_an_action_with_protocol_inputs_parameters_outputs(crate, workflow):
    from hpcem.protocol.registry import get_protocol

    dest, c = crate
    ctf = workflow["ctf"]
    action = c.get(f"#run-{ctf.id:06d}")
    assert "CreateAction" in _ids(action.type) or action.type == "CreateAction"
    tool = action["instrument"]
    assert tool["name"] == "ctf.estimate"
    assert tool["softwareVersion"] == get_protocol("ctf.estimate").version
    assert "https://github.com/hpcem/hpcem" in _ids(tool["softwareRequirements"])
    objects = action["object"]
    params = {o["name"]: o for o in objects if o.type == "PropertyValue"}
    assert set(params) == set(ctf.params)
    assert params["min_fit_score"]["value"] == 0.4
    assert params["res_low_A"]["value"] == 25.0 and params["res_low_A"]["unitText"] == "Å"
    files = [o.id for o in objects if o.type == "File"]
    sim = workflow["sim"].id
    assert f"runs/{sim:06d}/sets/micrographs/manifest.h5" in files
    assert any(f.endswith("mic_000.mrc") for f in files)
    results = _ids(action["result"])
    assert f"runs/{ctf.id:06d}/sets/ctfs/manifest.h5" in results
    assert action["startTime"] <= action["endTime"]
    assert _ids(action["actionStatus"]) == ["http://schema.org/CompletedActionStatus"]
    prov = c.get(f"provenance/run-{ctf.id:06d}.json")
    assert _ids(prov["about"]) == [action.id]
    assert json.loads((dest / prov.id).read_text())["run"]["id"] == ctf.id


@pytest.mark.slow
def test_every_file_entity_points_to_a_file_with_its_sha256(crate):
    dest, c = crate
    n_local = n_external = 0
    for e in c.get_entities():
        if e.type != "File" and "File" not in (e.type if isinstance(e.type, list) else []):
            continue
        path = _local_path(dest, e.id)
        assert os.path.isfile(path), e.id
        assert e["sha256"] == _sha256(path), e.id
        assert int(e["contentSize"]) == os.path.getsize(path), e.id
        if e.id.startswith("file:"):
            n_external += 1
        else:
            n_local += 1
    assert n_local >= 9  # 3 runs' sets, workflow, bib, methods, records
    assert n_external >= 2  # the micrographs, referenced where they are


@pytest.mark.slow
def test_bibtex_and_methods_are_in_the_crate(crate, workflow):
    dest, c = crate
    ids = [workflow[k].id for k in ("sim", "ctf", "dog")]
    assert (dest / "references.bib").read_text() == bibtex(workflow["project"], ids)
    assert (dest / "methods.md").read_text() == methods_text(workflow["project"], ids)
    assert {"references.bib", "methods.md", "workflow.json"} <= set(_ids(c.root_dataset["hasPart"]))


@pytest.mark.slow
def test_include_data_copies_the_micrographs_and_a_used_folder_is_refused(workflow, tmp_path):
    from hpcem.cli.commands_provenance import export_provenance_cmd

    project = workflow["project"]
    dest = tmp_path / "full"
    res = CliRunner().invoke(
        export_provenance_cmd,
        [str(project.path), str(workflow["ctf"].id), "-o", str(dest), "--include-data"],
    )
    assert res.exit_code == 0, res.output
    c = rocrate.ROCrate(str(dest))
    sim = workflow["sim"].id
    mic = c.get(f"runs/{sim:06d}/data/mic_000.mrc")
    assert mic is not None
    assert mic["sha256"] == _sha256(project.path / mic.id)
    assert c.get(f"#run-{workflow['dog'].id:06d}") is None  # downstream: not included
    with pytest.raises(StoreError, match="not an empty folder"):
        export_crate(project, [workflow["ctf"].id], dest)


@pytest.mark.slow  # one import run with its controller (a few seconds)
def test_a_failed_run_is_a_failed_action_with_its_error(project, tmp_path):
    import numpy as np

    from hpcem.execution import runs as lifecycle
    from hpcem.io import write_mrc

    raw = tmp_path / "raw"
    raw.mkdir()
    write_mrc(raw / "bad.mrc", np.zeros((64, 64), np.float32), 1.0)
    run = lifecycle.create_run(
        project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": 1.0}
    )
    (raw / "bad.mrc").write_bytes(b"not an MRC file at all" * 50)  # broken after validation
    lifecycle.launch(project, run.id, workers=1)
    deadline = time.monotonic() + 60
    while project.run(run.id).state not in ("finished", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    failed = project.run(run.id)
    assert failed.state == "failed", failed.state
    dest = tmp_path / "crate"
    export_crate(project, None, dest)
    c = rocrate.ROCrate(str(dest))
    action = c.get(f"#run-{run.id:06d}")
    assert _ids(action["actionStatus"]) == ["http://schema.org/FailedActionStatus"]
    assert action["error"] == failed.error and "bad.mrc" in failed.error
    assert _ids(c.get("#workflow-run")["actionStatus"]) == ["http://schema.org/FailedActionStatus"]
