"""What every ``relion_refine`` protocol shares (``relion.class2d``, ``relion.class3d``,
``relion.refine3d``): parameters, validation, the particle STAR, the run of
``relion_refine`` (or ``relion_refine_mpi`` under MPI) and reading its results back.

Steps of such a protocol (:func:`refine_steps`):

1. ``prepare`` (controller, :func:`write_particles`): the input particles as a RELION
   3.1 particle STAR in the run's ``relion/`` folder (stacks relative to it, 1-based
   indices, the CTF, the shifts as ``_rlnOriginXAngst``, the optics groups);
2. ``reference`` (controller, :func:`link_reference`; 3D protocols only): the reference
   map linked next to the STAR (:func:`with_reference`);
3. ``refine`` (worker, :func:`refine`): ``relion_refine`` runs there (``--o refine/run``),
   with ``--j`` threads and the protocol's options, under the MPI launcher of
   :mod:`hpcem.relion.mpi` when ``mpi_ranks`` > 1; the step first removes an earlier
   attempt's ``run_*`` files, so a failed or interrupted refinement is re-run whole by
   ``hpcem continue``. Its result holds the exact command (``commands``) and the files
   of the last iteration;
4. ``register`` (controller, the protocol's own): the last iteration's model and data
   STARs read back (:func:`read_refined`, :func:`write_particle_set`,
   :func:`write_classes`).

RELION keeps the order of the input STAR in its data STAR; :func:`read_refined` checks
that (image name by image name) before mapping rows back to particle ids.
``_rlnMaxValueProbDistribution`` (how sure RELION is of each assignment) has no particle
field: :func:`probability_summary` gives its mean and quartiles for the step result.

The step functions are recorded in runs by the names of the protocol modules that first
held them (``hpcem.protocols.relion_class2d:refine``, ...: :data:`STEP_FUNCS`); those
modules re-export them, so the steps of existing runs keep their identity and resume.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ValidationError
from hpcem.model.types import RECONSTRUCTION_FIELDS
from hpcem.protocol import Param, Step
from hpcem.relion.mpi import mpi_launcher

PROGRAM = "relion_refine"
MPI_PROGRAM = "relion_refine_mpi"
STAR_NAME = "particles.star"
#: ``--o`` of every relion_refine run, in the folder of the STAR file (files
#: ``refine/run_it025_model.star`` etc.; RELION wants a folder in the prefix).
OUT_DIR = "refine"
OUT_PREFIX = "run"
#: Particle fields written for RELION: the image, its CTF, its pose (the centre of local
#: searches; RELION ignores it in global searches) and the half set.
STAR_FIELDS = RECONSTRUCTION_FIELDS
#: Per-particle results read back from RELION's data STAR.
POSE_FIELDS = ("rot", "tilt", "psi", "shift_x", "shift_y", "class_id")
#: The step functions as runs record them (their first home; see the module's text).
STEP_FUNCS = {
    "prepare": "hpcem.protocols.relion_class2d:write_particles",
    "refine": "hpcem.protocols.relion_class2d:refine",
    "reference": "hpcem.protocols.relion_class3d:link_reference",
}
_SYMMETRY_RE = re.compile(r"^(C\d+|D\d+|T|O|I[1-5]?)$", re.IGNORECASE)
_ITERATION_RE = re.compile(r"_it(\d{3})_(?:half1_)?model\.star$")


def common_params(threads_default: int = 1, ranks_default: int = 1) -> tuple[Param, ...]:
    """Parameters every relion_refine protocol has (RELION 3.1 GUI defaults)."""
    return (
        Param.int(
            "mpi_ranks",
            ranks_default,
            min=1,
            max=4096,
            help="MPI processes of relion_refine_mpi (1 = relion_refine without MPI; "
            "RELION's leader rank does no refinement work, so use 3 or more).",
        ),
        Param.float(
            "particle_diameter_A",
            200.0,
            min=1.0,
            max=10000.0,
            units="Å",
            help="Diameter of the circular mask around the particles (--particle_diameter); "
            "a little larger than the particle.",
        ),
        Param.bool("ctf", True, help="Correct the CTF of each particle (--ctf)."),
        Param.bool(
            "ctf_intact_first_peak",
            False,
            expert=1,
            help="Ignore the CTF until its first peak (--ctf_intact_first_peak).",
        ),
        Param.bool(
            "zero_mask",
            True,
            help="Fill the solvent around the mask with zeros, not noise (--zero_mask).",
        ),
        Param.float(
            "offset_range_px",
            5.0,
            min=0.0,
            max=100.0,
            units="px",
            help="Translations searched, around each particle's current origin (--offset_range).",
        ),
        Param.float(
            "offset_step_px",
            1.0,
            min=0.1,
            max=20.0,
            units="px",
            help="Step of the translational search (--offset_step).",
        ),
        Param.int(
            "threads",
            threads_default,
            min=1,
            max=256,
            help="Threads of relion_refine (--j; the step's cores).",
        ),
        Param.int(
            "random_seed",
            1,
            min=-1,
            max=2**31 - 1,
            expert=1,
            help="RELION's random seed (--random_seed; -1 = from the clock, not reproducible).",
        ),
        Param.float(
            "time_limit_h",
            48.0,
            min=0.01,
            max=1000.0,
            units="h",
            expert=1,
            help="The refine step is stopped (and fails, to be continued) after this long.",
        ),
    )


def common_args(p: dict) -> list[str]:
    """relion_refine arguments from :func:`common_params`'s values."""
    args = [
        "--particle_diameter", f"{p['particle_diameter_A']:g}",
        "--offset_range", f"{p['offset_range_px']:g}",
        "--offset_step", f"{p['offset_step_px']:g}",
        "--j", str(p["threads"]),
        "--random_seed", str(p["random_seed"]),
        "--flatten_solvent", "--norm", "--scale",
        "--oversampling", "1", "--pad", "2",
        "--dont_combine_weights_via_disc", "--pool", "3",
    ]  # fmt: skip
    if p["ctf"]:
        args.append("--ctf")
        if p["ctf_intact_first_peak"]:
            args.append("--ctf_intact_first_peak")
    if p["zero_mask"]:
        args.append("--zero_mask")
    return args


