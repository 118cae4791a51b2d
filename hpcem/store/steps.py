"""The step table of a run: a small columnar table, one row per step, kept as a log.

It is what ``Project.read_steps`` and ``Project.write_steps`` exchange. Records (dicts)
use decoded values: ``deps`` (list of step ids), ``args`` (dict), ``result`` (any JSON
value); on disk they are JSON strings in the ``deps_json``, ``args_json`` and
``result_json`` columns.

On disk (``runs/<id:06d>/``) the table is a log, so that a commit costs O(steps that
changed), not O(steps):

* ``steps.h5`` — the base: whole records, and ``log_seq``, the last delta folded into it;
* ``steps-NNNNNN.h5`` — a delta: the records one commit changed (same columns);
* ``steps-AAAAAA-BBBBBB.h5`` — deltas ``AAAAAA..BBBBBB`` merged into one.

The table is the base with the deltas after ``log_seq`` applied in order; per step id the
latest record wins, new ids come after the old ones. Every file is written whole and
renamed into place, and a merged file is in place before the files it replaces are
deleted (readers ignore a delta whose range another file covers), so a process killed at
any moment leaves each commit either fully in the table or not at all. Compaction is
size-tiered (:func:`hpcem.store.manifest.tiered_merge_start`) and folds the deltas into
a new base once they carry as many records as it has rows: amortised O(log steps)
rewrites per changed record. See docs/store.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcem.errors import CorruptStoreError, StorageFullError, StoreError
from hpcem.store import files as sf
from hpcem.store.manifest import tiered_merge_start
from hpcem.store.safeopen import open_dir

STEPS_TYPE = "hpcem.StepTable"
DELTA_TYPE = "hpcem.StepDelta"
STEPS_FILE = "steps.h5"
#: A delta of the step log: ``steps-NNNNNN.h5`` (one commit) or ``steps-AAAAAA-BBBBBB.h5``.
DELTA_RE = re.compile(r"^steps-(\d{6,})(?:-(\d{6,}))?\.h5$")
#: Names of every file of the step log (for temp-file cleanup: ``files.clean_tmp_files``).
STEP_LOG_PATTERN = r"steps(?:-\d{6,}){0,2}\.h5"
#: Deltas of one size class that are merged into one.
DELTA_FANOUT = 4
#: The deltas are folded into the base once they carry this many records or as many as
#: the base has rows, whichever is more.
BASE_MIN_ROWS = 64
#: Seconds a reader keeps starting again when compactions change the log under it (a
#: busy node makes one read slow while the writer goes on committing).
READ_PATIENCE_S = 60.0
NO_EXIT_CODE = -(2**31)  # exit_code stored for "no exit code yet" (None in records)
RUN_LEVELS = 2  # folders of the project above steps.h5: runs/<id>/

# (column, dtype, default); dtype "str" = vlen UTF-8; *_json columns hold JSON text.
COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("id", "str", ""),  # step hash
    ("name", "str", ""),
    ("func", "str", ""),  # "module:function"
    ("state", "str", "waiting"),
    ("deps_json", "str", "[]"),
    ("args_json", "str", "{}"),
    ("started", "float64", math.nan),  # unix s
    ("ended", "float64", math.nan),  # unix s
    ("host", "str", ""),
    ("exit_code", "int32", NO_EXIT_CODE),
    ("error", "str", ""),
    ("job_id", "str", ""),
    ("attempts", "int32", 0),
    ("result_json", "str", "null"),
)
COLUMN_NAMES = tuple(c for c, _, _ in COLUMNS)
_DECODED = {"deps": "deps_json", "args": "args_json", "result": "result_json"}
_SHORT = {v: k for k, v in _DECODED.items()}
#: Keys of a step record (what to_records returns and from_records takes).
RECORD_KEYS = tuple(_SHORT.get(c, c) for c in COLUMN_NAMES)


class StepTable:
    """Columns of a run's steps: ``table["state"]`` is a numpy array (object for text)."""

    def __init__(self, columns: Mapping[str, np.ndarray] | None = None) -> None:
        cols = dict(columns or {})
        n = len(cols["id"]) if "id" in cols else 0
        self.columns: dict[str, np.ndarray] = {}
        for name, dtype, default in COLUMNS:
            if name in cols:
                arr = np.asarray(cols[name], dtype=object if dtype == "str" else dtype)
            elif dtype == "str":
                arr = np.full(n, default, dtype=object)
            else:
                arr = np.full(n, default, dtype=dtype)
            if len(arr) != n:
                raise StoreError(f"step table: column {name!r} has {len(arr)} rows, expected {n}")
            self.columns[name] = arr
        unknown = set(cols) - set(COLUMN_NAMES)
        if unknown:
            raise StoreError(f"step table: unknown column(s) {sorted(unknown)}")

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> StepTable:
        """Build from dicts with keys of :data:`RECORD_KEYS` (``deps``/``args``/``result``
        decoded; ``*_json`` strings are accepted too). Missing keys get defaults."""
        records = list(records)
        cols: dict[str, list] = {name: [] for name in COLUMN_NAMES}
        allowed = set(COLUMN_NAMES) | set(_DECODED)
        for i, rec in enumerate(records):
            unknown = set(rec) - allowed
            if unknown:
                raise StoreError(
                    f"step record {i}: unknown key(s) {sorted(unknown)}; "
                    f"known: {', '.join(RECORD_KEYS)}"
                )
            for name, dtype, default in COLUMNS:
                short = _SHORT.get(name)
                if short is not None and short in rec:
                    value = json.dumps(rec[short], sort_keys=True)
                elif name in rec:
                    value = rec[name]
                else:
                    value = default
                if name == "exit_code" and value is None:
                    value = NO_EXIT_CODE
                if name in ("started", "ended") and value is None:
                    value = math.nan
                if dtype == "str" and value is None:
                    value = ""
                cols[name].append(value)
        return cls(cols)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per step, with ``deps``, ``args`` and ``result`` decoded from JSON and
        ``exit_code`` None when unset."""
        lists = {k: v.tolist() for k, v in self.columns.items()}
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {}
            for name in COLUMN_NAMES:
                v = lists[name][i]
                if name in _DECODED.values():
                    rec[_SHORT[name]] = json.loads(v)
                elif name == "exit_code":
                    rec[name] = None if v == NO_EXIT_CODE else v
                else:
                    rec[name] = v
            out.append(rec)
        return out

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_records())

    def __eq__(self, other) -> bool:
        if not isinstance(other, StepTable):
            return NotImplemented
        if len(self) != len(other):
            return False
        for name, dtype, _ in COLUMNS:
            a, b = self.columns[name], other.columns[name]
            if dtype == "str":
                if a.tolist() != b.tolist():
                    return False
            elif not np.array_equal(a, b, equal_nan=dtype.startswith("float")):
                return False
        return True

    __hash__ = None

    def __repr__(self) -> str:
        return f"StepTable({len(self)} steps)"


# --- the step log on disk -------------------------------------------------------------
@dataclass(frozen=True)
class _Delta:
    """One delta file of the step log: commits ``first..last``."""

    name: str
    first: int
    last: int
    inode: int = 0

    def covers(self, other: _Delta) -> bool:
        return self.first <= other.first and other.last <= self.last and self != other


def _delta_name(first: int, last: int) -> str:
    return f"steps-{first:06d}.h5" if first == last else f"steps-{first:06d}-{last:06d}.h5"


def _scan(folder: Path, dfd: int | None = None) -> tuple[list[_Delta], list[str]]:
    """The delta files and the step-log temp files in ``folder`` (names only)."""
    deltas, tmps = [], []
    tmp_re = re.compile(f"^(?:{STEP_LOG_PATTERN}){re.escape(sf.TMP_MARK)}\\d+-[0-9a-f]+$")
    with os.scandir(folder if dfd is None else dfd) as it:
        for e in it:
            m = DELTA_RE.match(e.name)
            if m:
                first = int(m.group(1))
                try:
                    inode = e.stat(follow_symlinks=False).st_ino
                except FileNotFoundError:
                    continue  # removed by a compaction since the scan listed it
                deltas.append(_Delta(e.name, first, int(m.group(2) or first), inode))
            elif tmp_re.match(e.name):
                tmps.append(e.name)
    return deltas, tmps


def _chain(deltas: list[_Delta], base_seq: int) -> tuple[list[_Delta], list[_Delta]] | None:
    """The deltas that make the table after ``base_seq``, oldest first, and the stale
    ones (folded into the base, or covered by a merged delta); None when they do not
    follow one another without a gap."""
    live = [d for d in deltas if d.last > base_seq]
    live = [d for d in live if not any(o.covers(d) for o in live)]
    live.sort(key=lambda d: d.first)
    expected = base_seq + 1
    for d in live:
        if d.first != expected:
            return None
        expected = d.last + 1
    keep = set(live)
    return live, [d for d in deltas if d not in keep]


def _read_group(f, path: Path, what: str) -> StepTable:
    try:
        g = f["steps"]
        cols = {}
        for name, dtype, _ in COLUMNS:
            ds = g[name]
            cols[name] = sf.read_str_array(ds) if dtype == "str" else ds[()]
    except (KeyError, OSError) as exc:
        raise CorruptStoreError(
            f"{path}: {what} is incomplete or damaged ({exc}); it was not modified"
        ) from exc
    return StepTable(cols)


def _read_base(path: Path, columns: bool = True) -> tuple[StepTable | None, int, int]:
    """``(table, log_seq, rows)`` of ``steps.h5`` (``(empty, 0, 0)`` when absent); the
    table is None with ``columns=False``."""
    try:
        f = sf.open_h5(path, "step table")
    except FileNotFoundError:
        return StepTable(), 0, 0
    with f:
        sf.check_header(f, STEPS_TYPE, "step table")
        seq = int(f.attrs.get("log_seq", 0))
        if columns:
            table = _read_group(f, path, "step table")
            return table, seq, len(table)
        try:
            rows = int(f.attrs["n_rows"]) if "n_rows" in f.attrs else len(f["steps/id"])
        except (KeyError, OSError) as exc:
            raise CorruptStoreError(
                f"{path}: step table is incomplete or damaged ({exc}); it was not modified"
            ) from exc
        return None, seq, rows


def _read_delta(path: Path, d: _Delta) -> tuple[StepTable, int]:
    """The records of one delta and its weight (FileNotFoundError when a compaction
    removed it)."""
    with sf.open_h5(path, "step log delta") as f:
        sf.check_header(f, DELTA_TYPE, "step log delta")
        try:
            first, last = int(f.attrs["first_seq"]), int(f.attrs["last_seq"])
            weight = int(f.attrs["weight"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(
                f"{path}: step log delta lacks its first_seq, last_seq or weight attribute"
            ) from exc
        if (first, last) != (d.first, d.last):
            raise CorruptStoreError(
                f"{path}: step log delta holds commits {first}..{last}, "
                f"its name says {d.first}..{d.last}"
            )
        return _read_group(f, path, "step log delta"), weight


def merge_tables(tables: Iterable[StepTable]) -> StepTable:
    """One table from several, oldest first: per step id the latest record wins, in the
    order the ids first appear."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return StepTable()
    if len(tables) == 1:
        cols = tables[0].columns
    else:
        cols = {name: np.concatenate([t.columns[name] for t in tables]) for name in COLUMN_NAMES}
    ids = cols["id"].tolist()
    last = {sid: i for i, sid in enumerate(ids)}  # first position, latest index
    if len(last) != len(ids):
        idx = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        cols = {name: col[idx] for name, col in cols.items()}
    return StepTable(cols)


