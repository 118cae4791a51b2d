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
from hpcem.convert.relion_star import ImageNames, StarBlock, is_column, read_star, write_star
from hpcem.errors import DataFormatError, ValidationError

#: hpcem PARTICLE field -> RELION 3.1 label (image/image_index: ``_rlnImageName``).
PARTICLE_LABELS = {
    "coord_x": "rlnCoordinateX",
    "coord_y": "rlnCoordinateY",
    "coord_score": "rlnAutopickFigureOfMerit",
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "phase_shift": "rlnPhaseShift",
    "ctf_fit_resolution": "rlnCtfMaxResolution",
    "ctf_fit_score": "rlnCtfFigureOfMerit",
    "rot": "rlnAngleRot",
    "tilt": "rlnAngleTilt",
    "psi": "rlnAnglePsi",
    "shift_x": "rlnOriginXAngst",
    "shift_y": "rlnOriginYAngst",
    "class_id": "rlnClassNumber",
    "half_set": "rlnRandomSubset",
    "optics_group": "rlnOpticsGroup",
}

#: hpcem CTF_MODEL field -> RELION label (micrographs_ctf.star of CtfFind).
CTF_LABELS = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "phase_shift": "rlnPhaseShift",
    "fit_resolution": "rlnCtfMaxResolution",
    "fit_score": "rlnCtfFigureOfMerit",
    "psd": "rlnCtfImage",
}

#: hpcem MICROGRAPH field -> RELION label.
MICROGRAPH_LABELS = {
    "image": "rlnMicrographName",
    "image_nodw": "rlnMicrographNameNoDW",
    "optics_group": "rlnOpticsGroup",
}

#: hpcem MOVIE field -> RELION label.
MOVIE_LABELS = {"image": "rlnMicrographMovieName", "optics_group": "rlnOpticsGroup"}

#: hpcem COORDINATE field -> RELION label (per-micrograph coordinate STARs).
COORDINATE_LABELS = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "score": "rlnAutopickFigureOfMerit",
}

_INT_FIELDS = {"class_id", "half_set", "optics_group", "image_index"}

#: The block each set kind is in (3.1+), and the label that identifies it (3.0).
_BLOCKS = {
    "particles": ("particles", "rlnImageName"),
    "micrographs": ("micrographs", "rlnMicrographName"),
    "movies": ("movies", "rlnMicrographMovieName"),
}


# --- shared pieces -----------------------------------------------------------------------


def relion_version(blocks: Mapping[str, StarBlock]) -> str:
    """``"3.0"`` (no optics block), ``"3.1"``, ``"4"`` or ``"5"`` (from ``# version``)."""
    if "optics" not in blocks:
        return "3.0"
    v = max(b.version for b in blocks.values())
    return "5" if v >= 50000 else "4" if v >= 40000 else "3.1"


def _data_block(path: str, blocks: Mapping[str, StarBlock], kind: str) -> StarBlock:
    """The block holding the items of ``kind``: by name (3.1+), else the first loop with
    the kind's key label (3.0 files name it ``data_`` or ``data_images``)."""
    name, key = _BLOCKS[kind]
    if name in blocks and blocks[name].loop:
        return blocks[name]
    for b in blocks.values():
        if b.loop and key in b.columns and b.name != "optics":
            return b
    found = ", ".join(f"data_{b}" for b in blocks) or "none"
    raise DataFormatError(
        f"{path}: no {kind} in this STAR file: no data_{name} block and no loop with a "
        f"_{key} column (blocks: {found})"
    )


def _require(path: str, block: StarBlock, labels: tuple[str, ...], what: str) -> None:
    missing = [lab for lab in labels if lab not in block.columns]
    if missing:
        raise DataFormatError(
            f"{path}, block data_{block.name}: missing mandatory column "
            f"{', '.join('_' + m for m in missing)} (needed for {what})"
        )