def particle_problems(ctx, diameter_A: float) -> list[str]:
    """Validation of input ``particles``: one box and pixel size, a mask that fits."""
    try:
        particles = ctx.input("particles")
    except HpcemError:
        return []
    if isinstance(particles, list):
        return ["give one particle set (merge sets first)"]
    optics = particles.optics
    boxes = sorted({int(b) for b in optics.get("image_size_px", [])})
    pixels = sorted({round(float(v), 4) for v in optics.get("pixel_size_A", [])})
    if not boxes or boxes[0] <= 0:
        return [
            (
                "the particles' optics have no image_size_px (box edge): extract them with "
                "particles.extract or relion.extract"
            )
        ]
    if len(boxes) > 1 or len(pixels) > 1:
        return [
            (
                f"the particles have several box sizes {boxes} px or pixel sizes {pixels} Å; "
                "relion_refine needs one"
            )
        ]
    if len(particles) == 0:
        return ["the particle set is empty"]
    box_A = boxes[0] * pixels[0]
    if diameter_A > box_A:
        return [
            (
                f"particle_diameter_A {diameter_A:g} Å is larger than the box "
                f"({boxes[0]} px × {pixels[0]:g} Å = {box_A:g} Å)"
            )
        ]
    return []


def mpi_problems(ranks: int, site_name: str | None, at_least: int = 1) -> list[str]:
    """Validation of ``mpi_ranks``: relion_refine_mpi and a launcher of its MPI exist."""
    from hpcem.relion.programs import check_program

    if ranks < at_least:
        return [f"mpi_ranks {ranks}: RELION needs at least {at_least} here"]
    if ranks == 1:
        return []
    try:
        path, _ = check_program(MPI_PROGRAM, site_name)
        mpi_launcher(site_name, ranks, path)
    except ValidationError as exc:
        return [str(exc)]
    return []


def symmetry_problems(symmetry: str) -> list[str]:
    """Validation of ``symmetry``: a point group RELION knows."""
    if _SYMMETRY_RE.match(symmetry):
        return []
    return [f"symmetry {symmetry!r} is not a point group RELION knows (C1, Cn, Dn, T, O, I1-I5)"]


