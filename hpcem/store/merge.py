"""Merging two diverged copies of one project: ``merge(target, source)``.

Two copies of a project folder (``cp -r``, rsync to another site) that each ran new runs
are merged into TARGET. Runs present in both are recognised by their **origin id**
(``RunRecord.origin``, given at creation and kept by copies of the folder); runs created
before origins existed are matched by (protocol, params, inputs, created time), and the
report says so. New runs of SOURCE are added with their folders, output sets and lineage;
ids that TARGET already uses are renumbered (in order, from TARGET's next free id) and
every pointer to them is rewritten: the ``inputs`` refs of runs, the lineage ``inputs``
and ``run_id`` of set manifests, the ``files`` tables of sets (``runs/NNNNNN/...``), step
arguments and results that name such paths or refs, relative symbolic links between run
folders. A run run again only in SOURCE since the copy (SOURCE's attempts extend
TARGET's, same params and inputs, not active in TARGET, and no run of TARGET that SOURCE
lacks uses its outputs) is **taken over**: TARGET's record, folder, sets and step log are
replaced by SOURCE's. Any other run changed on both sides (state, params, inputs,
attempts or outputs differ) is a **conflict**: reported, left as TARGET has it, and the
new runs of SOURCE that depend on it are held back (their lineage would be false in
TARGET).

All-or-nothing: the run folders to add or take over are copied and rewritten under
``TARGET/.hpcem/merge/<token>/``, where no reader looks; then, under TARGET's index lock,
the folders of runs taken over are set aside into the staging folder (``old-NNNNNN``),
the staged ones renamed to ``runs/NNNNNN``, and the index is committed once (an atomic
rename of ``project.h5`` that also names the token: ``merge_token``). Until that commit
TARGET's index is unchanged; after a crash before it the next merge, :func:`recover` or a
``create_run`` that meets a leftover folder puts every folder back; after it, the staging
folder (with the old folders) is just removed. See docs/merge.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcem.errors import StoreError
from hpcem.store import files as sf
from hpcem.store import record

#: Where merges stage their run folders inside TARGET (``.hpcem/merge/<token>/``).
MERGE_DIR = Path(".hpcem") / "merge"
JOURNAL = "journal.json"
#: Written in the staging folder, under the index lock, before the first folder rename:
#: which runs taken over had a folder in TARGET (set aside as ``old-NNNNNN``).
COMMIT = "commit.json"
OLD = "old-"
#: Attribute of ``project.h5`` naming the staging folder of the last committed merge.
TOKEN_ATTR = "merge_token"
#: Top-level files of a run folder that hold the store's own state: a link there is
#: refused (anything under ``sets/`` too). Links deeper in a protocol's own folders (e.g.
#: RELION's input links) are copied as links, never followed.
STORE_NAMES = re.compile(
    r"^(?:sets|steps\.h5|steps-\d+(?:-\d+)?\.h5|progress\.h5|run\.log|events\.jsonl|"
    r"stdout\.log|stderr\.log|controller\.lock)$"
)
_RUN_PATH = re.compile(r"^runs/(\d{6,})(?=/|$)")
_REF = re.compile(r"^(\d+):([A-Za-z0-9_][A-Za-z0-9_.-]*)$")
_COPY_CHUNK = 64 << 20
# the folder renames of the commit (a name so that the tests can interrupt it)
_rename = os.rename


@dataclass
class Added:
    """A run of SOURCE added to TARGET (``target_id`` differs when renumbered)."""

    source_id: int
    target_id: int
    protocol: str
    label: str


@dataclass
class TakenOver:
    """A run present in both copies that was run again only in SOURCE since the copy:
    TARGET's record, folder, output sets and step log replaced by SOURCE's."""

    source_id: int
    target_id: int
    protocol: str
    label: str
    differences: list[str]


@dataclass
class Conflict:
    """A run present in both copies that differs: left as TARGET has it.

    ``kind``: ``"both"`` (changed on both sides, or the same attempts now differ) or
    ``"newer_in_source"`` (SOURCE ran it again after the copy, TARGET did not, but it
    cannot be taken over: the first difference says why, see docs/merge.md).
    """

    source_id: int
    target_id: int
    differences: list[str]
    kind: str = "both"


@dataclass
class MergeReport:
    """What a merge did (or, with ``dry_run``, would do)."""

    target: str
    source: str
    dry_run: bool = False
    added: list[Added] = field(default_factory=list)
    same: list[tuple[int, int]] = field(default_factory=list)  # (source id, target id)
    taken_over: list[TakenOver] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    held_back: list[tuple[int, str]] = field(default_factory=list)  # (source id, why)
    notes: list[str] = field(default_factory=list)

    @property
    def renumbered(self) -> dict[int, int]:
        """Source id -> target id of the added runs whose id changed."""
        return {a.source_id: a.target_id for a in self.added if a.source_id != a.target_id}

    @property
    def nothing_to_merge(self) -> bool:
        return not self.added and not self.taken_over

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "source": self.source,
            "dry_run": self.dry_run,
            "added": [dataclasses.asdict(a) for a in self.added],
            "renumbered": {str(k): v for k, v in self.renumbered.items()},
            "same": [list(p) for p in self.same],
            "taken_over": [dataclasses.asdict(t) for t in self.taken_over],
            "conflicts": [dataclasses.asdict(c) for c in self.conflicts],
            "held_back": [{"source_id": s, "reason": r} for s, r in self.held_back],
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The report as text lines for the command line."""
        verb = "would add" if self.dry_run else "added"
        out = [f"merge {self.source} into {self.target}" + (" (dry run)" if self.dry_run else "")]
        if self.nothing_to_merge:
            out.append("nothing to merge: every run of SOURCE is already in TARGET")
        for a in self.added:
            moved = f" as run {a.target_id}" if a.target_id != a.source_id else ""
            out.append(f"  {verb} run {a.source_id}{moved}: {a.protocol} {a.label!r}".rstrip())
        take = "would take over" if self.dry_run else "took over"
        for t in self.taken_over:
            out.append(
                f"  {take} run {t.source_id} (TARGET run {t.target_id}): {t.protocol} "
                f"{t.label!r}, run again in SOURCE only: {'; '.join(t.differences)}"
            )
        if self.same:
            out.append(f"  {len(self.same)} run(s) already in TARGET, unchanged")
        for c in self.conflicts:
            where = "in SOURCE only" if c.kind == "newer_in_source" else "on both sides"
            out.append(
                f"  CONFLICT run {c.source_id} (TARGET run {c.target_id}) changed {where}: "
                f"{'; '.join(c.differences)}; TARGET's version kept"
            )
        for s, why in self.held_back:
            out.append(f"  held back run {s}: {why}")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


