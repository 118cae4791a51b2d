"""Import protocols: movies, micrographs and volumes from files users already have.

Images stay where they are; the output set references them by path (relative to the
project when inside it). Each file's header is checked in its own step (dimensions, kind,
pixel size against the given one), so a bad file is named in a clear error and the run
can be continued after fixing it.
"""

from __future__ import annotations

import glob
import os

from hpcem.model import SET_TYPES
from hpcem.protocol import Citation, Output, Param, Protocol, Step

HPCEM_CITATION = Citation(
    "hpcem",
    "@software{hpcem, author = {{hpcem developers}}, title = {hpcem: reproducible cryo-EM "
    "processing on HPC batch systems}, year = {2026}, url = {https://github.com/hpcem/hpcem}}",
)


ON_ERROR = Param.enum(
    "on_error",
    ("fail", "skip"),
    "fail",
    help="A bad file: 'fail' stops before anything is stored, naming it; 'skip' records it "
    "with its reason in the run and imports the rest.",
)


def _acquisition_params(pixel_help: str) -> tuple[Param, ...]:
    return (
        Param.float(
            "pixel_size_A", None, required=True, min=0.05, max=50.0, units="Å/px", help=pixel_help
        ),
        Param.float(
            "voltage_kV", 300.0, min=20.0, max=3000.0, units="kV", help="Acceleration voltage."
        ),
        Param.float(
            "spherical_aberration_mm",
            2.7,
            min=0.0,
            max=20.0,
            units="mm",
            help="Spherical aberration Cs of the objective lens.",
        ),
        Param.float(
            "amplitude_contrast", 0.1, min=0.0, max=1.0, help="Amplitude contrast fraction."
        ),
        Param.float(
            "magnification",
            0.0,
            min=0.0,
            units="x",
            expert=1,
            help="Nominal magnification (0 = unknown).",
        ),
        Param.string(
            "optics_group_name", "opticsGroup1", expert=1, help="Name of the optics group."
        ),
        Param.bool(
            "check_pixel_size",
            True,
            expert=1,
            help="Fail when a header pixel size differs from pixel_size_A by more than 1%.",
        ),
        ON_ERROR,
    )