def write_particles(ctx, star: str, keep_half_sets: bool = False) -> dict:
    """Controller step: input ``particles`` as RELION's ``star`` (project-relative),
    stacks relative to its folder (RELION runs there). ``_rlnRandomSubset`` is written
    only with ``keep_half_sets`` and when every particle has one (1 or 2); otherwise
    RELION draws the halves itself."""
    from hpcem.convert.relion import write_particles as write_star

    particles = ctx.input("particles")
    cols = particles.read_columns(list(STAR_FIELDS))
    path = Path(ctx.path(star))
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(path.parent)
    stacks = {s: os.path.relpath(ctx.path(str(s)), folder) for s in set(map(str, cols["image"]))}
    cols["image"] = np.asarray([stacks[str(s)] for s in cols["image"]], dtype=object)
    halves = np.asarray(cols.pop("half_set"), dtype=np.int64)
    kept = bool(keep_half_sets and len(halves) and np.isin(halves, (1, 2)).all())
    if kept:
        cols["half_set"] = halves
    write_star(path, cols, dict(particles.optics))
    return {"count": len(cols["image"]), "star": star, "half_sets_kept": kept}


def _clear_outputs(work: Path) -> int:
    """Remove an earlier attempt's ``run*`` files (a refinement is re-run whole)."""
    removed = 0
    for name in glob.glob(str(work / f"{OUT_PREFIX}_*")):
        os.unlink(name)
        removed += 1
    return removed


def last_iteration(work: str | os.PathLike) -> int:
    """The highest iteration of ``run_itNNN_model.star`` (auto-refine:
    ``run_itNNN_half1_model.star``) in ``work`` (-1: none)."""
    its = [
        int(m.group(1))
        for name in os.listdir(work)
        if (m := _ITERATION_RE.search(name)) and name.startswith(OUT_PREFIX)
    ]
    return max(its, default=-1)


def refine(star: str, args: list[str], options: dict) -> dict:
    """Step: ``relion_refine --i STAR --o refine/run ARGS`` in ``star``'s folder.

    ``options``: ``site``, ``log`` (see :func:`hpcem.relion.runner.relion_places`),
    ``time_limit_h``, ``mpi_ranks`` (> 1: ``relion_refine_mpi`` under
    :func:`hpcem.relion.mpi.mpi_launcher`) and ``final`` (``"iteration"``: the last
    ``run_itNNN_*`` files; ``"auto_refine"``: the converged ``run_model.star``,
    ``run_data.star``, ``run_class001.mrc`` and half maps). Returns ``commands``,
    ``relion_version``, ``iteration`` and ``files`` (project-relative, by kind).
    """
    from hpcem.relion.programs import find_program
    from hpcem.relion.runner import run_relion

    home = Path(star).parent
    work = home / OUT_DIR
    work.mkdir(parents=True, exist_ok=True)
    removed = _clear_outputs(work)
    args = ["--i", Path(star).name, "--o", f"{OUT_DIR}/{OUT_PREFIX}", *args]
    ranks = int(options.get("mpi_ranks", 1))
    mpi = {}
    if ranks > 1:
        path, _ = find_program(MPI_PROGRAM, options["site"])
        mpi = {
            "launcher": mpi_launcher(options["site"], ranks, path),
            # Open MPI refuses more ranks than cores unless told (RELION's leader mostly waits).
            "extra_env": {"OMPI_MCA_rmaps_base_oversubscribe": "1"},
        }
    record = run_relion(
        MPI_PROGRAM if mpi else PROGRAM,
        args,
        workdir=home,
        site=options["site"],
        log=options["log"],
        label="relion_refine",
        timeout_s=3600.0 * float(options["time_limit_h"]),
        threads=1,  # relion_refine's own --j threads; no OpenMP inside them
        **mpi,
    )
    iteration = last_iteration(work)
    if iteration < 0:
        raise HpcemError(f"{PROGRAM} wrote no {OUT_PREFIX}_itNNN_model.star in {work}")
    base = f"{OUT_PREFIX}_it{iteration:03d}"
    if options.get("final") == "auto_refine":
        files = {
            "model": f"{OUT_PREFIX}_model.star",
            "data": f"{OUT_PREFIX}_data.star",
            "map": f"{OUT_PREFIX}_class001.mrc",
            "half1": f"{OUT_PREFIX}_half1_class001_unfil.mrc",
            "half2": f"{OUT_PREFIX}_half2_class001_unfil.mrc",
        }
    else:
        files = {"model": f"{base}_model.star", "data": f"{base}_data.star"}
    missing = [name for name in files.values() if not (work / name).is_file()]
    if missing:
        raise HpcemError(
            f"{PROGRAM} finished (iteration {iteration}) without {', '.join(missing)} in {work}"
        )
    return {
        "iteration": iteration,
        "files": {k: str(work / v) for k, v in files.items()},
        "removed_earlier_files": removed,
        "commands": [record],
        "relion_version": record["version"],
    }