@dataclass
class _Plan:
    report: MergeReport
    id_map: dict[int, int]  # every mapped source id -> target id
    new: dict[int, record.RunRecord]  # target id -> record to add (already rewritten)
    sources: dict[int, int]  # target id -> source id of the added runs
    #: target id -> SOURCE's record (rewritten) that replaces TARGET's
    takeover: dict[int, record.RunRecord] = field(default_factory=dict)
    took: dict[int, int] = field(default_factory=dict)  # target id -> source id
    replaced: dict[int, str] = field(default_factory=dict)  # target id -> fingerprint

    def key(self) -> tuple:
        """What must not change between planning and commit (a run to be taken over
        must not change in TARGET at all, not even its label)."""
        r = self.report
        return (
            sorted(self.sources.items()),
            sorted(self.took.items()),
            sorted(self.replaced.items()),
            sorted((c.source_id, c.target_id) for c in r.conflicts),
            sorted(r.held_back),
        )

    @property
    def copies(self) -> dict[int, int]:
        """Target id -> source id of every run folder copied from SOURCE."""
        return {**self.sources, **self.took}


# --- the plan (pure: records in, decisions out) -----------------------------------------
def _fallback_key(rec: record.RunRecord, id_map: Mapping[int, int] | None = None) -> str:
    inputs = _map_inputs(rec.inputs, id_map) if id_map else rec.inputs
    return json.dumps(
        [rec.protocol, rec.params, inputs, repr(float(rec.created))],
        sort_keys=True,
        default=str,
    )


def _map_ref(ref: str, id_map: Mapping[int, int]) -> str:
    run, sep, name = str(ref).partition(":")
    if sep and run.isdigit() and int(run) in id_map:
        return f"{id_map[int(run)]}:{name}"
    return ref


def _map_inputs(inputs: Mapping[str, Sequence[str]], id_map: Mapping[int, int]) -> dict:
    return {k: [_map_ref(r, id_map) for r in v] for k, v in inputs.items()}


