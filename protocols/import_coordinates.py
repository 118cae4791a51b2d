"""Import particle picks made by another program for micrographs already in hpcem:
RELION coordinate STARs (``<mic>_autopick.star``; a RELION 3.1 ``coords_suffix_*.star``
or a RELION 4/5 coordinate list), crYOLO ``.cbox``, EMAN ``.box``, plain ``x y [score]``
text, or a cryoSPARC ``.cs`` with ``location/*`` fields.

Per-micrograph files are matched to a micrograph of the input set by their file name
stem (``a_autopick.star``, ``a.cbox`` and ``a.box`` all belong to micrograph ``a.mrc``;
the RELION suffixes ``_autopick``/``_manualpick`` and a trailing ``_<word>`` are tried
after the whole stem). Conversions (box corner -> centre for ``.box``/``.cbox``,
cryoSPARC fractions -> pixels) are :mod:`hpcem.convert`'s. A file whose micrograph is not
in the set, or that cannot be read, is *rejected*: listed with the file name and its
reason in the result of the ``register`` step, the other files are imported. Picks whose
centre lies outside their micrograph (read from its header) are dropped and counted.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from hpcem.protocols.import_images import HPCEM_CITATION
from hpcem.protocols.import_particles import (
    PUNJANI_2017,
    SCHERES_2012,
    file_format,
    match_or_missing,
    micrograph_names,
)

from hpcem.errors import DataFormatError, HpcemError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

WAGNER_2019 = Citation(
    "Wagner2019",
    "@article{Wagner2019, author = {Wagner, Thorsten and Merino, Felipe and Stabrin, Markus "
    "and Moriya, Toshio and Antoni, Claudia and Apelbaum, Amir and Hagel, Philine and Sitsel, "
    "Oleg and Raisch, Tobias and Prumbaum, Daniel and Quentin, Dennis and Roderer, Daniel and "
    "Tacke, Sebastian and Siebolds, Birte and Schubert, Evelyn and Shaikh, Tanvir R. and Lill, "
    "Pascal and Gatsogiannis, Christos and Raunser, Stefan}, title = {SPHIRE-crYOLO is a fast "
    "and accurate fully automated particle picker for cryo-EM}, journal = {Commun. Biol.}, "
    "volume = {2}, pages = {218}, year = {2019}, doi = {10.1038/s42003-019-0437-z}}",
)

FORMATS = ("auto", "relion", "cbox", "box", "txt", "cs")
#: Suffixes RELION adds to a micrograph's stem in its coordinate files.
RELION_SUFFIXES = ("_autopick", "_manualpick", "_pick", "_coords")


def coordinate_files(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def stem_candidates(path: str) -> list[str]:
    """Micrograph names a per-micrograph coordinate file may belong to, best first: its
    stem, the stem less a RELION suffix, the stem less its last ``_word``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    out = [stem]
    for suffix in RELION_SUFFIXES:
        if stem.endswith(suffix):
            out.append(stem.removesuffix(suffix))
    if "_" in stem:
        out.append(stem.rsplit("_", 1)[0])
    return list(dict.fromkeys(out))


def _micrograph_of(path: str, names: dict[str, int]) -> tuple[int, str]:
    """(micrograph id, name) of a per-micrograph file, or a DataFormatError naming it."""
    for name in stem_candidates(path):
        mid = int(match_or_missing(path, [name], names)[0])
        if mid >= 0:
            return mid, name
    raise DataFormatError(
        f"{path}: its micrograph ({stem_candidates(path)[0]}) is not in the micrograph set "
        f"({len(names)} micrographs)"
    )


