"""Motion correction with RELION's own implementation (``relion.motioncorr``).

One step per movie (:func:`correct_one`): the movie (and the gain reference, when given)
is linked into the step's folder under the run's ``relion/``, with a one-movie STAR file
of its optics; ``relion_run_motioncorr --use_own`` aligns the frames there, writes the
dose-weighted sum (and the plain one with ``save_nodw``) and the per-movie STAR file of
frame shifts. The ``register`` step writes output ``micrographs`` (the sums, with the
optics' pixel size times ``bin_factor``) and ``alignments``: per-frame whole-frame shifts
in Å with hpcem's sign (the displacement of the specimen in each frame: the negative of
RELION's ``_rlnMicrographShiftX/Y``, which are the shifts that *align* the frames, in
pixels of the movie) and RELION's own accumulated motion (``_rlnAccumMotionTotal`` and
``_rlnAccumMotionEarly``, which RELION 3.1.3 writes in pixels of the movie, times the
pixel size) as ``total_drift`` and ``early_drift`` in Å.

TIFF movies: RELION reads TIFF frames upside down relative to hpcem (see
docs/conventions.md), so its sums of TIFF movies are y-flipped relative to the frames as
hpcem reads them (as RELION's and MotionCor2's always are), while the ``alignments``
describe the movie as hpcem reads it (RELION's y shifts negated once more).

A movie whose frame count differs from the set's, or that RELION fails on, is rejected
with the reason (RELION's last stderr lines); the other movies go on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ItemRejected
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS, ZIVANOV_2019

PROGRAM = "relion_run_motioncorr"
STEP_PREFIX = "motioncorr/"
#: Summary plots relion_run_motioncorr writes next to the sums (one movie each: removed).
_SUMMARY_FILES = (
    "logfile.pdf",
    "logfile.pdf.lst",
    "corrected_micrographs_all_rlnAccumMotionTotal.eps",
    "corrected_micrographs_all_rlnAccumMotionEarly.eps",
    "corrected_micrographs_all_rlnAccumMotionLate.eps",
)


def _step_name(row: int) -> str:
    return f"{STEP_PREFIX}{row:06d}"


def _row_of(step_name: str) -> int:
    return int(step_name[len(STEP_PREFIX) :])


def _movie_suffix(path: str) -> str:
    """The file name ending RELION recognises the movie's format by."""
    name = Path(path).name.lower()
    for suffix in (".tiff", ".tif", ".eer"):
        if name.endswith(suffix):
            return suffix
    return ".mrcs"


def motioncorr_args(star: str, optics: dict, options: dict, gain: str | None) -> list[str]:
    """relion_run_motioncorr's arguments for the one-movie STAR file ``star``."""
    last = options["last_frame"]
    args = [
        "--i", star,
        "--o", "./",
        "--use_own",
        "--j", str(options["threads"]),
        "--first_frame_sum", str(options["first_frame"] + 1),
        "--last_frame_sum", str(last + 1 if last >= 0 else -1),
        "--bin_factor", f"{options['bin_factor']:g}",
        "--bfactor", f"{options['bfactor_px2']:g}",
        "--dose_per_frame", f"{optics['dose_per_frame_e_A2']:g}",
        "--preexposure", f"{options['pre_exposure_e_A2']:g}",
        "--patch_x", str(options["patches_x"]),
        "--patch_y", str(options["patches_y"]),
        "--group_frames", str(options["group_frames"]),
    ]  # fmt: skip
    if options["dose_weighting"]:
        args.append("--dose_weighting")
    if options["save_nodw"]:
        args.append("--save_noDW")
    if gain:
        args += ["--gainref", gain]
        args += ["--gain_rot", str(options["gain_rot"]), "--gain_flip", str(options["gain_flip"])]
    return args


