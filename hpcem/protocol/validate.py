"""Validation before launch: every problem with a run's parameters and inputs, together.

Turns raw values (strings from the command line or JSON values from a workflow) into
typed values, checks ranges, choices and required values, resolves input pointers
(``RUN:OUTPUT``, where RUN is a run id or label) against the project, and then asks the
protocol for its own checks. Raises one :class:`ValidationError` listing every problem.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from hpcem.errors import HpcemError, RunError, ValidationError
from hpcem.protocol.declare import Protocol
from hpcem.store.project import find_run

# Runs whose outputs may be used as inputs: finished ones, and running ones (streaming).
USABLE_STATES = ("finished", "running", "launched")


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """A validated request: typed parameter values and resolved input pointers."""

    protocol: str
    params: dict[str, Any]
    inputs: dict[str, list[str]]  # name -> ["<run id>:<output>", ...]


def convert_params(
    protocol: type[Protocol], raw: Mapping[str, Any], untyped: set[str] | None = None
) -> tuple[dict, list[str]]:
    """Typed values for every declared parameter (defaults filled) and the problems.

    The names of values that could not be converted (None in the result) are added to
    ``untyped`` when it is given."""
    problems: list[str] = []
    known = {p.name for p in protocol.params}
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{protocol.name}: unknown parameter '{name}'{hint}")
    values: dict[str, Any] = {}
    for p in protocol.params:
        raw_value = raw.get(p.name, p.default)
        try:
            values[p.name] = p.convert(raw_value)
        except ValueError as exc:
            problems.append(f"parameter '{p.name}': {exc}")
            values[p.name] = None
            if untyped is not None:
                untyped.add(p.name)
    for p in protocol.params:
        if p.applies(values):
            problems.extend(p.check(values[p.name]))
    return values, problems


def resolve_inputs(
    protocol: type[Protocol], raw: Mapping[str, Sequence[str] | str], project
) -> tuple[dict[str, list[str]], list[str]]:
    """Resolve ``name -> RUN:OUTPUT`` pointers against ``project``; return them and problems."""
    problems: list[str] = []
    declared = {i.name: i for i in protocol.inputs}
    for name in raw:
        if name not in declared:
            close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{protocol.name}: unknown input '{name}'{hint}")
    resolved: dict[str, list[str]] = {}
    runs = None
    for spec in protocol.inputs:
        given = raw.get(spec.name, [])
        refs = [given] if isinstance(given, str) else list(given)
        if not refs:
            if spec.required:
                problems.append(f"input '{spec.name}' is required ({' or '.join(spec.types)})")
            continue
        if len(refs) > 1 and not spec.many:
            problems.append(f"input '{spec.name}' takes one pointer, got {len(refs)}")
        if runs is None:
            runs = project.runs
        out = []
        for ref in refs:
            pointer, problem = _resolve_pointer(ref, spec, runs, project)
            if problem:
                problems.append(problem)
            else:
                out.append(pointer)
        resolved[spec.name] = out
    return resolved, problems


def _resolve_pointer(ref: str, spec, runs, project) -> tuple[str, str]:
    run_part, sep, output = str(ref).rpartition(":")
    if not sep or not run_part or not output:
        return "", f"input '{spec.name}': {ref!r} is not RUN:OUTPUT (e.g. 1:micrographs)"
    try:
        run = find_run(runs, run_part)
    except RunError as exc:
        return "", f"input '{spec.name}': {exc}"
    if run.state not in USABLE_STATES:
        return "", f"input '{spec.name}': run {run.id} ({run.label}) is {run.state}, not finished"
    if output not in run.output_types:
        if run.state != "finished":
            return "", (
                f"input '{spec.name}': run {run.id} ({run.label}) is still {run.state}; "
                "its outputs appear when it writes them (use it once it has finished)"
            )
        have = ", ".join(sorted(run.output_types)) or "none"
        return "", f"input '{spec.name}': run {run.id} has no output {output!r} (it has: {have})"
    out_type = run.output_types[output]
    if out_type not in spec.types:
        return "", (
            f"input '{spec.name}': {run.id}:{output} is a {out_type}, "
            f"expected {' or '.join(spec.types)}"
        )
    try:  # an unreadable input is a validation problem, not a run that fails later
        project.open_set(run.id, output)
    except HpcemError as exc:
        return "", f"input '{spec.name}': {run.id}:{output} cannot be read: {exc}"
    return f"{run.id}:{output}", ""


def resolve_paths(protocol: type[Protocol], values: dict, project) -> dict:
    """Path parameters resolved once, at validation, the same way from the API and the
    CLI: relative to the caller's folder, then stored relative to the project when they
    lie inside it (absolute otherwise), so steps never carry machine-specific paths."""
    from hpcem.protocol.context import project_relative

    out = dict(values)
    for p in protocol.params:
        value = out.get(p.name)
        if p.kind == "path" and isinstance(value, str) and value.strip() and project is not None:
            out[p.name] = project_relative(project.path, value)
    return out


def _check_plan(protocol: type[Protocol], ctx) -> None:
    """The plan itself must be buildable: a run that cannot plan is not stored. A
    protocol whose plan needs the run itself (its folder) is checked at launch instead."""
    from hpcem.execution.graph import StepGraph

    try:
        steps = protocol().steps(ctx)
    except RunError:
        return
    StepGraph(steps, protocol.name)


def validate_request(
    protocol: type[Protocol],
    params: Mapping[str, Any],
    inputs: Mapping[str, Sequence[str] | str],
    project,
    make_context=None,
) -> RunRequest:
    """Validate everything and return a :class:`RunRequest`, or raise ValidationError.

    ``make_context(request)`` builds the context for the protocol's own checks. They need
    typed values and resolved inputs and run whenever those are there, so that their
    (cross-field) problems come together with out-of-range values and unknown names;
    the plan is checked only when there is no problem at all.
    """
    untyped: set[str] = set()
    values, problems = convert_params(protocol, params, untyped)
    values = resolve_paths(protocol, values, project)
    resolved, input_problems = resolve_inputs(protocol, inputs, project)
    problems += input_problems
    request = RunRequest(protocol.name, values, resolved)
    missing = any(
        p.required and values[p.name] is None for p in protocol.params if p.applies(values)
    )
    if not untyped and not missing and not input_problems:
        generic = bool(problems)
        try:
            ctx = make_context(request) if make_context else request
            problems += list(protocol().validate(ctx))
            if not problems and make_context:
                _check_plan(protocol, ctx)
        except HpcemError as exc:
            problems.append(str(exc))
        except (KeyError, ValueError, TypeError, IndexError, OSError, ArithmeticError) as exc:
            if not generic:  # else an out-of-range value is the likely cause, already named
                problems.append(f"cannot plan the run's steps: {type(exc).__name__}: {exc}")
    if problems:
        head = f"{protocol.name}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
        raise ValidationError(head + "; ".join(problems), problems)
    return request