def _differences(t: record.RunRecord, s: record.RunRecord, id_map: Mapping[int, int]) -> list[str]:
    """How the same run differs in the two copies (empty: identical)."""
    diffs = []
    if t.state != s.state:
        diffs.append(f"state {t.state} in TARGET, {s.state} in SOURCE")
    if t.params != s.params:
        keys = sorted(k for k in {*t.params, *s.params} if t.params.get(k) != s.params.get(k))
        diffs.append(f"params differ ({', '.join(map(str, keys))})")
    if t.inputs != _map_inputs(s.inputs, id_map):
        diffs.append("inputs differ")
    ta = [a.to_json() for a in t.attempts]
    sa = [a.to_json() for a in s.attempts]
    if ta != sa:
        diffs.append(f"attempts differ ({len(ta)} in TARGET, {len(sa)} in SOURCE)")
    if (t.output_types, t.output_sizes) != (s.output_types, s.output_sizes):
        diffs.append("outputs differ")
    return diffs


def _attempt_ids(rec: record.RunRecord) -> list[tuple]:
    """What identifies each launch (later fields of an attempt may still be refined)."""
    return [(a.number, repr(a.launched), a.launcher_host, a.launcher_pid) for a in rec.attempts]


def _ahead(longer: record.RunRecord, shorter: record.RunRecord) -> bool:
    """``longer`` holds every launch of ``shorter`` and more: it was run again since."""
    a, b = _attempt_ids(longer), _attempt_ids(shorter)
    return len(a) > len(b) and a[: len(b)] == b


def _upstream(inputs: Mapping[str, Sequence[str]]) -> list[int]:
    """The run ids named by input refs ``"RUN:OUTPUT"``, in order."""
    return [
        int(r.partition(":")[0])
        for refs in inputs.values()
        for r in refs
        if str(r).partition(":")[0].isdigit()
    ]


def _takeover_refusal(t: record.RunRecord, s: record.RunRecord, id_map) -> str | None:
    """Why SOURCE's newer version ``s`` cannot replace TARGET's ``t`` by itself (None:
    it can, as far as the two records tell). Only attempts say what changed since the
    copy: params or inputs that differ may have been edited on either side."""
    if t.state in record.ACTIVE_STATES:
        return f"it is {t.state} in TARGET: an active run is never replaced"
    if t.params != s.params or t.inputs != _map_inputs(s.inputs, id_map):
        return (
            "its params or inputs differ too, and nothing tells which copy changed them "
            "(only attempts record what happened since the copy)"
        )
    return None


