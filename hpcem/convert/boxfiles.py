"""Per-micrograph coordinate files: crYOLO ``.cbox``, EMAN ``.box`` and plain ``x y [score]``.

All three hold the picks of one micrograph (named by the file's stem unless told).
``.box`` and ``.cbox`` give the **lower corner** of each box and its width and height:
the particle centre is ``corner + size / 2`` (EMAN; RELION's ``.box`` reader in
``src/preprocessing.cpp``; napari-boxmanager's ``.cbox`` reader). Plain text gives the
centre. hpcem coordinates are centres in pixels of the micrograph, 0-based
(``docs/conventions.md``); no y flip is applied (RELION reads ``.box`` unflipped).

Readers return COORDINATE columns; ``micrograph_id`` comes from ``micrograph_names``
(micrograph name -> id of the micrograph set the picks belong to), matched on the full
name first, then on the stem (``Micrographs/a.mrc`` matches ``a.cbox``); a file whose
micrograph is not in it is a :class:`DataFormatError` naming the micrograph.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hpcem.convert import Converted
from hpcem.convert import conventions as cv
from hpcem.errors import DataFormatError, ValidationError

#: crYOLO ``.cbox`` columns that must be present (without the leading underscore).
CBOX_REQUIRED = ("CoordinateX", "CoordinateY", "Width", "Height")
#: every column crYOLO 1.8+ writes, in its order (napari-boxmanager writes the same)
CBOX_COLUMNS = (
    "CoordinateX",
    "CoordinateY",
    "CoordinateZ",
    "Width",
    "Height",
    "Depth",
    "EstWidth",
    "EstHeight",
    "Confidence",
    "NumBoxes",
    "Angle",
)


def micrograph_stem(name: str | os.PathLike) -> str:
    """File name without folders and without its last extension (``a/b.mrc`` -> ``b``)."""
    base = os.path.basename(os.fspath(name))
    stem, _ = os.path.splitext(base)
    return stem


def match_micrographs(
    source: Any, names: np.ndarray, micrograph_names: Mapping[str, int] | None
) -> np.ndarray:
    """Micrograph id of every row's micrograph ``names`` (str array), -1 without a set.

    Matching is on the full name, then on the stem; stems shared by two micrographs of
    the set are not used. A name that matches nothing is a :class:`DataFormatError`
    naming ``source`` and the micrograph.
    """
    names = np.asarray(names, dtype=object)
    if micrograph_names is None:
        return np.full(len(names), -1, dtype=np.int64)
    full = {str(k): int(v) for k, v in micrograph_names.items()}
    stems: dict[str, int] = {}
    shared: set[str] = set()
    for key, value in full.items():
        stem = micrograph_stem(key)
        if stem in stems and stems[stem] != value:
            shared.add(stem)
        stems[stem] = value
    for stem in shared:
        del stems[stem]
    uniq, inverse = np.unique(names.astype(str), return_inverse=True)
    ids = np.empty(len(uniq), dtype=np.int64)
    for i, name in enumerate(uniq.tolist()):  # one lookup per distinct micrograph
        if name in full:
            ids[i] = full[name]
        elif micrograph_stem(name) in stems:
            ids[i] = stems[micrograph_stem(name)]
        else:
            known = sorted(full)[:5]
            raise DataFormatError(
                f"{source}: micrograph '{name}' is not in the given micrograph set "
                f"({len(full)} micrographs, e.g. {', '.join(known)})"
            )
    return ids[inverse]


def _coordinates(
    path: Any,
    micrograph: str | None,
    micrograph_names: Mapping[str, int] | None,
    x: np.ndarray,
    y: np.ndarray,
    score: np.ndarray | None,
    extra: dict[str, Any],
) -> Converted:
    name = micrograph if micrograph is not None else micrograph_stem(path)
    n = len(x)
    ids = match_micrographs(path, np.full(n, name, dtype=object), micrograph_names)
    if micrograph_names is not None and n == 0:
        match_micrographs(path, np.array([name], dtype=object), micrograph_names)
    cols: dict[str, Any] = {"micrograph_id": ids, "x": x, "y": y}
    if score is not None:
        cols["score"] = score
    extra["micrograph"] = name
    return Converted("hpcem.SetOfCoordinates", cols, {}, extra, os.fspath(path))


# --- crYOLO .cbox --------------------------------------------------------------------------


def _is_star(path: Any) -> bool:
    """True when the file has a STAR ``data_`` block (crYOLO 1.8+), False for plain columns."""
    try:
        with open(os.fspath(path), "rb") as fh:
            head = fh.read(65536)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    return b"data_" in head


def _read_old_cbox(
    path: Any, micrograph: str | None, micrograph_names: Mapping[str, int] | None
) -> Converted:
    """crYOLO < 1.8 ``.cbox``: ``x y w h confidence [more]`` per line, lower corner."""
    table = _read_numeric_table(path, 5, "crYOLO .cbox")
    x = cv.box_corner_to_centre(table[:, 0], table[:, 2])
    y = cv.box_corner_to_centre(table[:, 1], table[:, 3])
    extra: dict[str, Any] = {"Width": table[:, 2], "Height": table[:, 3]}
    for k in range(5, table.shape[1]):
        extra[f"column_{k + 1}"] = table[:, k]
    return _coordinates(path, micrograph, micrograph_names, x, y, table[:, 4], extra)


def read_cbox(
    path: str | os.PathLike,
    micrograph: str | None = None,
    micrograph_names: Mapping[str, int] | None = None,
) -> Converted:
    """Read a crYOLO ``.cbox`` (STAR: ``data_global``, ``data_cryolo`` loop).

    ``x, y`` = ``_CoordinateX/Y + _Width/_Height / 2`` (box corner -> centre), ``score``
    = ``_Confidence``; ``extra`` keeps the box size, crYOLO's estimated size, the other
    columns of ``data_cryolo`` by name, and ``cbox_format_version``. crYOLO before 1.8
    wrote ``.cbox`` as plain columns ``x y w h confidence`` (corner again): read the same.
    """
    import starfile

    if not _is_star(path):
        return _read_old_cbox(path, micrograph, micrograph_names)
    try:
        blocks = starfile.read(os.fspath(path), always_dict=True)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a crYOLO .cbox (STAR) file: {exc}") from None
    table = blocks.get("cryolo")
    if not isinstance(table, pd.DataFrame):
        raise DataFormatError(f"{path}: no 'data_cryolo' loop (blocks: {', '.join(blocks)})")
    missing = [c for c in CBOX_REQUIRED if c not in table.columns]
    if missing:
        raise DataFormatError(
            f"{path}: block data_cryolo lacks column(s) "
            f"{', '.join('_' + c for c in missing)} (has {', '.join(table.columns)})"
        )
    values = {c: pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in table}
    for c in CBOX_REQUIRED:
        bad = np.flatnonzero(~np.isfinite(values[c]))
        if bad.size:
            raise DataFormatError(
                f"{path}: block data_cryolo, row {int(bad[0]) + 1}: _{c} is not a number"
            )
    x = cv.box_corner_to_centre(values["CoordinateX"], values["Width"])
    y = cv.box_corner_to_centre(values["CoordinateY"], values["Height"])
    score = values.get("Confidence")
    extra: dict[str, Any] = {c: v for c, v in values.items() if c not in ("Confidence",)}
    glob = blocks.get("global")
    if isinstance(glob, dict) and "cbox_format_version" in glob:
        extra["cbox_format_version"] = glob["cbox_format_version"]
    return _coordinates(path, micrograph, micrograph_names, x, y, score, extra)


def _box_sizes(box_size_px: Any, n: int) -> np.ndarray:
    size = np.broadcast_to(np.asarray(box_size_px, dtype=np.float64), (n,)).copy()
    if np.any(~(size > 0)):
        raise ValidationError(f"box size must be > 0 px, got {box_size_px}")
    return size


def _text_table(frame: pd.DataFrame, na_rep: str) -> str:
    """Space-separated rows, floats as Python's shortest round-trip repr (exact)."""
    buf = io.StringIO()
    frame.to_csv(buf, sep=" ", header=False, index=False, na_rep=na_rep, lineterminator="\n")
    return buf.getvalue()