def _read_one(path: str, fmt: str, names: dict[str, int], box_size_px: float, root: str):
    """COORDINATE columns of one file (micrograph ids set); raises HpcemError."""
    from hpcem.convert import boxfiles, cryosparc, relion

    if fmt == "cs":
        conv = cryosparc.read_coordinates_cs(path)
        mic = conv.extra["micrograph"]
        conv.columns["micrograph_id"] = match_or_missing(path, mic, names)
        return conv.columns, mic
    base = os.path.basename(path)
    if fmt == "relion" and base.startswith("coords_suffix"):
        conv = relion.read_coordinate_suffix(path, root or _relion_root(path), _with_bases(names))
        return conv.columns, None
    if fmt == "relion" and _is_coordinate_list(path):
        conv = relion.read_coordinate_list(path, root or _relion_root(path), _with_bases(names))
        return conv.columns, None
    mid, _ = _micrograph_of(path, names)
    if fmt == "relion":
        conv = relion.read_coordinates(path, mid)
    elif fmt == "cbox":
        conv = boxfiles.read_cbox(path)
    elif fmt == "box":
        conv = boxfiles.read_box(path)
        if box_size_px > 0:  # the given box size, not the file's (some writers put 0)
            x0 = conv.columns["x"] - conv.extra["Width"] / 2.0
            y0 = conv.columns["y"] - conv.extra["Height"] / 2.0
            conv.columns["x"] = x0 + box_size_px / 2.0
            conv.columns["y"] = y0 + box_size_px / 2.0
    else:
        conv = boxfiles.read_coordinates_txt(path)
    conv.columns["micrograph_id"] = np.full(len(conv), mid, dtype=np.int64)
    return conv.columns, None


def _with_bases(names: dict[str, int]) -> dict[str, int]:
    out = dict(names)
    for k, v in names.items():
        out.setdefault(os.path.basename(k), v)
    return out


