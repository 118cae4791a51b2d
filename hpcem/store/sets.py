"""Columnar sets: a manifest plus immutable segment files, one column per field.

Layout of a set folder ``<project>/runs/<run:06d>/sets/<name>/`` (see docs/store.md):
``manifest.h5`` lists the segments (with their row counts), the ``files`` table, the
``optics`` table and the lineage; ``seg-NNNNNN.h5`` hold the columns of a batch of rows
and never change once the manifest lists them. Appending writes a new segment, then
commits a new manifest (atomic rename), so a reader that reads the manifest and then
the segments it lists always sees a consistent prefix of the set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from hpcem import __version__
from hpcem.errors import CorruptStoreError, MissingDataError, StoreError
from hpcem.model import ITEM_CLASSES, SET_TYPES
from hpcem.model.fields import Field, ItemType
from hpcem.model.types import ACQUISITION
from hpcem.store import files as sf
from hpcem.store.locks import FileLock
from hpcem.store.query import evaluate
from hpcem.store.ragged import Ragged

MANIFEST = "manifest.h5"
SEGMENT_TYPE = "hpcem.Segment"
_SEGMENT_RE = re.compile(r"^seg-(\d{6,})\.h5$")

#: Merge segments into one when a set has more than this many.
COMPACT_THRESHOLD = 16


@dataclass
class Manifest:
    """What a ``manifest.h5`` holds (the committed state of one set)."""

    set_type: str
    name: str
    run_id: int
    step: str = ""
    inputs: list[str] = field(default_factory=list)
    state: str = "open"
    created: float = float("nan")
    updated: float = float("nan")
    next_segment: int = 1
    next_id: int = 0
    segments: list[tuple[str, int]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    optics: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def item_type(self) -> ItemType:
        return SET_TYPES[self.set_type]

    @property
    def n_rows(self) -> int:
        return sum(rows for _, rows in self.segments)


def read_manifest(set_dir: Path) -> Manifest:
    """Read a set manifest; StoreError if absent, CorruptStoreError if unreadable."""
    path = Path(set_dir) / MANIFEST
    try:
        f = sf.open_h5(path, "set manifest")
    except FileNotFoundError:
        raise StoreError(f"{set_dir}: no set here (missing {MANIFEST})") from None
    with f:
        set_type = sf.check_header(f, tuple(SET_TYPES), "set manifest")
        try:
            a = f.attrs
            seg_files = sf.read_str_array(f["segments/file"])
            seg_rows = f["segments/rows"][()]
            m = Manifest(
                set_type=set_type, name=sf.attr_str(f, "name"), run_id=int(a["run_id"]),
                step=sf.attr_str(f, "step"), inputs=json.loads(sf.attr_str(f, "inputs_json")),
                state=sf.attr_str(f, "state"), created=float(a["created"]),
                updated=float(a["updated"]), next_segment=int(a["next_segment"]),
                next_id=int(a["next_id"]),
                segments=[(str(s), int(r)) for s, r in zip(seg_files, seg_rows, strict=True)],
                files=list(sf.read_str_array(f["files"])),
                optics=_read_table(f["optics"], ACQUISITION),
            )
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise CorruptStoreError(f"{path}: set manifest is incomplete or damaged "
                                    f"({exc}); it was not modified") from exc
    return m


def write_manifest(set_dir: Path, m: Manifest) -> None:
    """Atomically replace the manifest of ``set_dir`` with ``m``."""
    m.updated = time.time()
    with sf.atomic_h5(Path(set_dir) / MANIFEST) as f:
        item = m.item_type
        a = f.attrs
        a["hpcem_type"] = m.set_type
        a["schema_version"] = sf.SCHEMA_VERSION
        a["hpcem_version"] = __version__
        a["item_type"] = item.name
        a["name"] = m.name
        a["run_id"] = m.run_id
        a["step"] = m.step
        a["inputs_json"] = json.dumps(m.inputs)
        a["state"] = m.state
        a["created"] = m.created
        a["updated"] = m.updated
        a["next_segment"] = m.next_segment
        a["next_id"] = m.next_id
        a["n_rows"] = m.n_rows
        a["fields_json"] = json.dumps([fd.describe() for fd in item.fields])
        g = f.create_group("segments")
        sf.write_column(g, "file", np.array([s for s, _ in m.segments], dtype=object))
        g.create_dataset("rows", data=np.array([r for _, r in m.segments], dtype=np.int64))
        sf.write_column(f, "files", np.array(m.files, dtype=object))
        _write_table(f.create_group("optics"), ACQUISITION, m.optics)


def _read_table(g, item: ItemType) -> dict[str, np.ndarray]:
    """Read a small table of scalar/str fields (the optics table)."""
    out = {}
    for fd in item.fields:
        if fd.name in g:
            ds = g[fd.name]
            out[fd.name] = sf.read_str_array(ds) if fd.kind == "str" else ds[()]
    return out


def _write_table(g, item: ItemType, table: Mapping[str, np.ndarray]) -> None:
    for fd in item.fields:
        if fd.name in table:
            sf.write_column(g, fd.name, np.asarray(table[fd.name],
                                                   dtype=object if fd.kind == "str" else fd.dtype))


# --- segments -------------------------------------------------------------------------
def _read_segment(f, item: ItemType, names: Iterable[str]) -> dict[str, Any]:
    """Raw columns of one open segment (path columns as int32 indices)."""
    cols = f["columns"]
    out: dict[str, Any] = {}
    for name in names:
        fd = item.field(name)
        if fd.kind == "ragged":
            out[name] = Ragged(cols[name]["values"][()], cols[name]["offsets"][()])
        elif fd.kind == "str":
            out[name] = sf.read_str_array(cols[name])
        else:
            out[name] = cols[name][()]
    return out


def _write_segment(path: Path, item: ItemType, cols: Mapping[str, Any], step: str) -> None:
    n = len(cols["id"])
    with sf.atomic_h5(path) as f:
        f.attrs["hpcem_type"] = SEGMENT_TYPE
        f.attrs["schema_version"] = sf.SCHEMA_VERSION
        f.attrs["item_type"] = item.name
        f.attrs["n_rows"] = n
        f.attrs["step"] = step
        g = f.create_group("columns")
        for fd in item.fields:
            data = cols[fd.name]
            if fd.kind == "ragged":
                r = data.normalized()
                sub = g.create_group(fd.name)
                sub.create_dataset("values", data=r.values)
                sub.create_dataset("offsets", data=r.offsets)
            else:
                sf.write_column(g, fd.name, data)


def _concat(fd: Field, parts: list) -> Any:
    if fd.kind == "ragged":
        return Ragged.concat(parts)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


def _head(fd: Field, col: Any, n: int) -> Any:
    if len(col) == n:
        return col
    return col.take(np.arange(n)) if fd.kind == "ragged" else col[:n]


# --- reading ------------------------------------------------------------------------
class Columns(Mapping):
    """Lazy, cached mapping ``name -> column`` of a :class:`Set`.

    Scalar columns are numpy arrays, ``str`` columns object arrays of ``str``, ``path``
    columns object arrays of absolute paths, ``ragged`` columns :class:`Ragged`.
    """

    def __init__(self, owner: Set) -> None:
        self._set = owner

    def __getitem__(self, name: str) -> Any:
        return self._set.column(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._set.item_type.field_names)

    def __len__(self) -> int:
        return len(self._set.item_type.fields)


class Set:
    """A read-only snapshot of a stored set, taken when it was opened.

    Use :meth:`refresh` to see rows appended since. Columns are read lazily and cached.
    Open with ``project.open_set(run_id, name)`` or ``run.outputs_sets[name]``.
    """

    def __init__(self, project_path: Path, set_dir: Path, manifest: Manifest) -> None:
        self.project_path = Path(project_path)
        self.path = Path(set_dir)
        self._m = manifest
        self._n = manifest.n_rows
        self._segments = list(manifest.segments)
        self._files = list(manifest.files)
        self._handles: list | None = None
        self._raw: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._abs_files: np.ndarray | None = None

    @classmethod
    def open(cls, project_path: Path, set_dir: Path) -> Set:
        """Read the manifest of ``set_dir`` and return a snapshot of the set."""
        return cls(project_path, set_dir, read_manifest(set_dir))

    def refresh(self) -> Set:
        """A new snapshot with whatever has been committed since."""
        return Set.open(self.project_path, self.path)

    # --- description ---
    @property
    def name(self) -> str:
        return self._m.name

    @property
    def type_name(self) -> str:
        """Stable set type name, e.g. ``"hpcem.SetOfParticles"``."""
        return self._m.set_type

    @property
    def item_type(self) -> ItemType:
        return self._m.item_type

    @property
    def item_class(self) -> type:
        return ITEM_CLASSES[self.item_type.name]

    @property
    def run_id(self) -> int:
        return self._m.run_id

    @property
    def is_open(self) -> bool:
        """True while a writer may still append (state "open" at snapshot time)."""
        return self._m.state == "open"

    @property
    def lineage(self) -> dict:
        """Which run and step produced the set, and from which inputs ("run:name")."""
        return {"run_id": self._m.run_id, "step": self._m.step, "inputs": list(self._m.inputs)}

    @property
    def files(self) -> list[str]:
        """The files table as stored (relative to the project folder where inside it)."""
        return list(self._files)

    @property
    def optics(self) -> dict[str, np.ndarray]:
        """The optics table: columns of :data:`hpcem.model.ACQUISITION`."""
        return dict(self._m.optics)

    @property
    def columns(self) -> Columns:
        return Columns(self)

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"<{self.type_name} {self.name!r} of run {self.run_id}: {self._n} items, "
                f"{self._m.state}>")

    # --- reading columns ---
    def _open_segments(self) -> list:
        if self._handles is None:
            try:
                self._handles = [self._open_segment(s) for s, _ in self._segments]
            except FileNotFoundError:
                # The writer compacted the set after we read the manifest: re-read it once.
                # Compaction keeps the row order, so our first n rows are unchanged.
                m = read_manifest(self.path)
                if m.n_rows < self._n:
                    raise CorruptStoreError(f"{self.path / MANIFEST}: set shrank from "
                                            f"{self._n} to {m.n_rows} rows") from None
                self._segments = list(m.segments)
                self._files = list(m.files)
                try:
                    self._handles = [self._open_segment(s) for s, _ in self._segments]
                except FileNotFoundError as exc:
                    raise CorruptStoreError(f"{exc.args[0]}: segment listed in "
                                            f"{self.path / MANIFEST} is missing") from None
        return self._handles

    def _open_segment(self, name: str):
        f = sf.open_h5(self.path / name, "set segment")
        try:
            sf.check_header(f, SEGMENT_TYPE, "set segment")
        except Exception:
            f.close()
            raise
        return f

    def close(self) -> None:
        """Close the segment files (the snapshot stays usable; they reopen on demand)."""
        for h in self._handles or ():
            with contextlib.suppress(Exception):
                h.close()
        self._handles = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def raw_column(self, name: str) -> Any:
        """The column as stored: path columns are ``int32`` indices into :attr:`files`."""
        if name in self._raw:
            return self._raw[name]
        fd = self._field(name)
        if self._n == 0:
            col = _empty_column(fd, 0)
        else:
            parts = []
            for h in self._open_segments():
                try:
                    parts.append(_read_segment(h, self.item_type, [name])[name])
                except (KeyError, OSError) as exc:
                    raise CorruptStoreError(f"{h.filename}: cannot read column {name!r} "
                                            f"({exc}); the file was not modified") from exc
            col = _head(fd, _concat(fd, parts), self._n)
        self._raw[name] = col
        return col

    def column(self, name: str) -> Any:
        """One column (path columns resolved to absolute path strings)."""
        if name in self._cache:
            return self._cache[name]
        fd = self._field(name)
        raw = self.raw_column(name)
        col = self._resolve(raw) if fd.kind == "path" else raw
        self._cache[name] = col
        return col

    def read_columns(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Several columns at once (all by default)."""
        names = list(self.item_type.field_names if names is None else names)
        return {n: self.column(n) for n in names}

    def _field(self, name: str) -> Field:
        try:
            return self.item_type.field(name)
        except KeyError:
            raise KeyError(f"{self.type_name} has no column {name!r}; columns: "
                           f"{', '.join(self.item_type.field_names)}") from None

    def abs_files(self) -> np.ndarray:
        """The files table as absolute paths (object array; "" appended for index -1)."""
        if self._abs_files is None or len(self._abs_files) != len(self._files) + 1:
            root = str(self.project_path)
            self._abs_files = np.array(
                [f if os.path.isabs(f) else os.path.join(root, f) for f in self._files] + [""],
                dtype=object)
        return self._abs_files

    def _resolve(self, idx: np.ndarray) -> np.ndarray:
        return self.abs_files()[idx]  # index -1 picks the trailing "" (no file)

    # --- items ---
    def __getitem__(self, i: int):
        if not isinstance(i, (int, np.integer)):
            raise TypeError("set[i] takes an integer row; use take()/subset() for many rows")
        n = self._n
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"row {i} out of range for {self.type_name} of {n} items")
        values = {}
        for fd in self.item_type.fields:
            v = self.column(fd.name)[j]
            values[fd.name] = v if fd.kind == "ragged" else _py(v)
        return self.item_class(**values)

    def __iter__(self) -> Iterator:
        cols = []
        for fd in self.item_type.fields:
            c = self.column(fd.name)
            cols.append(c.tolist())
        cls = self.item_class
        for row in zip(*cols, strict=True):
            yield cls(*row)

    # --- queries ---
    def where(self, query: str | None = None, **conditions: Any) -> np.ndarray:
        """Boolean row mask of a query (see :mod:`hpcem.store.query`), e.g.
        ``where("defocus_u between 15000 and 25000 and ctf_fit_resolution < 5")`` or
        ``where(defocus_u=(15000, 25000))``."""
        names = [f.name for f in self.item_type.fields if f.kind != "ragged"]

        def getter(name: str) -> np.ndarray:
            if name not in names:
                raise KeyError(name)
            fd = self.item_type.field(name)
            if fd.kind == "path":
                # compare the stored form (relative to the project folder)
                return np.array(self._files + [""], dtype=object)[self.raw_column(name)]
            return self.column(name)

        return evaluate(query, getter, names, self._n, **conditions)

    def rows_of_ids(self, ids: Iterable[int]) -> np.ndarray:
        """Boolean mask of the rows whose id is in ``ids``."""
        return np.isin(self.ids, np.asarray(list(ids) if not isinstance(ids, np.ndarray)
                                            else ids, dtype=np.int64))

    def select_ids(self, ids: Iterable[int]) -> dict[str, Any]:
        """Columns of the items with the given ids (in stored order)."""
        return self.take(self.rows_of_ids(ids))

    def subset(self, mask_or_ids: Any) -> dict[str, Any]:
        """Columns of a subset: a boolean mask of rows, or an array/list of item ids."""
        sel = np.asarray(mask_or_ids)
        if sel.dtype == bool:
            if sel.shape != (self._n,):
                raise StoreError(f"subset mask has shape {sel.shape}, the set has {self._n} rows")
            return self.take(sel)
        return self.select_ids(sel)

    def take(self, rows: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Columns of the given rows (index array, boolean mask or slice)."""
        out = {}
        for name in (self.item_type.field_names if names is None else names):
            col = self.column(name)
            out[name] = col.take(rows) if isinstance(col, Ragged) else col[rows]
        return out

    def order_by(self, name: str, descending: bool = False) -> np.ndarray:
        """Row indices that sort the set by a column (stable)."""
        col = self.column(name) if name in self.item_type.field_names else None
        if col is None or isinstance(col, Ragged):
            raise StoreError(f"cannot order {self.type_name} by {name!r}")
        if not descending:
            return np.argsort(col, kind="stable")
        if col.dtype.kind in "fi":
            return np.argsort(-col, kind="stable")
        return np.argsort(col, kind="stable")[::-1]

    def check_files(self) -> None:
        """MissingDataError if any file referenced by a path column does not exist."""
        missing: list[str] = []
        checked = 0
        for fd in self.item_type.fields:
            if fd.kind != "path":
                continue
            used = np.unique(self.raw_column(fd.name))
            used = used[used >= 0]
            paths = self.abs_files()[used]
            checked += len(paths)
            missing.extend(p for p in paths if not os.path.exists(p))
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise MissingDataError(
                f"{self.path}: {self.type_name} {self.name!r} references {len(missing)} "
                f"missing file(s) of {checked}: {shown}")


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _empty_column(fd: Field, n: int) -> Any:
    if fd.kind == "ragged":
        return Ragged.empty(n, fd.dtype)
    if fd.kind == "str":
        return np.full(n, fd.fill, dtype=object)
    if fd.kind == "path":
        return np.full(n, -1, dtype=np.int32)
    return np.full(n, fd.fill, dtype=fd.dtype)


# --- writing --------------------------------------------------------------------------
class SetWriter:
    """Appends to one set; holds the set's write lock until :meth:`close`.

    Every append writes one immutable segment and commits a new manifest, so readers
    (which take no lock) always see a consistent prefix. Get one from
    ``project.create_set(...)`` or ``project.open_set_writer(...)``.
    """

    def __init__(self, project_path: Path, set_dir: Path, lock: FileLock,
                 manifest: Manifest, compact_threshold: int = COMPACT_THRESHOLD) -> None:
        self.project_path = Path(project_path)
        self.path = Path(set_dir)
        self._lock = lock
        self._m = manifest
        self.compact_threshold = compact_threshold
        self._file_index = {p: i for i, p in enumerate(manifest.files)}
        self._input_cache: dict[str, int] = {}
        self._root_abs = os.path.abspath(self.project_path)
        self._root_real = os.path.realpath(self.project_path)

    @property
    def item_type(self) -> ItemType:
        return self._m.item_type

    @property
    def n_rows(self) -> int:
        """Rows committed so far."""
        return self._m.n_rows

    @property
    def closed(self) -> bool:
        return not self._lock.held

    def _check_open(self) -> None:
        if not self._lock.held:
            raise StoreError(f"{self.path}: set writer is closed")

    def cleanup(self) -> None:
        """Remove leftovers of a crashed writer: temp files, unlisted segments."""
        listed = {s for s, _ in self._m.segments}
        sf.clean_tmp_files(self.path)
        for entry in os.scandir(self.path):
            if _SEGMENT_RE.match(entry.name) and entry.name not in listed:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def set_optics(self, table: Mapping[str, Sequence] | Sequence) -> None:
        """Replace the optics table: columns ``{field: values}`` or a list of
        :class:`hpcem.model.Acquisition` (or dicts). Committed at once."""
        self._check_open()
        if not isinstance(table, Mapping):
            table = _items_to_columns(ACQUISITION, table)
        unknown = set(table) - set(ACQUISITION.field_names)
        if unknown:
            raise StoreError(f"optics table: unknown column(s) {sorted(unknown)}; known: "
                             f"{', '.join(ACQUISITION.field_names)}")
        n = len(next(iter(table.values()))) if table else 0
        cols = {}
        for fd in ACQUISITION.fields:
            if fd.name in table:
                v = table[fd.name]
                cols[fd.name] = (np.array(list(v), dtype=object) if fd.kind == "str"
                                 else np.asarray(v, dtype=fd.dtype))
            else:
                cols[fd.name] = _empty_column(fd, n) if fd.kind == "str" else \
                    np.full(n, fd.fill, dtype=fd.dtype)
            if len(cols[fd.name]) != n:
                raise StoreError(f"optics table: column {fd.name!r} has {len(cols[fd.name])} "
                                 f"rows, expected {n}")
        self._m.optics = cols
        write_manifest(self.path, self._m)

    def append(self, items: Iterable[Any]) -> int:
        """Append item objects (or dicts of fields); returns the number of rows added."""
        return self.append_columns(_items_to_columns(self.item_type, list(items)))

    def append_columns(self, columns: Mapping[str, Any]) -> int:
        """Append a batch given as ``{field: array}``; missing fields get their default,
        a missing ``id`` is numbered on from the last one. Returns rows added."""
        self._check_open()
        item = self.item_type
        unknown = [k for k in columns if k not in item.field_names]
        if unknown:
            raise StoreError(f"{item.set_type}: unknown column(s) {unknown}; known: "
                             f"{', '.join(item.field_names)}")
        if not columns:
            return 0
        lengths = {k: len(v) for k, v in columns.items()}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()):
            raise StoreError(f"{item.set_type}: columns have different lengths {lengths}")
        if n == 0:
            return 0
        cols: dict[str, Any] = {}
        for fd in item.fields:
            cols[fd.name] = self._prepare(fd, columns.get(fd.name), n)
        ids = cols["id"]
        if "id" not in columns or (ids < 0).all():
            ids = np.arange(self._m.next_id, self._m.next_id + n, dtype=np.int64)
            cols["id"] = ids
        elif (ids < 0).any():
            raise StoreError(f"{item.set_type}: some ids are given and some are -1")
        self._commit_segment(cols, n)
        self._m.next_id = max(self._m.next_id, int(ids.max()) + 1)
        write_manifest(self.path, self._m)
        if len(self._m.segments) > self.compact_threshold:
            self.compact()
        return n

    def _commit_segment(self, cols: Mapping[str, Any], n: int) -> None:
        name = f"seg-{self._m.next_segment:06d}.h5"
        _write_segment(self.path / name, self.item_type, cols, self._m.step)
        self._m.next_segment += 1
        self._m.segments.append((name, n))

    def _prepare(self, fd: Field, value: Any, n: int) -> Any:
        if value is None:
            col = _empty_column(fd, n)
            if fd.kind == "scalar" and fd.name == "id":
                col[:] = -1
            return col
        if fd.kind == "ragged":
            r = value if isinstance(value, Ragged) else Ragged.from_list(value, fd.dtype)
            r = r.normalized()
            return Ragged(r.values.astype(fd.dtype, copy=False), r.offsets)
        if fd.kind == "str":
            return np.array([str(v) for v in value], dtype=object)
        if fd.kind == "path":
            return self._path_indices(value, n)
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise StoreError(f"column {fd.name!r} must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind in "OUS":
            raise StoreError(f"column {fd.name!r} must be numeric ({fd.dtype})")
        return arr.astype(fd.dtype, copy=False)

    def _path_indices(self, values: Any, n: int) -> np.ndarray:
        cache = self._input_cache
        out = np.empty(n, dtype=np.int32)
        vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
        try:
            out[:] = [cache[v] for v in vals]
            return out
        except (KeyError, TypeError):
            pass
        for i, v in enumerate(vals):
            key = v if isinstance(v, str) else os.fspath(v)
            j = cache.get(key)
            if j is None:
                j = cache[key] = self._file_id(key)
            out[i] = j
        return out

    def _file_id(self, path: str) -> int:
        if path == "":
            return -1
        stored = self._stored_path(path)
        j = self._file_index.get(stored)
        if j is None:
            j = self._file_index[stored] = len(self._m.files)
            self._m.files.append(stored)
        return j

    def _stored_path(self, path: str) -> str:
        """Relative to the project folder when inside it (relative input is taken as
        relative to the project folder); absolute otherwise."""
        if not os.path.isabs(path):
            return os.path.normpath(path)
        p = os.path.normpath(path)
        for root in (self._root_abs, self._root_real):
            if p == root or p.startswith(root + os.sep):
                return os.path.relpath(p, root)
        real = os.path.realpath(p)
        if real.startswith(self._root_real + os.sep):
            return os.path.relpath(real, self._root_real)
        return p

    def compact(self) -> None:
        """Merge all segments into one (new segment, new manifest, delete the old)."""
        self._check_open()
        if len(self._m.segments) <= 1:
            return
        snap = Set(self.project_path, self.path, Manifest(**{
            **self._m.__dict__, "segments": list(self._m.segments),
            "files": list(self._m.files)}))
        cols = {fd.name: snap.raw_column(fd.name) for fd in self.item_type.fields}
        snap.close()
        old = [s for s, _ in self._m.segments]
        self._m.segments = []
        self._commit_segment(cols, snap._n)
        write_manifest(self.path, self._m)
        for s in old:
            with contextlib.suppress(OSError):
                os.unlink(self.path / s)

    def close(self, state: str = "closed") -> None:
        """Mark the set complete (no more appends) and release its lock."""
        if not self._lock.held:
            return
        try:
            self._m.state = state
            write_manifest(self.path, self._m)
        finally:
            self._lock.release()

    def abandon(self) -> None:
        """Release the lock leaving the set "open" (another writer may continue it)."""
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def _items_to_columns(item: ItemType, items: Sequence[Any]) -> dict[str, list]:
    cols: dict[str, list] = {}
    for fd in item.fields:
        name, fill = fd.name, fd.fill
        if items and isinstance(items[0], Mapping):
            cols[name] = [it.get(name, fill) for it in items]
        else:
            cols[name] = [getattr(it, name, fill) for it in items]
    return cols


def new_manifest(set_type: str, name: str, run_id: int, step: str,
                 inputs: Sequence[str]) -> Manifest:
    """The manifest of a new, empty, open set."""
    if set_type not in SET_TYPES:
        raise StoreError(f"unknown set type {set_type!r}; known: {', '.join(SET_TYPES)}")
    now = time.time()
    return Manifest(set_type=set_type, name=name, run_id=run_id, step=step,
                    inputs=[str(i) for i in inputs], state="open", created=now, updated=now)
