"""Import CTF estimates made by another package for micrographs already in hpcem:
CTFFIND4 summary ``.txt`` files (one per micrograph), a RELION ``micrographs_ctf.star``
or a cryoSPARC exposures ``.cs``.

Each estimate is matched to a micrograph of the input set by name (full path, then file
name stem: CTFFIND's ``# Input file:`` line, RELION's ``_rlnMicrographName``,
cryoSPARC's ``micrograph_blob/path``). An estimate of a micrograph that is not in the set,
a CTFFIND file that cannot be read, or a CTFFIND pixel size that differs from the
micrographs' by more than 1 % is *rejected*: listed with its reason in the result of the
``register`` step, the others are imported. Values are converted once, by
:mod:`hpcem.convert` (CTFFIND's azimuth and phase shift in radians; cryoSPARC's angle in
radians), and every row's ``estimator`` says where it came from.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from hpcem.protocols.import_images import HPCEM_CITATION
from hpcem.protocols.import_particles import (
    PUNJANI_2017,
    SCHERES_2012,
    absolute_paths,
    file_format,
    guess_root,
    match_or_missing,
    micrograph_names,
)

from hpcem.errors import DataFormatError, HpcemError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

ROHOU_2015 = Citation(
    "Rohou2015",
    "@article{Rohou2015, author = {Rohou, Alexis and Grigorieff, Nikolaus}, title = {CTFFIND4: "
    "Fast and accurate defocus estimation from electron micrographs}, journal = {J. Struct. "
    "Biol.}, volume = {192}, pages = {216--221}, year = {2015}, doi = {10.1016/j.jsb.2015.08.008}}",
)

#: hpcem's ``estimator`` value for each format.
ESTIMATORS = {"ctffind": "ctffind4", "relion": "relion", "cs": "cryosparc"}
FORMATS = ("auto", "ctffind", "relion", "cs")
#: CTFFIND pixel sizes further than this from the micrographs' are rejected.
PIXEL_TOLERANCE = 0.01
_FIELDS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "phase_shift",
    "fit_resolution",
    "fit_score",
    "psd",
)


def ctf_files(pattern: str) -> list[str]:
    """Files matching ``pattern``, less CTFFIND's ``*_avrot.txt`` rotational averages."""
    found = glob.glob(os.path.expanduser(pattern))
    return sorted(p for p in found if os.path.isfile(p) and not p.endswith("_avrot.txt"))


def _format_of(files: list[str], given: str) -> str:
    fmt = file_format(files[0], given, (*FORMATS, "txt")).replace("txt", "ctffind")
    if fmt != "ctffind" and len(files) != 1:
        raise DataFormatError(
            f"a {fmt} CTF file holds every micrograph: give one file, not {len(files)}"
        )
    return fmt


def _pixel_size(micrographs) -> float:
    return float(np.median(micrographs.optics["pixel_size_A"]))


def read_ctf_files(files: list[str], fmt: str, micrographs) -> tuple[dict, list[dict]]:
    """CTF_MODEL columns of the estimates in ``files`` matched to ``micrographs`` (an
    hpcem set), and the rejected ones ``[{"file", "micrograph", "reason"}]``."""
    from hpcem.convert import cryosparc, ctffind, relion

    names = micrograph_names(micrographs)
    parts: list[dict] = []
    rejected: list[dict] = []
    if fmt == "ctffind":
        pixel_A = _pixel_size(micrographs)
        for f in files:
            try:
                conv = ctffind.read_ctffind_txt(f, micrograph_names=names)
                file_pixel = conv.optics.get("pixel_size_A")
                if file_pixel is not None and abs(file_pixel[0] - pixel_A) > (
                    PIXEL_TOLERANCE * pixel_A
                ):
                    raise DataFormatError(
                        f"{f}: CTFFIND ran at {float(file_pixel[0]):g} Å/px, the micrographs "
                        f"are {pixel_A:g} Å/px"
                    )
            except HpcemError as exc:
                rejected.append({"file": f, "reason": str(exc)})
                continue
            parts.append(conv.columns)
    elif fmt == "relion":
        path = files[0]
        conv = relion.read_ctfs(path)
        mic = np.asarray(conv.extra["rlnMicrographName"], dtype=object)
        conv.columns["micrograph_id"] = match_or_missing(path, mic, names)
        if "psd" in conv.columns:
            root = guess_root(path, [str(p) for p in conv.columns["psd"][:1]])
            conv.columns["psd"] = absolute_paths(conv.columns["psd"], root)
        parts.append(_keep_matched(path, conv.columns, mic, rejected))
    else:
        path = files[0]
        conv = cryosparc.read_micrograph_ctfs_cs(path)
        mic = cryosparc.read_micrographs_cs(path).columns["image"]
        conv.columns["micrograph_id"] = match_or_missing(path, mic, names)
        parts.append(_keep_matched(path, conv.columns, mic, rejected))
    columns = _concat(parts)
    _check_unique(columns, micrographs)
    return columns, rejected


