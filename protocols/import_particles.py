"""Import particles from another package: a RELION STAR (3.0, 3.1, 4, 5) or a cryoSPARC
``.cs``, through the converters of :mod:`hpcem.convert`.

Nothing is half-imported: the whole file is read at validation (a run that would fail is
not stored; the error names the file and the line or field) and again by the one
``register`` step, which writes the set in one go. Image paths in both formats are
relative to the other package's project folder (``root``); when ``root`` is not given,
the folder of the file and its parents are tried until the first image exists.

The helpers here (:func:`write_converted`, :func:`micrograph_names`, :func:`guess_root`)
are shared by the other foreign-import protocols (``import.coordinates``,
``import.ctfs``, ``import.relion_job``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from hpcem.protocols.import_images import HPCEM_CITATION

from hpcem.errors import DataFormatError, HpcemError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

SCHERES_2012 = Citation(
    "Scheres2012",
    "@article{Scheres2012, author = {Scheres, Sjors H. W.}, title = {RELION: Implementation "
    "of a Bayesian approach to cryo-EM structure determination}, journal = {J. Struct. "
    "Biol.}, volume = {180}, pages = {519--530}, year = {2012}, "
    "doi = {10.1016/j.jsb.2012.09.006}}",
)

PUNJANI_2017 = Citation(
    "Punjani2017",
    "@article{Punjani2017, author = {Punjani, Ali and Rubinstein, John L. and Fleet, David J. "
    "and Brubaker, Marcus A.}, title = {cryoSPARC: algorithms for rapid unsupervised cryo-EM "
    "structure determination}, journal = {Nat. Methods}, volume = {14}, pages = {290--296}, "
    "year = {2017}, doi = {10.1038/nmeth.4169}}",
)

#: How many folders above the file :func:`guess_root` tries.
ROOT_LEVELS = 4


def file_format(path: str, given: str, choices: tuple[str, ...]) -> str:
    """The format of ``path``: ``given`` unless it is ``"auto"``, else from the extension
    (``.star`` -> relion, ``.cs`` -> cs, ``.cbox``, ``.box``, ``.txt``)."""
    if given != "auto":
        return given
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"star": "relion", "cs": "cs", "cbox": "cbox", "box": "box", "txt": "txt"}.get(ext)
    if fmt is None or fmt not in choices:
        raise DataFormatError(
            f"{path}: cannot tell the format from the extension '.{ext}'; give format "
            f"({', '.join(c for c in choices if c != 'auto')})"
        )
    return fmt


def guess_root(path: str, relative: list[str]) -> str:
    """The folder the ``relative`` image paths of ``path`` are relative to: the file's
    folder or one of its :data:`ROOT_LEVELS` parents where the first path exists (RELION
    and cryoSPARC write paths relative to their project folder, files sit in job folders
    below it); the file's folder when none has it."""
    here = os.path.dirname(os.path.abspath(path))
    first = next((p for p in relative if p and not os.path.isabs(p)), None)
    if first is None:
        return here
    folder = here
    for _ in range(ROOT_LEVELS + 1):
        if os.path.exists(os.path.join(folder, first)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return here


def micrograph_names(micrographs) -> dict[str, int]:
    """Micrograph name -> id of an hpcem micrograph set, for the converters' matching
    (full name first, then the file name stem): keyed by the absolute path of each
    micrograph."""
    paths = micrographs.column("image")
    ids = micrographs.column("id")
    return {str(p): int(i) for p, i in zip(paths, ids, strict=True)}


def write_converted(
    writer, conv, optics: dict | None = None, keep_ids: bool = False
) -> dict[str, Any]:
    """Append a :class:`~hpcem.convert.Converted` to an open set writer: the hpcem fields
    only (path fields made absolute by the caller), the optics table from ``optics`` or
    the file's; ``keep_ids``: keep the reader's ``id`` column (items that other sets of
    the same file refer to, e.g. RELION micrographs and their CTFs). Returns what was
    left out (the names of the file's other columns), for the step's result."""
    fields = set(writer.item_type.field_names)
    table = optics if optics is not None else conv.optics
    if table:
        writer.set_optics({k: v for k, v in table.items()})
    cols = {k: v for k, v in conv.columns.items() if k in fields and (keep_ids or k != "id")}
    if len(conv):
        writer.append_columns(cols)
    skipped = [k for k in conv.columns if k not in fields]
    other = [k for k in conv.extra if k not in ("optics", "relion_version", "relion_block")]
    return {"columns_not_kept": sorted(skipped + [str(k) for k in other])[:40]}


def absolute_paths(values: Any, root: str) -> np.ndarray:
    """Paths joined to ``root`` where relative (empty ones stay empty), once per
    distinct value."""
    values = np.asarray(values, dtype=object)
    if not len(values):
        return values
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    out = np.array(
        [p if (not p or os.path.isabs(p)) else os.path.join(root, p) for p in uniq.tolist()],
        dtype=object,
    )
    return out[inverse]


def read_particle_file(
    path: str,
    fmt: str,
    root: str,
    pixel_size_A: float,
    check_files: bool,
    flip_y: bool = False,
    names: dict[str, int] | None = None,
):
    """Read a particle file of format ``fmt`` (``relion``/``cs``) with image paths
    resolved against ``root`` ("" = :func:`guess_root`). Raises HpcemError naming the
    file and line/field."""
    from hpcem.convert import cryosparc, relion

    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: no such file")
    if fmt == "relion":
        conv = relion.read_particles(
            path, pixel_size_A=pixel_size_A or None, micrograph_ids=_basename_keys(names)
        )
    else:
        conv = cryosparc.read_particles_cs(path, flip_y=flip_y, micrograph_names=names)
    images = [str(p) for p in np.unique(np.asarray(conv.columns["image"], dtype=object))]
    base = root or guess_root(path, images)
    conv.columns["image"] = absolute_paths(conv.columns["image"], base)
    if check_files:
        from hpcem.convert.relion_common import missing_files

        missing = missing_files(np.unique(conv.columns["image"].astype(str)))
        if missing:
            raise DataFormatError(
                f"{path}: {len(missing)} image stack(s) do not exist, e.g. {missing[0]} "
                f"(paths relative to {base}; give root, the {fmt} project folder, or turn "
                "check_files off: --no-check-files)"
            )
    conv.extra["root"] = base
    return conv


def _basename_keys(names: dict[str, int] | None) -> dict[str, int] | None:
    """RELION's micrograph matching (full name, then file name): add the file names."""
    if names is None:
        return None
    out = dict(names)
    for k, v in names.items():
        out.setdefault(os.path.basename(k), v)
    return out


def register_particles(
    ctx, file: str, fmt: str, root: str, pixel_size_A: float, check_files: bool, flip_y: bool
) -> dict:
    """Controller step: read the file and write the ``particles`` set (with its optics)."""
    names = micrograph_names(ctx.input("micrographs")) if ctx.inputs.get("micrographs") else None
    path = ctx.path(file)
    conv = read_particle_file(
        path,
        fmt,
        ctx.path(root) if root else "",
        pixel_size_A,
        check_files,
        flip_y,
        names,
    )
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        info = write_converted(writer, conv)
    return {
        "count": len(conv),
        "format": fmt,
        "relion_version": conv.extra.get("relion_version", ""),
        "optics_groups": len(conv.optics.get("optics_group", [])),
        "root": ctx.relpath(conv.extra["root"]),
        **info,
    }


class ImportParticles(Protocol):
    name = "import.particles"
    label = "Import particles"
    help = (
        "Import a particle set from a RELION STAR file (3.0, 3.1, 4, 5: orientations, "
        "shifts, CTF, classes, optics groups) or a cryoSPARC .cs file. The whole file is "
        "checked before the run is stored; an error names the file and the line or field."
    )
    inputs = (
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            help="Optional: the micrographs the particles come from (fills micrograph_id, "
            "matched by micrograph name, then file name).",
            required=False,
        ),
    )
    params = (
        Param.path(
            "file", None, required=True, help="The particle file: RELION .star or cryoSPARC .cs."
        ),
        Param.enum(
            "format",
            ("auto", "relion", "cs"),
            "auto",
            help="File format; 'auto' = from the extension (.star, .cs).",
        ),
        Param.path(
            "root",
            "",
            help="Folder the image paths are relative to (the RELION or cryoSPARC project "
            "folder); empty = the file's folder or the first parent where the images exist.",
        ),
        Param.float(
            "pixel_size_A",
            0.0,
            min=0.0,
            max=50.0,
            units="Å/px",
            help="Pixel size for RELION 3.0 files without magnification and detector pixel "
            "size (0 = from the file; when both are given they must agree within 0.1 %).",
        ),
        Param.bool(
            "check_files", True, help="Fail when image stacks named in the file do not exist."
        ),
        Param.bool(
            "flip_y",
            False,
            expert=1,
            help="cryoSPARC only: flip the particle y position on its micrograph "
            "(1 - fraction), for micrographs that are the y-flip of cryoSPARC's.",
        ),
    )
    outputs = (
        Output("particles", "hpcem.SetOfParticles", help="The particles with their optics."),
    )
    citations = (HPCEM_CITATION, SCHERES_2012, PUNJANI_2017)

    def _args(self, ctx) -> dict:
        p = ctx.params
        return {
            "file": p["file"],
            "fmt": file_format(ctx.path(p["file"]), p["format"], ("auto", "relion", "cs")),
            "root": p.get("root") or "",
            "pixel_size_A": float(p.get("pixel_size_A") or 0.0),
            "check_files": bool(p["check_files"]),
            "flip_y": bool(p.get("flip_y", False)),
        }

    def validate(self, ctx) -> list[str]:
        try:
            a = self._args(ctx)
            names = (
                micrograph_names(ctx.input("micrographs"))
                if ctx.inputs.get("micrographs")
                else None
            )
            read_particle_file(
                ctx.path(a["file"]),
                a["fmt"],
                ctx.path(a["root"]) if a["root"] else "",
                a["pixel_size_A"],
                a["check_files"],
                a["flip_y"],
                names,
            )
        except HpcemError as exc:
            return [str(exc)]
        return []

    def steps(self, ctx) -> list[Step]:
        return [
            Step(
                "register",
                "hpcem.protocols.import_particles:register_particles",
                self._args(ctx),
                controller=True,
            )
        ]


def match_or_missing(source: str, names: Any, mic_names: dict[str, int]) -> np.ndarray:
    """Micrograph id of each of ``names`` (full name, then stem, as
    :func:`hpcem.convert.boxfiles.match_micrographs`), -1 where the micrograph is not in
    the set (the caller drops and reports those)."""
    from hpcem.convert.boxfiles import match_micrographs

    names = np.asarray(names, dtype=object)
    uniq, inverse = np.unique(names.astype(str), return_inverse=True)
    ids = np.full(len(uniq), -1, dtype=np.int64)
    for i, name in enumerate(uniq.tolist()):
        try:
            ids[i] = match_micrographs(source, np.array([name], dtype=object), mic_names)[0]
        except DataFormatError:
            continue
    return ids[inverse]
