"""RELION coordinate STARs <-> hpcem coordinate sets: per-micrograph files as
``relion_autopick`` writes them (``<mic>_autopick.star``) and RELION 4/5 coordinate lists.
Public through :mod:`hpcem.convert.relion`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert.relion_common import (
    COORDINATE_LABELS,
    _extra_items,
    _finish,
    _item_extra,
    _link_micrographs,
    _numeric,
    _relative,
    _require,
    _resolve,
    relion_version,
)
from hpcem.convert.relion_star import is_column, read_star, write_star
from hpcem.errors import DataFormatError, ValidationError

# --- coordinates ---------------------------------------------------------------------------


def read_coordinates(
    path: str | os.PathLike,
    micrograph_id: int = -1,
) -> Converted:
    """Read one per-micrograph coordinate STAR (``<mic>_autopick.star``,
    ``<mic>_manualpick.star``) into COORDINATE columns, all with ``micrograph_id``."""
    path = os.fspath(path)
    blocks = read_star(path)
    block = next((b for b in blocks.values() if b.loop and "rlnCoordinateX" in b.columns), None)
    if block is None:
        raise DataFormatError(f"{path}: no loop with _rlnCoordinateX; not a coordinate STAR")
    _require(path, block, ("rlnCoordinateX", "rlnCoordinateY"), "coordinates")
    cols: dict[str, Any] = {}
    consumed = set()
    for field, label in COORDINATE_LABELS.items():
        if label in block.columns:
            cols[field] = _numeric(path, block, label).astype(np.float64)
            consumed.add(label)
    cols["micrograph_id"] = np.full(len(block), micrograph_id, dtype=np.int64)
    return _finish(
        "hpcem.SetOfCoordinates",
        path,
        cols,
        {},
        _extra_items(block, consumed),
        {},
        relion_version(blocks),
        block.name,
    )


def read_coordinate_list(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    micrograph_ids: Mapping[str, int] | None = None,
) -> Converted:
    """Read a RELION 4/5 coordinate list (``autopick.star``/``manualpick.star``:
    ``_rlnMicrographName`` -> ``_rlnMicrographCoordinates``) and every coordinate file it
    names (paths relative to ``root``, the RELION project folder). ``micrograph_id`` from
    ``micrograph_ids`` (name -> id; a name not in it is an error), else the row number of
    the micrograph in the list (1-based). Nothing is returned unless every file reads."""
    path = os.fspath(path)
    blocks = read_star(path)
    block = next(
        (b for b in blocks.values() if b.loop and "rlnMicrographCoordinates" in b.columns), None
    )
    if block is None:
        raise DataFormatError(
            f"{path}: no loop with _rlnMicrographCoordinates; not a RELION coordinate list"
        )
    _require(path, block, ("rlnMicrographName", "rlnMicrographCoordinates"), "coordinate lists")
    names = block.columns["rlnMicrographName"]
    ids = _link_micrographs(path, block.name, names, micrograph_ids)
    if ids is None:
        ids = np.arange(1, len(names) + 1, dtype=np.int64)
    files = _resolve(block.columns["rlnMicrographCoordinates"], root)
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise DataFormatError(
            f"{path}: {len(missing)} coordinate file(s) it lists do not exist, e.g. {missing[0]} "
            "(give root= the RELION project folder)"
        )
    parts = [read_coordinates(f, int(i)) for f, i in zip(files, ids)]
    cols = _concat([p.columns for p in parts])
    items = _concat([_per_item(p) for p in parts])
    items["rlnMicrographName"] = np.repeat(np.asarray(names, dtype=object), [len(p) for p in parts])
    return _finish("hpcem.SetOfCoordinates", path, cols, {}, items, {}, "4", block.name)


def _per_item(conv: Converted) -> dict[str, Any]:
    """The per-item RELION columns of a Converted's extra (not the file-level entries)."""
    n = len(conv)
    return {
        k: v for k, v in conv.extra.items() if k.startswith("rln") and is_column(v) and len(v) == n
    }


