"""The project folder and its index (``project.h5``): runs, their state and records.

The index is small and columnar (one dataset per run field). Every change is one
commit under the project lock: read the index, change it, write a new file, rename it
over the old one. Readers take no lock and always see a whole committed index.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcem import __version__
from hpcem.errors import CorruptStoreError, NotAProjectError, RunError, StoreError
from hpcem.store import files as sf
from hpcem.store.locks import FileLock
from hpcem.store.manifest import MANIFEST, new_manifest, read_manifest, write_manifest
from hpcem.store.sets import Set
from hpcem.store.steps import StepTable, read_steps_file, write_steps_file
from hpcem.store.writer import SetWriter

INDEX = "project.h5"
PROJECT_TYPE = "hpcem.Project"
RUN_STATES = ("saved", "launched", "running", "finished", "failed", "aborted")
LOCK_TIMEOUT_S = 10.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Columns of the /runs group: (name, dtype). "str" = vlen UTF-8. record_json holds
# {"params", "inputs", "outputs", "execution"} of each run as JSON text.
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "int64"), ("protocol", "str"), ("label", "str"), ("state", "str"),
    ("created", "float64"), ("started", "float64"), ("ended", "float64"),
    ("heartbeat", "float64"), ("pid", "int64"), ("host", "str"),
    ("steps_done", "int64"), ("steps_total", "int64"), ("error", "str"),
    ("record_json", "str"),
)
_RECORD_KEYS = ("params", "inputs", "outputs", "execution")  # names inside record_json
_FIELD_OF_KEY = {"outputs": "output_types"}  # record_json key -> RunRecord field


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One run as stored in the project index. Times are unix seconds (nan if unset);
    ``inputs`` maps an input name to refs ``"run_id:set_name"``; ``output_types`` maps an
    output set name to its set type and ``outputs[name]`` opens that set."""

    id: int
    protocol: str
    label: str = ""
    state: str = "saved"
    params: dict = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    output_types: dict[str, str] = field(default_factory=dict)
    created: float = math.nan
    started: float = math.nan
    ended: float = math.nan
    heartbeat: float = math.nan
    pid: int = 0
    host: str = ""
    steps_done: int = 0
    steps_total: int = 0
    error: str = ""
    execution: dict = field(default_factory=dict)
    project_path: Path | None = field(default=None, compare=False, repr=False)

    def __eq__(self, other: object) -> bool:
        # nan == nan here: unset times compare equal (project_path is not compared)
        if not isinstance(other, RunRecord):
            return NotImplemented
        return all(_same(getattr(self, f), getattr(other, f)) for f in _RUN_FIELDS)

    __hash__ = None

    @property
    def outputs(self) -> OutputSets:
        """Lazy mapping output name -> :class:`Set` (opened on access)."""
        if self.project_path is None:
            raise StoreError(f"run {self.id}: record is not attached to a project")
        return OutputSets(Project(self.project_path), self)

    def open_output(self, name: str) -> Set:
        """Open one output set of this run."""
        return self.outputs[name]


class OutputSets(Mapping):
    """``run.outputs["particles"]`` opens that set (fresh snapshot each access)."""

    def __init__(self, project: Project, run: RunRecord) -> None:
        self._project = project
        self._run = run

    def __getitem__(self, name: str) -> Set:
        if name not in self._run.output_types:
            raise KeyError(f"run {self._run.id} has no output {name!r}; outputs: "
                           f"{', '.join(self._run.output_types) or 'none'}")
        return self._project.open_set(self._run.id, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._run.output_types)

    def __len__(self) -> int:
        return len(self._run.output_types)

    @property
    def types(self) -> dict[str, str]:
        """Output name -> stable set type name, without opening anything."""
        return dict(self._run.output_types)


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name != "project_path")
_UPDATABLE = frozenset(_RUN_FIELDS) - {"id"}


