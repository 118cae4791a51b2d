"""Branches and differences: copy a run and everything downstream of it with changed
parameters or another input, and compare two runs (or the heads of two branches).

A branch is the export of the run and its downstream runs as a template (inputs from
runs outside it stay plain ``RUN:OUTPUT`` pointers), with the changes applied to the
first run, recreated as new saved runs whose inputs are rewired to the new copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpcem.errors import ValidationError


def branch(
    project,
    run_id: int,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Sequence[str] | str] | None = None,
    *,
    run: bool = False,
    workers: int | None = None,
) -> dict[int, int]:
    """Copy ``run_id`` and its downstream runs; returns old run id -> new run id.

    ``params`` and ``inputs`` change the first run only (validated like a new run);
    the copies of the runs after it read the new copies. With ``run`` each copy is
    launched and waited for in order.
    """
    from hpcem.workflow.load import check, instantiate
    from hpcem.workflow.template import downstream, export_runs

    runs = project.runs
    ids = downstream(runs, run_id)
    chosen = [r for r in runs if r.id in ids]
    doc = export_runs(project, chosen)
    root = doc["runs"][0]
    # Branches stay in their project: its own values and pointers, no placeholders.
    by_id = {r.id: r for r in chosen}
    for entry in doc["runs"]:
        rec = by_id[int(entry["key"])]
        entry["params"] = {k: v for k, v in rec.params.items() if v is not None}
        entry["inputs"] = {
            name: [
                f"@{ref.split(':', 1)[0]}:{ref.split(':', 1)[1]}"
                if int(ref.split(":", 1)[0]) in ids
                else ref
                for ref in refs
            ]
            for name, refs in rec.inputs.items()
        }
        entry["label"] = _branch_label(rec.label, [r.label for r in runs])
    doc.pop("placeholders", None)
    root["params"].update(dict(params or {}))
    for name, refs in (inputs or {}).items():
        root["inputs"][name] = [refs] if isinstance(refs, str) else list(refs)
    try:
        workflow = check(doc, {}, project, allow_project_refs=True)
        new = instantiate(project, workflow, run=run, workers=workers)
    except ValidationError as exc:
        raise ValidationError(f"branch of run {run_id}: {exc}", exc.problems) from None
    return {int(k): v for k, v in new.items()}


def _branch_label(label: str, taken: Sequence[str]) -> str:
    from hpcem.execution.runs import copy_label

    return copy_label(label, taken)


# --- diff ---------------------------------------------------------------------------------------
def key_figures(project, run) -> dict[str, dict[str, float]]:
    """Per output: its item count and, where the set has them, the mean defocus (Å), the
    mean CTF fit resolution (Å) and the resolution at FSC 0.143 (Å)."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted(run.output_types):
        figures: dict[str, float] = {}
        try:
            s = project.open_set(run.id, name)
        except Exception:  # noqa: BLE001 - an unreadable output is shown as such
            out[name] = {"unreadable": 1.0}
            continue
        figures["count"] = float(len(s))
        fields = set(s.item_type.field_names)
        try:
            cols = (
                s.read_columns(
                    [
                        c
                        for c in ("defocus_u", "defocus_v", "fit_resolution", "resolution_A")
                        if c in fields
                    ]
                )
                if fields
                else {}
            )
        except Exception:  # noqa: BLE001
            cols = {}
        if len(s) and "defocus_u" in cols and "defocus_v" in cols:
            figures["mean_defocus_A"] = float(
                (cols["defocus_u"].astype(float).mean() + cols["defocus_v"].astype(float).mean())
                / 2
            )
        if len(s) and "fit_resolution" in cols:
            figures["mean_fit_resolution_A"] = float(cols["fit_resolution"].astype(float).mean())
        if len(s) and "resolution_A" in cols:
            figures["resolution_A"] = float(cols["resolution_A"].astype(float).min())
        out[name] = figures
    return out


def diff(project, run_a: int, run_b: int) -> dict:
    """Differences of two runs: protocol, parameters, inputs and key figures of outputs.

    Returns ``{"runs": [a, b], "protocol": [pa, pb] | None, "params": {name: [va, vb]},
    "inputs": {name: [ra, rb]}, "outputs": {name: {figure: [fa, fb]}}}`` with only what
    differs in ``params``/``inputs`` and every figure in ``outputs``."""
    a, b = project.run(run_a), project.run(run_b)
    params = {
        k: [a.params.get(k), b.params.get(k)]
        for k in sorted(set(a.params) | set(b.params))
        if a.params.get(k) != b.params.get(k)
    }
    inputs = {
        k: [a.inputs.get(k, []), b.inputs.get(k, [])]
        for k in sorted(set(a.inputs) | set(b.inputs))
        if a.inputs.get(k, []) != b.inputs.get(k, [])
    }
    fa, fb = key_figures(project, a), key_figures(project, b)
    outputs = {}
    for name in sorted(set(fa) | set(fb)):
        x, y = fa.get(name, {}), fb.get(name, {})
        outputs[name] = {
            f: [x.get(f, math.nan), y.get(f, math.nan)] for f in sorted(set(x) | set(y))
        }
    return {
        "runs": [a.id, b.id],
        "labels": [a.label, b.label],
        "states": [a.state, b.state],
        "protocol": None if a.protocol == b.protocol else [a.protocol, b.protocol],
        "params": params,
        "inputs": inputs,
        "outputs": outputs,
    }