def _plan(
    target_runs: Sequence[record.RunRecord],
    next_id: int,
    source_runs: Sequence[record.RunRecord],
    report: MergeReport,
) -> _Plan:
    by_origin = {r.origin: r for r in target_runs if r.origin}
    by_key: dict[str, list[record.RunRecord]] = {}
    for r in target_runs:
        if not r.origin:
            by_key.setdefault(_fallback_key(r), []).append(r)
    id_map: dict[int, int] = {}
    blocked: dict[int, str] = {}  # source id -> why its outputs cannot be used
    claimed: set[int] = set()
    matched: list[tuple[record.RunRecord, record.RunRecord]] = []
    fresh: list[record.RunRecord] = []
    fallback = []
    source_ids = {r.id for r in source_runs}
    # 1. which runs of SOURCE TARGET has (by origin; old runs by their fallback key)
    for s in sorted(source_runs, key=lambda r: r.id):
        if s.origin:
            t = by_origin.get(s.origin)
        else:
            found = by_key.get(_fallback_key(s, id_map), [])
            t = found[0] if len(found) == 1 else None
            if t is not None:
                fallback.append(s.id)
        if t is not None and t.id in claimed:
            report.conflicts.append(
                Conflict(s.id, t.id, [f"another run of SOURCE already matched TARGET run {t.id}"])
            )
            blocked[s.id] = f"run {s.id} conflicts"
        elif t is not None:
            claimed.add(t.id)
            id_map[s.id] = t.id
            matched.append((s, t))
        else:
            fresh.append(s)
    # 2. what to do with each run both have
    kept: set[int] = set()  # target ids of runs whose version in TARGET stays
    candidates: dict[int, tuple] = {}  # source id -> (s, t, differences)
    for s, t in matched:
        diffs = _differences(t, s, id_map)
        if not diffs:
            report.same.append((s.id, t.id))
            if t.label != s.label:
                report.notes.append(
                    f"run {s.id} is labelled {t.label!r} in TARGET and {s.label!r} in "
                    "SOURCE; TARGET's label kept"
                )
            continue
        kept.add(t.id)
        if _ahead(t, s):
            report.notes.append(
                f"run {s.id} was run again in TARGET (as run {t.id}) since the copy; "
                "TARGET's newer version kept"
            )
            blocked[s.id] = f"it was made from an older version of run {s.id}"
        elif _ahead(s, t):
            why = _takeover_refusal(t, s, id_map)
            if why is None:
                kept.discard(t.id)
                candidates[s.id] = (s, t, diffs)
            else:
                report.conflicts.append(
                    Conflict(
                        s.id,
                        t.id,
                        [f"run again in SOURCE only, but {why}", *diffs],
                        "newer_in_source",
                    )
                )
                blocked[s.id] = f"it uses outputs of run {s.id}, which conflicts"
        else:
            report.conflicts.append(Conflict(s.id, t.id, diffs, "both"))
            blocked[s.id] = f"it uses outputs of run {s.id}, which conflicts"
    # 3. a run is taken over only if every run of TARGET that uses its outputs ends up
    # as SOURCE has it (the same, or taken over too), and its own inputs do as well
    users: dict[int, set[int]] = {}
    for r in target_runs:
        for u in _upstream(r.inputs):
            users.setdefault(u, set()).add(r.id)
    matched_targets = {t.id for _, t in matched}
    changed = True
    while changed:
        changed = False
        for sid, (s, t, diffs) in sorted(candidates.items()):
            foreign = sorted(
                u for u in users.get(t.id, ()) if u in kept or u not in matched_targets
            )
            upstream = [u for u in _upstream(s.inputs) if u in blocked]
            if foreign:
                why = (
                    f"TARGET run(s) {foreign} use its outputs and are not in SOURCE as they "
                    "are in TARGET: replacing the outputs would make their lineage false"
                )
            elif upstream:
                why = f"it was made from run {upstream[0]}, whose SOURCE version is not merged"
            else:
                continue
            del candidates[sid]
            kept.add(t.id)
            report.conflicts.append(
                Conflict(
                    s.id, t.id, [f"run again in SOURCE only, but {why}", *diffs], "newer_in_source"
                )
            )
            blocked[s.id] = f"it uses outputs of run {s.id}, which conflicts"
            changed = True
    report.conflicts.sort(key=lambda c: c.source_id)
    for sid, (s, t, diffs) in sorted(candidates.items()):
        report.taken_over.append(TakenOver(s.id, t.id, s.protocol, t.label, diffs))
        if t.label != s.label:
            report.notes.append(
                f"run {s.id} is labelled {t.label!r} in TARGET and {s.label!r} in SOURCE; "
                "TARGET's label kept"
            )
    # 4. new runs of SOURCE: added, renumbered where TARGET used their ids
    new: dict[int, record.RunRecord] = {}
    sources: dict[int, int] = {}
    for s in fresh:
        upstream = _upstream(s.inputs)
        held = [u for u in upstream if u in blocked]
        if held:
            report.held_back.append((s.id, blocked[held[0]]))
            blocked[s.id] = f"it uses outputs of run {s.id}, which is held back"
            continue
        dangling = sorted({u for u in upstream if u not in source_ids})
        if dangling:
            report.notes.append(
                f"run {s.id} names input run(s) {dangling} that SOURCE does not have; "
                "kept as they are"
            )
        tid = max(s.id, next_id)  # kept unless TARGET already used it
        next_id = tid + 1
        id_map[s.id] = tid
        sources[tid] = s.id
        report.added.append(Added(s.id, tid, s.protocol, s.label))
    if fallback:
        report.notes.append(
            f"run(s) {fallback} have no origin id (created before hpcem kept one): matched "
            "by protocol, params, inputs and creation time"
        )
    mapping = {k: v for k, v in id_map.items() if k != v}

    def rewritten(s: record.RunRecord, tid: int, **changes) -> record.RunRecord:
        return dataclasses.replace(
            s,
            id=tid,
            inputs=_map_inputs(s.inputs, id_map),
            attempts=tuple(
                dataclasses.replace(a, exit_code_file=map_path(a.exit_code_file, mapping))
                for a in s.attempts
            ),
            **changes,
        )

    by_id = {r.id: r for r in source_runs}
    for tid, sid in sources.items():
        new[tid] = rewritten(by_id[sid], tid)
    plan = _Plan(report, id_map, new, sources)
    for sid, (s, t, _) in candidates.items():
        plan.takeover[t.id] = rewritten(s, t.id, label=t.label)
        plan.took[t.id] = sid
        plan.replaced[t.id] = _fingerprint(t)
    return plan


# --- rewriting pointers ------------------------------------------------------------------
def map_path(text: str, mapping: Mapping[int, int]) -> str:
    """A project-relative path ``runs/NNNNNN/...`` of a renumbered run, renumbered."""
    m = _RUN_PATH.match(text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) not in mapping:
        return text
    return f"runs/{mapping[int(m.group(1))]:06d}{text[m.end() :]}"