class Project:
    """A project folder. ``Project(path)`` does no I/O: use :meth:`create` or :meth:`open`."""

    def __init__(self, path: str | os.PathLike, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(os.path.abspath(path))
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    # --- paths and locks ---
    @property
    def index_path(self) -> Path:
        return self.path / INDEX

    def _lock(self, name: str, what: str) -> FileLock:
        return FileLock(self.path / ".hpcem" / "locks" / f"{name}.lock", what)

    def _index_lock(self) -> FileLock:
        return self._lock("project", f"project {self.path}").acquire(self.lock_timeout_s)

    def run_dir(self, run_id: int) -> Path:
        """``<project>/runs/<run_id:06d>/`` (created on demand)."""
        d = self.path / "runs" / f"{int(run_id):06d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _set_dir(self, run_id: int, name: str) -> Path:
        return self.path / "runs" / f"{int(run_id):06d}" / "sets" / name

    # --- create / open ---
    @classmethod
    def create(cls, path: str | os.PathLike, **kwargs: Any) -> Project:
        """Make a new project in a new or empty folder; StoreError if one exists."""
        p = cls(path, **kwargs)
        if p.path.exists() and not p.path.is_dir():
            raise StoreError(f"{p.path} exists and is not a folder")
        p.path.mkdir(parents=True, exist_ok=True)
        with p._index_lock():
            if p.index_path.exists():
                raise StoreError(f"{p.path} is already an hpcem project ({INDEX} exists)")
            others = [e for e in os.listdir(p.path) if e != ".hpcem"]
            if others:
                raise StoreError(f"{p.path} is not empty ({len(others)} entries, e.g. "
                                 f"{min(others)!r}); create a project in a new folder")
            (p.path / "runs").mkdir(exist_ok=True)
            now = time.time()
            attrs = {"hpcem_type": PROJECT_TYPE, "schema_version": sf.SCHEMA_VERSION,
                     "created": now, "hpcem_version": __version__, "next_run_id": 1}
            p._write_index(attrs, _empty_run_columns())
        return p

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> Project:
        """Open an existing project (read-only checks; nothing is modified).

        NotAProjectError, CorruptStoreError or SchemaVersionError when it cannot be.
        """
        p = cls(path, **kwargs)
        if not p.path.is_dir():
            raise NotAProjectError(f"{p.path} is not an hpcem project (no such folder)")
        if not p.index_path.is_file():
            raise NotAProjectError(f"{p.path} is not an hpcem project (no {INDEX})")
        p._read_index()
        return p

    # --- the index ---
    def _read_index(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        path = self.index_path
        try:
            f = sf.open_h5(path, "project index")
        except FileNotFoundError:
            raise NotAProjectError(f"{self.path} is not an hpcem project (no {INDEX})") from None
        with f:
            sf.check_header(f, PROJECT_TYPE, "project index")
            try:
                attrs = {k: f.attrs[k] for k in f.attrs}
                attrs["next_run_id"] = int(attrs["next_run_id"])
                g = f["runs"]
                cols = {}
                for name, dtype in RUN_COLUMNS:
                    ds = g[name]
                    cols[name] = sf.read_str_array(ds) if dtype == "str" else ds[()]
            except (KeyError, OSError, ValueError) as exc:
                raise CorruptStoreError(f"{path}: project index is incomplete or damaged "
                                        f"({exc}); it was not modified") from exc
        return attrs, cols

    def _write_index(self, attrs: Mapping[str, Any], cols: Mapping[str, np.ndarray]) -> None:
        sf.clean_tmp_files(self.path, re.escape(INDEX))
        with sf.atomic_h5(self.index_path) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["schema_version"] = sf.SCHEMA_VERSION
            g = f.create_group("runs")
            for name, dtype in RUN_COLUMNS:
                sf.write_column(g, name, np.asarray(cols[name],
                                                    dtype=object if dtype == "str" else dtype))

    def _record(self, cols: Mapping[str, Any], i: int) -> RunRecord:
        rec = json.loads(cols["record_json"][i] or "{}")
        values = {name: _py(cols[name][i]) for name, _ in RUN_COLUMNS if name != "record_json"}
        return RunRecord(**values, **{_FIELD_OF_KEY.get(k, k): rec.get(k, {}) for k in _RECORD_KEYS},
                         project_path=self.path)

    @property
    def default_site(self) -> str | None:
        """The site runs of this project use when none is named (None: not set)."""
        attrs, _ = self._read_index()
        return sf._as_str(attrs["default_site"]) if "default_site" in attrs else None

    def set_default_site(self, name: str) -> None:
        """Store the project's default site (one atomic commit)."""
        with self._index_lock():
            attrs, cols = self._read_index()
            attrs["default_site"] = str(name)
            self._write_index(attrs, cols)

    @property
    def runs(self) -> list[RunRecord]:
        """All runs, read fresh from the index (no lock; never blocks a writer)."""
        _, cols = self._read_index()
        return [self._record(cols, i) for i in range(len(cols["id"]))]

    def run(self, run_id: int) -> RunRecord:
        """One run; RunError if the project has no such run."""
        _, cols = self._read_index()
        return self._record(cols, self._row(cols, run_id))

    def _row(self, cols: Mapping[str, np.ndarray], run_id: int) -> int:
        rows = np.flatnonzero(cols["id"] == int(run_id))
        if len(rows) == 0:
            raise RunError(f"project {self.path} has no run {run_id}")
        return int(rows[0])

    def create_run(self, protocol: str, label: str = "", params: dict | None = None,
                   inputs: Mapping[str, Sequence[str] | str] | None = None,
                   execution: dict | None = None) -> RunRecord:
        """Add a run in state "saved" and return it. ``inputs`` maps an input name to
        refs ``"run_id:set_name"`` (a single ref or a list)."""
        ins = {k: [v] if isinstance(v, str) else [str(x) for x in v]
               for k, v in (inputs or {}).items()}
        with self._index_lock():
            attrs, cols = self._read_index()
            run_id = attrs["next_run_id"]
            rec = RunRecord(id=run_id, protocol=protocol, label=label, state="saved",
                            params=dict(params or {}), inputs=ins,
                            execution=dict(execution or {}), created=time.time(),
                            project_path=self.path)
            row = _record_row(rec)
            cols = {name: np.append(cols[name], np.array([row[name]], dtype=cols[name].dtype))
                    for name, _ in RUN_COLUMNS}
            attrs["next_run_id"] = run_id + 1
            self._write_index(attrs, cols)
        return rec

    def update_run(self, run_id: int, **fields: Any) -> RunRecord:
        """Change fields of a run in one atomic commit; returns the new record."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise StoreError(f"cannot update run field(s) {sorted(unknown)}; fields: "
                             f"{', '.join(sorted(_UPDATABLE))}")
        if "state" in fields and fields["state"] not in RUN_STATES:
            raise StoreError(f"unknown run state {fields['state']!r}; states: "
                             f"{', '.join(RUN_STATES)}")
        with self._index_lock():
            attrs, cols = self._read_index()
            i = self._row(cols, run_id)
            rec = dataclasses.replace(self._record(cols, i), **fields)
            for name, value in _record_row(rec).items():
                cols[name][i] = value
            self._write_index(attrs, cols)
        return rec

    # --- steps ---
    def read_steps(self, run_id: int) -> StepTable:
        """The run's step table (empty if none was written)."""
        return read_steps_file(self.path / "runs" / f"{int(run_id):06d}" / "steps.h5",
                               int(run_id))

    def write_steps(self, run_id: int, table: StepTable) -> None:
        """Atomically replace the run's step table."""
        d = self.run_dir(run_id)
        with self._lock(f"run-{int(run_id):06d}.steps", f"steps of run {run_id}").acquire(
                self.lock_timeout_s):
            sf.clean_tmp_files(d, r"steps\.h5")
            write_steps_file(d / "steps.h5", int(run_id), table)

    # --- sets ---
    def _set_lock(self, run_id: int, name: str) -> FileLock:
        return self._lock(f"run-{int(run_id):06d}.set-{name}",
                          f"set {name!r} of run {run_id} in project {self.path}")

    def create_set(self, run_id: int, name: str, set_type: str,
                   inputs: Sequence[str] = (), step: str = "") -> SetWriter:
        """Start a new, empty output set of a run and return its writer (which holds the
        set's lock: a second writer gets LockedError). ``inputs`` are lineage refs
        ``"run_id:set_name"``; ``step`` is the id of the step that produces it."""
        if not _NAME_RE.match(name):
            raise StoreError(f"bad set name {name!r}: use letters, digits, '_', '.', '-'")
        run = self.run(run_id)
        manifest = new_manifest(set_type, name, int(run_id), step, inputs)
        d = self._set_dir(run_id, name)
        lock = self._set_lock(run_id, name).acquire(0)
        try:
            if (d / MANIFEST).exists():
                raise StoreError(f"run {run_id} already has a set {name!r} ({d}); use "
                                 "open_set_writer() to append to it")
            d.mkdir(parents=True, exist_ok=True)
            writer = SetWriter(self.path, d, lock, manifest)
            writer.cleanup()
            write_manifest(d, manifest)
            if run.output_types.get(name) != set_type:
                self.update_run(run_id, output_types={**run.output_types, name: set_type})
        except BaseException:
            lock.release()
            raise
        return writer

    def open_set_writer(self, run_id: int, name: str) -> SetWriter:
        """A writer that appends to an existing set (e.g. to resume a stream)."""
        d = self._set_dir(run_id, name)
        lock = self._set_lock(run_id, name).acquire(0)
        try:
            manifest = read_manifest(d)
            manifest.state = "open"
            writer = SetWriter(self.path, d, lock, manifest)
            writer.cleanup()
            write_manifest(d, manifest)
        except BaseException:
            lock.release()
            raise
        return writer

    def delete_set(self, run_id: int, name: str) -> None:
        """Delete an output set (under its lock; LockedError while a writer has it) and
        drop it from the run's outputs. Readers holding a snapshot keep reading it."""
        d = self._set_dir(run_id, name)
        with self._set_lock(run_id, name).acquire(0):
            if d.exists():
                # rename first so no reader ever opens a half-deleted set
                gone = d.with_name(f".deleted-{name}{sf.TMP_MARK}{os.getpid()}")
                os.replace(d, gone)
                shutil.rmtree(gone, ignore_errors=True)
            run = self.run(run_id)
            if name in run.output_types:
                self.update_run(run_id, output_types={k: v for k, v in run.output_types.items()
                                                 if k != name})

    def open_set(self, run_id: int, name: str) -> Set:
        """A read-only snapshot of a run's output set (no lock taken)."""
        d = self._set_dir(run_id, name)
        if not (d / MANIFEST).exists():
            raise StoreError(f"run {run_id} of project {self.path} has no set {name!r} "
                             f"(no {d / MANIFEST})")
        return Set.open(self.path, d)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _empty_run_columns() -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=object if dtype == "str" else dtype)
            for name, dtype in RUN_COLUMNS}