def read_refined(ctx, data_star: str) -> tuple[dict, dict]:
    """The input particles' columns (all fields) with RELION's poses and classes from
    ``data_star`` (project-relative) in place, and RELION's extra per-particle columns.
    DataFormatError when RELION's rows are not the input's, in order."""
    from hpcem.convert.relion import read_particles

    particles = ctx.input("particles")
    cols = particles.read_columns()
    path = ctx.path(data_star)
    out = read_particles(path)
    n = len(cols["id"])
    got = out.columns
    if len(got["image_index"]) != n:
        raise DataFormatError(f"{path}: {len(got['image_index'])} particles, the input has {n}")
    names = np.asarray([os.path.basename(str(s)) for s in got["image"]], dtype=object)
    want = np.asarray([os.path.basename(str(s)) for s in cols["image"]], dtype=object)
    bad = (np.asarray(got["image_index"]) != np.asarray(cols["image_index"])) | (names != want)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(
            f"{path}, row {i + 1}: image {got['image_index'][i] + 1}@{names[i]}, "
            f"the input's row is {cols['image_index'][i] + 1}@{want[i]} (order changed?)"
        )
    for field in (*POSE_FIELDS, "half_set"):
        if field in got:
            cols[field] = np.asarray(got[field])
    cols["image"] = np.asarray([ctx.path(str(s)) for s in cols["image"]], dtype=object)
    return cols, dict(out.extra)


def write_particle_set(ctx, cols: dict) -> None:
    """Output ``particles``: ``cols`` with the input's optics."""
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        writer.set_optics(ctx.input("particles").optics)
        writer.append_columns(cols)


def probability_summary(extra: dict) -> dict | None:
    """Mean and quartiles of ``_rlnMaxValueProbDistribution`` (None when absent)."""
    values = extra.get("rlnMaxValueProbDistribution")
    if values is None or not len(values):
        return None
    v = np.asarray(values, dtype=np.float64)
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return {"mean": float(v.mean()), "q1": float(q1), "median": float(q2), "q3": float(q3)}


def write_classes(ctx, model_star: str, data_star: str, set_type: str) -> dict:
    """Output ``classes`` from RELION's model and data STARs (project-relative), member
    ids = the input particles' ids; returns the class sizes."""
    from hpcem.convert.relion_results import read_classes

    ids = ctx.input("particles").column("id")
    home = os.path.dirname(os.path.dirname(ctx.path(model_star)))  # where RELION ran
    classes = read_classes(ctx.path(model_star), ctx.path(data_star), ids, root=home)
    if classes.set_type != set_type:
        raise DataFormatError(f"{model_star}: RELION wrote {classes.set_type}, expected {set_type}")
    cols = dict(classes.columns)
    with ctx.create_set("classes", set_type) as writer:
        writer.set_optics(ctx.input("particles").optics)
        writer.append_columns(cols)
    return {"sizes": [int(s) for s in cols["size"]], "general": classes.extra["model_general"]}


def refine_steps(ctx, args: list[str], register: str, final: str, keep_half_sets=False):
    """``prepare``, ``refine`` and ``register`` (``module:function``) of a relion_refine
    protocol whose options past :func:`common_args` are ``args``."""
    from hpcem.relion.runner import relion_places

    p = ctx.params
    places = relion_places(ctx)
    star = f"{places['work']}/{STAR_NAME}"
    options = {
        "site": places["site"],
        "log": places["log"],
        "time_limit_h": p["time_limit_h"],
        "mpi_ranks": p["mpi_ranks"],
        "final": final,
    }
    return [
        Step(
            "prepare",
            STEP_FUNCS["prepare"],
            {"star": star, "keep_half_sets": keep_half_sets},
            controller=True,
        ),
        Step(
            "refine",
            STEP_FUNCS["refine"],
            {"star": star, "args": [*common_args(p), *args], "options": options},
            deps=("prepare",),
        ),
        Step("register", register, {}, deps=("prepare", "refine"), controller=True),
    ]