def _map_value(value: Any, mapping: Mapping[int, int], outputs: Mapping[int, set]) -> Any:
    """Paths and ``run:set`` refs of renumbered runs inside a JSON value, rewritten."""
    if isinstance(value, str):
        m = _REF.match(value)
        if m and int(m.group(1)) in mapping and m.group(2) in outputs.get(int(m.group(1)), ()):
            return f"{mapping[int(m.group(1))]}:{m.group(2)}"
        return map_path(value, mapping)
    if isinstance(value, list):
        return [_map_value(v, mapping, outputs) for v in value]
    if isinstance(value, dict):
        return {k: _map_value(v, mapping, outputs) for k, v in value.items()}
    return value


def _map_link(link_text: str, rel_dir: str, mapping: Mapping[int, int]) -> str:
    """A relative link target that names a renumbered run's folder, renumbered
    (``rel_dir`` is the link's folder relative to the project, already renumbered)."""
    if os.path.isabs(link_text):
        return link_text
    joined = os.path.normpath(os.path.join(rel_dir, link_text))
    moved = map_path(joined, mapping)
    if moved == joined:
        return link_text
    return os.path.relpath(moved, rel_dir)


def _rewrite_run(
    folder: Path, sid: int, tid: int, mapping: Mapping[int, int], outputs: Mapping[int, set]
) -> None:
    """Rewrite the staged copy ``folder`` of source run ``sid`` as run ``tid``: its set
    manifests (run id, lineage, files table) and its step table (run id, paths, refs)."""
    from hpcem.store.manifest import MANIFEST, read_manifest, write_manifest
    from hpcem.store.steps import StepTable, read_steps_file, write_steps_file

    sets = folder / "sets"
    for d in sorted(sets.iterdir()) if sets.is_dir() else ():
        if not (d / MANIFEST).is_file():
            continue
        m = read_manifest(d)
        before = (m.run_id, list(m.inputs), list(m.files))
        m.run_id = tid if m.run_id == sid else mapping.get(m.run_id, m.run_id)
        m.inputs = [_map_ref(r, mapping) for r in m.inputs]
        m.files = [map_path(p, mapping) for p in m.files]
        if (m.run_id, m.inputs, m.files) != before:
            write_manifest(d, m)
    names = [n for n in os.listdir(folder) if n == "steps.h5" or re.match(r"^steps-\d", n)]
    if not names or (sid == tid and not mapping):
        return
    table = read_steps_file(folder / "steps.h5", sid)
    recs = table.to_records()
    new = [
        {
            **r,
            "args": _map_value(r["args"], mapping, outputs),
            "result": _map_value(r["result"], mapping, outputs),
        }
        for r in recs
    ]
    if sid != tid or new != recs:
        write_steps_file(folder / "steps.h5", tid, StepTable.from_records(new))


# --- copying a run folder without following links -----------------------------------------
def _copy_file(src_dfd: int, name: str, dst_dfd: int, where: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{where} is not a regular file or folder; it cannot be merged")
        out = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            stat.S_IMODE(st.st_mode) | 0o200,
            dir_fd=dst_dfd,
        )
        try:
            _copy_bytes(fd, out, st.st_size)
            if sf.FSYNC:
                os.fsync(out)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _copy_bytes(src: int, dst: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, min(_COPY_CHUNK, size - done))
            if n == 0:
                break
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, done, os.SEEK_SET)
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            break
        os.write(dst, chunk)


_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_tree(
    sfd: int, src: Path, dst: Path, rel: str, top: bool, mapping: Mapping[int, int], notes: list
) -> None:
    """Copy the folder open as ``sfd`` (``src``, for messages; closed here) to the new
    folder ``dst`` (``rel``: ``dst`` relative to the project, as the run will be named):
    folders (opened by descriptor, ``O_NOFOLLOW``) and regular files copied, temp files
    of the store skipped, links recreated as links (never followed; refused where the
    store keeps its own files), anything else refused."""
    try:
        os.mkdir(dst)
        dfd = os.open(dst, _DIR_NOFOLLOW)
    except BaseException:
        os.close(sfd)
        raise
    try:
        for entry in sorted(os.scandir(sfd), key=lambda e: e.name):
            name = entry.name
            where = f"{src / name}"
            if sf.TMP_MARK in name:
                continue
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if (top and STORE_NAMES.match(name)) or rel.split("/")[2:3] == ["sets"]:
                    raise StoreError(
                        f"{where} is a symbolic link where hpcem keeps its own files; "
                        "links are never followed: remove it from SOURCE"
                    )
                text = os.readlink(name, dir_fd=sfd)
                new = _map_link(text, rel, mapping)
                os.symlink(new, name, dir_fd=dfd)
                if os.path.isabs(text):
                    notes.append(f"{rel}/{name} is a link to {text}, copied as a link")
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_NOFOLLOW, dir_fd=sfd)
                _copy_tree(sub, src / name, dst / name, f"{rel}/{name}", False, mapping, notes)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(sfd, name, dfd, where)
            else:
                raise StoreError(f"{where} is not a regular file or folder; it cannot be merged")
        if sf.FSYNC:
            os.fsync(dfd)
    finally:
        os.close(sfd)
        os.close(dfd)