def correct_one(path: str, movie_id: int, n_frames: int, optics: dict, options: dict) -> dict:
    """Step: motion-correct one movie with relion_run_motioncorr --use_own.

    ``optics``: ``pixel_size_A, voltage_kV, cs_mm, amplitude_contrast,
    dose_per_frame_e_A2`` of the movie's group; ``options``: the protocol's parameters,
    the project-relative ``gain_reference`` ("" = none), ``site``, ``work``, ``log``.
    Returns the sums' paths, ``shifts_x/y`` (Å, hpcem's sign), RELION's ``total_drift``
    and ``early_drift`` (Å), ``pixel_size_A`` of the sums and ``commands``.
    """
    from hpcem.convert.relion import write_movies
    from hpcem.relion.runner import RelionError, link_input, run_relion
    from hpcem.relion.star import read_loop

    if not Path(path).is_file():
        raise ItemRejected(f"movie {movie_id}: {path} is not a file")
    stem = f"movie_{movie_id:06d}"
    work = Path(options["work"]) / stem
    link_input(path, work / f"{stem}{_movie_suffix(path)}")
    write_movies(
        work / "movies.star",
        {"image": [f"{stem}{_movie_suffix(path)}"], "optics_group": [1]},
        {
            "optics_group": [1],
            "pixel_size_A": [optics["pixel_size_A"]],
            "voltage_kV": [optics["voltage_kV"]],
            "spherical_aberration_mm": [optics["cs_mm"]],
            "amplitude_contrast": [optics["amplitude_contrast"]],
        },
    )
    gain = None
    if options["gain_reference"]:
        gain = link_input(options["gain_reference"], work / "gain.mrc").name
    outputs = [work / f"{stem}.mrc", work / f"{stem}_noDW.mrc", work / f"{stem}.star"]
    for old in [*outputs, work / "corrected_micrographs.star"]:
        old.unlink(missing_ok=True)  # an earlier attempt's; only this command's output counts
    try:
        record = run_relion(
            PROGRAM,
            motioncorr_args("movies.star", optics, options, gain),
            workdir=work,
            site=options["site"],
            log=options["log"],
            label=f"movie {movie_id}",
            threads=options["threads"],
        )
    except RelionError as exc:
        raise ItemRejected(f"movie {movie_id}: {exc}") from None
    for extra in (*_SUMMARY_FILES, f"{stem}_shifts.eps"):
        (work / extra).unlink(missing_ok=True)
    try:
        general = _general(work / f"{stem}.star")
        shifts = read_loop(
            work / f"{stem}.star",
            "global_shift",
            required=("rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY"),
        )
        mics = read_loop(
            work / "corrected_micrographs.star",
            "micrographs",
            required=("rlnMicrographName", "rlnAccumMotionTotal", "rlnAccumMotionEarly"),
        )
        out_optics = read_loop(
            work / "corrected_micrographs.star", "optics", required=("rlnMicrographPixelSize",)
        )
    except DataFormatError as exc:
        raise ItemRejected(f"movie {movie_id}: RELION's output: {exc}") from None
    frames = int(general.get("rlnImageSizeZ", n_frames))
    if frames != n_frames:
        raise ItemRejected(
            f"movie {movie_id}: {path} has {frames} frames (RELION read), the movie set says "
            f"{n_frames}"
        )
    pixel = optics["pixel_size_A"]
    shift_x = -np.asarray(shifts["rlnMicrographShiftX"], float) * pixel
    shift_y = -np.asarray(shifts["rlnMicrographShiftY"], float) * pixel
    if _movie_suffix(path) in (".tif", ".tiff"):
        # RELION reads TIFF frames upside down relative to hpcem (docs/conventions.md):
        # its y shifts are in the flipped frame; hpcem's alignments describe the movie as
        # hpcem reads it (measured: RMS 1.96 px against the truth unflipped, 0.24 flipped).
        shift_y = -shift_y
    if not (np.all(np.isfinite(shift_x)) and np.all(np.isfinite(shift_y))):
        raise ItemRejected(f"movie {movie_id}: RELION's alignment gave non-finite shifts")
    last = options["last_frame"] if options["last_frame"] >= 0 else n_frames - 1
    nodw = work / f"{stem}_noDW.mrc"
    return {
        "movie_id": int(movie_id),
        "image": str(work / f"{stem}.mrc"),
        "image_nodw": str(nodw) if options["save_nodw"] and nodw.is_file() else "",
        "first_frame": int(options["first_frame"]),
        "last_frame": int(last),
        "shifts_x": [round(float(v), 4) for v in shift_x],
        "shifts_y": [round(float(v), 4) for v in shift_y],
        # RELION 3.1.3's own implementation writes the accumulated motion in pixels of
        # the movie (measured: the same numbers whatever pixel size or binning it is
        # given, equal to the path length of its shifts in pixels), not Å.
        "total_drift": float(mics["rlnAccumMotionTotal"][0]) * pixel,
        "early_drift": float(mics["rlnAccumMotionEarly"][0]) * pixel,
        "pixel_size_A": float(out_optics["rlnMicrographPixelSize"][0]),
        "commands": [record],
        "relion_version": record["version"],
    }