# --- a reference map (class3d, refine3d) -------------------------------------------------
REFERENCE_NAME = "reference.mrc"


def reference_row(volumes) -> int:
    """Row of the map to use: the first full map (half 0), else the first row."""
    halves = [int(h) for h in volumes.column("half")]
    return halves.index(0) if 0 in halves else 0


def reference_problems(ctx) -> list[str]:
    """The reference map must exist and match the particles' box and pixel size."""
    try:
        volumes = ctx.input("reference")
        particles = ctx.input("particles")
    except HpcemError:
        return []
    if isinstance(volumes, list):
        volumes = volumes[0]
    if isinstance(particles, list) or len(volumes) == 0:
        return [] if len(volumes) else ["the reference volume set is empty"]
    from hpcem.io import read_header

    row = reference_row(volumes)
    path = ctx.path(str(volumes.column("image")[row]))
    try:
        header = read_header(path)
    except (OSError, HpcemError) as exc:
        return [f"reference map {path}: {exc}"]
    optics = particles.optics
    box = int(optics["image_size_px"][0])
    pixel = float(optics["pixel_size_A"][0])
    size = int(header.shape[-1])
    map_pixel = float(header.pixel_size_A or pixel)  # an unset header pixel size: trusted
    if size != box or abs(map_pixel - pixel) > 0.01 * pixel:
        return [
            (
                f"reference map {path} is {size} px at {map_pixel:g} Å/px; the "
                f"particles are {box} px at {pixel:g} Å/px (resample the map, e.g. with "
                "relion_image_handler --rescale_angpix --new_box)"
            )
        ]
    return []


def reference_step(ctx) -> tuple[str, str]:
    """``(map path, link name)`` for ``refine``'s arguments (project-relative)."""
    volumes = ctx.input("reference")
    if isinstance(volumes, list):
        volumes = volumes[0]
    path = ctx.relpath(ctx.path(str(volumes.column("image")[reference_row(volumes)])))
    return path, REFERENCE_NAME


def link_reference(ctx, reference: str, star: str) -> dict:
    """Controller step: the reference map linked next to the particle STAR."""
    from hpcem.relion.runner import link_input

    link = link_input(ctx.path(reference), Path(ctx.path(star)).parent / REFERENCE_NAME)
    return {"reference": reference, "link": ctx.relpath(os.path.abspath(link))}


def reference_params(ini_high_A: float, healpix_order: int) -> tuple[Param, ...]:
    """Parameters of a refinement against a reference map (class3d, refine3d)."""
    return (
        Param.float(
            "ini_high_A",
            ini_high_A,
            min=1.0,
            max=1000.0,
            units="Å",
            help="Low-pass filter of the reference in the first iteration (--ini_high).",
        ),
        Param.bool(
            "reference_absolute_scale",
            False,
            help="The reference is on RELION's absolute grey scale (made by RELION from "
            "these particles); off: --firstiter_cc (cross-correlation in the first "
            "iteration).",
        ),
        Param.string("symmetry", "C1", help="Point-group symmetry (--sym: C1, Cn, Dn, T, O, I)."),
        Param.int(
            "healpix_order",
            healpix_order,
            min=0,
            max=8,
            help="Angular sampling on the sphere (--healpix_order: 1 = 30°, 2 = 15°, 3 = 7.5°).",
        ),
    )


def reference_args(p: dict) -> list[str]:
    """relion_refine arguments from :func:`reference_params`'s values."""
    args = [
        "--ref", REFERENCE_NAME,
        "--ini_high", f"{p['ini_high_A']:g}",
        "--sym", p["symmetry"].upper(),
        "--healpix_order", str(p["healpix_order"]),
    ]  # fmt: skip
    if not p["reference_absolute_scale"]:
        args.append("--firstiter_cc")
    return args


def with_reference(ctx, steps: list[Step]) -> list[Step]:
    """``steps`` of :func:`refine_steps` with the
    ``reference`` link step before ``refine``."""
    reference, _ = reference_step(ctx)
    star = steps[0].args["star"]
    link = Step(
        "reference",
        STEP_FUNCS["reference"],
        {"reference": reference, "star": star},
        deps=("prepare",),
        controller=True,
    )
    refine = steps[1]
    refine = Step(refine.name, refine.func, refine.args, deps=("prepare", "reference"))
    return [steps[0], link, refine, steps[2]]
