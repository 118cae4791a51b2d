"""2D classification with RELION 3.1's ``relion_refine`` (``relion.class2d``).

Steps, the pattern of every ``relion_refine`` protocol (``relion.class2d``,
``relion.class3d``, ``relion.refine3d``; the shared functions are here):

1. ``prepare`` (controller, :func:`write_particles`): the input particles as a RELION
   3.1 particle STAR in the run's ``relion/`` folder (stacks relative to it, 1-based
   indices, the CTF, the shifts as ``_rlnOriginXAngst``, the optics groups);
2. ``refine`` (worker, :func:`refine`): ``relion_refine`` runs there (``--o refine/run``),
   with ``--j`` threads and the protocol's options; the step first removes an earlier
   attempt's ``run_*`` files, so a failed or interrupted refinement is re-run whole by
   ``hpcem continue``. Its result holds the exact command (``commands``) and the files
   of the last iteration;
3. ``register`` (controller): the ``run_itNNN_model.star`` / ``run_itNNN_data.star``
   of the last iteration read back. For 2D: output ``classes`` (the averages stack
   ``run_itNNN_classes.mrcs``, class ids 1..K, member ids = the ids of the input
   particles) and ``particles`` (the input particles with RELION's ``rot``, ``tilt``,
   ``psi``, ``shift_x/y`` and ``class_id``; everything else, CTF included, unchanged).

RELION keeps the order of the input STAR in its data STAR; the register step checks that
(image name by image name) before mapping rows back to particle ids.
``_rlnMaxValueProbDistribution`` (how sure RELION is of each assignment) has no particle
field: the step result gives its mean and quartiles, and the data STAR keeps it.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ValidationError
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS

PROGRAM = "relion_refine"
MPI_PROGRAM = "relion_refine_mpi"
STAR_NAME = "particles.star"
#: ``--o`` of every relion_refine run, in the folder of the STAR file (files
#: ``refine/run_it025_model.star`` etc.; RELION wants a folder in the prefix).
OUT_DIR = "refine"
OUT_PREFIX = "run"
#: Particle fields written for RELION: the image, its CTF, its pose (the centre of local
#: searches; RELION ignores it in global searches) and the half set.
STAR_FIELDS = (
    "image",
    "image_index",
    "rot",
    "tilt",
    "psi",
    "shift_x",
    "shift_y",
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "phase_shift",
    "half_set",
    "optics_group",
)
#: Per-particle results read back from RELION's data STAR.
POSE_FIELDS = ("rot", "tilt", "psi", "shift_x", "shift_y", "class_id")
_SYMMETRY_RE = re.compile(r"^(C\d+|D\d+|T|O|I[1-5]?)$", re.IGNORECASE)
_ITERATION_RE = re.compile(r"_it(\d{3})_(?:half1_)?model\.star$")


# --- shared by the relion_refine protocols -------------------------------------------------
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


def mpi_launcher(site_name: str | None, ranks: int) -> list[str]:
    """The MPI launcher of ``relion_refine_mpi`` for ``site_name``: the site's
    ``[programs] relion_mpi_command`` (a command line with ``{ranks}``, e.g.
    ``"srun --mpi=pmix -n {ranks}"``), else ``mpirun -n RANKS`` from ``PATH`` (the MPI
    that Debian's RELION is built with). The site's ``[mpi] command`` is not used: it
    launches hpcem's own MPI steps, whose MPI library may not be RELION's."""
    import shlex
    import shutil

    from hpcem.relion.programs import _site_programs

    programs, path = _site_programs(site_name)
    if "relion_mpi_command" in programs:
        try:
            return [
                part.format(ranks=ranks) for part in shlex.split(programs["relion_mpi_command"])
            ]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValidationError(
                f"{path}: [programs] relion_mpi_command: {exc} (use {{ranks}})"
            ) from None
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise ValidationError(
            "mpi_ranks > 1 needs an MPI launcher for relion_refine_mpi: no mpirun on PATH; "
            'set [programs] relion_mpi_command (e.g. "mpirun -n {ranks}") in the site config'
        )
    return [mpirun, "-n", str(ranks)]


def mpi_problems(ranks: int, site_name: str | None, at_least: int = 1) -> list[str]:
    """Validation of ``mpi_ranks``: relion_refine_mpi and a launcher exist."""
    from hpcem.relion.programs import program_problems

    if ranks < at_least:
        return [f"mpi_ranks {ranks}: RELION needs at least {at_least} here"]
    if ranks == 1:
        return []
    try:
        mpi_launcher(site_name, ranks)
    except ValidationError as exc:
        return [str(exc)]
    return program_problems([MPI_PROGRAM], site_name)


def run_relion_mpi(args: list[str], *, workdir: Path, ranks: int, options: dict) -> dict:
    """:func:`hpcem.relion.runner.run_relion` for ``relion_refine_mpi`` under the MPI
    launcher (:func:`mpi_launcher`): the same log block, provenance record and error."""
    import shlex
    import time

    from hpcem.command import run_command
    from hpcem.errors import CommandError
    from hpcem.relion.programs import find_program
    from hpcem.relion.runner import RelionError, _append_log, tail

    path, version = find_program(MPI_PROGRAM, options["site"])
    argv = [*mpi_launcher(options["site"], ranks), path, *map(str, args)]
    command = shlex.join(argv)
    log = os.path.abspath(options["log"])
    # Open MPI refuses more ranks than cores unless told (RELION's leader mostly waits).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    started = time.time()
    try:
        result = run_command(
            argv,
            timeout_s=3600.0 * float(options["time_limit_h"]),
            cwd=workdir,
            env=env,
            check=False,
            die_with_parent=True,
        )
    except CommandError as exc:
        _append_log(log, f"relion_refine: $ {command}  (failed: {exc})", exc.stdout, exc.stderr)
        lines = tail(exc.stderr or exc.stdout)
        raise RelionError(
            f"{MPI_PROGRAM}: {exc}" + ("\n" + "\n".join(lines) if lines else ""),
            argv,
            None,
            exc.stdout,
            exc.stderr,
        ) from None
    seconds = time.time() - started
    _append_log(
        log,
        f"relion_refine: $ {command}  (in {workdir}; exit {result.returncode}, {seconds:.1f} s)",
        result.stdout,
        result.stderr,
    )
    if result.returncode != 0:
        lines = tail(result.stderr) or tail(result.stdout) or ["no output"]
        raise RelionError(
            f"{MPI_PROGRAM} exited with code {result.returncode}: " + " | ".join(lines),
            argv,
            result.returncode,
            result.stdout,
            result.stderr,
        )
    return {
        "program": path,
        "version": version,
        "argv": argv,
        "command": command,
        "cwd": str(workdir),
        "returncode": result.returncode,
        "seconds": round(seconds, 3),
    }


def symmetry_problems(symmetry: str) -> list[str]:
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
    ``threads``, ``time_limit_h`` and ``final`` (``"iteration"``: the last
    ``run_itNNN_*`` files; ``"auto_refine"``: the converged ``run_model.star``,
    ``run_data.star``, ``run_class001.mrc`` and half maps). Returns ``commands``,
    ``relion_version``, ``iteration`` and ``files`` (project-relative, by kind).
    """
    from hpcem.relion.runner import run_relion

    home = Path(star).parent
    work = home / OUT_DIR
    work.mkdir(parents=True, exist_ok=True)
    removed = _clear_outputs(work)
    args = ["--i", Path(star).name, "--o", f"{OUT_DIR}/{OUT_PREFIX}", *args]
    ranks = int(options.get("mpi_ranks", 1))
    if ranks > 1:
        record = run_relion_mpi(args, workdir=home, ranks=ranks, options=options)
    else:
        record = run_relion(
            PROGRAM,
            args,
            workdir=home,
            site=options["site"],
            log=options["log"],
            label="relion_refine",
            timeout_s=3600.0 * float(options["time_limit_h"]),
            threads=1,  # relion_refine's own --j threads; no OpenMP inside them
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
            "hpcem.protocols.relion_class2d:write_particles",
            {"star": star, "keep_half_sets": keep_half_sets},
            controller=True,
        ),
        Step(
            "refine",
            "hpcem.protocols.relion_class2d:refine",
            {"star": star, "args": [*common_args(p), *args], "options": options},
            deps=("prepare",),
        ),
        Step("register", register, {}, deps=("prepare", "refine"), controller=True),
    ]


