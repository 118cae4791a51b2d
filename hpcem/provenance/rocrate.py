"""A Workflow Run RO-Crate of runs, for deposition (``hpcem export-provenance``).

Written by hand against the published profiles (Workflow Run Crate 0.5, which extends
Process Run Crate 0.5 and Workflow RO-Crate 1.0): plain JSON-LD needs no library at run
time, and the tests read the crate back with the ``rocrate`` package's own reader.

Layout of the folder (see docs/provenance.md)::

    ro-crate-metadata.json     the JSON-LD graph
    workflow.json              the runs as a workflow (main entity, ComputationalWorkflow)
    references.bib             every citation used
    methods.md                 the methods paragraph
    provenance/run-NNNNNN.json the provenance record of each run
    runs/NNNNNN/sets/NAME/...  copies of the runs' output sets (metadata, HDF5)

Each run is a ``CreateAction`` whose ``instrument`` is its protocol (a
``SoftwareApplication`` with the protocol version, which requires hpcem and any external
program with the version it reported), whose ``object`` is its input set files and its
parameters (``PropertyValue`` with units) and whose ``result`` is its output set files.
One more ``CreateAction`` is the execution of the whole workflow. Files copied into the
crate carry ``contentSize`` and ``sha256``. Files the sets refer to (images, pictures)
are copied too with ``include_data``, else referenced by ``file://`` URI with their size
and hashes (as are files outside the project, e.g. imported movies).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from hpcem.errors import HpcemError, StoreError

CONTEXT = [
    "https://w3id.org/ro/crate/1.1/context",
    "https://w3id.org/ro/terms/workflow-run/context",
]
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": ("Process Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/workflow/0.5": ("Workflow Run Crate", "0.5"),
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": ("Workflow RO-Crate", "1.0"),
}
HPCEM_URL = "https://github.com/hpcem/hpcem"
_RUN_PATH = re.compile(r"^runs/(\d{6,})/")
LANGUAGE_ID = "#hpcem-workflow-language"
_FORMATS = {
    ".h5": "application/x-hdf5",
    ".json": "application/json",
    ".png": "image/png",
    ".mrc": "application/octet-stream",
    ".star": "text/plain",
    ".bib": "application/x-bibtex",
    ".md": "text/markdown",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


def _ref(ident: str) -> dict:
    return {"@id": ident}


def _format(path: str) -> str:
    return _FORMATS.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def upstream(runs: list, run_id: int) -> list[int]:
    """``run_id`` and every run whose outputs it used, directly or not (sorted ids)."""
    by_id = {r.id: r for r in runs}
    todo, seen = [int(run_id)], set()
    while todo:
        rid = todo.pop()
        if rid in seen or rid not in by_id:
            continue
        seen.add(rid)
        for refs in by_id[rid].inputs.values():
            todo.extend(int(ref.split(":", 1)[0]) for ref in refs)
    return sorted(seen)


def _workflow_document(project, runs: list) -> tuple[dict, str]:
    """The workflow JSON of the runs and what made it: hpcem's workflow template when
    that module is installed, else the runs' requests written here."""
    try:
        from hpcem.workflow.template import export_runs
    except ImportError:
        export_runs = None
    if export_runs is not None:
        try:
            return export_runs(project, runs), "hpcem.workflow.template"
        except HpcemError:
            pass  # e.g. a protocol not installed: fall back to the plain requests
    from hpcem import __version__

    doc = {
        "hpcem_type": "hpcem.RunRequests",
        "hpcem_version": __version__,
        "runs": [
            {
                "id": r.id,
                "protocol": r.protocol,
                "label": r.label,
                "params": r.params,
                "inputs": r.inputs,
                "placement": r.placement.to_json(),
            }
            for r in runs
        ],
    }
    return doc, "run requests"


class _Graph:
    """The entities of the crate, by id, in insertion order."""

    def __init__(self) -> None:
        self.entities: dict[str, dict] = {}

    def add(self, entity: dict) -> dict:
        ident = entity["@id"]
        if ident in self.entities:
            self.entities[ident].update({k: v for k, v in entity.items() if k != "@id"})
        else:
            self.entities[ident] = entity
        return self.entities[ident]


def _file_entity(crate_id: str, info: dict, name: str, extra: dict | None = None) -> dict:
    entity = {
        "@id": crate_id,
        "@type": "File",
        "name": name,
        "encodingFormat": _format(name),
    }
    if "size" in info:
        entity["contentSize"] = str(info["size"])
    if info.get("sha256"):
        entity["sha256"] = info["sha256"]
    if info.get("fast_hash"):
        entity["identifier"] = info["fast_hash"]
    if info.get("missing"):
        entity["description"] = "missing when the crate was written"
    entity.update(extra or {})
    return entity


