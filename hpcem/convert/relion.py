"""RELION STAR files <-> hpcem sets: particles, micrographs, movies, CTFs, coordinates
(RELION 3.0, 3.1, 4 and 5; written as 3.1, or 3.0 on request).

Every reader returns a :class:`~hpcem.convert.Converted`; every writer takes the pieces
of one. The label maps below are the whole mapping (``docs/convert_relion.md`` shows it
as a table). What a file has beyond hpcem's fields is kept in ``extra`` by its RELION
label (without the leading underscore; e.g. ``extra["rlnMicrographName"]``,
``extra["rlnMaxValueProbDistribution"]``), the optics labels beyond the ACQUISITION fields
in ``extra["optics"]`` (RELION 5 beam tilt, Zernike, MagMat), and the file's RELION
version (``"3.0"``, ``"3.1"``, ``"4"``, ``"5"``) in ``extra["relion_version"]``; writers
write the per-item ``extra`` columns back, so read -> write -> read keeps them.

Conventions (docs/conventions.md): hpcem's are RELION 3.1's, so values are copied as
they are except for RELION 3.0's shifts (``_rlnOriginX`` in pixels -> Å) and image
indices (RELION's ``000001@stack`` is 1-based, hpcem's ``image_index`` 0-based).
Image paths are kept as written, joined to ``root`` when one is given (RELION paths are
relative to the RELION project folder).

Micrograph ids: RELION links items by micrograph *name*. Readers keep the name
(``extra["rlnMicrographName"]``) and fill ``micrograph_id`` only when given a
``micrograph_ids`` mapping (name -> id of an hpcem micrograph set); a name missing from
it is an error. Writers take ``micrograph_names`` (id -> name) the other way round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert import relion_optics as ro
from hpcem.convert.relion_common import (
    _INT_FIELDS,
    COORDINATE_LABELS,
    CTF_LABELS,
    MICROGRAPH_LABELS,
    MOVIE_LABELS,
    PARTICLE_LABELS,
    _data_block,
    _extra_items,
    _finish,
    _item_extra,
    _link_micrographs,
    _micrograph_name_column,
    _numeric,
    _optics,
    _out_values,
    _relative,
    _require,
    _resolve,
    image_names,
    missing_files,
    relion_version,
    require_files,
    split_image_names,
)
from hpcem.convert.relion_coordinates import (
    coordinate_file_name,
    read_coordinate_list,
    read_coordinate_suffix,
    read_coordinates,
    write_coordinate_files,
    write_coordinate_suffix,
    write_coordinates,
)
from hpcem.convert.relion_micrographs import (
    read_ctfs,
    read_micrographs,
    read_movies,
    write_micrographs,
    write_movies,
)
from hpcem.convert.relion_star import ImageNames, is_column, read_star, write_star
from hpcem.errors import ValidationError

__all__ = [
    "COORDINATE_LABELS",
    "CTF_LABELS",
    "MICROGRAPH_LABELS",
    "MOVIE_LABELS",
    "PARTICLE_LABELS",
    "coordinate_file_name",
    "image_names",
    "is_column",
    "missing_files",
    "read_coordinate_list",
    "read_coordinate_suffix",
    "read_coordinates",
    "read_ctfs",
    "read_micrographs",
    "read_movies",
    "read_particles",
    "relion_version",
    "require_files",
    "split_image_names",
    "write_coordinate_files",
    "write_coordinate_suffix",
    "write_coordinates",
    "write_micrographs",
    "write_movies",
    "write_particles",
]

# --- particles ---------------------------------------------------------------------------


def read_particles(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    pixel_size_A: float | None = None,
    micrograph_ids: Mapping[str, int] | None = None,
    check_files: bool = False,
) -> Converted:
    """Read a RELION particle STAR (3.0, 3.1, 4, 5) into PARTICLE columns and optics.

    Parameters
    ----------
    root
        Folder the image paths are relative to (the RELION project folder); None keeps
        them as written.
    pixel_size_A
        Pixel size for RELION 3.0 files that carry none (checked against the file's own
        when it has one: a difference over 0.1 % is an error).
    micrograph_ids
        Micrograph name -> id of an hpcem micrograph set, to fill ``micrograph_id``.
    check_files
        Raise DataFormatError when image stacks do not exist (the first one and how many).
    """
    path = os.fspath(path)
    blocks = read_star(path)
    block = _data_block(path, blocks, "particles")
    _require(path, block, ("rlnImageName",), "particles (the image of each particle)")
    version = relion_version(blocks)
    group, optics, extra_optics, consumed = _optics(path, blocks, block, "particles", pixel_size_A)
    index, stacks = image_names(path, block.name, block.columns["rlnImageName"])
    cols: dict[str, Any] = {"image": _resolve(stacks, root), "image_index": index}
    consumed |= {"rlnImageName"}
    if check_files:
        require_files(path, cols["image"])
    for field, label in PARTICLE_LABELS.items():
        if label in block.columns and field != "optics_group":
            cols[field] = _numeric(path, block, label)
            consumed.add(label)
    cols["optics_group"] = group
    if "shift_x" not in cols and "rlnOriginX" in block.columns:
        pix = ro.per_row(optics, "pixel_size_A", group)
        cols["shift_x"] = _numeric(path, block, "rlnOriginX") * pix
        cols["shift_y"] = _numeric(path, block, "rlnOriginY") * pix
        consumed |= {"rlnOriginX", "rlnOriginY"}
    if "rlnMicrographName" in block.columns:
        ids = _link_micrographs(
            path, block.name, block.columns["rlnMicrographName"], micrograph_ids
        )
        if ids is not None:
            cols["micrograph_id"] = ids
    if "image_size_px" not in optics:
        optics["image_size_px"] = np.zeros(len(optics["optics_group"]), dtype=np.int32)
    cols = {k: (v.astype(np.int32) if k in _INT_FIELDS else v) for k, v in cols.items()}
    if "half_set" in cols:
        cols["half_set"] = cols["half_set"].astype(np.int8)
    return _finish(
        "hpcem.SetOfParticles",
        path,
        cols,
        optics,
        _extra_items(block, consumed),
        extra_optics,
        version,
        block.name,
    )


def write_particles(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    version: str = "3.1",
    root: str | os.PathLike | None = None,
    micrograph_names: Mapping[int, str] | None = None,
) -> None:
    """Write PARTICLE columns as a RELION particle STAR.

    ``version="3.1"`` (default) writes ``data_optics`` + ``data_particles`` with shifts in
    Å; ``"3.0"`` writes one ``data_`` loop with per-row optics (``_rlnMagnification`` =
    10000 and ``_rlnDetectorPixelSize`` = pixel size in µm × 10⁻⁴, so that RELION derives
    the same pixel size) and ``_rlnOriginX/Y`` in pixels. Image paths inside ``root`` are
    written relative to it. ``extra``: per-item RELION labels to write as well (e.g. those
    a reader kept) and ``extra["optics"]``. Floats are written with 6 decimals.
    """
    if version not in ("3.0", "3.1"):
        raise ValidationError(f"RELION STAR version {version!r}: write '3.1' or '3.0'")
    if "image" not in columns or "image_index" not in columns:
        raise ValidationError("writing particles needs the image and image_index columns")
    n = len(columns["image"])
    group = np.asarray(columns.get("optics_group", np.ones(n)), dtype=np.int64)
    pix = ro.per_row(optics, "pixel_size_A", group)
    table: dict[str, Any] = {
        "rlnImageName": ImageNames(
            np.asarray(columns["image_index"]), _relative(columns["image"], root)
        )
    }
    mics = _micrograph_name_column(columns, extra or {}, micrograph_names, n)
    if mics is not None:
        table["rlnMicrographName"] = mics
    for field, label in PARTICLE_LABELS.items():
        if field in columns and field not in ("optics_group", "shift_x", "shift_y"):
            table[label] = _out_values(field, columns[field])
    if version == "3.1":
        for field, label in (("shift_x", "rlnOriginXAngst"), ("shift_y", "rlnOriginYAngst")):
            if field in columns:
                table[label] = np.asarray(columns[field], dtype=np.float64)
        table["rlnOpticsGroup"] = group
        table.update(_item_extra(extra, n, table))
        otable = ro.optics_table(optics, "particles", (extra or {}).get("optics"))
        write_star(path, [("optics", otable), ("particles", table)], version=30001)
        return
    for field, label in (("shift_x", "rlnOriginX"), ("shift_y", "rlnOriginY")):
        if field in columns:
            table[label] = np.asarray(columns[field], dtype=np.float64) / pix
    for field in ("voltage_kV", "spherical_aberration_mm", "amplitude_contrast"):
        if field in optics:
            table[ro.OPTICS_LABELS[field]] = ro.per_row(optics, field, group).astype(np.float64)
    table["rlnMagnification"] = np.full(n, 10000.0)
    table["rlnDetectorPixelSize"] = pix.astype(np.float64)
    table.update(_item_extra(extra, n, table))
    for lab, v in ((extra or {}).get("optics") or {}).items():
        if lab in ro.GROUP_LABELS_30 and lab not in table and len(v) == len(optics["optics_group"]):
            table[lab] = ro.per_row({**optics, lab: np.asarray(v)}, lab, group)
    write_star(path, [("", table)], version=None)