def write_cbox(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    box_size_px: Any,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write COORDINATE columns (``x``, ``y``, optional ``score``) as a crYOLO ``.cbox``.

    ``box_size_px``: one size or one per row (the ``_Width``/``_Height``); ``extra`` may
    give crYOLO's other columns by name (``EstWidth``, ``NumBoxes``, ...), written as they
    are; missing ones are ``<NA>`` as crYOLO writes them. Values are written exactly
    (shortest repr), so a read gives back the same numbers.
    """
    x = np.asarray(columns["x"], dtype=np.float64)
    y = np.asarray(columns["y"], dtype=np.float64)
    n = len(x)
    size = _box_sizes(box_size_px, n)
    extra = dict(extra or {})
    data: dict[str, Any] = {}
    for c in CBOX_COLUMNS:
        if c in extra and np.ndim(extra[c]) == 1 and len(extra[c]) == n:
            data[c] = np.asarray(extra[c], dtype=np.float64)
        else:
            data[c] = np.full(n, np.nan)
    data["Width"] = size
    data["Height"] = size
    data["CoordinateX"] = cv.box_centre_to_corner(x, size)
    data["CoordinateY"] = cv.box_centre_to_corner(y, size)
    if "score" in columns:
        data["Confidence"] = np.asarray(columns["score"], dtype=np.float64)
    header = ["", "data_global", "", "_cbox_format_version 1.0", "", "data_cryolo", "", "loop_"]
    header += [f"_{c} #{i + 1}" for i, c in enumerate(CBOX_COLUMNS)]
    body = _text_table(pd.DataFrame(data), "<NA>")
    footer = "\ndata_cryolo_include\n\nloop_\n_slice_index #1\n"
    with open(os.fspath(path), "w", encoding="utf-8") as fh:
        fh.write("\n".join(header) + "\n" + body + footer)


# --- EMAN .box and plain text -----------------------------------------------------------------


def _read_numeric_table(path: Any, min_columns: int, what: str) -> np.ndarray:
    """Whitespace table of numbers (``#`` comments and blank lines skipped), ``(n, k)``.

    Every row needs the same number (>= ``min_columns``) of numeric columns; the error
    names the file and the first line that breaks the rule.
    """
    try:
        with open(os.fspath(path), encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not a text {what} file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(io.StringIO(text), dtype=np.float64, comments="#", ndmin=2)
    except ValueError:
        table = None
    if table is not None and table.size == 0:
        return np.zeros((0, min_columns))
    if table is not None and table.shape[1] >= min_columns:
        return table
    # the error path names the line (only reached for a bad file)
    width = None
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            [float(w) for w in words]
        except ValueError:
            raise DataFormatError(f"{path}, line {number}: not numbers: {line.strip()!r}") from None
        if len(words) < min_columns:
            raise DataFormatError(
                f"{path}, line {number}: {len(words)} column(s), a {what} needs at least "
                f"{min_columns}"
            )
        if width is not None and len(words) != width:
            raise DataFormatError(
                f"{path}, line {number}: {len(words)} columns, earlier lines have {width}"
            )
        width = len(words)
    raise DataFormatError(f"{path}: cannot read as a {what} table")


def read_box(
    path: str | os.PathLike,
    micrograph: str | None = None,
    micrograph_names: Mapping[str, int] | None = None,
) -> Converted:
    """Read an EMAN ``.box`` file (``x y w h`` per line, lower corner of the box).

    Centre = corner + size / 2. A fifth column (EMAN's flag / some pickers' score) is kept
    in ``extra["column_5"]``.
    """
    table = _read_numeric_table(path, 4, "EMAN .box")
    x = cv.box_corner_to_centre(table[:, 0], table[:, 2])
    y = cv.box_corner_to_centre(table[:, 1], table[:, 3])
    extra: dict[str, Any] = {"Width": table[:, 2], "Height": table[:, 3]}
    for k in range(4, table.shape[1]):
        extra[f"column_{k + 1}"] = table[:, k]
    return _coordinates(path, micrograph, micrograph_names, x, y, None, extra)


def _format_numbers(values: np.ndarray, decimals: int | None) -> pd.Series:
    if decimals is None:
        return pd.Series(values)
    if decimals == 0:
        return pd.Series(np.rint(values).astype(np.int64))
    return pd.Series(np.round(values, decimals))


def write_box(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    box_size_px: Any,
    decimals: int | None = None,
) -> None:
    """Write COORDINATE columns as an EMAN ``.box`` (``corner_x corner_y w h``).

    ``decimals=None`` writes exact floats (shortest repr: read back identical);
    ``decimals=0`` writes integers, what EMAN and RELION's ``.box`` reader
    (``textToInteger``) expect — the corner is then rounded to the nearest pixel.
    """
    x = np.asarray(columns["x"], dtype=np.float64)
    y = np.asarray(columns["y"], dtype=np.float64)
    size = _box_sizes(box_size_px, len(x))
    frame = pd.DataFrame(
        {
            "x": _format_numbers(cv.box_centre_to_corner(x, size), decimals),
            "y": _format_numbers(cv.box_centre_to_corner(y, size), decimals),
            "w": _format_numbers(size, decimals),
            "h": _format_numbers(size, decimals),
        }
    )
    with open(os.fspath(path), "w", encoding="utf-8") as fh:
        fh.write(_text_table(frame, "nan"))


def read_coordinates_txt(
    path: str | os.PathLike,
    micrograph: str | None = None,
    micrograph_names: Mapping[str, int] | None = None,
) -> Converted:
    """Read plain coordinates: ``x y`` or ``x y score`` per line (centres, px; ``#`` comments)."""
    table = _read_numeric_table(path, 2, "coordinate")
    score = table[:, 2] if table.shape[1] >= 3 else None
    extra = {f"column_{k + 1}": table[:, k] for k in range(3, table.shape[1])}
    return _coordinates(path, micrograph, micrograph_names, table[:, 0], table[:, 1], score, extra)


def write_coordinates_txt(path: str | os.PathLike, columns: Mapping[str, Any]) -> None:
    """Write ``x y score`` per line (centres in px, exact floats) with a comment header."""
    x = np.asarray(columns["x"], dtype=np.float64)
    frame = pd.DataFrame({"x": x, "y": np.asarray(columns["y"], dtype=np.float64)})
    if "score" in columns:
        frame["score"] = np.asarray(columns["score"], dtype=np.float64)
    with open(os.fspath(path), "w", encoding="utf-8") as fh:
        fh.write("# " + " ".join(frame.columns) + " (particle centres, px, 0-based)\n")
        fh.write(_text_table(frame, "nan"))