def read_steps_file(path: Path, run_id: int) -> StepTable:
    """The run's step table: ``steps.h5`` (``path``) merged with the step log's deltas
    next to it; an empty table if there is neither.

    Takes no lock. A compaction that removes deltas while they are read makes it start
    again (for up to :data:`READ_PATIENCE_S` seconds), so the table is always one committed
    state.
    """
    path = Path(path)
    previous = None
    deadline = time.monotonic() + READ_PATIENCE_S
    attempt = 0
    while True:
        try:
            deltas, _ = _scan(path.parent)
        except FileNotFoundError:
            deltas = []
        base, base_seq, _ = _read_base(path)
        if not deltas:
            return base
        found = _chain(deltas, base_seq)
        if found is None:
            # a gap: a compaction ran during the folder scan, or a delta is gone
            seen = (sorted(deltas, key=lambda d: d.name), base_seq)
            if seen == previous:
                names = ", ".join(d.name for d in seen[0])
                raise CorruptStoreError(
                    f"{path}: the step log has a gap after commit {base_seq} (deltas: "
                    f"{names}); a delta file was removed by hand or lost"
                )
            previous = seen
        else:
            try:
                tables = [_read_delta(path.parent / d.name, d)[0] for d in found[0]]
            except FileNotFoundError:
                pass  # merged or folded into the base while we read: start again
            else:
                return merge_tables([base, *tables])
        attempt += 1
        if time.monotonic() > deadline:
            raise StoreError(
                f"{path}: the step log changed under every one of {attempt} reads in "
                f"{READ_PATIENCE_S:.0f} s; is something compacting it in a loop?"
            )
        time.sleep(min(0.002 * attempt, 0.05))


