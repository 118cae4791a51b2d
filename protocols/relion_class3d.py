"""3D classification with RELION 3.1's ``relion_refine`` (``relion.class3d``).

The steps of every ``relion_refine`` protocol (:mod:`hpcem.relion.refine`: ``prepare``
writes the particle STAR, ``refine`` runs ``relion_refine`` once, ``register`` reads the
last iteration back) with a reference map: the first full map (``half`` 0) of input
``reference``, linked into the run's ``relion/`` folder (step ``reference``) and
low-pass filtered by RELION to ``ini_high_A`` in the first iteration. Outputs:
``classes`` (SetOfClasses3D: the class maps ``run_itNNN_class00K.mrc``, RELION's
estimated resolution, member ids) and ``particles`` (the input particles with RELION's
``rot``, ``tilt``, ``psi``, ``shift_x/y`` and ``class_id``; everything else unchanged).

The reference must have the particles' box and pixel size (RELION 3.1 would otherwise
stop after reading all particles); validation says so before anything runs.
"""

from __future__ import annotations

from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS
from hpcem.relion import refine as rr

#: A step function that runs record by this module's name (:data:`hpcem.relion.refine.
#: STEP_FUNCS`): kept here so that the steps of existing runs resume with their identity.
link_reference = rr.link_reference


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
        *rr.reference_params(60.0, 2),
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
            problems += rr.reference_problems(ctx)
        problems += rr.mpi_problems(p["mpi_ranks"], site_name_of(ctx))
        return problems + program_problems([rr.PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        args = [
            "--K", str(p["classes"]),
            "--iter", str(p["iterations"]),
            "--tau2_fudge", f"{p['tau2_fudge']:g}",
            *rr.reference_args(p),
        ]  # fmt: skip
        steps = rr.refine_steps(
            ctx, args, "hpcem.protocols.relion_class3d:register_class3d", "iteration"
        )
        return rr.with_reference(ctx, steps)