def _keep_matched(path: str, cols: dict, mic: np.ndarray, rejected: list[dict]) -> dict:
    """Rows whose micrograph is in the set; the others go to ``rejected``."""
    ok = np.asarray(cols["micrograph_id"]) >= 0
    for name in np.unique(np.asarray(mic, dtype=object)[~ok].astype(str)).tolist():
        rejected.append(
            {"file": path, "micrograph": name, "reason": f"micrograph {name} is not in the set"}
        )
    return {k: np.asarray(v)[ok] for k, v in cols.items()}


def _concat(parts: list[dict]) -> dict:
    cols: dict = {"micrograph_id": np.concatenate([p["micrograph_id"] for p in parts] or [[]])}
    for field in _FIELDS:
        if parts and all(field in p for p in parts):
            cols[field] = np.concatenate([np.asarray(p[field]) for p in parts])
    cols["micrograph_id"] = cols["micrograph_id"].astype(np.int64)
    return cols


def _check_unique(cols: dict, micrographs) -> None:
    ids, counts = np.unique(cols["micrograph_id"], return_counts=True)
    if np.any(counts > 1):
        twice = int(ids[np.argmax(counts > 1)])
        raise DataFormatError(
            f"micrograph {twice} has {int(counts.max())} CTF estimates among the files; "
            "import one estimate per micrograph"
        )


def register_ctfs(ctx, files: list[str], fmt: str) -> dict:
    """Controller step: read the estimates, match them, write the ``ctfs`` set (micrograph
    order) with the micrographs' optics."""
    micrographs = ctx.input("micrographs")
    cols, rejected = read_ctf_files([ctx.path(f) for f in files], fmt, micrographs)
    n = len(cols["micrograph_id"])
    if n == 0:
        first = rejected[0]["reason"] if rejected else "no estimate in the files"
        raise HpcemError(f"no CTF estimate matched a micrograph of the set: {first}")
    order = np.argsort(cols["micrograph_id"], kind="stable")
    cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    cols["estimator"] = np.full(n, ESTIMATORS[fmt], dtype=object)
    with ctx.create_set("ctfs", "hpcem.SetOfCTFs") as writer:
        writer.set_optics(micrographs.optics)
        writer.append_columns(cols)
    return {
        "count": n,
        "format": fmt,
        "micrographs_without_ctf": int(len(micrographs) - n),
        "rejected": [{**r, "file": ctx.relpath(r["file"])} for r in rejected],
    }


class ImportCTFs(Protocol):
    name = "import.ctfs"
    label = "Import CTFs"
    help = (
        "Import CTF estimates of the input micrographs made elsewhere: CTFFIND4 .txt files "
        "(one per micrograph), a RELION micrographs_ctf.star or a cryoSPARC exposures .cs. "
        "Estimates are matched to micrographs by name; unmatched ones are listed as "
        "rejected."
    )
    inputs = (
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            help="The micrographs the estimates were made on.",
        ),
    )
    params = (
        Param.path(
            "files",
            None,
            required=True,
            help="CTFFIND: a glob of the .txt files (e.g. 'ctffind/*.txt'; *_avrot.txt are "
            "left out); RELION or cryoSPARC: the one file.",
        ),
        Param.enum(
            "format",
            FORMATS,
            "auto",
            help="'auto' = from the extension (.txt CTFFIND, .star RELION, .cs cryoSPARC).",
        ),
    )
    outputs = (Output("ctfs", "hpcem.SetOfCTFs", help="One CTF model per matched micrograph."),)
    citations = (HPCEM_CITATION, ROHOU_2015, SCHERES_2012, PUNJANI_2017)

    def _plan(self, ctx) -> tuple[list[str], str]:
        files = ctf_files(ctx.path(ctx.params["files"]))
        if not files:
            raise DataFormatError(f"files: {ctx.path(ctx.params['files'])!r} matches no file")
        return files, _format_of(files, ctx.params["format"])

    def validate(self, ctx) -> list[str]:
        try:
            files, fmt = self._plan(ctx)
            if fmt != "ctffind":  # one file: read it now, a bad one is never stored
                read_ctf_files(files, fmt, ctx.input("micrographs"))
        except HpcemError as exc:
            return [str(exc)]
        return []

    def steps(self, ctx) -> list[Step]:
        files, fmt = self._plan(ctx)
        return [
            Step(
                "register",
                "hpcem.protocols.import_ctfs:register_ctfs",
                {"files": [ctx.relpath(f) for f in files], "fmt": fmt},
                controller=True,
            )
        ]