# --- recovery of interrupted merges --------------------------------------------------------
def _journal(stage: Path, name: str) -> dict:
    try:
        with open(stage / name, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _ids(value: Any) -> list[int]:
    try:
        return [int(i) for i in value or ()]
    except (TypeError, ValueError):
        return []


def _committed_token(project_path: Path) -> str | None:
    """The staging folder name of the last merge committed into the index (None: none,
    or the index cannot be read)."""
    try:
        with sf.open_h5(Path(project_path) / "project.h5", "project index") as f:
            return sf._as_str(f.attrs[TOKEN_ATTR]) if TOKEN_ATTR in f.attrs else None
    except (OSError, StoreError):
        return None


def recover_locked(project_path: Path, indexed_ids: Iterable[int]) -> list[int]:
    """Undo the folder renames of interrupted merges whose index commit never happened:
    run folders renamed into ``runs/`` for ids the index does not list go back to their
    staging folder (so that no new run adopts them), and runs taken over get their
    TARGET folder back from ``old-NNNNNN`` (SOURCE's goes back to staging). A merge whose
    commit happened (the index names its staging folder) is left alone: what its staging
    folder holds is garbage. Call it holding the project's index lock; returns the ids
    whose folders moved."""
    root = Path(project_path) / MERGE_DIR
    indexed = {int(i) for i in indexed_ids}
    moved = []
    try:
        stages = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return moved
    if not stages:
        return moved
    committed = _committed_token(project_path)
    for stage in stages:
        if stage.name == committed:
            continue
        for tid in _ids(_journal(stage, JOURNAL).get("target_ids")):
            run = Path(project_path) / "runs" / f"{tid:06d}"
            back = stage / f"{tid:06d}"
            if tid in indexed or not os.path.lexists(run) or os.path.lexists(back):
                continue
            os.rename(run, back)
            moved.append(tid)
        commit = _journal(stage, COMMIT)  # absent: no folder of a taken-over run moved
        for tid in _ids(commit.get("replaced")):
            run = Path(project_path) / "runs" / f"{tid:06d}"
            staged, old = stage / f"{tid:06d}", stage / f"{OLD}{tid:06d}"
            if not os.path.lexists(old):
                continue  # TARGET's folder was never set aside
            if os.path.lexists(run):  # SOURCE's version was renamed in
                os.rename(run, staged)
            os.rename(old, run)
            moved.append(tid)
        for tid in _ids(commit.get("empty")):
            run = Path(project_path) / "runs" / f"{tid:06d}"
            staged = stage / f"{tid:06d}"
            if os.path.lexists(run) and not os.path.lexists(staged):
                os.rename(run, staged)
                moved.append(tid)
    return moved


def recover(project) -> list[str]:
    """Undo what interrupted merges left in ``project``: folders renamed into ``runs/``
    but not committed go back, and the staging folders are removed. Returns the
    staging folders removed. Holds the merge lock (LockedError while a merge runs)."""
    with _merge_lock(project):
        return _recover(project)


def _recover(project) -> list[str]:
    root = project.path / MERGE_DIR
    if not root.is_dir():
        return []
    with project._index_lock():
        _, cols = project._read_index(fresh=True)
        recover_locked(project.path, cols["id"].tolist())
    removed = []
    for stage in sorted(p for p in root.iterdir()):
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage.name)
    return removed


def pending(project_path: str | os.PathLike) -> bool:
    """Whether a merge staging folder exists in the project (one merge running, or one
    interrupted): one ``scandir`` of ``.hpcem/merge``, cheap enough for every commit to
    ask before calling :func:`recover_locked`."""
    try:
        with os.scandir(Path(project_path) / MERGE_DIR) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False


def _leftovers(project) -> bool:
    return pending(project.path)


