"""Export runs of a project as a workflow template (a JSON document, data only).

The document holds a schema version, the hpcem version and each run's protocol (name
and version), parameters, inputs as references to other runs *in the file*
(``"@KEY:OUTPUT"``), execution hints (the run's placement: site, queue and resources),
label and notes. Dataset-specific values become placeholders: the file pattern of every
import (no default: a template asks for its data) and the pixel size and dose (the
exported values as defaults). An input that comes from a run outside the selection
becomes an input placeholder ``${NAME}`` (set on import to a ``RUN:OUTPUT`` of the target
project). The format is ``schema.json`` next to this module (published as
``docs/workflow.schema.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from hpcem.errors import RunError

SCHEMA_VERSION = 1
FORMAT = "hpcem.workflow"

#: Parameters of import protocols that belong to a dataset, not to a method. Those
#: without a default must be given on import (a file pattern from elsewhere is no use).
DATASET_PARAMS = {
    "files": (False, "file pattern of the images to import (glob)"),
    "pixel_size_A": (True, "pixel size of the images in Å/px"),
    "dose_per_frame_e_A2": (True, "electron dose per movie frame in e-/Å²"),
}


def downstream(runs: Sequence, run_id: int) -> list[int]:
    """``run_id`` and every run that uses its outputs, directly or not (ids, sorted)."""
    users: dict[int, set[int]] = {}
    for r in runs:
        for refs in r.inputs.values():
            for ref in refs:
                users.setdefault(int(str(ref).split(":", 1)[0]), set()).add(r.id)
    found, todo = {int(run_id)}, [int(run_id)]
    while todo:
        for child in users.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def select_runs(project, refs: Iterable[str] = (), branch: str | None = None) -> list:
    """The runs to export: those named (id or label), plus ``branch`` and everything
    downstream of it; every run of the project when nothing is named."""
    from hpcem.store.project import find_run

    runs = project.runs
    ids: set[int] = set()
    try:
        for ref in refs:
            ids.add(find_run(runs, ref).id)
        if branch is not None:
            ids.update(downstream(runs, find_run(runs, branch).id))
    except RunError as exc:
        raise RunError(f"{exc} ({project.path})") from None
    if not ids and not list(refs) and branch is None:
        ids = {r.id for r in runs}
    if not ids:
        raise RunError(f"project {project.path} has no run to export")
    return [r for r in runs if r.id in ids]


def _placeholder_name(param: str, key: str, counts: dict[str, int]) -> str:
    return param if counts.get(param, 0) <= 1 else f"{param}_{key}"


def export_runs(project, runs: Sequence, name: str = "", notes: str = "") -> dict:
    """The template document of ``runs`` (records of ``project``), in id order."""
    from hpcem import __version__
    from hpcem.protocol.registry import get_protocol

    runs = sorted(runs, key=lambda r: r.id)
    chosen = {r.id for r in runs}
    counts: dict[str, int] = {}
    for r in runs:
        if r.protocol.startswith("import."):
            for p in DATASET_PARAMS:
                if p in r.params:
                    counts[p] = counts.get(p, 0) + 1
    declared: dict[str, dict] = {}
    out_runs = []
    for r in runs:
        protocol = get_protocol(r.protocol)
        key = str(r.id)
        params: dict[str, Any] = {}
        for pname, value in sorted(r.params.items()):
            if r.protocol.startswith("import.") and pname in DATASET_PARAMS:
                keep_default, help_text = DATASET_PARAMS[pname]
                ph: dict[str, Any] = {
                    "placeholder": _placeholder_name(pname, key, counts),
                    "help": f"{r.label}: {help_text}",
                }
                if keep_default and value is not None:
                    ph["default"] = value
                params[pname] = ph
            elif value is not None:
                params[pname] = value
        inputs: dict[str, list[str]] = {}
        for iname, refs in sorted(r.inputs.items()):
            out = []
            for ref in refs:
                src, _, output = str(ref).partition(":")
                if int(src) in chosen:
                    out.append(f"@{int(src)}:{output}")
                else:
                    ph_name = f"{iname}_{key}"
                    declared[ph_name] = {
                        "kind": "input",
                        "help": f"run {key} ({r.label}) input {iname!r}: a RUN:OUTPUT of the "
                        f"target project (was {ref} in the exported project)",
                    }
                    out.append("${" + ph_name + "}")
            inputs[iname] = out
        execution = {
            k: v
            for k, v in r.placement.to_json().items()
            if v not in ({}, None) and not (k == "workers" and v == 0)
        }
        out_runs.append(
            {
                "key": key,
                "protocol": r.protocol,
                "protocol_version": str(protocol.version),
                "label": r.label,
                "notes": "",
                "params": params,
                "inputs": inputs,
                "execution": execution,
            }
        )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "hpcem_version": __version__,
        "name": name,
        "notes": notes,
        "source": {"project": project.path.name, "runs": [r.id for r in runs]},
    }
    if declared:
        doc["placeholders"] = declared
    doc["runs"] = out_runs
    return doc


def dumps(doc: dict) -> str:
    """The document as text: stable key order, so exports of one project compare equal."""
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"
