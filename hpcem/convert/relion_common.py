"""Pieces shared by the RELION readers and writers (:mod:`hpcem.convert.relion` is the
public face): the label maps, finding a file's data block, its optics, image names and
paths, micrograph names, and what is kept in ``extra``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert import relion_optics as ro
from hpcem.convert.relion_star import ImageNames, StarBlock, is_column
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
    """Join relative paths to ``root`` (once per distinct path); RELION's ``None`` (no
    file) becomes ``""``, hpcem's empty path."""
    import pandas as pd

    paths = np.asarray(paths, dtype=object)
    if not len(paths):
        return paths
    codes, uniques = pd.factorize(paths, use_na_sentinel=False)
    base = None if root is None else os.fspath(root)
    joined = []
    for p in uniques:
        p = "" if p is None or str(p) in ("", "None") else str(p)
        if p and base is not None and not os.path.isabs(p):
            p = os.path.join(base, p)
        joined.append(p)
    return np.asarray(joined, dtype=object)[codes]


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
    """Micrograph ids from names through ``micrograph_ids`` (None when not given): the
    name as written first, then its file name alone (for a mapping built from paths held
    differently, e.g. absolute ones of an hpcem set)."""
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


def _out_values(field: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    return arr.astype(np.int64) if field in _INT_FIELDS else arr.astype(np.float64)