def _merge_lock(project):
    return project._lock("merge", f"a merge into project {project.path}").acquire(0)


# --- the merge -------------------------------------------------------------------------
def _fingerprint(rec: record.RunRecord) -> str:
    return json.dumps(
        [record.to_json(rec), rec.state, rec.label, rec.error, rec.steps_done, rec.id],
        sort_keys=True,
        default=str,
    )


def _read_all(project, which: str) -> list[record.RunRecord]:
    runs, problems = project.read_runs()
    if problems:
        raise StoreError(
            f"cannot merge: {which} {project.path} has damaged run records "
            f"({len(problems)}; first: {problems[0]})"
        )
    return runs


def _check_related(target, source) -> str | None:
    """StoreError when the two are not copies of one project; a note when they are
    recognised by the fallback (no project ids)."""
    if os.path.realpath(target.path) == os.path.realpath(source.path) or (
        target.path.exists() and source.path.exists() and os.path.samefile(target.path, source.path)
    ):
        raise StoreError(
            f"cannot merge {source.path} into itself: TARGET and SOURCE are the same folder"
        )
    t_attrs, _ = target._read_index()
    s_attrs, _ = source._read_index()
    tid, sid = target.project_id, source.project_id
    if tid and sid:
        if tid != sid:
            raise StoreError(
                f"cannot merge: {source.path} and {target.path} are unrelated projects "
                f"(project ids {sid} and {tid}); only copies of one project can be merged"
            )
        return None
    if tid or sid:
        raise StoreError(
            f"cannot merge: only one of {target.path} and {source.path} has a project id, "
            "so they are not copies of one project"
        )
    if float(t_attrs.get("created", np.nan)) != float(s_attrs.get("created", np.nan)):
        raise StoreError(
            f"cannot merge: {source.path} and {target.path} are unrelated projects "
            "(created at different times; neither has a project id)"
        )
    return (
        "neither project has a project id (created before hpcem kept one): recognised as "
        "copies of one project by their identical creation time"
    )