# --- relion.class2d ------------------------------------------------------------------------
def register_class2d(ctx) -> dict:
    """Controller step: output ``classes`` (SetOfClasses2D) and ``particles``."""
    refined = ctx.result("refine")
    files = refined["files"]
    cols, extra = read_refined(ctx, files["data"])
    write_particle_set(ctx, cols)
    classes = write_classes(ctx, files["model"], files["data"], "hpcem.SetOfClasses2D")
    general = classes["general"]
    return {
        "classes": len(classes["sizes"]),
        "class_sizes": classes["sizes"],
        "empty_classes": sum(1 for s in classes["sizes"] if s == 0),
        "particles": len(cols["id"]),
        "iteration": refined["iteration"],
        "resolution_A": _float(general.get("rlnCurrentResolution")),
        "max_value_prob": probability_summary(extra),
        "data_star": files["data"],
        "relion_version": refined["relion_version"],
    }


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Class2DRelion(Protocol):
    name = "relion.class2d"
    label = "2D classification (RELION)"
    version = "1"
    help = (
        "Reference-free 2D classification with RELION 3.1's relion_refine (regularised "
        "likelihood, expectation-maximisation): K class averages and, per particle, its "
        "class, in-plane angle and shifts. One step runs relion_refine with --j threads; "
        "its output is in the run's relion.log and the exact command in the step's result."
    )
    inputs = (
        Input(
            "particles",
            ("hpcem.SetOfParticles",),
            help="Extracted particles (one box and pixel size) with their CTF.",
        ),
    )
    params = (
        Param.int("classes", 50, min=1, max=1000, help="Number of classes K (--K)."),
        Param.int("iterations", 25, min=1, max=1000, help="Number of EM iterations (--iter)."),
        Param.float(
            "tau2_fudge",
            2.0,
            min=0.1,
            max=100.0,
            help="Regularisation parameter T (--tau2_fudge): higher trusts the data more.",
        ),
        Param.float(
            "psi_step_deg",
            6.0,
            min=0.1,
            max=90.0,
            units="deg",
            help="In-plane angular sampling (--psi_step).",
        ),
        *common_params(),
    )
    outputs = (
        Output(
            "classes",
            "hpcem.SetOfClasses2D",
            help="Class averages (the last iteration's run_itNNN_classes.mrcs, one image per "
            "class) with the ids of their member particles.",
        ),
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The input particles with class_id, psi (rot and tilt 0) and shift_x/y (Å, "
            "RELION 3.1 sign) from RELION; CTF and everything else unchanged.",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = particle_problems(ctx, p["particle_diameter_A"])
        problems += mpi_problems(p["mpi_ranks"], site_name_of(ctx))
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        args = [
            "--K", str(p["classes"]),
            "--iter", str(p["iterations"]),
            "--tau2_fudge", f"{p['tau2_fudge']:g}",
            "--psi_step", f"{p['psi_step_deg']:g}",
        ]  # fmt: skip
        return refine_steps(
            ctx, args, "hpcem.protocols.relion_class2d:register_class2d", "iteration"
        )
