"""RELION micrograph, movie and CTF STARs <-> hpcem sets (``movies.star`` of Import,
``corrected_micrographs.star`` of motion correction, ``micrographs_ctf.star`` of CtfFind).
Public through :mod:`hpcem.convert.relion`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert import relion_optics as ro
from hpcem.convert.relion_common import (
    _BLOCKS,
    CTF_LABELS,
    MICROGRAPH_LABELS,
    MOVIE_LABELS,
    _data_block,
    _extra_items,
    _finish,
    _item_extra,
    _link_micrographs,
    _numeric,
    _optics,
    _relative,
    _require,
    _resolve,
    relion_version,
    require_files,
)
from hpcem.convert.relion_star import StarBlock, read_star, write_star
from hpcem.errors import ValidationError

# --- micrographs, movies and CTFs ----------------------------------------------------------


def _read_mic_like(
    path: str,
    kind: str,
    labels: Mapping[str, str],
    root: str | os.PathLike | None,
    pixel_size_A: float | None,
    check: bool,
) -> tuple[StarBlock, dict, dict, dict, set, str]:
    blocks = read_star(path)
    block = _data_block(path, blocks, kind)
    key = _BLOCKS[kind][1]
    _require(path, block, (key,), kind)
    group, optics, extra_optics, consumed = _optics(path, blocks, block, kind, pixel_size_A)
    cols: dict[str, Any] = {}
    for field, label in labels.items():
        if label in block.columns and field != "optics_group":
            cols[field] = _resolve(block.columns[label], root)
            consumed.add(label)
    if check:
        require_files(path, cols["image"])
    cols["optics_group"] = group
    return block, cols, optics, extra_optics, consumed, relion_version(blocks)


def read_micrographs(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    pixel_size_A: float | None = None,
    check_files: bool = False,
) -> Converted:
    """Read a RELION micrograph STAR (``corrected_micrographs.star``,
    ``micrographs_ctf.star``, ...) into MICROGRAPH columns and optics. The motion-
    correction per-micrograph metadata (``_rlnMicrographMetadata``), the movie name and
    CTF columns are kept in ``extra`` (read the CTFs with :func:`read_ctfs`)."""
    path = os.fspath(path)
    block, cols, optics, extra_optics, consumed, version = _read_mic_like(
        path, "micrographs", MICROGRAPH_LABELS, root, pixel_size_A, check_files
    )
    return _finish(
        "hpcem.SetOfMicrographs",
        path,
        cols,
        optics,
        _extra_items(block, consumed),
        extra_optics,
        version,
        block.name,
    )


def read_movies(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    pixel_size_A: float | None = None,
    check_files: bool = False,
) -> Converted:
    """Read a RELION movie STAR (``movies.star`` of Import) into MOVIE columns and optics
    (pixel size: ``_rlnMicrographOriginalPixelSize``)."""
    path = os.fspath(path)
    block, cols, optics, extra_optics, consumed, version = _read_mic_like(
        path, "movies", MOVIE_LABELS, root, pixel_size_A, check_files
    )
    return _finish(
        "hpcem.SetOfMovies",
        path,
        cols,
        optics,
        _extra_items(block, consumed),
        extra_optics,
        version,
        block.name,
    )


def read_ctfs(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    pixel_size_A: float | None = None,
    micrograph_ids: Mapping[str, int] | None = None,
) -> Converted:
    """Read the CTFs of a RELION micrograph STAR (``micrographs_ctf.star``) into CTF_MODEL
    columns; ``micrograph_id`` from ``micrograph_ids`` (name -> id) when given. The
    spectrum file (``_rlnCtfImage``, RELION's ``name.ctf:mrc``) becomes ``psd``."""
    path = os.fspath(path)
    blocks = read_star(path)
    block = _data_block(path, blocks, "micrographs")
    _require(
        path,
        block,
        ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"),
        "CTFs",
    )
    group, optics, extra_optics, consumed = _optics(
        path, blocks, block, "micrographs", pixel_size_A
    )
    cols: dict[str, Any] = {}
    for field, label in CTF_LABELS.items():
        if label not in block.columns:
            continue
        if field == "psd":
            psd = np.asarray([str(p).removesuffix(":mrc") for p in block.columns[label]])
            cols[field] = _resolve(psd.astype(object), root)
        else:
            cols[field] = _numeric(path, block, label).astype(np.float64)
        consumed.add(label)
    ids = _link_micrographs(path, block.name, block.columns["rlnMicrographName"], micrograph_ids)
    if ids is not None:
        cols["micrograph_id"] = ids
    cols["estimator"] = np.full(len(block), "relion", dtype=object)
    extra_items = _extra_items(block, consumed)
    extra_items["rlnOpticsGroup"] = group
    return _finish(
        "hpcem.SetOfCTFs",
        path,
        cols,
        optics,
        extra_items,
        extra_optics,
        relion_version(blocks),
        block.name,
    )


def write_micrographs(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    ctfs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> None:
    """Write MICROGRAPH columns (and, with ``ctfs``, their CTF_MODEL columns: one row per
    micrograph, in the same order) as a RELION 3.1 micrograph STAR
    (``micrographs_ctf.star`` style when CTFs are given)."""
    if "image" not in columns:
        raise ValidationError("writing micrographs needs the image column")
    n = len(columns["image"])
    table: dict[str, Any] = {}
    for field, label in MICROGRAPH_LABELS.items():
        if field == "optics_group":
            continue
        if field in columns and any(str(p) for p in columns[field]):
            table[label] = _relative(columns[field], root)
    table["rlnOpticsGroup"] = np.asarray(columns.get("optics_group", np.ones(n)), dtype=np.int64)
    if ctfs is not None:
        _add_ctf_columns(table, ctfs, n, root)
    table.update(_item_extra(extra, n, table))
    otable = ro.optics_table(optics, "micrographs", (extra or {}).get("optics"))
    write_star(path, [("optics", otable), ("micrographs", table)], version=30001)


def _add_ctf_columns(table: dict, ctfs: Mapping[str, Any], n: int, root: Any) -> None:
    for field, label in CTF_LABELS.items():
        if field not in ctfs:
            continue
        if len(ctfs[field]) != n:
            raise ValidationError(f"CTF column {field} has {len(ctfs[field])} rows, not {n}")
        if field == "psd":
            if any(str(p) for p in ctfs[field]):
                rel = _relative(ctfs[field], root)
                table[label] = np.asarray([f"{p}:mrc" for p in rel], dtype=object)
        else:
            table[label] = np.asarray(ctfs[field], dtype=np.float64)


def write_movies(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> None:
    """Write MOVIE columns as a RELION 3.1 ``movies.star`` (``data_optics`` +
    ``data_movies``), as RELION's Import writes it."""
    if "image" not in columns:
        raise ValidationError("writing movies needs the image column")
    n = len(columns["image"])
    table: dict[str, Any] = {"rlnMicrographMovieName": _relative(columns["image"], root)}
    table["rlnOpticsGroup"] = np.asarray(columns.get("optics_group", np.ones(n)), dtype=np.int64)
    table.update(_item_extra(extra, n, table))
    otable = ro.optics_table(optics, "movies", (extra or {}).get("optics"))
    write_star(path, [("optics", otable), ("movies", table)], version=30001)