def _matching_files(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def inspect_image(
    path: str, pixel_size_A: float, check_pixel_size: bool, kinds: list, on_error: str = "fail"
) -> dict:
    """Step: read one file's header and check it; return what the set needs. With
    ``on_error="skip"`` a bad file is a rejected item (recorded with its reason)."""
    from hpcem.errors import HpcemError, ItemRejected

    try:
        return _inspect(path, pixel_size_A, check_pixel_size, kinds)
    except HpcemError as exc:
        if on_error == "skip":
            raise ItemRejected(str(exc)) from None
        raise


def _inspect(path: str, pixel_size_A: float, check_pixel_size: bool, kinds: list) -> dict:
    from hpcem.errors import DataFormatError
    from hpcem.io.images import check_pixel_size as check
    from hpcem.io.images import read_header

    header = read_header(path)
    if header.kind not in kinds:
        raise DataFormatError(
            f"{path}: is a {header.kind} ({header.shape[2]}x{header.shape[1]}x{header.shape[0]}), "
            f"expected {' or '.join(kinds)}"
        )
    notes = check(header, pixel_size_A) if check_pixel_size else []
    nz, ny, nx = header.shape
    return {
        "path": path,
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "kind": header.kind,
        "header_pixel_size_A": header.pixel_size_A,
        "notes": list(notes) + list(header.warnings),
    }


def register_images(ctx, output: str, set_type: str) -> dict:
    """Controller step: gather the inspected files into the output set."""
    found = ctx.results("inspect/")
    infos = [found[k] for k in sorted(found)]
    p = ctx.params
    has_optics = "optics_group" in SET_TYPES[set_type].field_names  # volumes carry their own
    columns = {"image": [i["path"] for i in infos]}
    if has_optics:
        columns["optics_group"] = [1] * len(infos)
    if set_type == "hpcem.SetOfMovies":
        columns["n_frames"] = [i["nz"] for i in infos]
    if set_type == "hpcem.SetOfVolumes":
        columns["pixel_size_A"] = [p["pixel_size_A"]] * len(infos)
        columns["box_size"] = [i["nx"] for i in infos]
        columns["half"] = [0] * len(infos)
    skipped = [
        {"file": reason.split(": ", 1)[0], "reason": reason}
        for _, reason in sorted(ctx.rejections("inspect/").items())
    ]
    if not infos:
        from hpcem.errors import HpcemError

        raise HpcemError(f"every file was skipped ({len(skipped)}): {skipped[0]['reason']}")
    with ctx.create_set(output, set_type) as writer:
        if has_optics:
            _write_optics(writer, p)
        writer.append_columns(columns)
    return {
        "count": len(infos),
        "skipped": skipped,
        "notes": sorted({n for i in infos for n in i["notes"]})[:20],
    }


def _write_optics(writer, p: dict) -> None:
    """The optics table (one optics group) from the acquisition parameters."""
    writer.set_optics(
        {
            "optics_group": [1],
            "name": [p.get("optics_group_name", "opticsGroup1")],
            "voltage_kV": [p.get("voltage_kV", 0.0)],
            "spherical_aberration_mm": [p.get("spherical_aberration_mm", 0.0)],
            "amplitude_contrast": [p.get("amplitude_contrast", 0.0)],
            "pixel_size_A": [p["pixel_size_A"]],
            "dose_per_frame_e_A2": [p.get("dose_per_frame_e_A2", 0.0)],
            "magnification": [p.get("magnification", 0.0)],
        }
    )


class _ImportImages(Protocol):
    """Shared plan of the import protocols (not registered: it has no name)."""

    output_name = ""
    set_type = ""
    kinds: tuple[str, ...] = ()

    def validate(self, ctx) -> list[str]:
        pattern = ctx.params["files"]
        files = _matching_files(ctx.path(pattern))
        if not files:
            return [f"files: {ctx.path(pattern)!r} matches no file"]
        if ctx.params.get("on_error", "fail") == "skip":
            return []
        # the default: a bad file stops the import before anything is stored, named
        from hpcem.errors import HpcemError

        problems = []
        for f in files:
            try:
                _inspect(
                    f, ctx.params["pixel_size_A"], ctx.params["check_pixel_size"], list(self.kinds)
                )
            except HpcemError as exc:
                problems.append(str(exc))
        if len(problems) > 10:
            problems = problems[:10] + [f"... and {len(problems) - 10} more bad files"]
        if problems:
            problems.append("fix or remove them, or use --on-error skip to import the rest")
        return problems

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        files = _matching_files(ctx.path(p["files"]))
        steps = [
            Step(
                f"inspect/{i:06d}",
                "hpcem.protocols.import_images:inspect_image",
                {
                    "path": ctx.relpath(f),
                    "pixel_size_A": p["pixel_size_A"],
                    "check_pixel_size": p["check_pixel_size"],
                    "kinds": list(self.kinds),
                    **({"on_error": "skip"} if p.get("on_error") == "skip" else {}),
                },
            )
            for i, f in enumerate(files)
        ]
        steps.append(
            Step(
                "register",
                "hpcem.protocols.import_images:register_images",
                {"output": self.output_name, "set_type": self.set_type},
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps


class ImportMicrographs(_ImportImages):
    name = "import.micrographs"
    label = "Import micrographs"
    help = (
        "Import micrographs (MRC, or TIFF) matching a glob pattern, with the acquisition "
        "parameters of their optics group. Headers are checked file by file."
    )
    params = (
        Param.path(
            "files", None, required=True, help="Glob pattern of the files, e.g. 'raw/*.mrc'."
        ),
        *_acquisition_params("Pixel size of the micrographs."),
    )
    outputs = (Output("micrographs", "hpcem.SetOfMicrographs"),)
    citations = (HPCEM_CITATION,)
    output_name, set_type, kinds = "micrographs", "hpcem.SetOfMicrographs", ("micrograph",)


class ImportMovies(_ImportImages):
    name = "import.movies"
    label = "Import movies"
    help = "Import dose-fractionated movies (MRC stacks or TIFF) matching a glob pattern."
    params = (
        Param.path("files", None, required=True, help="Glob pattern, e.g. 'frames/*.tif'."),
        *_acquisition_params("Pixel size of the movie frames."),
        Param.float(
            "dose_per_frame_e_A2",
            1.0,
            min=0.0,
            max=100.0,
            units="e⁻/Å²",
            help="Electron dose per frame.",
        ),
    )
    outputs = (Output("movies", "hpcem.SetOfMovies"),)
    citations = (HPCEM_CITATION,)
    output_name, set_type, kinds = "movies", "hpcem.SetOfMovies", ("movie", "stack")


class ImportVolumes(_ImportImages):
    name = "import.volumes"
    label = "Import volumes"
    help = "Import 3D maps (MRC) matching a glob pattern, e.g. an initial model or EMDB map."
    params = (
        Param.path("files", None, required=True, help="Glob pattern, e.g. 'maps/*.map'."),
        Param.float(
            "pixel_size_A",
            None,
            required=True,
            min=0.05,
            max=50.0,
            units="Å/px",
            help="Voxel size of the maps.",
        ),
        Param.bool(
            "check_pixel_size",
            True,
            expert=1,
            help="Fail when a header voxel size differs by more than 1%.",
        ),
        ON_ERROR,
    )
    outputs = (Output("volumes", "hpcem.SetOfVolumes"),)
    citations = (HPCEM_CITATION,)
    output_name, set_type, kinds = "volumes", "hpcem.SetOfVolumes", ("volume",)
