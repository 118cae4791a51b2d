"""A methods paragraph and the BibTeX of every method used, from the runs themselves.

:func:`methods_text` writes one sentence per run, in run order: what the run did (the
protocol's label and the first sentence of its help), its protocol and version, which
runs it took its inputs from, the parameters that matter — those whose value differs
from the protocol's declared default, with their units — the compiled-kernel backends
and external programs (with the version they reported) its steps used, and the keys of
the protocol's citations as ``[@key]`` (pandoc's citation syntax, so the text renders
with the BibTeX file). It ends with the software versions. :func:`bibtex` gives every
citation of those runs' protocols plus hpcem's own, each key once. Versions are those the
runs' attempts recorded when they began (this environment's for older attempts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hpcem.errors import HpcemError, RunError

HPCEM_KEY = "hpcem"
HPCEM_BIBTEX = (
    "@software{hpcem, author = {{hpcem developers}}, title = {hpcem: reproducible cryo-EM "
    "processing on HPC batch systems}, year = {2026}, url = {https://github.com/hpcem/hpcem}}"
)


def select_runs(project, run_ids: Iterable[int | str] = ()) -> list:
    """The runs named (ids or unique labels), in id order; all finished runs when none
    is named. RunError for an unknown run."""
    from hpcem.store.project import find_run

    runs = project.runs
    refs = [str(r) for r in run_ids]
    if not refs:
        chosen = [r for r in runs if r.state == "finished"]
        if not chosen:
            raise RunError(f"project {project.path} has no finished run to describe")
        return sorted(chosen, key=lambda r: r.id)
    return sorted(
        {find_run(runs, ref).id: find_run(runs, ref) for ref in refs}.values(), key=lambda r: r.id
    )


def _protocol(name: str):
    from hpcem.protocol.registry import get_protocol

    try:
        return get_protocol(name)
    except HpcemError:
        return None


def format_value(value, units: str = "") -> str:
    """A parameter value as text: floats with up to 6 significant digits, then units."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v) for v in value)
    else:
        text = str(value)
    if units and not isinstance(value, bool):
        sep = "" if units in ("%", "°", "x") else " "
        text += f"{sep}{units}"
    return text


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def non_default_params(run, protocol) -> list[tuple[str, object, str]]:
    """``(name, value, units)`` of the parameters whose value is not the declared default
    (only those that apply, e.g. movie options of a micrograph simulation are left out).
    Without a declaration every parameter is listed."""
    if protocol is None:
        return [(k, v, "") for k, v in sorted(run.params.items())]
    out = []
    for p in protocol.params:
        if p.name not in run.params or not p.applies(run.params):
            continue
        value = run.params[p.name]
        if value is None or _same(value, p.default):
            continue
        out.append((p.name, value, p.units))
    return out


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).rstrip(".")


def _inputs_text(run, labels: dict[int, str]) -> str:
    parts = []
    for name, refs in run.inputs.items():
        srcs = []
        for ref in refs:
            rid, _, out = ref.partition(":")
            srcs.append(
                f"the {out} of run {rid}" + (f" ({labels[int(rid)]})" if int(rid) in labels else "")
            )
        parts.append(f"{name} from " + " and ".join(srcs))
    return "; ".join(parts)


def _run_facts(project, run) -> dict:
    """Kernel backends and external programs reported by the steps of a run."""
    from hpcem.provenance.record import _collect_steps, external_programs

    try:
        _, backends, commands, _ = _collect_steps(project.read_steps(run.id))
    except HpcemError:
        return {"backends": {}, "programs": []}
    return {"backends": backends, "programs": external_programs(commands)}


