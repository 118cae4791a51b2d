"""Gold-standard 3D auto-refinement with RELION 3.1's ``relion_refine_mpi``
(``relion.refine3d``).

The steps of every ``relion_refine`` protocol (:mod:`hpcem.relion.refine`) with a
reference map (as ``relion.class3d``) and ``--auto_refine --split_random_halves``:
RELION refines two random halves of the particles independently (each against its own
map, joined below ``low_resol_join_halves_A``), raises the angular sampling until the
resolution stops improving, then combines the halves. RELION needs MPI for this (two
working ranks plus a leader: ``mpi_ranks`` >= 3, launched as
:func:`hpcem.relion.mpi.mpi_launcher` says).

Outputs: ``volumes`` (``run_class001.mrc``, half = 0, and the two unfiltered half maps
``run_half1/2_class001_unfil.mrc``, half = 1 and 2, for ``relion.postprocess``),
``particles`` (the input particles with RELION's ``rot``, ``tilt``, ``psi``,
``shift_x/y`` and ``half_set``) and ``fsc`` (RELION's gold-standard FSC between the
unmasked half maps from ``run_model.star``, resolution = RELION's
``_rlnCurrentResolution``; the masked, corrected FSC is ``relion.postprocess``'s).

Particles that already have half sets (every one 1 or 2, e.g. from an earlier
refinement) keep them (``_rlnRandomSubset`` is written); otherwise RELION draws them.
"""

from __future__ import annotations

from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS
from hpcem.relion import refine as rr


def register_refine3d(ctx) -> dict:
    """Controller step: outputs ``volumes``, ``particles`` and ``fsc``."""
    from hpcem.convert.relion_results import read_model_fsc

    refined = ctx.result("refine")
    files = refined["files"]
    cols, extra = rr.read_refined(ctx, files["data"])
    rr.write_particle_set(ctx, cols)
    optics = ctx.input("particles").optics
    pixel = float(optics["pixel_size_A"][0])
    box = int(optics["image_size_px"][0])
    symmetry = ctx.params["symmetry"].upper()
    maps = [files["map"], files["half1"], files["half2"]]
    with ctx.create_set("volumes", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(m) for m in maps],
                "pixel_size_A": [pixel] * 3,
                "box_size": [box] * 3,
                "half": [0, 1, 2],
                "symmetry": [symmetry] * 3,
            }
        )
    fsc = read_model_fsc(ctx.path(files["model"]))
    with ctx.create_set("fsc", "hpcem.SetOfFSCs") as writer:
        writer.append_columns(fsc.columns)
    halves = cols.get("half_set")
    return {
        "resolution_A": float(fsc.columns["resolution_A"][0]),
        "iteration": refined["iteration"],
        "particles": len(cols["id"]),
        "half_set_sizes": [int((halves == h).sum()) for h in (1, 2)]
        if halves is not None
        else None,
        "half_sets_kept": ctx.result("prepare")["half_sets_kept"],
        "max_value_prob": rr.probability_summary(extra),
        "data_star": files["data"],
        "relion_version": refined["relion_version"],
    }


class Refine3DRelion(Protocol):
    name = "relion.refine3d"
    label = "3D auto-refine (RELION)"
    version = "1"
    help = (
        "Gold-standard 3D refinement with RELION 3.1's relion_refine_mpi --auto_refine "
        "--split_random_halves against a reference map: the refined map, its two half "
        "maps, the particles' orientations and half sets, and RELION's gold-standard FSC. "
        "One step runs relion_refine_mpi under MPI (at least 3 ranks); its output is in "
        "the run's relion.log and the exact command in the step's result."
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
            help="Initial map (its first full map) with the particles' box and pixel size.",
        ),
    )
    params = (
        *rr.reference_params(60.0, 2),
        Param.int(
            "local_searches_from",
            4,
            min=0,
            max=8,
            help="Healpix order from which the angular searches are local, around each "
            "particle's current orientation (--auto_local_healpix_order; 4 = 3.75°).",
        ),
        Param.float(
            "low_resol_join_halves_A",
            40.0,
            min=0.0,
            max=1000.0,
            units="Å",
            expert=1,
            help="The half maps are averaged below this resolution to keep their "
            "orientations from diverging (--low_resol_join_halves).",
        ),
        *rr.common_params(ranks_default=3),
    )
    outputs = (
        Output(
            "volumes",
            "hpcem.SetOfVolumes",
            help="The refined map (half = 0) and the unfiltered half maps (half = 1, 2).",
        ),
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The input particles with rot, tilt, psi, shift_x/y (Å, RELION 3.1 sign) "
            "and half_set from RELION; CTF and everything else unchanged.",
        ),
        Output(
            "fsc",
            "hpcem.SetOfFSCs",
            help="RELION's gold-standard FSC of the unmasked half maps (label "
            "gold_standard) and its resolution estimate.",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import site_name_of

        p = ctx.params
        problems = rr.symmetry_problems(p["symmetry"])
        problems += rr.particle_problems(ctx, p["particle_diameter_A"])
        if not problems:
            problems += rr.reference_problems(ctx)
        return problems + rr.mpi_problems(p["mpi_ranks"], site_name_of(ctx), at_least=3)

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        args = [
            "--auto_refine", "--split_random_halves",
            "--low_resol_join_halves", f"{p['low_resol_join_halves_A']:g}",
            "--auto_local_healpix_order", str(p["local_searches_from"]),
            *rr.reference_args(p),
        ]  # fmt: skip
        steps = rr.refine_steps(
            ctx,
            args,
            "hpcem.protocols.relion_refine3d:register_refine3d",
            "auto_refine",
            keep_half_sets=True,
        )
        return rr.with_reference(ctx, steps)
