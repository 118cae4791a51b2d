"""3D classification with RELION 3.1's ``relion_refine`` (``relion.class3d``).

The steps of :mod:`hpcem.protocols.relion_class2d` (``prepare`` writes the particle
STAR, ``refine`` runs ``relion_refine`` once, ``register`` reads the last iteration
back) with a reference map: the first full map (``half`` 0) of input ``reference``,
linked into the run's ``relion/`` folder and low-pass filtered by RELION to
``ini_high_A`` in the first iteration. Outputs: ``classes`` (SetOfClasses3D: the class
maps ``run_itNNN_class00K.mrc``, RELION's estimated resolution, member ids) and
``particles`` (the input particles with RELION's ``rot``, ``tilt``, ``psi``,
``shift_x/y`` and ``class_id``; everything else unchanged).

The reference must have the particles' box and pixel size (RELION 3.1 would otherwise
stop after reading all particles); validation says so before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcem.protocols import relion_class2d as rr

from hpcem.errors import HpcemError
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS

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
    """``steps`` of :func:`~hpcem.protocols.relion_class2d.refine_steps` with the
    ``reference`` link step before ``refine``."""
    reference, _ = reference_step(ctx)
    star = steps[0].args["star"]
    link = Step(
        "reference",
        "hpcem.protocols.relion_class3d:link_reference",
        {"reference": reference, "star": star},
        deps=("prepare",),
        controller=True,
    )
    refine = steps[1]
    refine = Step(refine.name, refine.func, refine.args, deps=("prepare", "reference"))
    return [steps[0], link, refine, steps[2]]


def register_class3d(ctx) -> dict:
    """Controller step: output ``classes`` (SetOfClasses3D) and ``particles``."""
    refined = ctx.result("refine")
    files = refined["files"]
    cols, extra = rr.read_refined(ctx, files["data"])
    rr.write_particle_set(ctx, cols)
    classes = rr.write_classes(ctx, files["model"], files["data"], "hpcem.SetOfClasses3D")
    return {
        "classes": len(classes["sizes"]),
        "class_sizes": classes["sizes"],
        "empty_classes": sum(1 for s in classes["sizes"] if s == 0),
        "particles": len(cols["id"]),
        "iteration": refined["iteration"],
        "max_value_prob": rr.probability_summary(extra),
        "data_star": files["data"],
        "relion_version": refined["relion_version"],
    }


class Class3DRelion(Protocol):
    name = "relion.class3d"
    label = "3D classification (RELION)"
    version = "1"
    help = (
        "3D classification with RELION 3.1's relion_refine against a reference map: K "
        "class maps and, per particle, its class, orientation and shifts. One step runs "
        "relion_refine with --j threads; its output is in the run's relion.log and the "
        "exact command in the step's result."
    )
    inputs = (
        Input(
            "particles",
            ("hpcem.SetOfParticles",),
            help="Extracted particles (one box and pixel size) with their CTF.",
        ),
        Input(
            "reference",
            ("hpcem.SetOfVolumes",),
            help="Reference map (its first full map) with the particles' box and pixel size.",
        ),
    )
    params = (
        Param.int("classes", 4, min=1, max=100, help="Number of classes K (--K)."),
        Param.int("iterations", 25, min=1, max=1000, help="Number of EM iterations (--iter)."),
        Param.float(
            "tau2_fudge",
            4.0,
            min=0.1,
            max=100.0,
            help="Regularisation parameter T (--tau2_fudge): higher trusts the data more.",
        ),
        *reference_params(60.0, 2),
        *rr.common_params(),
    )
    outputs = (
        Output(
            "classes",
            "hpcem.SetOfClasses3D",
            help="Class maps of the last iteration (run_itNNN_class00K.mrc) with RELION's "
            "estimated resolution and the ids of their member particles.",
        ),
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The input particles with class_id, rot, tilt, psi and shift_x/y (Å, "
            "RELION 3.1 sign) from RELION; CTF and everything else unchanged.",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = rr.symmetry_problems(p["symmetry"])
        problems += rr.particle_problems(ctx, p["particle_diameter_A"])
        if not problems:
            problems += reference_problems(ctx)
        problems += rr.mpi_problems(p["mpi_ranks"], site_name_of(ctx))
        return problems + program_problems([rr.PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        args = [
            "--K", str(p["classes"]),
            "--iter", str(p["iterations"]),
            "--tau2_fudge", f"{p['tau2_fudge']:g}",
            *reference_args(p),
        ]  # fmt: skip
        steps = rr.refine_steps(
            ctx, args, "hpcem.protocols.relion_class3d:register_class3d", "iteration"
        )
        return with_reference(ctx, steps)
