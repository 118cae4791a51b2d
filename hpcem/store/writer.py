"""Writing sets: a :class:`SetWriter` appends batches to one set while holding its lock.

Every append writes one immutable segment (temp file + atomic rename) and then commits a
new manifest that lists it, so readers, which take no lock, always see a consistent
prefix. Compaction merges segments the same way: new segment, new manifest, then the old
segment files are deleted. It is size-tiered (:func:`~hpcem.store.manifest.tiered_merge_start`):
only the newest segments are merged, when enough of them share a size class, so a set that
streams for hours pays O(log rows) rewrites per row instead of a whole-set merge every few
appends.

An append (or optics change) that raises, e.g. StorageFullError on a full disk, leaves
the writer as it was before the call: the same append can simply be repeated once space
is free, without listing a segment twice.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from hpcem.errors import StorageFullError, StoreError
from hpcem.model.fields import Field, ItemType
from hpcem.model.types import ACQUISITION
from hpcem.store import files as sf
from hpcem.store.locks import FileLock
from hpcem.store.manifest import (
    COMPACT_FANOUT,
    COMPACT_THRESHOLD,
    SEGMENT_RE,
    SET_LEVELS,
    Manifest,
    concat,
    empty_column,
    segment_size_estimate,
    tiered_merge_start,
    write_manifest,
    write_segment,
)
from hpcem.store.ragged import Ragged
from hpcem.store.safeopen import open_dir
from hpcem.store.sets import Set

#: Bytes of the newest segments' columns a writer keeps in memory for merging them.
RECENT_BYTES = 64 << 20


class SetWriter:
    """Appends to one set; holds the set's write lock until :meth:`close`.

    Every append writes one immutable segment and commits a new manifest, so readers
    (which take no lock) always see a consistent prefix. Get one from
    ``project.create_set(...)`` or ``project.open_set_writer(...)``.
    """

    def __init__(
        self,
        project_path: Path,
        set_dir: Path,
        lock: FileLock,
        manifest: Manifest,
        compact_threshold: int = COMPACT_THRESHOLD,
        compact_fanout: int = COMPACT_FANOUT,
    ) -> None:
        self.project_path = Path(project_path)
        self.path = Path(set_dir)
        self._lock = lock
        self._m = manifest
        #: the most segments the set may have (the newest are merged past it)
        self.compact_threshold = compact_threshold
        #: segments of one size class that are merged into one (see tiered_merge_start)
        self.compact_fanout = compact_fanout
        #: raw columns of the newest segments this writer wrote, so that merging them
        #: reads nothing back (segments never change once written)
        self._recent: dict[str, tuple[int, dict[str, Any]]] = {}
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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Undo in-memory changes of a commit that raised (the disk keeps the old
        manifest; an unlisted segment it left is overwritten by the retry or removed by
        the next writer's cleanup)."""
        m = self._m
        saved = (list(m.segments), m.next_segment, m.next_id, len(m.files), m.optics, m.state)
        try:
            yield
        except BaseException:
            segments, m.next_segment, m.next_id, n_files, m.optics, m.state = saved
            m.segments = segments
            listed = {name for name, _ in segments}
            for name in [n for n in self._recent if n not in listed]:
                del self._recent[name]
            if len(m.files) > n_files:
                for p in m.files[n_files:]:
                    self._file_index.pop(p, None)
                del m.files[n_files:]
                self._input_cache.clear()
            raise

    def cleanup(self) -> None:
        """Remove leftovers of a crashed writer: temp files, unlisted segments.

        The set folder is opened without following links (StoreError for a link), so
        files in a linked folder outside the project are never deleted.
        """
        listed = {s for s, _ in self._m.segments}
        tmp_re = re.compile(
            rf"^(?:manifest\.h5|seg-\d+\.h5){re.escape(sf.TMP_MARK)}"
            r"\d+-[0-9a-f]+$"
        )
        dfd = open_dir(self.path, SET_LEVELS)
        try:
            for entry in os.scandir(dfd):
                stale = tmp_re.match(entry.name) or (
                    SEGMENT_RE.match(entry.name) and entry.name not in listed
                )
                if stale and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def set_optics(self, table: Mapping[str, Sequence] | Sequence) -> None:
        """Replace the optics table: columns ``{field: values}`` or a list of
        :class:`hpcem.model.Acquisition` (or dicts). Committed at once."""
        self._check_open()
        if not isinstance(table, Mapping):
            table = _items_to_columns(ACQUISITION, table)
        unknown = set(table) - set(ACQUISITION.field_names)
        if unknown:
            raise StoreError(
                f"optics table: unknown column(s) {sorted(unknown)}; known: "
                f"{', '.join(ACQUISITION.field_names)}"
            )
        n = len(next(iter(table.values()))) if table else 0
        cols = {}
        for fd in ACQUISITION.fields:
            if fd.name in table:
                v = table[fd.name]
                cols[fd.name] = (
                    np.array(list(v), dtype=object)
                    if fd.kind == "str"
                    else np.asarray(v, dtype=fd.dtype)
                )
            else:
                cols[fd.name] = (
                    empty_column(fd, n) if fd.kind == "str" else np.full(n, fd.fill, dtype=fd.dtype)
                )
            if len(cols[fd.name]) != n:
                raise StoreError(
                    f"optics table: column {fd.name!r} has {len(cols[fd.name])} rows, expected {n}"
                )
        with self._transaction():
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
            raise StoreError(
                f"{item.set_type}: unknown column(s) {unknown}; known: "
                f"{', '.join(item.field_names)}"
            )
        if not columns:
            return 0
        lengths = {k: len(v) for k, v in columns.items()}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()):
            raise StoreError(f"{item.set_type}: columns have different lengths {lengths}")
        if n == 0:
            return 0
        with self._transaction():
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
        # the rows are committed: a full disk only postpones the compaction (retried on
        # the next append), it must not make a committed append look failed
        with contextlib.suppress(StorageFullError):
            self._maybe_compact()
        return n

    def _maybe_compact(self) -> None:
        """Merge the newest segments when the tiered policy says so (after an append)."""
        start = tiered_merge_start(
            [r for _, r in self._m.segments],
            max(2, self.compact_fanout),
            max(1, self.compact_threshold),
        )
        if start is not None:
            self._merge_tail(start)

    def _commit_segment(self, cols: Mapping[str, Any], n: int) -> None:
        name = f"seg-{self._m.next_segment:06d}.h5"
        write_segment(self.path / name, self.item_type, cols, self._m.step)
        self._remember(name, cols)
        self._m.next_segment += 1
        self._m.segments.append((name, n))

    def _remember(self, name: str, cols: Mapping[str, Any], copy: bool = True) -> None:
        """Keep the columns of a segment just written (a copy: the caller may reuse its
        arrays), dropping the oldest kept ones past :data:`RECENT_BYTES`."""
        size = segment_size_estimate(self.item_type, cols)
        if size > RECENT_BYTES:
            return
        if copy:
            cols = {
                k: Ragged(v.values.copy(), v.offsets.copy())
                if isinstance(v, Ragged)
                else np.array(v, copy=True)
                for k, v in cols.items()
            }
        self._recent[name] = (size, dict(cols))
        total = sum(b for b, _ in self._recent.values())
        while total > RECENT_BYTES:
            total -= self._recent.pop(next(iter(self._recent)))[0]

    def _prepare(self, fd: Field, value: Any, n: int) -> Any:
        if value is None:
            col = empty_column(fd, n)
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
            key = v if isinstance(v, str) else ("" if v is None else os.fspath(v))
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
        self._merge_tail(0)

    def _merge_tail(self, start: int) -> None:
        """Merge ``segments[start:]`` into one segment in their place: new segment, new
        manifest, then delete the old files. The row order is kept, so a reader whose
        segments vanished re-reads the manifest and finds the same rows first."""
        tail = self._m.segments[start:]
        if len(tail) <= 1:
            return
        rows = sum(r for _, r in tail)
        fields = self.item_type.fields
        if all(s in self._recent for s, _ in tail):
            parts = [self._recent[s][1] for s, _ in tail]
            cols = {fd.name: concat(fd, [p[fd.name] for p in parts]) for fd in fields}
        else:
            snap = Set(
                self.project_path,
                self.path,
                Manifest(
                    **{**self._m.__dict__, "segments": list(tail), "files": list(self._m.files)}
                ),
            )
            cols = {fd.name: snap.raw_column(fd.name) for fd in fields}
            snap.close()
        name = f"seg-{self._m.next_segment:06d}.h5"
        with self._transaction():
            write_segment(self.path / name, self.item_type, cols, self._m.step)
            self._m.next_segment += 1
            self._m.segments = [*self._m.segments[:start], (name, rows)]
            write_manifest(self.path, self._m)
        for s, _ in tail:
            self._recent.pop(s, None)
            with contextlib.suppress(OSError):
                os.unlink(self.path / s)
        self._remember(name, cols, copy=False)  # built here: nobody else holds them

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
    """Item objects (or dicts) to ``{field: list}``; missing fields get their default."""
    cols: dict[str, list] = {}
    for fd in item.fields:
        name, fill = fd.name, fd.fill
        if items and isinstance(items[0], Mapping):
            cols[name] = [it.get(name, fill) for it in items]
        else:
            cols[name] = [getattr(it, name, fill) for it in items]
    return cols