def merge(target, source, *, dry_run: bool = False) -> MergeReport:
    """Merge the runs of project ``source`` into project ``target`` (paths or
    :class:`~hpcem.store.project.Project`); all-or-nothing.

    StoreError (nothing changed) for unrelated projects, the same folder, a SOURCE with
    runs still active, links where SOURCE keeps store files, damaged records, or when
    TARGET or SOURCE changed while the merge ran (run it again).
    """
    from hpcem.store.project import Project

    target = target if isinstance(target, Project) else Project.open(target)
    source = source if isinstance(source, Project) else Project.open(source)
    report = MergeReport(str(target.path), str(source.path), dry_run=dry_run)
    note = _check_related(target, source)
    if note:
        report.notes.append(note)
    source_runs = _read_all(source, "SOURCE")
    active = [f"{r.id} ({r.state})" for r in source_runs if r.state in record.ACTIVE_STATES]
    if active:
        raise StoreError(
            f"cannot merge: SOURCE {source.path} has runs still active: {', '.join(active)}; "
            "wait for them to end (or stop them) first"
        )
    if not dry_run and _leftovers(target):  # an interrupted merge: undo or finish it
        with _merge_lock(target):
            _recover(target)
    attrs, _ = target._read_index()
    plan = _plan(_read_all(target, "TARGET"), int(attrs["next_run_id"]), source_runs, report)
    if dry_run or not (plan.new or plan.takeover):
        return report
    with _merge_lock(target):
        _recover(target)
        stage = target.path / MERGE_DIR / f"{os.getpid()}-{os.urandom(4).hex()}"
        try:
            _stage(target, source, plan, stage)
            if [_fingerprint(r) for r in source.runs] != [_fingerprint(r) for r in source_runs]:
                raise StoreError(
                    f"SOURCE {source.path} changed while the merge ran; nothing was merged: "
                    "run it again"
                )
            _commit(target, source_runs, plan, stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return report


def _stage(target, source, plan: _Plan, stage: Path) -> None:
    """Copy and rewrite the new runs' folders under ``stage`` (inside TARGET)."""
    from hpcem.store.safeopen import open_dir

    os.close(open_dir(stage, 3, create=True))  # .hpcem/merge/<token>: no link followed
    with open(stage / JOURNAL, "x", encoding="utf-8") as f:
        journal = {
            "source": str(source.path),
            "target_ids": sorted(plan.new),
            "taken_over": sorted(plan.takeover),
        }
        json.dump(journal, f)
        f.flush()
        if sf.FSYNC:
            os.fsync(f.fileno())
    mapping = {k: v for k, v in plan.id_map.items() if k != v}
    outputs = {r.id: set(r.output_types) for r in source.runs}
    for tid, sid in sorted(plan.copies.items()):
        src = source.path / "runs" / f"{sid:06d}"
        try:  # runs/ and runs/NNNNNN must be real folders: no link is followed
            sfd = open_dir(src, 2)
        except FileNotFoundError:
            continue  # a run never launched has no folder
        except StoreError as exc:
            raise StoreError(f"{exc} (in SOURCE: it is not merged)") from None
        dst = stage / f"{tid:06d}"
        _copy_tree(sfd, src, dst, f"runs/{tid:06d}", True, mapping, plan.report.notes)
        _rewrite_run(stage / f"{tid:06d}", sid, tid, mapping, outputs)
    if sf.FSYNC:
        sf.fsync_path(stage, directory=True)


def _commit(target, source_runs, plan: _Plan, stage: Path) -> None:
    """Under TARGET's index lock: check nothing changed, set the folders of the runs
    taken over aside and rename the staged folders into ``runs/``, commit the index once
    (naming this merge in it); a failure before the commit puts everything back."""
    from hpcem.store.index import RUN_COLUMNS, SUMMARY_COLUMNS
    from hpcem.store.project import _record_row

    with target._index_lock():
        attrs, cols = target._read_index(fresh=True)
        fresh = MergeReport(plan.report.target, plan.report.source)
        again = _plan(
            [target._record(cols, i) for i in range(len(cols["id"]))],
            int(attrs["next_run_id"]),
            source_runs,
            fresh,
        )
        if again.key() != plan.key():
            raise StoreError(
                f"TARGET {target.path} changed while the merge ran; nothing was merged: "
                "run it again"
            )
        runs = target.path / "runs"
        taken = [t for t in plan.new if os.path.lexists(runs / f"{t:06d}")]
        if taken:
            raise StoreError(
                f"TARGET has folder(s) {', '.join(f'runs/{t:06d}' for t in taken)} that no "
                "run owns; nothing was merged: move them away and run it again"
            )
        replaced = [t for t in sorted(plan.takeover) if os.path.lexists(runs / f"{t:06d}")]
        _write_json(
            stage / COMMIT,
            {"replaced": replaced, "empty": sorted(set(plan.takeover) - set(replaced))},
        )
        done: list[tuple[Path, Path]] = []  # renames made, in order
        try:
            for tid in sorted(plan.takeover):
                name = f"{tid:06d}"
                if tid in replaced:
                    _rename(runs / name, stage / f"{OLD}{name}")
                    done.append((runs / name, stage / f"{OLD}{name}"))
                if os.path.isdir(stage / name):
                    _rename(stage / name, runs / name)
                    done.append((stage / name, runs / name))
            for tid in sorted(plan.new):
                if os.path.isdir(stage / f"{tid:06d}"):
                    _rename(stage / f"{tid:06d}", runs / f"{tid:06d}")
                    done.append((stage / f"{tid:06d}", runs / f"{tid:06d}"))
            if sf.FSYNC:
                sf.fsync_path(runs, directory=True)
                sf.fsync_path(stage, directory=True)
            for tid, rec in plan.takeover.items():
                i = int(np.flatnonzero(cols["id"] == tid)[0])
                row = _record_row(dataclasses.replace(rec, project_path=target.path))
                for name, value in row.items():
                    cols[name][i] = value
            rows = [
                _record_row(dataclasses.replace(plan.new[t], project_path=target.path))
                for t in sorted(plan.new)
            ]
            for name, _ in (*RUN_COLUMNS, *SUMMARY_COLUMNS):
                cols[name] = np.append(
                    cols[name], np.array([r[name] for r in rows], dtype=cols[name].dtype)
                )
            if plan.new:
                attrs["next_run_id"] = max(int(attrs["next_run_id"]), max(plan.new) + 1)
            attrs[TOKEN_ATTR] = stage.name  # how recovery tells a committed merge
            target._write_index(attrs, cols)
        except BaseException:
            if _committed_token(target.path) != stage.name:
                for a, b in reversed(done):
                    with contextlib.suppress(OSError):
                        os.rename(b, a)
            raise


def _write_json(path: Path, value: Any) -> None:
    """A small JSON file written whole (temp file, fsync, rename) before it is used."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
        f.flush()
        if sf.FSYNC:
            os.fsync(f.fileno())
    os.rename(tmp, path)
    if sf.FSYNC:
        sf.fsync_path(path.parent, directory=True)
