"""Read and check a workflow template, then recreate its runs in a project.

A template is data: it is parsed as JSON (nothing executed, evaluated or unpickled),
checked against ``schema.json``, then checked for meaning: schema version, protocols,
references to runs of the file, cycles, placeholders, parameter types and ranges (by the
protocols' own declarations) and paths that would leave the project. Every problem is
listed in ONE :class:`~hpcem.errors.ValidationError` and nothing is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcem.errors import DataFormatError, HpcemError, RunError, ValidationError
from hpcem.workflow import placeholders as ph
from hpcem.workflow.template import FORMAT, SCHEMA_VERSION

MAX_TEMPLATE_BYTES = 8 * 1024 * 1024
SCHEMA_PATH = Path(__file__).with_name("schema.json")


@dataclasses.dataclass
class PlannedRun:
    """One run of a checked template: concrete params, inputs as ``@KEY:OUT`` (in the
    file) or ``RUN:OUT`` (of the target project)."""

    key: str
    protocol: str
    label: str
    params: dict[str, Any]
    inputs: dict[str, list[str]]
    placement: dict[str, Any]
    notes: str = ""
    set_params: tuple[str, ...] = ()  # params whose value came from --set (user paths)


@dataclasses.dataclass
class Workflow:
    """A checked template: its runs in an order where inputs come first."""

    runs: list[PlannedRun]
    placeholders: dict[str, ph.Placeholder]
    notes: list[str]  # non-fatal remarks (protocol versions that differ)


def read_document(path: str | os.PathLike) -> dict:
    """The JSON document of a template file (DataFormatError when it is not JSON)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_TEMPLATE_BYTES:
            raise DataFormatError(f"{p}: {size} bytes; a workflow template is at most 8 MiB")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{p}: not UTF-8 text ({exc.reason})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise DataFormatError(f"{p}: not a JSON workflow template: {exc}") from None
    return doc


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def schema() -> dict:
    """The published JSON Schema of templates."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_problems(doc: Any) -> list[str]:
    """Every JSON Schema violation, each with its place in the document."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        where = "/".join(str(p) for p in err.absolute_path) or "(document)"
        out.append(f"{where}: {err.message}")
    return out


