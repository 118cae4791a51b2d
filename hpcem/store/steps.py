"""The step table of a run: a small columnar table, one row per step.

It is what ``Project.read_steps`` and ``Project.write_steps`` exchange and what
``runs/<id:06d>/steps.h5`` holds. Records (dicts) use decoded values: ``deps`` (list of
step ids), ``args`` (dict), ``result`` (any JSON value); on disk they are JSON strings
in the ``deps_json``, ``args_json`` and ``result_json`` columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcem.errors import CorruptStoreError, StoreError
from hpcem.store import files as sf

STEPS_TYPE = "hpcem.StepTable"
NO_EXIT_CODE = -(2**31)  # exit_code stored for "no exit code yet" (None in records)
RUN_LEVELS = 2  # folders of the project above steps.h5: runs/<id>/

# (column, dtype, default); dtype "str" = vlen UTF-8; *_json columns hold JSON text.
COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("id", "str", ""),           # step hash
    ("name", "str", ""),
    ("func", "str", ""),         # "module:function"
    ("state", "str", "waiting"),
    ("deps_json", "str", "[]"),
    ("args_json", "str", "{}"),
    ("started", "float64", math.nan),   # unix s
    ("ended", "float64", math.nan),     # unix s
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
                raise StoreError(f"step table: column {name!r} has {len(arr)} rows, "
                                 f"expected {n}")
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
                raise StoreError(f"step record {i}: unknown key(s) {sorted(unknown)}; "
                                 f"known: {', '.join(RECORD_KEYS)}")
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


def read_steps_file(path: Path, run_id: int) -> StepTable:
    """Read ``steps.h5``; an empty table if it does not exist yet."""
    try:
        f = sf.open_h5(path, "step table")
    except FileNotFoundError:
        return StepTable()
    with f:
        sf.check_header(f, STEPS_TYPE, "step table")
        try:
            g = f["steps"]
            cols = {}
            for name, dtype, _ in COLUMNS:
                ds = g[name]
                cols[name] = sf.read_str_array(ds) if dtype == "str" else ds[()]
        except (KeyError, OSError) as exc:
            raise CorruptStoreError(f"{path}: step table is incomplete or damaged ({exc}); "
                                    "it was not modified") from exc
    return StepTable(cols)


def write_steps_file(path: Path, run_id: int, table: StepTable) -> None:
    """Atomically replace ``steps.h5`` with ``table`` (``runs/<id>/`` must be real
    folders; StorageFullError on a full or read-only disk, the old file intact)."""
    with sf.atomic_h5(path, levels=RUN_LEVELS) as f:
        f.attrs["hpcem_type"] = STEPS_TYPE
        f.attrs["schema_version"] = sf.SCHEMA_VERSION
        f.attrs["run_id"] = run_id
        g = f.create_group("steps")
        for name, dtype, _ in COLUMNS:
            sf.write_column(g, name, table.columns[name])