def _dose(value) -> float:
    """The dose per frame for RELION (0 when unknown: NaN is no JSON and no argument)."""
    value = float(value)
    return value if math.isfinite(value) and value > 0 else 0.0


def _general(path: Path) -> dict:
    """The ``data_general`` key-value block of RELION's per-movie STAR file."""
    import starfile

    try:
        data = starfile.read(path, always_dict=True)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataFormatError(f"{path}: cannot read as a STAR file: {exc}") from None
    block = data.get("general")
    if block is None:
        raise DataFormatError(f"{path}: no data_general block")
    return dict(block) if isinstance(block, dict) else block.iloc[0].to_dict()


def register_motion(ctx) -> dict:
    """Controller step: write ``micrographs`` and ``alignments`` in movie order.

    Returns ``{"count", "rejected": [{"movie_id", "reason"}], "relion_version"}``;
    raises HpcemError when every movie was rejected.
    """
    found = ctx.results(STEP_PREFIX)
    rejections = ctx.rejections(STEP_PREFIX)
    movies = ctx.input("movies")
    ids = movies.column("id")
    groups = movies.column("optics_group")
    rejected = [
        {"movie_id": int(ids[_row_of(name)]), "reason": rejections[name]}
        for name in sorted(rejections)
    ]
    if rejected and not found:
        raise HpcemError(f"all {len(rejected)} movies were rejected: {rejected[0]['reason']}")
    names = sorted(found)
    rows = [found[k] for k in names]
    row_groups = [int(groups[_row_of(k)]) for k in names]
    optics = {k: list(v) for k, v in dict(movies.optics).items()}
    by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
    for row, group in zip(rows, row_groups):
        optics["pixel_size_A"][by_group[group]] = row["pixel_size_A"]
    with ctx.create_set("micrographs", "hpcem.SetOfMicrographs") as writer:
        writer.set_optics(optics)
        writer.append_columns(
            {
                "image": [ctx.path(r["image"]) for r in rows],
                "movie_id": [r["movie_id"] for r in rows],
                "image_nodw": [ctx.path(r["image_nodw"]) if r["image_nodw"] else "" for r in rows],
                "optics_group": row_groups,
            }
        )
    fields = (
        "movie_id",
        "first_frame",
        "last_frame",
        "shifts_x",
        "shifts_y",
        "total_drift",
        "early_drift",
    )
    with ctx.create_set("alignments", "hpcem.SetOfMovieAlignments") as writer:
        writer.append_columns(
            {k: [r[k] for r in rows] for k in fields}
            | {"local": [0] * len(rows), "local_coefficients": [[] for _ in rows]}
        )
    versions = sorted({r["relion_version"] for r in rows})
    return {"count": len(rows), "rejected": rejected, "relion_version": ",".join(versions)}


