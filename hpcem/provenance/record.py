"""The provenance record of one run: what ran, where, when, on which files, with what.

:func:`provenance` gathers it from what the store keeps — the run record (request,
attempts with hosts, pids, sites, batch job ids and times; Parsl blocks; outputs), the
step table (state, host, job id, start and end of every step, and the step results that
carry provenance: ``backend``/``backends`` of the compiled kernels, ``commands`` of
external programs with the version each reported) — plus what only this machine can say
now (the versions of hpcem, Python and the libraries installed here, and the version
each external program reports today), and the sizes and hashes of the run's input and
output files (:mod:`hpcem.provenance.hashes`, cached in ``runs/<id>/provenance/``).

Versions of the software come twice: per attempt, as recorded when the attempt began
(``execution.attempts[].software``, :mod:`hpcem.provenance.software`; empty for attempts
made before hpcem recorded it), and those of the environment the record is made in
(``software``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcem.errors import HpcemError

RECORD_TYPE = "hpcem.Provenance"
RECORD_VERSION = 1
#: Python packages whose versions are recorded (those the numerics rest on).
PACKAGES = ("numpy", "scipy", "h5py", "mrcfile", "tifffile", "parsl", "gemmi", "matplotlib")
#: Seeds found in step arguments are listed up to this many per name.
MAX_STEP_SEEDS = 20


def iso(t: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC (``None`` for unset/NaN)."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return None
    return _dt.datetime.fromtimestamp(float(t), _dt.UTC).isoformat(timespec="seconds")


def _num(t: float | None) -> float | None:
    return None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def software_now() -> dict:
    """hpcem, Python, platform and library versions of this environment."""
    from hpcem import __version__

    return {
        "hpcem": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
    }


def protocol_info(name: str) -> dict:
    """Name, version, label, help and citation keys of a protocol installed here (the
    run keeps only its name; ``installed`` is False when it is not installed)."""
    from hpcem.protocol.registry import get_protocol

    try:
        cls = get_protocol(name)
    except HpcemError:
        return {"name": name, "installed": False}
    return {
        "name": cls.name,
        "version": cls.version,
        "label": cls.label,
        "module": cls.__module__,
        "citations": [c.key for c in cls.citations],
        "installed": True,
    }


def project_relative(project, path: str | os.PathLike) -> str:
    """``path`` relative to the project folder when inside it, else absolute."""
    p = os.path.abspath(os.path.join(project.path, path))
    root = str(project.path)
    return os.path.relpath(p, root) if p == root or p.startswith(root + os.sep) else p


def _set_store_files(project, run_id: int, name: str) -> list[str]:
    """The files holding a stored set (its manifest and segments), sorted."""
    d = Path(project.path) / "runs" / f"{int(run_id):06d}" / "sets" / name
    if not d.is_dir():
        return []
    return sorted(
        str(p) for p in d.rglob("*") if p.is_file() and not p.is_symlink() and ".tmp" not in p.name
    )


def _referenced_files(project, run_id: int, name: str) -> list[str]:
    """Absolute paths of the image (and other) files a set refers to."""
    try:
        s = project.open_set(run_id, name)
    except HpcemError:
        return []
    return sorted({str(f) for f in s.abs_files() if f})


def run_files(project, run) -> dict[str, list[dict]]:
    """The files of a run: ``inputs`` (files of its input sets and the files those refer
    to; for a run without inputs, the files outside its folder that its outputs refer
    to, e.g. imported micrographs) and ``outputs`` (the stored files of its output
    sets and the files in its own folder they refer to, e.g. simulated micrographs).
    Each entry: ``path`` (project-relative when inside the project), ``role``, ``set``
    (``RUN:NAME``) and no hashes yet."""
    entries: dict[str, list[dict]] = {"inputs": [], "outputs": []}
    seen: set[tuple[str, str]] = set()

    def add(kind: str, path: str, role: str, ref: str) -> None:
        if (kind, path) in seen:
            return
        seen.add((kind, path))
        entries[kind].append({"path": path, "role": role, "set": ref})

    for refs in run.inputs.values():
        for ref in refs:
            rid, _, name = ref.partition(":")
            for f in _set_store_files(project, int(rid), name):
                add("inputs", f, "set", ref)
            for f in _referenced_files(project, int(rid), name):
                add("inputs", f, "referenced", ref)
    run_dir = str(Path(project.path) / "runs" / f"{run.id:06d}") + os.sep
    for name in run.output_types:
        ref = f"{run.id}:{name}"
        for f in _set_store_files(project, run.id, name):
            add("outputs", f, "set", ref)
        for f in _referenced_files(project, run.id, name):
            if f.startswith(run_dir):
                add("outputs", f, "referenced", ref)
            elif not run.inputs:
                add("inputs", f, "imported", ref)
    return entries


def _hash_entries(project, run_id: int, entries: dict[str, list[dict]]) -> None:
    from hpcem.provenance.hashes import CACHE_NAME, HashCache

    cache = HashCache(
        Path(project.path) / "runs" / f"{int(run_id):06d}" / "provenance" / CACHE_NAME
    )
    for items in entries.values():
        for e in items:
            e.update(cache.describe(e["path"]))
            e["path"] = project_relative(project, e["path"])
    cache.save()


def _collect_steps(table) -> tuple[list[dict], dict, list[dict], dict]:
    """(steps, kernel backends, external commands, seeds) from the step records."""
    steps, commands = [], []
    backends: dict[str, set[str]] = {}
    seeds: dict[str, set] = {}
    for rec in table.to_records():
        started, ended = _num(rec["started"]), _num(rec["ended"])
        steps.append(
            {
                "name": rec["name"],
                "func": rec["func"],
                "state": rec["state"],
                "host": rec["host"],
                "job_id": rec["job_id"],
                "attempts": rec["attempts"],
                "exit_code": rec["exit_code"],
                "started": iso(started),
                "ended": iso(ended),
                "seconds": (ended - started) if started is not None and ended is not None else None,
                "started_unix": started,
                "ended_unix": ended,
            }
        )
        result = rec["result"] if isinstance(rec["result"], dict) else {}
        for key in ("backend", "backends"):
            value = result.get(key)
            if isinstance(value, dict):
                for kernel, b in value.items():
                    backends.setdefault(str(kernel), set()).add(str(b))
        for cmd in result.get("commands") or ():
            if isinstance(cmd, dict):
                commands.append({"step": rec["name"], **cmd})
        _find_seeds(rec["args"], seeds)
    return (
        steps,
        {k: sorted(v) for k, v in sorted(backends.items())},
        commands,
        {k: sorted(v, key=str)[:MAX_STEP_SEEDS] for k, v in sorted(seeds.items())},
    )


def _find_seeds(value: Any, out: dict[str, set], depth: int = 0) -> None:
    """Values of keys named ``*seed*`` anywhere in a step's arguments (nested dicts)."""
    if depth > 4:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if "seed" in str(k).lower() and isinstance(v, (int, str)) and not isinstance(v, bool):
                out.setdefault(str(k), set()).add(v)
            else:
                _find_seeds(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value[:1000]:
            _find_seeds(v, out, depth + 1)


def external_programs(commands: list[dict]) -> list[dict]:
    """One entry per external program file: the version it reported when the run used
    it (from the step results), and the version it reports on this machine now (None
    when it is not here or does not say)."""
    by_program: dict[str, dict] = {}
    for cmd in commands:
        program = str(cmd.get("program", ""))
        if not program:
            continue
        entry = by_program.setdefault(
            program, {"program": program, "name": os.path.basename(program), "versions": set()}
        )
        if cmd.get("version"):
            entry["versions"].add(str(cmd["version"]))
    out = []
    for program, entry in sorted(by_program.items()):
        out.append(
            {
                "program": program,
                "name": entry["name"],
                "version_at_run": sorted(entry["versions"]),
                "version_now": _version_now(program),
            }
        )
    return out


def _version_now(program: str) -> str | None:
    if not os.path.basename(program).startswith("relion_") or not os.path.isfile(program):
        return None
    from hpcem.relion.programs import program_version

    try:
        major, minor, patch, suffix = program_version(program)
    except HpcemError:
        return None
    return f"{major}.{minor}.{patch}{suffix}"


def project_created_with(project) -> str | None:
    """The hpcem version that created the project (an attribute of its index)."""
    from hpcem.store.files import attr_str, open_h5

    try:
        with open_h5(project.index_path, "project index") as f:
            return attr_str(f, "hpcem_version") or None
    except (OSError, HpcemError):
        return None


def provenance(project, run_id: int) -> dict:
    """The provenance record of run ``run_id`` of ``project`` (JSON-able dict).

    Keys: ``run`` (id, protocol, label, state, error, origin, params, inputs, outputs,
    created), ``protocol`` (name, version, citations: as installed here), ``software``
    (this environment's versions, the hpcem version that created the project),
    ``kernel_backends`` (kernel -> backends the steps reported), ``external_programs``
    and ``commands`` (exact command lines from the step results), ``execution`` (site,
    placement, hosts, job ids, Parsl blocks, attempts with times), ``steps`` (one entry
    per step with host and times), ``seeds`` (parameters named *seed* and seeds found in
    step arguments) and ``files`` (inputs and outputs with sizes and hashes).
    """
    run = project.run(run_id)
    table = project.read_steps(run.id)
    steps, backends, commands, step_seeds = _collect_steps(table)
    files = run_files(project, run)
    _hash_entries(project, run.id, files)
    attempts = []
    for a in run.attempts:
        d = a.to_json()
        for k in ("launched", "started", "ended"):
            d[f"{k}_unix"] = d.pop(k)
            d[k] = iso(d[f"{k}_unix"])
        attempts.append(d)
    hosts = Counter(s["host"] for s in steps if s["host"])
    for a in run.attempts:
        for h in (a.launcher_host, a.host, a.node):
            if h and h not in hosts:
                hosts[h] = 0
    job_ids = sorted(
        {a.job_id for a in run.attempts if a.job_id}
        | {s["job_id"] for s in steps if s["job_id"]}
        | set(run.blocks)
    )
    sites = sorted({run.placement.site} | {a.site for a in run.attempts if a.site})
    return {
        "hpcem_type": RECORD_TYPE,
        "record_version": RECORD_VERSION,
        "made": iso(_dt.datetime.now(_dt.UTC).timestamp()),
        "project": str(project.path),
        "run": {
            "id": run.id,
            "protocol": run.protocol,
            "label": run.label,
            "state": run.state,
            "error": run.error,
            "origin": getattr(run, "origin", ""),
            "created": iso(run.created),
            "params": run.params,
            "inputs": run.inputs,
            "outputs": {
                n: {"type": t, "size": run.output_sizes.get(n)} for n, t in run.output_types.items()
            },
        },
        "protocol": protocol_info(run.protocol),
        "software": {**software_now(), "project_created_with_hpcem": project_created_with(project)},
        "kernel_backends": backends,
        "external_programs": external_programs(commands),
        "commands": commands,
        "execution": {
            "sites": sites,
            "placement": run.placement.to_json(),
            "hosts": dict(sorted(hosts.items())),
            "job_ids": job_ids,
            "blocks": list(run.blocks),
            "started": iso(run.attempts[0].started) if run.attempts else None,
            "ended": iso(run.ended),
            "attempts": attempts,
        },
        "steps": steps,
        "seeds": {
            "params": {k: v for k, v in sorted(run.params.items()) if "seed" in k.lower()},
            "steps": step_seeds,
        },
        "files": files,
    }


def attempt_software_text(sw: dict) -> str:
    """One line on the software an attempt recorded when it began."""
    if not sw:
        return "software at launch: not recorded (attempt made before hpcem recorded it)"
    packages = ", ".join(f"{k} {v}" for k, v in (sw.get("packages") or {}).items() if v)
    kernels = ", ".join(sw.get("kernels_compiled") or []) or "none (numpy references)"
    return (
        f"software at launch: hpcem {sw.get('hpcem', '?')}, protocol version "
        f"{sw.get('protocol_version') or '?'}, Python {sw.get('python', '?')}"
        + (f", {packages}" if packages else "")
        + f"; compiled kernels: {kernels}; host {sw.get('host', '?')} ({sw.get('platform', '?')})"
    )


def format_text(record: dict) -> str:
    """The record as a few readable lines (what ``hpcem provenance`` prints)."""
    r, sw, ex = record["run"], record["software"], record["execution"]
    proto = record["protocol"]
    pv = proto.get("version", "?") if proto.get("installed") else "not installed here"
    lines = [
        f"run {r['id']} {r['label']!r}: {r['protocol']} (protocol version {pv}), {r['state']}"
        + (f" ({r['error']})" if r["error"] else ""),
        f"software now: hpcem {sw['hpcem']}, Python {sw['python']}, "
        + ", ".join(f"{k} {v}" for k, v in sw["packages"].items() if v)
        + f"; project created with hpcem {sw.get('project_created_with_hpcem') or '?'}",
    ]
    if record["kernel_backends"]:
        lines.append(
            "kernels: "
            + ", ".join(f"{k} ({'/'.join(v)})" for k, v in record["kernel_backends"].items())
        )
    for prog in record["external_programs"]:
        lines.append(
            f"program {prog['program']}: version at run "
            f"{', '.join(prog['version_at_run']) or '?'}, now {prog['version_now'] or '?'}"
        )
    lines.append(
        f"site {', '.join(ex['sites'])}; hosts "
        + (", ".join(f"{h} ({n} steps)" for h, n in ex["hosts"].items()) or "-")
        + f"; job ids {', '.join(ex['job_ids']) or '-'}"
    )
    for a in ex["attempts"]:
        lines.append(
            f"attempt {a['number']}: launched {a['launched'] or '-'} on "
            f"{a['launcher_host'] or '?'}, ran {a['started'] or '-'} .. {a['ended'] or '-'} "
            f"on {a['host'] or '?'} (pid {a['pid']})"
            + (f", job {a['job_id']}" if a["job_id"] else "")
            + (f": {a['outcome']}" if a["outcome"] else "")
        )
        lines.append("  " + attempt_software_text(a.get("software") or {}))
    states = Counter(s["state"] for s in record["steps"])
    lines.append(
        f"steps: {len(record['steps'])} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + ")"
    )
    seeds = record["seeds"]
    if seeds["params"] or seeds["steps"]:
        lines.append(
            "seeds: "
            + ", ".join(f"{k}={v}" for k, v in seeds["params"].items())
            + ("; in steps: " if seeds["steps"] else "")
            + ", ".join(f"{k}={v}" for k, v in seeds["steps"].items())
        )
    for cmd in record["commands"]:
        lines.append(f"command ({cmd['step']}): {cmd.get('command', '')}")
    for kind in ("inputs", "outputs"):
        items = record["files"][kind]
        total = sum(e.get("size", 0) or 0 for e in items)
        lines.append(f"{kind}: {len(items)} files, {total / 1e6:.1f} MB")
        for e in items[:20]:
            digest = e.get("sha256") or e.get("fast_hash") or "missing"
            lines.append(f"  {e['path']}  {e.get('size', '?')} B  {digest}")
        if len(items) > 20:
            lines.append(f"  ... {len(items) - 20} more (--json lists all)")
    return "\n".join(lines)