def _relion_root(path: str) -> str:
    """A RELION job file's project folder: two levels above ``Type/jobNNN/file``."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))


def _is_coordinate_list(path: str) -> bool:
    with open(path, "rb") as fh:
        return b"rlnMicrographCoordinates" in fh.read(65536)


def _micrograph_shapes(micrographs, ids: np.ndarray) -> dict[int, tuple[int, int]]:
    """(nx, ny) of each micrograph in ``ids`` whose header can be read."""
    from hpcem.io.images import read_header

    rows = micrographs.rows_of_ids(ids)
    paths = micrographs.column("image")[rows]
    shapes = {}
    for mid, p in zip(ids.tolist(), paths.tolist(), strict=True):
        try:
            h = read_header(p)
        except HpcemError:
            continue
        shapes[int(mid)] = (h.shape[2], h.shape[1])
    return shapes


def read_coordinate_files(
    files: list[str], fmt: str, micrographs, box_size_px: float = 0.0, root: str = ""
) -> tuple[dict, list[dict], int]:
    """COORDINATE columns of ``files`` matched to ``micrographs`` (picks outside their
    micrograph dropped), the rejected files ``[{"file", "reason"}]`` and the number of
    dropped picks."""
    names = micrograph_names(micrographs)
    parts, rejected = [], []
    for f in files:
        try:
            cols, mic = _read_one(f, fmt, names, box_size_px, root)
        except HpcemError as exc:
            rejected.append({"file": f, "reason": str(exc)})
            continue
        ids = np.asarray(cols["micrograph_id"], dtype=np.int64)
        if mic is not None and np.any(ids < 0):  # a .cs of many micrographs
            for name in np.unique(np.asarray(mic, dtype=object)[ids < 0].astype(str)).tolist():
                rejected.append(
                    {"file": f, "reason": f"{f}: micrograph {name} is not in the micrograph set"}
                )
        keep = ids >= 0
        part = {"micrograph_id": ids[keep]}
        part["x"] = np.asarray(cols["x"], dtype=np.float64)[keep]
        part["y"] = np.asarray(cols["y"], dtype=np.float64)[keep]
        score = cols.get("score")
        part["score"] = (
            np.zeros(int(keep.sum())) if score is None else np.asarray(score, np.float64)[keep]
        )
        parts.append(part)
    keys = ("micrograph_id", "x", "y", "score")
    cols = {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in keys}
    cols["micrograph_id"] = cols["micrograph_id"].astype(np.int64)
    inside = np.ones(len(cols["x"]), dtype=bool)
    shapes = _micrograph_shapes(micrographs, np.unique(cols["micrograph_id"]))
    for mid, (nx, ny) in shapes.items():
        on = cols["micrograph_id"] == mid
        x, y = cols["x"], cols["y"]
        inside[on] = (x[on] >= 0) & (x[on] <= nx - 1) & (y[on] >= 0) & (y[on] <= ny - 1)
    dropped = int((~inside).sum())
    return {k: v[inside] for k, v in cols.items()}, rejected, dropped


def register_coordinates(ctx, files: list[str], fmt: str, box_size_px: float, root: str) -> dict:
    """Controller step: read every file, write the ``coordinates`` set."""
    micrographs = ctx.input("micrographs")
    paths = [ctx.path(f) for f in files]
    cols, rejected, dropped = read_coordinate_files(
        paths, fmt, micrographs, box_size_px, ctx.path(root) if root else ""
    )
    if rejected and len(rejected) >= len(files) and not len(cols["x"]):
        raise HpcemError(f"every coordinate file was rejected: {rejected[0]['reason']}")
    order = np.argsort(cols["micrograph_id"], kind="stable")
    with ctx.create_set("coordinates", "hpcem.SetOfCoordinates") as writer:
        writer.set_optics(micrographs.optics)
        if len(order):
            writer.append_columns({k: v[order] for k, v in cols.items()})
    per_mic = np.unique(cols["micrograph_id"])
    return {
        "count": len(order),
        "format": fmt,
        "files": len(files),
        "micrographs_with_picks": len(per_mic),
        "dropped_outside": dropped,
        "rejected": [{**r, "file": ctx.relpath(r["file"])} for r in rejected],
    }


class ImportCoordinates(Protocol):
    name = "import.coordinates"
    label = "Import coordinates"
    help = (
        "Import particle picks of the input micrographs made elsewhere: RELION coordinate "
        "STARs, crYOLO .cbox, EMAN .box, plain 'x y [score]' text or a cryoSPARC .cs. "
        "Files are matched to micrographs by file name; a file of a micrograph that is not "
        "in the set is listed as rejected; picks outside their micrograph are dropped."
    )
    inputs = (
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            help="The micrographs the picks were made on.",
        ),
    )
    params = (
        Param.path(
            "files",
            None,
            required=True,
            help="Glob of the coordinate files, e.g. 'cryolo/CBOX/*.cbox' (one per "
            "micrograph), or the one .cs / coords_suffix / coordinate-list file.",
        ),
        Param.enum(
            "format",
            FORMATS,
            "auto",
            help="'auto' = from the extension (.star RELION, .cbox, .box, .txt, .cs).",
        ),
        Param.float(
            "box_size_px",
            0.0,
            min=0.0,
            max=4096.0,
            units="px",
            help="EMAN .box only: the box size the corners refer to (0 = each row's own "
            "width and height).",
        ),
        Param.path(
            "root",
            "",
            expert=1,
            help="RELION coords_suffix / coordinate lists: the RELION project folder "
            "(empty = two folders above the file).",
        ),
    )
    outputs = (
        Output("coordinates", "hpcem.SetOfCoordinates", help="Pick centres in pixels, 0-based."),
    )
    citations = (HPCEM_CITATION, SCHERES_2012, WAGNER_2019, PUNJANI_2017)

    def _plan(self, ctx) -> tuple[list[str], str]:
        files = coordinate_files(ctx.path(ctx.params["files"]))
        if not files:
            raise DataFormatError(f"files: {ctx.path(ctx.params['files'])!r} matches no file")
        fmts = {file_format(f, ctx.params["format"], FORMATS) for f in files}
        if len(fmts) > 1:
            raise DataFormatError(
                f"files: the pattern matches files of {len(fmts)} formats "
                f"({', '.join(sorted(fmts))}); import them in separate runs"
            )
        return files, fmts.pop()

    def validate(self, ctx) -> list[str]:
        try:
            self._plan(ctx)
        except HpcemError as exc:
            return [str(exc)]
        return []

    def steps(self, ctx) -> list[Step]:
        files, fmt = self._plan(ctx)
        p = ctx.params
        return [
            Step(
                "register",
                "hpcem.protocols.import_coordinates:register_coordinates",
                {
                    "files": [ctx.relpath(f) for f in files],
                    "fmt": fmt,
                    "box_size_px": float(p.get("box_size_px") or 0.0),
                    "root": p.get("root") or "",
                },
                controller=True,
            )
        ]