def _size_hint(table: StepTable) -> int:
    """Bytes ``table`` takes on disk, roughly (strings: 32 bytes + mean length)."""
    n = len(table)
    total = 4096
    for name, dtype, _ in COLUMNS:
        col = table.columns[name]
        if dtype == "str":
            sample = col[:200].tolist()
            mean = sum(len(v.encode()) for v in sample) / max(1, len(sample))
            total += int(n * (32 + mean))
        else:
            total += col.nbytes
    return total


def _write_table(path: Path, run_id: int, table: StepTable, attrs: Mapping[str, Any]) -> None:
    with sf.atomic_h5(path, size_hint=_size_hint(table), levels=RUN_LEVELS) as f:
        f.attrs["schema_version"] = sf.SCHEMA_VERSION
        f.attrs["run_id"] = run_id
        f.attrs["n_rows"] = len(table)
        for k, v in attrs.items():
            f.attrs[k] = v
        g = f.create_group("steps")
        for name, dtype, _ in COLUMNS:
            sf.write_column(g, name, table.columns[name])


class _Log:
    """The step log of one run folder as its writer sees it (under the steps lock)."""

    def __init__(self, path: Path, dfd: int, *, replacing: bool = False) -> None:
        self.path = path
        self.dfd = dfd
        deltas, tmps = _scan(path.parent, dfd)
        _, self.base_seq, self.base_rows = _read_base(path, columns=False)
        found = _chain(deltas, self.base_seq)
        if found is None and replacing:
            # a damaged log that is about to be replaced whole: every delta goes
            found = sorted(deltas, key=lambda d: d.last), []
        if found is None:
            names = ", ".join(sorted(d.name for d in deltas))
            raise CorruptStoreError(
                f"{path}: the step log has a gap after commit "
                f"{self.base_seq} (deltas: {names}); a delta file was "
                "removed by hand or lost; write the whole table again"
            )
        self.chain, stale = found
        self._remove([*tmps, *(d.name for d in stale)])
        folder = os.path.abspath(path.parent)
        self.known = _KNOWN.pop(folder, {})
        _KNOWN[folder] = self.known  # most recently used last
        while len(_KNOWN) > _KNOWN_FOLDERS:
            del _KNOWN[next(iter(_KNOWN))]

    @property
    def last_seq(self) -> int:
        return self.chain[-1].last if self.chain else self.base_seq

    def _remove(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.dfd)

    def _known(self, d: _Delta) -> tuple[int, StepTable]:
        """``(weight, records)`` of delta ``d``: read once, then kept in memory."""
        key = (d.name, d.inode)
        hit = self.known.get(key)
        if hit is None:
            table, weight = _read_delta(self.path.parent / d.name, d)
            hit = self.known[key] = (weight, table)
        return hit

    def weight(self, d: _Delta) -> int:
        """Records committed into ``d`` (before merging repeats of one id)."""
        return self._known(d)[0]

    def table(self, d: _Delta) -> StepTable:
        return self._known(d)[1]

    def forget_stale(self) -> None:
        """Keep in memory only the deltas of the current chain."""
        live = {(d.name, d.inode) for d in self.chain}
        for key in [k for k in self.known if k not in live]:
            del self.known[key]

    def write_delta(
        self, run_id: int, table: StepTable, first: int, last: int, weight: int
    ) -> _Delta:
        name = _delta_name(first, last)
        _write_table(
            self.path.parent / name,
            run_id,
            table,
            {"hpcem_type": DELTA_TYPE, "first_seq": first, "last_seq": last, "weight": weight},
        )
        d = _Delta(name, first, last, os.stat(name, dir_fd=self.dfd, follow_symlinks=False).st_ino)
        self.known[(name, d.inode)] = (weight, table)
        return d

    def write_base(self, run_id: int, table: StepTable, log_seq: int) -> None:
        """Replace the base, then delete every delta it holds."""
        _write_table(self.path, run_id, table, {"hpcem_type": STEPS_TYPE, "log_seq": log_seq})
        self._remove(d.name for d in self.chain if d.last <= log_seq)
        self.chain = [d for d in self.chain if d.last > log_seq]
        self.base_seq, self.base_rows = log_seq, len(table)

    def compact(self, run_id: int) -> None:
        """Fold the deltas into the base when they are as big as it; else merge the
        newest deltas by size class."""
        weights = [self.weight(d) for d in self.chain]
        if not weights:
            return
        if sum(weights) >= max(self.base_rows, BASE_MIN_ROWS):
            base, _, _ = _read_base(self.path)
            parts = [self.table(d) for d in self.chain]
            self.write_base(run_id, merge_tables([base, *parts]), self.chain[-1].last)
            return
        start = tiered_merge_start(weights, DELTA_FANOUT)
        if start is None:
            return
        tail = self.chain[start:]
        merged = merge_tables(self.table(d) for d in tail)
        d = self.write_delta(run_id, merged, tail[0].first, tail[-1].last, sum(weights[start:]))
        self._remove(t.name for t in tail)
        self.chain = [*self.chain[:start], d]


