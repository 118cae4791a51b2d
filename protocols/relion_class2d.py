"""2D classification with RELION 3.1's ``relion_refine`` (``relion.class2d``).

The steps of every ``relion_refine`` protocol (:mod:`hpcem.relion.refine`): ``prepare``
writes the particle STAR, ``refine`` runs ``relion_refine`` (``--K`` classes, ``--iter``
iterations), ``register`` (:func:`register_class2d`) reads the last iteration's
``run_itNNN_model.star`` / ``run_itNNN_data.star`` back: output ``classes`` (the
averages stack ``run_itNNN_classes.mrcs``, class ids 1..K, member ids = the ids of the
input particles) and ``particles`` (the input particles with RELION's ``rot``, ``tilt``,
``psi``, ``shift_x/y`` and ``class_id``; everything else, CTF included, unchanged).
"""

from __future__ import annotations

from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS
from hpcem.relion import refine as shared
from hpcem.relion.refine import (
    PROGRAM,
    common_params,
    mpi_problems,
    particle_problems,
    probability_summary,
    read_refined,
    refine_steps,
    write_classes,
    write_particle_set,
)

#: Step functions that runs record by this module's name (:data:`hpcem.relion.refine.
#: STEP_FUNCS`): kept here so that the steps of existing runs resume with their identity.
write_particles = shared.write_particles
refine = shared.refine


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