class MotionCorrRelion(Protocol):
    name = "relion.motioncorr"
    label = "Align movies (RELION's own motion correction)"
    version = "1"
    help = (
        "Align the frames of each movie with RELION 3.1's own implementation of "
        "MotionCor2's algorithm (relion_run_motioncorr --use_own), sum them with dose "
        "weighting, one step per movie. Pixel size, voltage and dose per frame come from "
        "the input's optics table."
    )
    inputs = (Input("movies", ("hpcem.SetOfMovies",), help="Movies to align."),)
    params = (
        Param.int("first_frame", 0, min=0, help="First frame summed (0-based; RELION's 1)."),
        Param.int(
            "last_frame",
            -1,
            min=-1,
            help="Last frame summed (0-based, inclusive; -1 = the last; RELION's -1).",
        ),
        Param.bool(
            "dose_weighting",
            True,
            help="Weight the frames for their exposure (--dose_weighting; needs the dose "
            "per frame in the movies' optics).",
        ),
        Param.bool(
            "save_nodw",
            False,
            help="Also write the plain sum without dose weighting (--save_noDW).",
        ),
        Param.float(
            "bfactor_px2",
            150.0,
            min=0.0,
            max=10000.0,
            units="px²",
            help="B-factor applied to the frames for the alignment (--bfactor; default 150).",
        ),
        Param.int(
            "patches_x", 1, min=1, max=50, help="Patches along x for local motion (--patch_x)."
        ),
        Param.int(
            "patches_y", 1, min=1, max=50, help="Patches along y for local motion (--patch_y)."
        ),
        Param.int(
            "group_frames",
            1,
            min=1,
            max=100,
            expert=1,
            help="Average this many frames before aligning (--group_frames).",
        ),
        Param.float(
            "bin_factor",
            1.0,
            min=1.0,
            max=16.0,
            help="Bin the sums by this factor (--bin_factor); their pixel size is the "
            "movies' times this.",
        ),
        Param.float(
            "pre_exposure_e_A2",
            0.0,
            min=0.0,
            max=1000.0,
            units="e⁻/Å²",
            expert=1,
            help="Exposure before the first frame (--preexposure).",
        ),
        Param.path(
            "gain_reference",
            "",
            help="Gain reference (MRC) the frames are multiplied by (--gainref; empty = none).",
        ),
        Param.int(
            "gain_rot",
            0,
            min=0,
            max=3,
            expert=1,
            help="Rotate the gain reference this many times 90° clockwise (--gain_rot).",
        ),
        Param.int(
            "gain_flip",
            0,
            min=0,
            max=2,
            expert=1,
            help="Flip the gain reference: 1 = upside down, 2 = left to right (--gain_flip).",
        ),
        Param.int("threads", 1, min=1, max=256, help="Threads per movie (--j; OMP_NUM_THREADS)."),
    )
    outputs = (
        Output(
            "micrographs",
            "hpcem.SetOfMicrographs",
            help="The aligned, dose-weighted sums (image; image_nodw with save_nodw), with "
            "movie_id.",
        ),
        Output(
            "alignments",
            "hpcem.SetOfMovieAlignments",
            help="Per movie: the shift of every frame (Å; the specimen's displacement, the "
            "negative of RELION's shifts), RELION's total and early accumulated motion.",
        ),
    )
    citations = (*RELION_CITATIONS, ZIVANOV_2019)

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = []
        if 0 <= p["last_frame"] < p["first_frame"]:
            problems.append(
                f"last_frame {p['last_frame']} must be after first_frame {p['first_frame']}"
            )
        if p["gain_reference"] and not Path(ctx.path(p["gain_reference"])).is_file():
            problems.append(f"gain_reference {p['gain_reference']!r} is not a file")
        try:
            movies = ctx.input("movies")
        except HpcemError:
            movies = None
        if movies is not None and p["dose_weighting"]:
            doses = [float(d) for d in movies.optics.get("dose_per_frame_e_A2", [])]
            if not doses or not all(math.isfinite(d) and d > 0 for d in doses):
                problems.append(
                    "dose_weighting needs the dose per frame in the movies' optics "
                    f"(dose_per_frame_e_A2 = {doses}); import them with it, or turn "
                    "dose_weighting off"
                )
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.relion.runner import relion_places

        p = ctx.params
        movies = ctx.input("movies")
        optics = movies.optics
        by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
        options = {k: p[k] for k in (prm.name for prm in self.params)} | relion_places(ctx)
        if p["gain_reference"]:
            options["gain_reference"] = ctx.relpath(ctx.path(p["gain_reference"]))
        steps = []
        for i, (path, mid, n_frames, group) in enumerate(
            zip(
                movies.column("image"),
                movies.column("id"),
                movies.column("n_frames"),
                movies.column("optics_group"),
            )
        ):
            o = by_group[int(group)]
            steps.append(
                Step(
                    _step_name(i),
                    "hpcem.protocols.relion_motioncorr:correct_one",
                    {
                        "path": ctx.relpath(str(path)),
                        "movie_id": int(mid),
                        "n_frames": int(n_frames),
                        "optics": {
                            "pixel_size_A": float(optics["pixel_size_A"][o]),
                            "voltage_kV": float(optics["voltage_kV"][o]),
                            "cs_mm": float(optics["spherical_aberration_mm"][o]),
                            "amplitude_contrast": float(optics["amplitude_contrast"][o]),
                            "dose_per_frame_e_A2": _dose(optics["dose_per_frame_e_A2"][o]),
                        },
                        "options": options,
                    },
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.relion_motioncorr:register_motion",
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