def _numeric(path: str, block: StarBlock, label: str) -> np.ndarray:
    col = block.columns[label]
    if col.dtype.kind not in "fiub":
        bad = next((i for i, v in enumerate(col) if not _is_number(v)), 0)
        raise DataFormatError(
            f"{path}, block data_{block.name}, row {bad + 1}: _{label} is {col[bad]!r}, "
            "not a number"
        )
    return col


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _optics(
    path: str,
    blocks: Mapping[str, StarBlock],
    block: StarBlock,
    kind: str,
    pixel_size_A: float | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], set[str]]:
    """(optics group per row, ACQUISITION columns, other optics labels, consumed labels)."""
    n = len(block)
    if "optics" in blocks:
        optics, rest = ro.optics_from_table(path, blocks["optics"].columns, kind)
        if pixel_size_A is not None:
            ro.check_pixel_size(path, optics["pixel_size_A"], pixel_size_A)
        if "rlnOpticsGroup" in block.columns:
            group = _numeric(path, block, "rlnOpticsGroup").astype(np.int32)
        elif len(optics["optics_group"]) == 1:
            group = np.full(n, int(optics["optics_group"][0]), dtype=np.int32)
        else:
            raise DataFormatError(
                f"{path}, block data_{block.name}: missing mandatory column _rlnOpticsGroup "
                f"(data_optics has {len(optics['optics_group'])} groups)"
            )
        ro.check_groups(path, block.name, group, optics)
        return group, optics, rest, {"rlnOpticsGroup"}
    return ro.optics_from_rows_30(path, block.name, block.columns, kind, pixel_size_A)


def _resolve(paths: np.ndarray, root: str | os.PathLike | None) -> np.ndarray:
    """Join relative paths to ``root`` (once per distinct path)."""
    import pandas as pd

    paths = np.asarray(paths, dtype=object)
    if root is None or not len(paths):
        return paths
    codes, uniques = pd.factorize(paths)
    root = os.fspath(root)
    joined = np.asarray(
        [p if not p or os.path.isabs(p) else os.path.join(root, p) for p in uniques], dtype=object
    )
    return joined[codes]


def missing_files(paths: Any, root: str | os.PathLike | None = None) -> list[str]:
    """The distinct files among ``paths`` (joined to ``root``) that do not exist."""
    import pandas as pd

    uniques = pd.unique(np.asarray(paths, dtype=object))
    resolved = _resolve(np.asarray(uniques, dtype=object), root)
    return [str(p) for p in resolved if p and not os.path.exists(p)]


def require_files(path: str, paths: Any, root: str | os.PathLike | None = None) -> None:
    """Raise DataFormatError naming the first missing file and how many are missing."""
    missing = missing_files(paths, root)
    if missing:
        raise DataFormatError(
            f"{path}: {len(missing)} file(s) it refers to do not exist, e.g. {missing[0]} "
            "(give root= the RELION project folder the paths are relative to)"
        )


def image_names(path: str, block: str, names: Any) -> tuple[np.ndarray, np.ndarray]:
    """(0-based index, stack) of an image-name column as :func:`read_star` gives it
    (already split, or text)."""
    if isinstance(names, ImageNames):
        return names.index0.astype(np.int32), names.stacks
    return split_image_names(path, block, names)