def _record_row(rec: RunRecord) -> dict[str, Any]:
    row = {name: getattr(rec, name) for name, _ in RUN_COLUMNS if name != "record_json"}
    for name in ("created", "started", "ended", "heartbeat"):
        row[name] = math.nan if row[name] is None else float(row[name])
    row["pid"] = int(row["pid"] or 0)
    try:
        row["record_json"] = json.dumps({k: getattr(rec, _FIELD_OF_KEY.get(k, k)) for k in _RECORD_KEYS},
                                        sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"run {rec.id}: params/inputs/outputs/execution must be JSON-able "
                         f"({exc})") from exc
    return row


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def find_run(runs: Sequence[RunRecord], ref: str) -> RunRecord:
    """The run named by ``ref``: its id, or else its label when that names one run.

    RunError says which: no such run, or a label shared by several runs.
    """
    ref = str(ref)
    if ref.isdigit():
        for r in runs:
            if r.id == int(ref):
                return r
    matches = [r for r in runs if r.label == ref]
    if len(matches) > 1:
        ids = ", ".join(str(r.id) for r in matches)
        raise RunError(f"label {ref!r} names several runs ({ids}); use the id")
    if not matches:
        raise RunError(f"no run {ref!r} in this project")
    return matches[0]


def this_host() -> str:
    """The host name recorded in runs and locks."""
    return socket.gethostname()
