"""Reading sets: a :class:`Set` is a read-only snapshot of a stored set, its columns
read lazily from the segments its manifest listed (a consistent prefix of a growing set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpcem.errors import CorruptStoreError, MissingDataError, StoreError
from hpcem.model import ITEM_CLASSES
from hpcem.model.fields import Field, ItemType
from hpcem.store import files as sf
from hpcem.store.manifest import (
    MANIFEST,
    SEGMENT_TYPE,
    Manifest,
    concat,
    empty_column,
    head,
    py_value,
    read_manifest,
    read_segment,
)
from hpcem.store.query import evaluate
from hpcem.store.ragged import Ragged


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
    Open with ``project.open_set(run_id, name)`` or ``run.outputs[name]``.
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
        return (
            f"<{self.type_name} {self.name!r} of run {self.run_id}: {self._n} items, "
            f"{self._m.state}>"
        )

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
                    raise CorruptStoreError(
                        f"{self.path / MANIFEST}: set shrank from {self._n} to {m.n_rows} rows"
                    ) from None
                self._segments = list(m.segments)
                self._files = list(m.files)
                handles = []
                for name, _ in self._segments:
                    try:
                        handles.append(self._open_segment(name))
                    except FileNotFoundError:
                        for h in handles:
                            h.close()
                        raise CorruptStoreError(
                            f"{self.path / name}: segment listed in {self.path / MANIFEST} "
                            "is missing"
                        ) from None
                self._handles = handles
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
            col = empty_column(fd, 0)
        else:
            parts = []
            for h in self._open_segments():
                try:
                    parts.append(read_segment(h, self.item_type, [name])[name])
                except (KeyError, OSError) as exc:
                    raise CorruptStoreError(
                        f"{h.filename}: cannot read column {name!r} "
                        f"({exc}); the file was not modified"
                    ) from exc
            col = head(fd, concat(fd, parts), self._n)
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
            raise KeyError(
                f"{self.type_name} has no column {name!r}; columns: "
                f"{', '.join(self.item_type.field_names)}"
            ) from None

    def abs_files(self) -> np.ndarray:
        """The files table as absolute paths (object array; "" appended for index -1)."""
        if self._abs_files is None or len(self._abs_files) != len(self._files) + 1:
            root = str(self.project_path)
            self._abs_files = np.array(
                [f if os.path.isabs(f) else os.path.join(root, f) for f in self._files] + [""],
                dtype=object,
            )
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
            if fd.name in self._cache:
                v = self._cache[fd.name][j]
            else:  # read just this row from its segment, not the whole column
                v = self._read_row_value(fd, j)
            values[fd.name] = v if fd.kind == "ragged" else py_value(v)
        return self.item_class(**values)

    def _read_row_value(self, fd: Field, j: int) -> Any:
        handles = self._open_segments()
        ends = np.cumsum([rows for _, rows in self._segments])
        k = int(np.searchsorted(ends, j, side="right"))
        local = j - (int(ends[k - 1]) if k else 0)
        h = handles[k]
        try:
            g = h["columns"][fd.name]
            if fd.kind == "ragged":
                lo, hi = g["offsets"][local : local + 2]
                return g["values"][lo:hi]
            if fd.kind == "str":
                return g.asstr()[local]
            v = g[local]
        except (KeyError, OSError) as exc:
            raise CorruptStoreError(
                f"{h.filename}: cannot read column {fd.name!r} ({exc}); the file was not modified"
            ) from exc
        return self.abs_files()[v] if fd.kind == "path" else v

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
        return np.isin(
            self.ids,
            np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64),
        )

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
        for name in self.item_type.field_names if names is None else names:
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
                f"missing file(s) of {checked}: {shown}"
            )
