"""Movie alignment with hpcem's own implementation: one step per movie.

Global alignment (leave-one-out cross-correlation on Fourier-cropped frames), an optional
local (patch) model that is kept only when it predicts the patches better than the global
shifts (F test and cross-validation), dose
weighting with the Grant & Grigorieff (2015) critical-exposure curve, gain reference,
detector defects and frame range; see :mod:`hpcem.motion` and docs/motion.md.

A movie that cannot be aligned (file shorter than its header, frame count different from
the import, TIFF frames of different sizes, NaN/Inf pixels, a frame range outside the
movie, a gain reference of the wrong shape or with bad values) is *rejected*: its step
raises :class:`~hpcem.errors.ItemRejected` with the reason, the other movies go on, and
``register`` writes the accepted ones and lists the rejected movies.
"""

from __future__ import annotations

import math
from pathlib import Path

from hpcem.errors import HpcemError, ItemRejected
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

_STEP_PREFIX = "align/"

GRANT_GRIGORIEFF_2015 = Citation(
    "Grant2015",
    "@article{Grant2015, author = {Grant, Timothy and Grigorieff, Nikolaus}, title = "
    "{Measuring the optimal exposure for single particle cryo-EM using a 2.6 {\\AA} "
    "reconstruction of rotavirus VP6}, journal = {eLife}, volume = {4}, pages = {e06980}, "
    "year = {2015}, doi = {10.7554/eLife.06980}}",
)
ZHENG_2017 = Citation(
    "Zheng2017",
    "@article{Zheng2017, author = {Zheng, Shawn Q. and Palovcak, Eugene and Armache, "
    "Jean-Paul and Verba, Kliment A. and Cheng, Yifan and Agard, David A.}, title = "
    "{MotionCor2: anisotropic correction of beam-induced motion for improved cryo-electron "
    "microscopy}, journal = {Nat. Methods}, volume = {14}, pages = {331--332}, year = {2017}, "
    "doi = {10.1038/nmeth.4193}}",
)
ZIVANOV_2019 = Citation(
    "Zivanov2019",
    "@article{Zivanov2019, author = {Zivanov, Jasenko and Nakane, Takanori and Scheres, "
    "Sjors H. W.}, title = {A Bayesian approach to beam-induced motion correction in cryo-EM "
    "single-particle analysis}, journal = {IUCrJ}, volume = {6}, pages = {5--17}, "
    "year = {2019}, doi = {10.1107/S205225251801463X}}",
)


def _step_name(row: int) -> str:
    return f"{_STEP_PREFIX}{row:06d}"


def _row_of(step_name: str) -> int:
    return int(step_name[len(_STEP_PREFIX) :])


def align_one(
    path: str,
    movie_id: int,
    n_frames: int,
    pixel_size_A: float,
    dose_per_frame_e_A2: float,
    voltage_kV: float,
    options: dict,
    out_dir: str,
) -> dict:
    """Step: align one movie, write its sums and trajectory PNG under ``out_dir``.

    Raises ItemRejected, naming the movie, for any problem of its file (see the module
    docs); the result holds shifts in Å and is always finite (valid JSON).
    """
    from hpcem.motion.movie import align_movie_file

    stem = f"{movie_id:06d}_{Path(path).name.split('.')[0]}"
    out = Path(out_dir)
    try:
        result = align_movie_file(
            path,
            pixel_size_A=pixel_size_A,
            dose_per_frame_e_A2=dose_per_frame_e_A2,
            voltage_kV=voltage_kV,
            n_frames_expected=n_frames,
            out_image=str(out / "micrographs" / f"{stem}.mrc"),
            out_nodw=str(out / "micrographs" / f"{stem}_noDW.mrc"),
            out_plot=str(out / "plots" / f"{stem}_shifts.png"),
            **options,
        )
    except HpcemError as exc:
        raise ItemRejected(f"movie {movie_id}: {exc}") from None
    shifts = result["shifts_px"]
    row = {
        "movie_id": movie_id,
        "image": result["outputs"]["image"],
        "image_nodw": result["outputs"].get("image_nodw", ""),
        "plot": str(out / "plots" / f"{stem}_shifts.png"),
        "first_frame": result["first_frame"],
        "last_frame": result["last_frame"],
        "shifts_x": [s[0] * pixel_size_A for s in shifts],
        "shifts_y": [s[1] * pixel_size_A for s in shifts],
        "total_drift": result["total_drift_px"] * pixel_size_A,
        "early_drift": result["early_drift_px"] * pixel_size_A,
        "local": int(result["local"]),
        "local_coefficients": result["local_coefficients"],
        "local_f": result["local_f"],
        "local_cv_gain": result["local_cv_gain"],
        "output_pixel_size_A": result["output_pixel_size_A"],
        "iterations": result["iterations"],
        "converged": result["converged"],
        "binning": result["binning"],
        "backend": result["backend"],
        "seconds": result["seconds"],
    }
    numbers = row["shifts_x"] + row["shifts_y"] + row["local_coefficients"]
    if not all(math.isfinite(v) for v in numbers):
        raise ItemRejected(f"movie {movie_id}: alignment gave non-finite shifts")
    return row