def check(
    doc: Any,
    values: Mapping[str, Any] | None = None,
    project=None,
    allow_project_refs: bool = False,
) -> Workflow:
    """Check a template document with placeholder ``values``; ValidationError lists every
    problem. ``project`` (the target) enables the symlink check of paths;
    ``allow_project_refs`` lets inputs be plain ``RUN:OUTPUT`` (branches use it)."""
    from hpcem.protocol.registry import get_protocol
    from hpcem.protocol.validate import convert_params

    values = dict(values or {})
    problems: list[str] = []
    if isinstance(doc, dict):
        version = doc.get("schema_version")
        if isinstance(version, int) and version != SCHEMA_VERSION:
            problems.append(
                f"schema_version {version} is unknown (this hpcem reads version {SCHEMA_VERSION})"
            )
    if not allow_project_refs:
        found = schema_problems(doc)
        if found:
            _fail(problems + found)
    elif not isinstance(doc, dict) or doc.get("format") != FORMAT:
        _fail(problems + ["not an hpcem workflow document"])
    holders = ph.collect(doc)
    problems += ph.check_values(holders, values)
    notes: list[str] = []
    runs = doc["runs"]
    keys = [r["key"] for r in runs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        problems.append(f"run keys used more than once: {', '.join(dup)}")
    by_key = {r["key"]: r for r in runs}
    protocols: dict[str, Any] = {}
    for r in runs:
        try:
            protocols[r["key"]] = get_protocol(r["protocol"])
        except Exception as exc:  # noqa: BLE001 - ProtocolError: reported with the others
            problems.append(f"run {r['key']}: {exc}")
    planned: dict[str, PlannedRun] = {}
    deps: dict[str, set[str]] = {}
    for r in runs:
        key = r["key"]
        protocol = protocols.get(key)
        deps[key] = set()
        inputs: dict[str, list[str]] = {}
        for iname, refs in (r.get("inputs") or {}).items():
            refs = [refs] if isinstance(refs, str) else list(refs)
            out = []
            for ref in refs:
                target = _ref(
                    ref,
                    key,
                    iname,
                    holders,
                    values,
                    by_key,
                    protocols,
                    problems,
                    allow_project_refs,
                )
                if target is None:
                    continue
                if target.startswith("@"):
                    deps[key].add(target[1:].rsplit(":", 1)[0])
                out.append(target)
            inputs[iname] = out
        params: dict[str, Any] = {}
        from_set: set[str] = set()
        for pname, raw in (r.get("params") or {}).items():
            if any(
                n not in holders or (n not in values and not holders[n].has_default)
                for n in _used_names(raw)
            ):
                continue  # already reported as unset
            value, was_set = ph.substitute(raw, holders, values)
            params[pname] = value
            if was_set:
                from_set.add(pname)
        if protocol is None:
            continue
        if r.get("protocol_version") and str(r["protocol_version"]) != str(protocol.version):
            notes.append(
                f"run {key}: exported with {protocol.name} version {r['protocol_version']}, "
                f"this hpcem has version {protocol.version}"
            )
        declared_inputs = {i.name: i for i in protocol.inputs}
        for iname in inputs:
            if iname not in declared_inputs:
                problems.append(f"run {key} ({protocol.name}): unknown input {iname!r}")
        for spec in protocol.inputs:
            if spec.required and not (r.get("inputs") or {}).get(spec.name):
                problems.append(f"run {key} ({protocol.name}): input {spec.name!r} is required")
        _typed, found = convert_params(protocol, params)
        problems += [f"run {key} ({protocol.name}): {p}" for p in found]
        problems += _path_problems(protocol, key, params, from_set, project)
        planned[key] = PlannedRun(
            key=key,
            protocol=protocol.name,
            label=r.get("label") or protocol.label or protocol.name,
            params=params,
            inputs=inputs,
            placement=dict(r.get("execution") or {}),
            notes=r.get("notes", ""),
            set_params=tuple(sorted(from_set)),
        )
    order = _topological(deps, problems)
    if problems:
        _fail(problems)
    return Workflow([planned[k] for k in order], holders, notes)


def _used_names(raw: Any) -> list[str]:
    if ph.is_placeholder_object(raw):
        return [raw["placeholder"]]
    return ph._names_in(raw)


def _ref(ref, key, iname, holders, values, by_key, protocols, problems, allow_project_refs):
    """The checked target of one input reference (None after reporting a problem)."""
    where = f"run {key} input {iname!r}"
    whole = ph.PATTERN.fullmatch(ref)
    if whole:
        name = whole.group(1)
        if name not in values and not holders[name].has_default:
            return None  # reported as unset
        ref = str(ph.value_of(name, holders, values))
        if ref.startswith("@"):
            problems.append(f"{where}: placeholder {name!r} must be RUN:OUTPUT, got {ref!r}")
            return None
        run_part, sep, output = ref.rpartition(":")
        if not sep or not run_part or not output:
            problems.append(f"{where}: placeholder {name!r}: {ref!r} is not RUN:OUTPUT")
            return None
        return ref  # a run of the target project: resolved by create_run
    if not ref.startswith("@"):
        if allow_project_refs:
            return ref
        problems.append(f"{where}: {ref!r} is neither @KEY:OUTPUT nor ${{NAME}}")
        return None
    src, _, output = ref[1:].rpartition(":")
    if src not in by_key:
        problems.append(f"{where}: refers to run {src!r}, which is not in the file")
        return None
    if src == key:
        problems.append(f"{where}: refers to its own run (a cycle)")
        return None
    proto = protocols.get(src)
    if proto is not None:
        outs = {o.name: o.type for o in proto.outputs}
        if output not in outs:
            problems.append(
                f"{where}: run {src} ({proto.name}) has no output {output!r} "
                f"(it has: {', '.join(sorted(outs)) or 'none'})"
            )
            return None
        mine = protocols.get(key)
        spec = {i.name: i for i in mine.inputs}.get(iname) if mine else None
        if spec is not None and outs[output] not in spec.types:
            problems.append(
                f"{where}: @{src}:{output} is a {outs[output]}, expected {' or '.join(spec.types)}"
            )
            return None
    return "@" + src + ":" + output


def _path_problems(protocol, key: str, params: dict, from_set: set[str], project) -> list[str]:
    """Paths written in the template must stay inside the project: relative, no ``..``
    out of it, no symbolic link leading out. Values given with ``--set`` are the user's
    own (resolved like command-line values) and are not restricted."""
    out = []
    for p in protocol.params:
        value = params.get(p.name)
        if p.kind != "path" or p.name in from_set or not isinstance(value, str) or not value:
            continue
        where = f"run {key} ({protocol.name}) param {p.name!r}"
        if os.path.isabs(value) or value.startswith("~"):
            out.append(f"{where}: {value!r} is absolute; a template holds project-relative paths")
            continue
        norm = os.path.normpath(value)
        if norm == ".." or norm.startswith(".." + os.sep):
            out.append(f"{where}: {value!r} leaves the project folder")
            continue
        if project is not None:
            root = os.path.realpath(str(project.path))
            fixed = _fixed_prefix(norm)
            real = os.path.realpath(os.path.join(root, fixed)) if fixed else root
            if real != root and not real.startswith(root + os.sep):
                out.append(f"{where}: {value!r} leads out of the project through a symbolic link")
    return out


def _fixed_prefix(path: str) -> str:
    """The leading part of a glob pattern without wildcards."""
    parts = []
    for part in path.split(os.sep):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.sep.join(parts)


def _topological(deps: dict[str, set[str]], problems: list[str]) -> list[str]:
    """Keys with every run after the runs it reads; a cycle is a problem."""
    order, state = [], {}

    def visit(k: str, stack: list[str]) -> None:
        if state.get(k) == 2:
            return
        if state.get(k) == 1:
            cycle = stack[stack.index(k) :] + [k]
            problems.append(f"the runs form a cycle: {' -> '.join(cycle)}")
            return
        state[k] = 1
        for d in sorted(deps.get(k, ()), key=_natural):
            if d in deps:
                visit(d, stack + [k])
        state[k] = 2
        order.append(k)

    for k in sorted(deps, key=_natural):
        visit(k, [])
    return order


def _natural(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _fail(problems: list[str]) -> None:
    head = f"workflow template: {len(problems)} problem{'s' if len(problems) != 1 else ''}: "
    raise ValidationError(head + "; ".join(problems), problems)


# --- recreate the runs ------------------------------------------------------------------------
def _concrete(project, planned: PlannedRun) -> dict:
    """Params with template paths made absolute in the project (so that validation stores
    them project-relative again) and ``@KEY`` references turned into run ids."""
    from hpcem.protocol.registry import get_protocol

    protocol = get_protocol(planned.protocol)
    params = dict(planned.params)
    for p in protocol.params:
        v = params.get(p.name)
        if (
            p.kind == "path"
            and isinstance(v, str)
            and v
            and not os.path.isabs(v)
            and p.name not in planned.set_params
        ):
            params[p.name] = str(Path(project.path) / v)
    return params


def _inputs(planned: PlannedRun, ids: Mapping[str, int]) -> dict[str, list[str]]:
    out = {}
    for name, refs in planned.inputs.items():
        out[name] = [
            f"{ids[r[1:].rsplit(':', 1)[0]]}:{r.rsplit(':', 1)[1]}" if r.startswith("@") else r
            for r in refs
        ]
    return out


def instantiate(
    project,
    workflow: Workflow,
    *,
    run: bool = False,
    workers: int | None = None,
    site: str | None = None,
    set_names: frozenset[str] = frozenset(),
    label_suffix: str = "",
) -> dict[str, int]:
    """Create the workflow's runs in ``project``; returns template key -> new run id.

    Before anything is created, every run is validated (all problems in one error,
    nothing created): runs that read only existing runs in full, runs that read runs of
    the template in everything that does not need those inputs (:func:`_before_inputs`:
    parameter types, ranges and choices, inputs from the project, and the protocol's own
    checks). With ``run`` each run is then created with the full validation of
    :func:`hpcem.execution.runs.create_run`, launched and waited for before the next one
    (its inputs then exist). Without it, runs reading runs of the template are stored
    after those checks; launch them in order.
    """
    from hpcem.execution import runs as lifecycle
    from hpcem.protocol.context import RunContext
    from hpcem.protocol.registry import get_protocol
    from hpcem.protocol.validate import validate_request

    def placement(p: PlannedRun) -> dict:
        out = dict(p.placement)
        if site:
            out["site"] = site
        return out

    problems = []
    for p in workflow.runs:
        if any(r.startswith("@") for refs in p.inputs.values() for r in refs):
            problems += [f"run {p.key}: {x}" for x in _before_inputs(project, p, placement(p))]
            continue
        try:
            validate_request(
                get_protocol(p.protocol),
                _concrete(project, p),
                p.inputs,
                project,
                make_context=lambda req, p=p: RunContext(
                    project, None, req.params, req.inputs, site=placement(p).get("site")
                ),
            )
        except ValidationError as exc:
            problems += [f"run {p.key}: {x}" for x in (exc.problems or [str(exc)])]
    if problems:
        _fail(problems)
    ids: dict[str, int] = {}
    for p in workflow.runs:
        params = _concrete(project, p)
        inputs = _inputs(p, ids)
        label = p.label + label_suffix
        internal = any(r.startswith("@") for refs in p.inputs.values() for r in refs)
        if run or not internal:
            rec = lifecycle.create_run(project, p.protocol, params, inputs, label, placement(p))
        else:
            from hpcem.protocol.validate import convert_params, resolve_paths

            protocol = get_protocol(p.protocol)
            typed, found = convert_params(protocol, params)
            if found:
                _fail([f"run {p.key}: {x}" for x in found])
            rec = project.create_run(
                protocol=protocol.name,
                label=label,
                params=resolve_paths(protocol, typed, project),
                inputs=inputs,
                placement=placement(p),
            )
        ids[p.key] = rec.id
        if run:
            lifecycle.launch(project, rec.id, workers)
            state = wait_for(project, rec.id)
            if state != "finished":
                raise RunError(
                    f"run {rec.id} ({p.protocol}, template run {p.key}) {state}: "
                    f"{project.run(rec.id).error}; the runs after it were not created"
                )
    return ids


#: The text of the error a run's input made by a run of the template gives while that
#: run does not exist; problems naming it are not problems of the template.
NOT_MADE_YET = "is made by a run of the template that is not created yet"


class _NotMadeYet(RunError):
    """An input made by a run of the template was opened before that run exists."""


def _template_context(project, params: dict, inputs: dict, site):
    """A run context whose inputs from runs of the template (``@KEY:OUTPUT``) cannot be
    opened yet (:class:`_NotMadeYet`), while inputs from the project can."""
    from hpcem.protocol.context import RunContext

    class TemplateContext(RunContext):
        def _open(self, ref: str):
            if ref.startswith("@"):
                raise _NotMadeYet(f"input {ref} {NOT_MADE_YET}")
            return super()._open(ref)

    return TemplateContext(project, None, params, inputs, site=site)


def _before_inputs(project, planned: PlannedRun, placement: dict) -> list[str]:
    """Every problem of a run that reads runs of the template that can be found before
    those runs exist: parameter types, ranges and choices (:func:`convert_params`),
    inputs from the project (resolved as by ``create_run``), and the protocol's own
    ``validate`` with the template's inputs not openable (checks that need them are
    skipped, see :data:`NOT_MADE_YET`). The plan itself is checked when the run is
    created."""
    from hpcem.protocol.registry import get_protocol
    from hpcem.protocol.validate import convert_params, resolve_inputs, resolve_paths

    protocol = get_protocol(planned.protocol)
    untyped: set[str] = set()
    values, problems = convert_params(protocol, _concrete(project, planned), untyped)
    values = resolve_paths(protocol, values, project)
    outside = {n: [r for r in refs if not r.startswith("@")] for n, refs in planned.inputs.items()}
    inside = {n: [r for r in refs if r.startswith("@")] for n, refs in planned.inputs.items()}
    resolved, found = resolve_inputs(protocol, {k: v for k, v in outside.items() if v}, project)
    # an input given by a run of the template is not missing (check() saw it is there)
    given = [f"input '{n}' is required" for n, refs in inside.items() if refs]
    found = [x for x in found if not any(g in x for g in given)]
    problems += found
    missing = any(
        p.required and values[p.name] is None for p in protocol.params if p.applies(values)
    )
    if untyped or missing or found:
        return problems
    inputs = {n: resolved.get(n, []) + inside.get(n, []) for n in planned.inputs}
    ctx = _template_context(project, values, inputs, placement.get("site"))
    try:
        own = list(protocol().validate(ctx))
    except _NotMadeYet:
        own = []  # its remaining checks need the template's inputs: at creation
    except HpcemError as exc:
        own = [str(exc)]
    except (KeyError, ValueError, TypeError, IndexError, OSError, ArithmeticError) as exc:
        own = [f"cannot check the run: {type(exc).__name__}: {exc}"]
    return problems + [x for x in own if NOT_MADE_YET not in x]


def wait_for(project, run_id: int, poll_s: float = 0.2) -> str:
    """Block until the run leaves the active states; return its final state."""
    import time

    from hpcem.execution.runs import ACTIVE_STATES, effective_state

    while True:
        state = effective_state(project.run(run_id))
        if state not in ACTIVE_STATES:
            return state
        time.sleep(poll_s)