def _write_json(path: Path, doc: Any) -> dict:
    from hpcem.provenance.hashes import describe_file

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return describe_file(path, full_max_bytes=1 << 62)


def _write_text(path: Path, text: str) -> dict:
    from hpcem.provenance.hashes import describe_file

    path.write_text(text)
    return describe_file(path, full_max_bytes=1 << 62)


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} exists and is not an empty folder; give a new folder")
    dest.mkdir(parents=True, exist_ok=True)


def export_crate(
    project,
    run_ids: list[int | str] | None,
    dest: str | os.PathLike,
    include_data: bool = False,
) -> Path:
    """Write the Workflow Run RO-Crate of the runs to the new folder ``dest``.

    ``run_ids``: the runs to include with everything upstream of them (all runs when
    empty or None). ``include_data``: also copy the files the sets refer to that lie in
    the folders of those runs (micrographs, pictures); by default only the sets' own
    files are copied and the others are referenced by ``file://`` URI with their hashes.
    Returns the path of ``ro-crate-metadata.json``.
    """
    from hpcem import __version__
    from hpcem.provenance.hashes import describe_file
    from hpcem.provenance.methods import bibtex, methods_text
    from hpcem.provenance.record import iso, provenance
    from hpcem.store.project import find_run

    all_runs = project.runs
    if run_ids:
        ids: set[int] = set()
        for ref in run_ids:
            ids.update(upstream(all_runs, find_run(all_runs, str(ref)).id))
    else:
        ids = {r.id for r in all_runs}
    runs = sorted((r for r in all_runs if r.id in ids), key=lambda r: r.id)
    if not runs:
        raise StoreError(f"project {project.path} has no runs to export")
    dest = Path(os.path.abspath(dest))
    _check_dest(dest)

    g = _Graph()
    parts: list[str] = []
    actions: list[str] = []
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": f"hpcem runs {', '.join(str(r.id) for r in runs)} of project {project.path.name}",
        "description": "Provenance of cryo-EM processing runs made with hpcem: the workflow, "
        "one action per run with its inputs, parameters, software and outputs, file hashes, "
        "the methods text and the references.",
        "conformsTo": [_ref(p) for p in PROFILES],
        "mainEntity": _ref("workflow.json"),
    }
    g.add(
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "about": _ref("./"),
            "conformsTo": [
                _ref("https://w3id.org/ro/crate/1.1"),
                _ref("https://w3id.org/workflowhub/workflow-ro-crate/1.0"),
            ],
        }
    )
    g.add(root)
    for pid, (name, version) in PROFILES.items():
        g.add({"@id": pid, "@type": "CreativeWork", "name": name, "version": version})

    # -- the workflow (main entity), references and methods
    workflow_doc, made_by = _workflow_document(project, runs)
    info = _write_json(dest / "workflow.json", workflow_doc)
    g.add(
        _file_entity(
            "workflow.json",
            info,
            "workflow.json",
            {
                "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
                "name": f"hpcem workflow of runs {', '.join(str(r.id) for r in runs)}",
                "description": f"The runs' protocols, parameters and input links ({made_by}).",
                "programmingLanguage": _ref(LANGUAGE_ID),
                "softwareRequirements": _ref(HPCEM_URL),
            },
        )
    )
    g.add(
        {
            "@id": LANGUAGE_ID,
            "@type": "ComputerLanguage",
            "name": "hpcem workflow JSON",
            "identifier": HPCEM_URL,
            "url": HPCEM_URL,
            "version": __version__,
        }
    )
    g.add(
        {
            "@id": HPCEM_URL,
            "@type": "SoftwareApplication",
            "name": "hpcem",
            "url": HPCEM_URL,
            "softwareVersion": __version__,
        }
    )
    parts.append("workflow.json")
    ids_list = [r.id for r in runs]
    info = _write_text(dest / "references.bib", bibtex(project, ids_list))
    g.add(_file_entity("references.bib", info, "references.bib", {"about": _ref("./")}))
    info = _write_text(dest / "methods.md", methods_text(project, ids_list))
    g.add(_file_entity("methods.md", info, "methods.md", {"about": _ref("./")}))
    parts += ["references.bib", "methods.md"]

    # -- one action per run
    project_root = str(project.path)
    wf_objects: list[str] = []
    wf_results: list[str] = []
    starts, ends = [], []
    for run in runs:
        record = provenance(project, run.id)
        action_id = f"#run-{run.id:06d}"
        proto = record["protocol"]
        tool_id = f"#protocol-{run.protocol}-{proto.get('version', 'unknown')}"
        programs = []
        for prog in record["external_programs"]:
            prog_id = f"#program-{prog['name']}-{'-'.join(prog['version_at_run']) or 'unknown'}"
            g.add(
                {
                    "@id": prog_id,
                    "@type": "SoftwareApplication",
                    "name": prog["name"],
                    "softwareVersion": ", ".join(prog["version_at_run"]) or "unknown",
                    "description": f"{prog['program']} (version it reports now: "
                    f"{prog['version_now'] or 'not available'})",
                }
            )
            programs.append(_ref(prog_id))
        g.add(
            {
                "@id": tool_id,
                "@type": "SoftwareApplication",
                "name": run.protocol,
                "alternateName": proto.get("label") or run.protocol,
                "softwareVersion": proto.get("version", "unknown"),
                "url": HPCEM_URL,
                "softwareRequirements": [_ref(HPCEM_URL), *programs],
            }
        )
        objects: list[str] = []
        results: list[str] = []
        for kind, target in (("inputs", objects), ("outputs", results)):
            for f in record["files"][kind]:
                path = f["path"]
                absolute = os.path.join(project_root, path)
                owner = _RUN_PATH.match(path)  # a file in the folder of run N
                if owner and int(owner.group(1)) in ids and (include_data or f["role"] == "set"):
                    crate_id = path
                    copy = dest / path
                    if not copy.exists():
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(absolute, copy)
                        parts.append(crate_id)
                    entity = _file_entity(
                        crate_id, describe_file(copy, full_max_bytes=1 << 62), path
                    )
                    entity["alternateName"] = path
                else:  # a web-based data entity (RO-Crate 1.1), listed in hasPart too
                    crate_id = Path(absolute).as_uri()
                    entity = _file_entity(crate_id, f, path, {"alternateName": path})
                    parts.append(crate_id)
                entity["description"] = f"{f['role']} file of set {f['set']}"
                g.add(entity)
                target.append(crate_id)
        param_ids = []
        units = _param_units(run.protocol)
        for name, value in sorted(run.params.items()):
            pv_id = f"{action_id}-param-{name}"
            pv = {
                "@id": pv_id,
                "@type": "PropertyValue",
                "name": name,
                "value": value if isinstance(value, (str, int, float, bool)) else json.dumps(value),
            }
            if units.get(name):
                pv["unitText"] = units[name]
            g.add(pv)
            param_ids.append(pv_id)
        prov_path = f"provenance/run-{run.id:06d}.json"
        info = _write_json(dest / prov_path, record)
        g.add(
            _file_entity(
                prov_path,
                info,
                prov_path,
                {"about": _ref(action_id), "description": f"provenance record of run {run.id}"},
            )
        )
        parts.append(prov_path)
        started = record["execution"]["started"]
        ended = record["execution"]["ended"]
        action = {
            "@id": action_id,
            "@type": "CreateAction",
            "name": f"run {run.id}: {run.protocol} ({run.label})",
            "instrument": _ref(tool_id),
            "object": [_ref(i) for i in (*objects, *param_ids)],
            "result": [_ref(i) for i in results],
            "actionStatus": _ref(
                "http://schema.org/CompletedActionStatus"
                if run.state == "finished"
                else "http://schema.org/FailedActionStatus"
            ),
        }
        if record["commands"]:
            action["description"] = "\n".join(c.get("command", "") for c in record["commands"])
        if started:
            action["startTime"] = started
            starts.append(started)
        if ended:
            action["endTime"] = ended
            ends.append(ended)
        if run.state != "finished":
            action["error"] = run.error or run.state
        g.add(action)
        actions.append(action_id)
        wf_results.extend(results)
        wf_objects.extend(objects)
    # the workflow consumed what no run of it made (imported files, sets of other runs)
    made = set(wf_results)
    wf_objects = [i for i in wf_objects if i not in made]

    wf_action = {
        "@id": "#workflow-run",
        "@type": "CreateAction",
        "name": f"execution of the hpcem workflow of runs {', '.join(map(str, ids_list))}",
        "instrument": _ref("workflow.json"),
        "object": [_ref(i) for i in dict.fromkeys(wf_objects)],
        "result": [_ref(i) for i in dict.fromkeys(wf_results)],
        "actionStatus": _ref(
            "http://schema.org/CompletedActionStatus"
            if all(r.state == "finished" for r in runs)
            else "http://schema.org/FailedActionStatus"
        ),
    }
    if starts:
        wf_action["startTime"] = min(starts)
    if ends:
        wf_action["endTime"] = max(ends)
    g.add(wf_action)
    root["hasPart"] = [_ref(p) for p in dict.fromkeys(parts)]
    root["mentions"] = [_ref("#workflow-run"), *(_ref(a) for a in actions)]
    root["datePublished"] = iso(time.time())
    metadata = {"@context": CONTEXT, "@graph": list(g.entities.values())}
    out = dest / "ro-crate-metadata.json"
    out.write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def _param_units(protocol_name: str) -> dict[str, str]:
    from hpcem.protocol.registry import get_protocol

    try:
        return {p.name: p.units for p in get_protocol(protocol_name).params if p.units}
    except HpcemError:
        return {}