def register_alignments(ctx) -> dict:
    """Controller step: write ``micrographs`` and ``alignments`` in movie order.

    Returns ``{"count": n_aligned, "rejected": [{"movie_id", "reason"}, ...],
    "backend": ...}``. Raises HpcemError when every movie was rejected.
    """
    found = ctx.results(_STEP_PREFIX)
    rejections = ctx.rejections(_STEP_PREFIX)
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
    with ctx.create_set("micrographs", "hpcem.SetOfMicrographs") as writer:
        writer.set_optics(
            _binned_optics(movies.optics, rows, [int(groups[_row_of(k)]) for k in names])
        )
        writer.append_columns(
            {
                "image": [r["image"] for r in rows],
                "movie_id": [r["movie_id"] for r in rows],
                "image_nodw": [r["image_nodw"] for r in rows],
                "thumbnail": [r["plot"] for r in rows],
                "optics_group": [int(groups[_row_of(k)]) for k in names],
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
        "local",
        "local_coefficients",
        "plot",
    )
    with ctx.create_set("alignments", "hpcem.SetOfMovieAlignments") as writer:
        writer.append_columns({k: [r[k] for r in rows] for k in fields})
    backends = sorted({r["backend"] for r in rows})
    return {"count": len(rows), "rejected": rejected, "backend": ",".join(backends)}


def _binned_optics(optics, rows: list[dict], groups: list[int]) -> dict:
    """The movies' optics table with the pixel size of the sums (``output_binning``)."""
    table = {k: list(v) for k, v in dict(optics).items()}
    by_group = {int(g): i for i, g in enumerate(table["optics_group"])}
    for row, group in zip(rows, groups):
        # Movies of one group share their size, so their sums share the pixel size.
        table["pixel_size_A"][by_group[group]] = row["output_pixel_size_A"]
    return table


class AlignMovies(Protocol):
    name = "motion.align"
    label = "Align movies"
    help = (
        "Align the frames of each movie (global drift, optionally local motion on "
        "patches), sum them with dose weighting, and plot each movie's trajectory. "
        "One step per movie; pixel size, dose and voltage come from the input's optics "
        "table."
    )
    version = "1"
    inputs = (Input("movies", ("hpcem.SetOfMovies",), help="Movies to align."),)
    params = (
        Param.float(
            "binning",
            0.0,
            min=0.0,
            max=16.0,
            help="Fourier-crop factor for the alignment only (the sums are full size): "
            "1 = no cropping, 0 = automatic (alignment grid at most 1024 px, and no "
            "frequencies kept where the B-factor filter is below 1%).",
        ),
        Param.int(
            "patches",
            0,
            min=0,
            max=12,
            help="Local motion on patches x patches overlapping patches (e.g. 5); "
            "0 = global alignment only. The local model is kept only when it explains the "
            "patch shifts (F test) and predicts each patch from the others better than the "
            "global shifts (cross-validation); otherwise the global alignment is used.",
        ),
        Param.float(
            "b_factor_px2",
            150.0,
            min=0.0,
            max=10000.0,
            units="px²",
            help="B-factor of the low-pass on the cross-correlation, exp(-B k²/4) with k in "
            "cycles/pixel (as RELION's and MotionCor2's --bfactor).",
        ),
        Param.int("iterations", 10, min=1, max=100, help="Most alignment iterations per movie."),
        Param.int("first_frame", 0, min=0, help="First frame summed and aligned (0-based)."),
        Param.int(
            "last_frame",
            -1,
            min=-100000,
            help="Last frame summed and aligned (0-based, inclusive; -1 = the last frame, "
            "-2 the one before, ...).",
        ),
        Param.bool(
            "dose_weighting",
            True,
            help="Weight frames by the Grant & Grigorieff (2015) critical-exposure curve.",
        ),
        Param.bool(
            "save_nodw",
            False,
            help="Also write the sum without dose weighting (micrographs' image_nodw).",
        ),
        Param.float(
            "output_binning",
            1.0,
            min=1.0,
            max=16.0,
            help="Fourier-crop the sums by this factor (e.g. 2 for super-resolution "
            "movies); the micrographs' pixel size grows by the same factor and each pixel "
            "holds the counts of the movie pixels it covers.",
        ),
        Param.path(
            "gain_reference",
            "",
            help="Gain reference image (MRC/TIFF) multiplied into every frame; empty = none.",
        ),
        Param.path(
            "defect_file",
            "",
            help="Detector defects: a text file of 'x y width height' rectangles "
            "(MotionCor2) or an image whose non-zero pixels are bad; empty = none.",
        ),
        Param.float(
            "pre_exposure_e_A2",
            0.0,
            min=0.0,
            max=1000.0,
            units="e⁻/Å²",
            help="Exposure before the first frame, added to every frame's exposure. The "
            "dose weights are normalised per frequency, so it does not change the sum; it "
            "decides which frames count as early (up to 4 e⁻/Å²) for early_drift.",
        ),
    )
    outputs = (
        Output(
            "micrographs",
            "hpcem.SetOfMicrographs",
            help="Aligned sums (dose-weighted unless dose_weighting is off).",
        ),
        Output(
            "alignments",
            "hpcem.SetOfMovieAlignments",
            help="Per-movie frame shifts (Å), drift, local model and trajectory plot.",
        ),
    )
    citations = (GRANT_GRIGORIEFF_2015, ZHENG_2017, ZIVANOV_2019)

    def validate(self, ctx) -> list[str]:
        import os

        p = ctx.params
        problems = []
        if 0 < p["binning"] < 1:
            problems.append(f"binning must be 0 (automatic) or >= 1, got {p['binning']}")
        if p["patches"] == 1:
            problems.append("patches must be 0 (global only) or >= 2")
        if p["last_frame"] >= 0 and p["last_frame"] <= p["first_frame"]:
            problems.append(
                f"last_frame {p['last_frame']} must be after first_frame {p['first_frame']}"
            )
        if p["dose_weighting"] and ctx.inputs.get("movies"):
            doses = ctx.input("movies").optics["dose_per_frame_e_A2"]
            if not all(float(d) > 0 for d in doses):
                problems.append(
                    "dose_weighting needs the dose per frame, but the movies' optics table "
                    "has 0 e/Å²: set dose_per_frame_e_A2 at import, or turn dose_weighting off"
                )
        for name in ("gain_reference", "defect_file"):
            if p[name] and not os.path.isfile(ctx.path(p[name])):
                problems.append(f"{name}: {ctx.path(p[name])!r} is not a file")
        return problems

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        movies = ctx.input("movies")
        optics = movies.optics
        by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
        options = {
            "binning": p["binning"],
            "patches": p["patches"],
            "b_factor_px2": p["b_factor_px2"],
            "max_iterations": p["iterations"],
            "first_frame": p["first_frame"],
            "last_frame": p["last_frame"],
            "dose_weighting": p["dose_weighting"],
            "save_nodw": p["save_nodw"],
            "gain_path": ctx.relpath(ctx.path(p["gain_reference"]))
            if p["gain_reference"]
            else None,
            "defects_path": ctx.relpath(ctx.path(p["defect_file"])) if p["defect_file"] else None,
            "pre_exposure_e_A2": p["pre_exposure_e_A2"],
            "output_binning": p["output_binning"],
        }
        out_dir = ctx.relpath(str(ctx.run_dir / "aligned"))
        steps = []
        columns = zip(
            movies.column("image"),
            movies.column("id"),
            movies.column("n_frames"),
            movies.column("optics_group"),
        )
        for i, (path, movie_id, n_frames, group) in enumerate(columns):
            row = by_group[int(group)]
            steps.append(
                Step(
                    _step_name(i),
                    "hpcem.protocols.motion_align:align_one",
                    {
                        "path": ctx.relpath(str(path)),
                        "movie_id": int(movie_id),
                        "n_frames": int(n_frames),
                        "pixel_size_A": float(optics["pixel_size_A"][row]),
                        "dose_per_frame_e_A2": float(optics["dose_per_frame_e_A2"][row]),
                        "voltage_kV": float(optics["voltage_kV"][row]),
                        "options": options,
                        "out_dir": out_dir,
                    },
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.motion_align:register_alignments",
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
