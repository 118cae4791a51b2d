"""On-disk format of a set: the manifest and its immutable segments.

A set folder ``<project>/runs/<run:06d>/sets/<name>/`` holds ``manifest.h5`` (the segments
in order with their row counts, the ``files`` table, the ``optics`` table and the lineage)
and ``seg-NNNNNN.h5`` files (the columns of a batch of rows), which never change once a
manifest lists them. See docs/store.md for every attribute and dataset.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcem import __version__
from hpcem.errors import CorruptStoreError, StoreError
from hpcem.model import SET_TYPES
from hpcem.model.fields import Field, ItemType
from hpcem.model.types import ACQUISITION
from hpcem.store import files as sf
from hpcem.store.ragged import Ragged

MANIFEST = "manifest.h5"
SEGMENT_TYPE = "hpcem.Segment"
SEGMENT_RE = re.compile(r"^seg-(\d{6,})\.h5$")

#: Compaction is size-tiered (see :func:`tiered_merge_start`): the newest segments are
#: merged when COMPACT_FANOUT of them share a size class (rows in [F**c, F**(c+1))).
COMPACT_FANOUT = 4

#: The most segments a set may have: past it the newest (smallest) are merged however
#: their sizes compare. Tiering keeps a set below it up to ~4**10 rows of 1-row appends.
COMPACT_THRESHOLD = 32

#: Folders of the project above a set's files (runs/<id>/sets/<name>/); none may be a link.
SET_LEVELS = 4


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
                set_type=set_type,
                name=sf.attr_str(f, "name"),
                run_id=int(a["run_id"]),
                step=sf.attr_str(f, "step"),
                inputs=json.loads(sf.attr_str(f, "inputs_json")),
                state=sf.attr_str(f, "state"),
                created=float(a["created"]),
                updated=float(a["updated"]),
                next_segment=int(a["next_segment"]),
                next_id=int(a["next_id"]),
                segments=[(str(s), int(r)) for s, r in zip(seg_files, seg_rows, strict=True)],
                files=list(sf.read_str_array(f["files"])),
                optics=read_table(f["optics"], ACQUISITION),
            )
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise CorruptStoreError(
                f"{path}: set manifest is incomplete or damaged ({exc}); it was not modified"
            ) from exc
    return m


def write_manifest(set_dir: Path, m: Manifest) -> None:
    """Atomically replace the manifest of ``set_dir`` with ``m``."""
    m.updated = time.time()
    with sf.atomic_h5(Path(set_dir) / MANIFEST, levels=SET_LEVELS) as f:
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
        write_table(f.create_group("optics"), ACQUISITION, m.optics)


def read_table(g, item: ItemType) -> dict[str, np.ndarray]:
    """Read a small table of scalar/str fields (the optics table)."""
    out = {}
    for fd in item.fields:
        if fd.name in g:
            ds = g[fd.name]
            out[fd.name] = sf.read_str_array(ds) if fd.kind == "str" else ds[()]
    return out


def write_table(g, item: ItemType, table: Mapping[str, np.ndarray]) -> None:
    for fd in item.fields:
        if fd.name in table:
            sf.write_column(
                g,
                fd.name,
                np.asarray(table[fd.name], dtype=object if fd.kind == "str" else fd.dtype),
            )


# --- compaction policy ----------------------------------------------------------------
def size_class(weight: int, fanout: int) -> int:
    """``floor(log_fanout(weight))`` (0 for weights up to ``fanout - 1``)."""
    c, limit = 0, fanout
    while weight >= limit:
        c += 1
        limit *= fanout
    return c


def tiered_merge_start(
    weights: Sequence[int], fanout: int = COMPACT_FANOUT, max_parts: int | None = None
) -> int | None:
    """Where the newest parts should be merged from: ``weights[start:]`` (oldest first)
    become one part; None when nothing is due.

    Size-tiered, as in LSM trees: the newest part absorbs older ones of a smaller size
    class, and ``fanout`` parts of one class at the tail merge into one of a larger class.
    Classes then never increase towards the newest part and hold at most ``fanout - 1``
    parts each, so there are at most ``(fanout - 1) * (log_fanout(total) + 1)`` parts,
    and each row is rewritten about once per class it climbs: O(log total) amortised per
    row, where merging everything every k appends costs O(total / k) per row. Past
    ``max_parts`` the newest (smallest) parts are merged too, so the count stays bounded
    whatever the weights. Only tails are merged, so the row order is kept.
    """
    w = [max(1, int(x)) for x in weights]
    start = None
    while len(w) >= 2:
        last = size_class(w[-1], fanout)
        i = len(w) - 1
        while i > 0 and size_class(w[i - 1], fanout) < last:
            i -= 1
        if i == len(w) - 1:
            if len(w) >= fanout and all(size_class(x, fanout) == last for x in w[-fanout:]):
                i = len(w) - fanout
            elif max_parts is not None and len(w) > max_parts:
                i = max_parts - 1
            else:
                break
        start = i
        w = [*w[:i], sum(w[i:])]
    return start


# --- segments -------------------------------------------------------------------------
def read_segment(f, item: ItemType, names: Iterable[str]) -> dict[str, Any]:
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


def write_segment(path: Path, item: ItemType, cols: Mapping[str, Any], step: str) -> None:
    """Write one immutable segment (temp file + rename); StorageFullError when the disk
    cannot hold it (checked against its estimated size first)."""
    n = len(cols["id"])
    size = segment_size_estimate(item, cols)
    with sf.atomic_h5(path, size_hint=size, levels=SET_LEVELS) as f:
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


def segment_size_estimate(item: ItemType, cols: Mapping[str, Any]) -> int:
    """Bytes a segment of ``cols`` takes on disk, roughly (for the free-space check).

    Numbers and ragged values count their bytes; a vlen string counts 32 bytes (heap id
    and heap object header) plus its mean UTF-8 length over a sample of up to 1000.
    """
    total = 4096
    for fd in item.fields:
        data = cols[fd.name]
        if fd.kind == "ragged":
            total += data.values.nbytes + data.offsets.nbytes
        elif fd.kind == "str" or getattr(data, "dtype", None) == object:
            n = len(data)
            sample = [str(v) for v in data[:1000]]
            mean = sum(len(v.encode()) for v in sample) / max(1, len(sample))
            total += int(n * (32 + mean))
        else:
            total += np.asarray(data).nbytes
    return total


def concat(fd: Field, parts: list) -> Any:
    """Join the parts of one column read from several segments."""
    if fd.kind == "ragged":
        return Ragged.concat(parts)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


def head(fd: Field, col: Any, n: int) -> Any:
    """The first ``n`` rows of a column (a snapshot of a set that has grown since)."""
    if len(col) == n:
        return col
    return col.take(np.arange(n)) if fd.kind == "ragged" else col[:n]


def py_value(v: Any) -> Any:
    """A numpy scalar as the plain Python value (for item views)."""
    return v.item() if isinstance(v, np.generic) else v


def empty_column(fd: Field, n: int) -> Any:
    """A column of ``n`` default values (path columns: -1 = no file)."""
    if fd.kind == "ragged":
        return Ragged.empty(n, fd.dtype)
    if fd.kind == "str":
        return np.full(n, fd.fill, dtype=object)
    if fd.kind == "path":
        return np.full(n, -1, dtype=np.int32)
    return np.full(n, fd.fill, dtype=fd.dtype)


def new_manifest(
    set_type: str, name: str, run_id: int, step: str, inputs: Sequence[str]
) -> Manifest:
    """The manifest of a new, empty, open set."""
    if set_type not in SET_TYPES:
        raise StoreError(f"unknown set type {set_type!r}; known: {', '.join(SET_TYPES)}")
    now = time.time()
    return Manifest(
        set_type=set_type,
        name=name,
        run_id=run_id,
        step=step,
        inputs=[str(i) for i in inputs],
        state="open",
        created=now,
        updated=now,
    )