def split_image_names(path: str, block: str, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RELION ``NNNNNN@stack`` names -> (0-based index, stack path); a name without ``@``
    is a single-image file (index 0). Vectorised over the names as a byte matrix: rows are
    grouped by the position of ``@`` (one group when indices have a fixed width)."""
    n = len(names)
    if n == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=object)
    raw = np.asarray(names, dtype=object).astype("S")
    width = raw.dtype.itemsize
    mat = raw.view(np.uint8).reshape(n, width)
    has_at = mat[:, :24] == 64  # the index has at most a few digits
    at = np.where(has_at.any(axis=1), np.argmax(has_at, axis=1), -1)
    index = np.zeros(n, dtype=np.int64)
    stacks = np.empty(n, dtype=object)
    for a in np.unique(at):
        rows = slice(None) if len(np.unique(at)) == 1 else np.nonzero(at == a)[0]
        sub = mat[rows]
        if a == 0:
            i = int(np.argmax(at == 0))
            raise DataFormatError(
                f"{path}, block data_{block}, row {i + 1}: image name {names[i]!r} has no index"
            )
        if a > 0:
            digits = sub[:, :a].astype(np.int64) - 48
            bad = ((digits < 0) | (digits > 9)).any(axis=1)
            if bad.any():
                i = int(np.arange(n)[rows][np.argmax(bad)])
                raise DataFormatError(
                    f"{path}, block data_{block}, row {i + 1}: image name {names[i]!r} is not "
                    "NNNNNN@stack"
                )
            index[rows] = digits @ (10 ** np.arange(a - 1, -1, -1, dtype=np.int64)) - 1
        tail = sub[:, a + 1 :]
        stacks[rows] = _decode_runs(tail)
    if np.any(index < 0):
        i = int(np.argmax(index < 0))
        raise DataFormatError(
            f"{path}, block data_{block}, row {i + 1}: image index 0 in {names[i]!r} "
            "(RELION indices start at 1)"
        )
    return index.astype(np.int32), stacks


def _decode_runs(mat: np.ndarray) -> np.ndarray:
    """Rows of a byte matrix (NUL-padded names) -> str objects. Particles of one stack are
    usually consecutive, so equal neighbours are found with one vectorised compare and
    only the first row of each run is decoded (then factorized, for runs that repeat)."""
    import pandas as pd

    n, width = mat.shape
    new = np.ones(n, dtype=bool)
    if n > 1 and width:
        words = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
        words[:, :width] = mat
        words = words.view(np.uint64)  # compare 8 bytes at a time
        new[1:] = (words[1:] != words[:-1]).any(axis=1)
    heads = np.nonzero(new)[0]
    head_bytes = mat[heads].view(f"S{mat.shape[1]}").ravel() if mat.shape[1] else None
    if head_bytes is None:
        return np.full(n, "", dtype=object)
    codes, uniques = pd.factorize(head_bytes)
    decoded = np.asarray([u.decode("utf-8") for u in uniques], dtype=object)
    run = np.cumsum(new) - 1
    return decoded[codes][run]


def _link_micrographs(
    path: str, block: str, names: np.ndarray, micrograph_ids: Mapping[str, int] | None
) -> np.ndarray | None:
    """Micrograph ids from names through ``micrograph_ids`` (None when not given)."""
    import pandas as pd

    if micrograph_ids is None:
        return None
    codes, uniques = pd.factorize(np.asarray(names, dtype=object))
    ids = np.empty(len(uniques), dtype=np.int64)
    for i, u in enumerate(uniques):
        mid = micrograph_ids.get(u)
        if mid is None:
            mid = micrograph_ids.get(os.path.basename(str(u)))
        if mid is None:
            raise DataFormatError(
                f"{path}, block data_{block}: micrograph {u!r} is not in the micrograph set "
                f"({len(micrograph_ids)} micrographs)"
            )
        ids[i] = mid
    return ids[codes]


def _extra_items(block: StarBlock, consumed: set[str]) -> dict[str, np.ndarray]:
    return {lab: v for lab, v in block.columns.items() if lab not in consumed}


def _finish(
    set_type: str,
    path: str,
    cols: dict[str, Any],
    optics: dict[str, Any],
    extra_items: dict[str, Any],
    extra_optics: dict[str, Any],
    version: str,
    block: str,
) -> Converted:
    extra: dict[str, Any] = dict(extra_items)
    extra["optics"] = extra_optics
    extra["relion_version"] = version
    extra["relion_block"] = block
    return Converted(set_type, cols, optics, extra, path)


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


def _relative(paths: Any, root: str | os.PathLike | None) -> np.ndarray:
    """Paths relative to ``root`` where they are inside it (once per distinct path)."""
    import pandas as pd

    paths = np.asarray(paths, dtype=object)
    codes, uniques = pd.factorize(paths, use_na_sentinel=False)
    out = []
    r = None if root is None else os.path.abspath(os.fspath(root))
    for p in uniques:
        p = "" if p is None else os.fspath(p)
        if r is not None and os.path.isabs(p) and (p == r or p.startswith(r + os.sep)):
            p = os.path.relpath(p, r)
        out.append(p)
    return np.asarray(out, dtype=object)[codes] if len(codes) else np.empty(0, dtype=object)


def _micrograph_name_column(
    columns: Mapping[str, Any],
    extra: Mapping[str, Any],
    micrograph_names: Mapping[int, str] | None,
    n: int,
) -> np.ndarray | None:
    import pandas as pd

    if micrograph_names is not None and "micrograph_id" in columns:
        ids = np.asarray(columns["micrograph_id"])
        codes, uniques = pd.factorize(ids)
        missing = [int(u) for u in uniques if int(u) not in micrograph_names]
        if missing:
            raise ValidationError(f"micrograph ids {missing[:5]} have no name in micrograph_names")
        return np.asarray([micrograph_names[int(u)] for u in uniques], dtype=object)[codes]
    if "rlnMicrographName" in extra and len(extra["rlnMicrographName"]) == n:
        return np.asarray(extra["rlnMicrographName"], dtype=object)
    return None


def _item_extra(extra: Mapping[str, Any] | None, n: int, table: Mapping[str, Any]) -> dict:
    """Per-item RELION columns of ``extra`` not yet in ``table``."""
    out = {}
    for lab, v in (extra or {}).items():
        if lab.startswith("rln") and lab not in table and is_column(v) and len(v) == n:
            out[lab] = v
    return out


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


def _out_values(field: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    return arr.astype(np.int64) if field in _INT_FIELDS else arr.astype(np.float64)


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