def _concat(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    keys = [k for k in (parts[0] if parts else {}) if all(k in p for p in parts)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}


def write_coordinates(
    path: str | os.PathLike, columns: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> None:
    """Write the COORDINATE columns of one micrograph as a RELION coordinate STAR
    (``data_`` loop with ``_rlnCoordinateX/Y``, ``_rlnAutopickFigureOfMerit``), as
    ``relion_autopick`` writes ``<mic>_autopick.star``."""
    if "x" not in columns or "y" not in columns:
        raise ValidationError("writing coordinates needs the x and y columns")
    n = len(columns["x"])
    table: dict[str, Any] = {}
    for field, label in COORDINATE_LABELS.items():
        if field in columns:
            table[label] = np.asarray(columns[field], dtype=np.float64)
    table.update(_item_extra(extra, n, table))
    write_star(path, [("", table)], version=30001)


def write_coordinate_files(
    folder: str | os.PathLike,
    columns: Mapping[str, Any],
    micrograph_names: Mapping[int, str],
    suffix: str = "_autopick",
    list_name: str = "autopick.star",
    root: str | os.PathLike | None = None,
) -> list[str]:
    """Write one coordinate STAR per micrograph (``<folder>/<mic stem><suffix>.star``) and
    a RELION 4 coordinate list ``<folder>/<list_name>`` naming them; returns the files.
    Micrographs of ``micrograph_names`` without coordinates get an empty file (RELION's
    extraction then skips them). Paths in the list are relative to ``root`` when given."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    mid = np.asarray(columns["micrograph_id"], dtype=np.int64)
    unknown = sorted(set(np.unique(mid).tolist()) - set(micrograph_names))
    if unknown:
        raise ValidationError(f"coordinates of micrographs {unknown[:5]} with no name")
    order = np.argsort(mid, kind="stable")
    ids_sorted = mid[order]
    files, names = [], []
    for m_id, m_name in micrograph_names.items():
        lo, hi = np.searchsorted(ids_sorted, [m_id, m_id + 1])
        rows = order[lo:hi]
        stem = os.path.splitext(os.path.basename(str(m_name)))[0]
        out = os.path.join(folder, f"{stem}{suffix}.star")
        write_coordinates(out, {k: np.asarray(v)[rows] for k, v in columns.items()})
        files.append(out)
        names.append(str(m_name))
    listed = _relative(np.asarray(files, dtype=object), root)
    write_star(
        os.path.join(folder, list_name),
        [
            (
                "coordinate_files",
                {
                    "rlnMicrographName": np.asarray(names, dtype=object),
                    "rlnMicrographCoordinates": listed,
                },
            )
        ],
        version=30001,
    )
    return files


_JOB_PREFIX = re.compile(r"^[^/]+/job\d+/")


def coordinate_file_name(job_dir: str, micrograph: str, suffix: str = "_autopick.star") -> str:
    """Where RELION 3.1 keeps a micrograph's coordinates (``getCoordinateFileName`` of
    ``src/preprocessing.cpp``): the job folder + the micrograph path less its
    ``Type/jobNNN/`` part and extension + the suffix."""
    post = _JOB_PREFIX.sub("", str(micrograph))
    return os.path.join(job_dir, os.path.splitext(post)[0] + suffix)


def read_coordinate_suffix(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    micrograph_ids: Mapping[str, int] | None = None,
) -> Converted:
    """Read a RELION 3.1 coordinate node (``AutoPick/jobNNN/coords_suffix_autopick.star``:
    one line naming the micrograph STAR the job picked on) and the coordinate STAR of every
    micrograph in it (:func:`coordinate_file_name`; a micrograph without a file has no
    picks, as in RELION's extraction). Paths are relative to ``root``, the RELION project
    folder. ``micrograph_id`` from ``micrograph_ids`` (name -> id), else the micrograph's
    1-based row in that STAR."""
    from hpcem.convert.relion_micrographs import read_micrographs

    path = os.fspath(path)
    base = "" if root is None else os.fspath(root)
    name = os.path.basename(path)
    if not name.startswith("coords_suffix") or not name.endswith(".star"):
        raise DataFormatError(f"{path}: not a RELION coords_suffix_*.star file")
    try:
        with open(path, encoding="utf-8") as fh:
            mic_star = fh.read().strip()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    if not mic_star or "\n" in mic_star:
        raise DataFormatError(f"{path}: expected one line naming a micrograph STAR file")
    mics = read_micrographs(os.path.join(base, mic_star))
    names = [str(m) for m in mics.columns["image"]]
    ids = _link_micrographs(path, "", np.asarray(names, dtype=object), micrograph_ids)
    if ids is None:
        ids = np.arange(1, len(names) + 1, dtype=np.int64)
    job_dir = os.path.join(base, os.path.dirname(os.path.relpath(path, base or None)))
    suffix = name.removeprefix("coords_suffix")
    parts, owners = [], []
    for mic, mid in zip(names, ids):
        f = coordinate_file_name(job_dir, mic, suffix)
        if os.path.exists(f):
            parts.append(read_coordinates(f, int(mid)))
            owners.append(mic)
    if not parts:
        empty = {k: np.empty(0) for k in ("x", "y", "score")}
        empty["micrograph_id"] = np.empty(0, dtype=np.int64)
        return _finish("hpcem.SetOfCoordinates", path, empty, {}, {}, {}, "3.1", "")
    cols = _concat([p.columns for p in parts])
    items = _concat([_per_item(p) for p in parts])
    items["rlnMicrographName"] = np.repeat(
        np.asarray(owners, dtype=object), [len(p) for p in parts]
    )
    return _finish("hpcem.SetOfCoordinates", path, cols, {}, items, {}, "3.1", "")


def write_coordinate_suffix(
    job_dir: str | os.PathLike,
    columns: Mapping[str, Any],
    micrograph_names: Mapping[int, str],
    micrographs_star: str,
    pick_name: str = "autopick",
) -> list[str]:
    """Write coordinates the RELION 3.1 way: ``<job_dir>/<mic path less Type/jobNNN/>
    _<pick_name>.star`` per micrograph and ``<job_dir>/coords_suffix_<pick_name>.star``
    naming ``micrographs_star`` (relative to the RELION project folder), so that
    ``relion_preprocess --coord_dir <job_dir> --coord_suffix _<pick_name>.star`` and
    RELION's GUI take them. Returns the coordinate files written."""
    job_dir = os.fspath(job_dir)
    suffix = f"_{pick_name}.star"
    mid = np.asarray(columns["micrograph_id"], dtype=np.int64)
    unknown = sorted(set(np.unique(mid).tolist()) - set(micrograph_names))
    if unknown:
        raise ValidationError(f"coordinates of micrographs {unknown[:5]} with no name")
    order = np.argsort(mid, kind="stable")
    ids_sorted = mid[order]
    files = []
    for m_id, m_name in micrograph_names.items():
        lo, hi = np.searchsorted(ids_sorted, [m_id, m_id + 1])
        rows = order[lo:hi]
        out = coordinate_file_name(job_dir, m_name, suffix)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_coordinates(out, {k: np.asarray(v)[rows] for k, v in columns.items()})
        files.append(out)
    with open(os.path.join(job_dir, f"coords_suffix_{pick_name}.star"), "w") as fh:
        fh.write(micrographs_star + "\n")
    return files