#: What this process wrote or read of each run's deltas, by folder then (name, inode):
#: ``(weight, records)``. Delta files never change once named and a name is never used
#: twice in a folder (sequence numbers only grow), so a compaction by the process that
#: wrote the deltas (the controller) reads none of them back. Holds the current chain
#: only: at most the base's rows.
_KNOWN: dict[str, dict[tuple[str, int], tuple[int, StepTable]]] = {}
_KNOWN_FOLDERS = 16


def _as_table(records: StepTable | Iterable[Mapping[str, Any]]) -> StepTable:
    """A table of our own (a caller's StepTable is copied: the writer keeps deltas)."""
    if isinstance(records, StepTable):
        return StepTable({k: v.copy() for k, v in records.columns.items()})
    return StepTable.from_records(records)


def append_steps(path: Path, run_id: int, records: StepTable | Iterable[Mapping[str, Any]]) -> None:
    """Commit the step records one controller commit changed: one new delta next to
    ``steps.h5`` (``path``), in O(len(records)); compacts the log when due.

    Call it holding the run's steps lock. A record replaces the stored one with the same
    ``id`` (whole records, not fields); new ids are added at the end. Removes temp files
    and stale deltas left by a crashed writer. StorageFullError when the delta cannot be
    written (nothing committed); a full disk during the compaction that follows only
    postpones it (the commit stands).
    """
    table = _as_table(records)
    if not len(table):
        return
    path = Path(path)
    dfd = open_dir(path.parent, RUN_LEVELS)
    try:
        log = _Log(path, dfd)
        seq = log.last_seq + 1
        log.chain.append(log.write_delta(run_id, table, seq, seq, len(table)))
        try:
            log.compact(run_id)
        except StorageFullError:
            pass  # the commit stands; the next one compacts
        finally:
            log.forget_stale()
    finally:
        os.close(dfd)


def write_steps_file(
    path: Path, run_id: int, table: StepTable | Iterable[Mapping[str, Any]]
) -> None:
    """Atomically replace the whole step table (``steps.h5`` at ``path``, then the step
    log's deltas are deleted): a restart. Call it holding the run's steps lock
    (``runs/<id>/`` must be real folders; StorageFullError on a full or read-only disk,
    the old table intact)."""
    path = Path(path)
    dfd = open_dir(path.parent, RUN_LEVELS)
    try:
        log = _Log(path, dfd, replacing=True)
        log.write_base(run_id, _as_table(table), log.last_seq)
        log.forget_stale()
    finally:
        os.close(dfd)


def compact_steps(path: Path, run_id: int) -> None:
    """Fold the whole step log into ``steps.h5`` now (e.g. when a run ends); under the
    run's steps lock."""
    path = Path(path)
    dfd = open_dir(path.parent, RUN_LEVELS)
    try:
        log = _Log(path, dfd)
        if log.chain:
            base, _, _ = _read_base(path)
            parts = [log.table(d) for d in log.chain]
            log.write_base(run_id, merge_tables([base, *parts]), log.last_seq)
            log.forget_stale()
    finally:
        os.close(dfd)