def run_sentence(project, run, labels: dict[int, str]) -> str:
    """One methods sentence for one run (see the module docstring)."""
    protocol = _protocol(run.protocol)
    if protocol is not None:
        what = protocol.label or protocol.name
        detail = _first_sentence(protocol.help) if protocol.help else ""
        version = protocol.version
        cites = [c.key for c in protocol.citations]
    else:
        what, detail, version, cites = run.protocol, "", "?", []
    # the version the run was launched with, when its attempt recorded it
    version = _recorded(run).get("protocol_version") or version
    named = f" ({run.label})" if run.label and run.label != what else ""
    text = f"Run {run.id}{named}: {what} with `{run.protocol}` (protocol version {version})"
    if detail:
        text += f" — {detail[0].lower() + detail[1:]}"
    inputs = _inputs_text(run, labels)
    if inputs:
        text += f"; input {inputs}"
    params = non_default_params(run, protocol)
    if params:
        text += "; parameters: " + ", ".join(
            f"{name} = {format_value(value, units)}" for name, value, units in params
        )
    else:
        text += "; all parameters at their defaults"
    facts = _run_facts(project, run)
    if facts["programs"]:
        text += "; external programs: " + ", ".join(
            f"{p['name']} {'/'.join(p['version_at_run']) or '(version not recorded)'}"
            for p in facts["programs"]
        )
    if facts["backends"]:
        text += "; kernels: " + ", ".join(
            f"{k} ({'/'.join(v)})" for k, v in facts["backends"].items()
        )
    if cites:
        text += " [" + "; ".join(f"@{k}" for k in cites) + "]"
    return text + "."


def _recorded(run) -> dict:
    """The software the run's latest attempt recorded when it began ({} when none)."""
    attempt = run.attempt
    software = getattr(attempt, "software", None) if attempt is not None else None
    return software if isinstance(software, dict) else {}


def _versions(runs: Sequence) -> dict:
    """hpcem, Python and library versions the runs' latest attempts recorded (each a
    '/'-joined set of versions, when runs differ); this environment's for runs without a
    record (attempts made before hpcem recorded them)."""
    from hpcem.provenance.record import software_now

    recorded = [_recorded(r) for r in runs]
    now = software_now() if not recorded or not all(recorded) else None
    sources = [r for r in recorded if r] + ([now] if now else [])
    out: dict = {"packages": {}}
    for key in ("hpcem", "python"):
        out[key] = "/".join(sorted({str(s.get(key)) for s in sources if s.get(key)})) or "?"
    for name in ("numpy", "scipy", "h5py", "mrcfile"):
        found = {str(s["packages"][name]) for s in sources if (s.get("packages") or {}).get(name)}
        out["packages"][name] = "/".join(sorted(found))
    return out


def _software_sentence(project, runs: Sequence) -> str:
    from hpcem.provenance.record import project_created_with

    sw = _versions(runs)
    pk = sw["packages"]
    libs = ", ".join(f"{k} {pk[k]}" for k in ("numpy", "scipy", "h5py", "mrcfile") if pk.get(k))
    programs: dict[str, set[str]] = {}
    for run in runs:
        for p in _run_facts(project, run)["programs"]:
            programs.setdefault(p["name"].split("_")[0].upper(), set()).update(p["version_at_run"])
    text = f"Processing used hpcem {sw['hpcem']} [@{HPCEM_KEY}] on Python {sw['python']}" + (
        f" ({libs})" if libs else ""
    )
    created = project_created_with(project)
    if created and created != sw["hpcem"]:
        text += f"; the project was created with hpcem {created}"
    if programs:
        text += "; external programs: " + ", ".join(
            f"{name} {'/'.join(sorted(v)) or '(version not recorded)'}"
            for name, v in sorted(programs.items())
        )
    return text + "."


def methods_text(project, run_ids: Iterable[int | str] = ()) -> str:
    """The methods paragraph (Markdown) of the runs named (all finished runs when none)."""
    runs = select_runs(project, run_ids)
    labels = {r.id: r.label for r in project.runs}
    sentences = [run_sentence(project, r, labels) for r in runs]
    sentences.append(_software_sentence(project, runs))
    return " ".join(sentences) + "\n"


def citations(project, run_ids: Iterable[int | str] = ()) -> dict[str, str]:
    """Citation key -> BibTeX entry of every protocol of the runs plus hpcem, each key
    once, in first-use order (a key declared twice keeps its first entry)."""
    runs = select_runs(project, run_ids)
    out: dict[str, str] = {HPCEM_KEY: HPCEM_BIBTEX}
    for run in runs:
        protocol = _protocol(run.protocol)
        for c in protocol.citations if protocol is not None else ():
            out.setdefault(c.key, c.bibtex.strip())
    return out


def bibtex(project, run_ids: Iterable[int | str] = ()) -> str:
    """The BibTeX file text of :func:`citations`."""
    return "\n\n".join(citations(project, run_ids).values()) + "\n"
