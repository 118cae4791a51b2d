"""Reference-free picking with RELION's Laplacian-of-Gaussian picker (``relion.autopick_log``).

One step per micrograph (:func:`pick_one`, the body shared with
``relion.autopick_ref``: :mod:`hpcem.relion.autopick`): the micrograph is linked into the
step's folder under the run's ``relion/``, ``relion_autopick --LoG`` picks it there, and
its coordinate STAR file is read back: ``_rlnCoordinateX/Y`` (the particle centre in
pixels of the micrograph, as hpcem's coordinates) and ``_rlnAutopickFigureOfMerit`` as
the score. The ``register`` step writes the ``coordinates`` set
(:mod:`hpcem.picking.steps`). The defaults are those of RELION 3.1's GUI.

A micrograph that cannot be read, has NaN/Inf pixels or is constant is rejected before
RELION sees it; a micrograph RELION fails on is rejected with RELION's last stderr lines.
Zero picks is a count, not an error (RELION 3.1 itself aborts while plotting its summary
of zero picks, after writing the empty coordinate file; that exit is reported as a
warning). Every command line is in the step's result (``commands``) and RELION's output
in the run's ``relion.log``.
"""

from __future__ import annotations

from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS
from hpcem.relion.autopick import PICKNAME, PROGRAM


def autopick_args(name: str, pixel_size_A: float, options: dict) -> list[str]:
    """relion_autopick's arguments for micrograph file ``name`` in the work folder."""
    args = [
        "--i", name,
        "--odir", "./",
        "--pickname", PICKNAME,
        "--LoG",
        "--LoG_diam_min", f"{options['diameter_min_A']:g}",
        "--LoG_diam_max", f"{options['diameter_max_A']:g}",
        "--angpix", f"{pixel_size_A:g}",
        "--shrink", f"{options['shrink']:g}",
        "--lowpass", f"{options['lowpass_A']:g}",
        "--LoG_adjust_threshold", f"{options['adjust_threshold']:g}",
        "--LoG_upper_threshold", f"{options['upper_threshold']:g}",
    ]  # fmt: skip
    if options["white_particles"]:
        args.append("--Log_invert")
    return args


def pick_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    ctf: dict | None,
    options: dict,
    picture: str | None = None,
) -> dict:
    """Step of ``relion.autopick_log``: pick one micrograph with relion_autopick --LoG
    (:func:`hpcem.relion.autopick.pick_micrograph`).

    ``options`` holds the protocol's parameters and ``site`` (where RELION is found),
    ``work`` (the run's RELION folder) and ``log`` (the run's relion.log).
    """
    from hpcem.relion.autopick import pick_micrograph

    return pick_micrograph(
        path,
        micrograph_id,
        pixel_size_A,
        options,
        args_for=lambda name, pixel_A: autopick_args(name, pixel_A, options),
        kind="LoG",
        diameter_A=0.5 * (options["diameter_min_A"] + options["diameter_max_A"]),
        picture=picture,
    )


class AutopickLoG(Protocol):
    name = "relion.autopick_log"
    label = "Pick particles (RELION Laplacian of Gaussian)"
    version = "1"
    help = (
        "Reference-free picking with RELION 3.1's relion_autopick --LoG: blobs between "
        "the two diameters are found with a Laplacian-of-Gaussian filter at several scales; "
        "the score of each pick is RELION's figure of merit. One step per micrograph; "
        "RELION's output is in the run's relion.log and the exact commands in the steps' "
        "results."
    )
    inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to pick."),)
    params = (
        Param.float(
            "diameter_min_A",
            200.0,
            min=1.0,
            max=10000.0,
            units="Å",
            help="Smallest particle diameter searched (RELION's --LoG_diam_min; GUI "
            "default 200 Å).",
        ),
        Param.float(
            "diameter_max_A",
            250.0,
            min=1.0,
            max=10000.0,
            units="Å",
            help="Largest particle diameter searched (--LoG_diam_max; default 250 Å).",
        ),
        Param.bool(
            "white_particles",
            False,
            help="Particles are brighter than the background (--Log_invert); off for "
            "cryo-EM micrographs (dark particles).",
        ),
        Param.float(
            "lowpass_A",
            20.0,
            min=0.0,
            max=1000.0,
            units="Å",
            help="Highest resolution considered (--lowpass; RELION bins the micrograph "
            "to about this resolution before filtering).",
        ),
        Param.float(
            "adjust_threshold",
            0.0,
            min=-100.0,
            max=100.0,
            help="Shift of RELION's threshold, in standard deviations of the figures of "
            "merit: positive for fewer picks, negative for more (--LoG_adjust_threshold).",
        ),
        Param.float(
            "upper_threshold",
            999.0,
            min=-100.0,
            max=100000.0,
            expert=1,
            help="Drop picks scoring above this many standard deviations (ice, "
            "contamination; --LoG_upper_threshold).",
        ),
        Param.float(
            "shrink",
            0.0,
            min=0.0,
            max=1.0,
            expert=1,
            help="Micrograph scale during the calculation (--shrink; 0 = down to the "
            "lowpass_A resolution, RELION's default for LoG).",
        ),
    )
    outputs = (
        Output(
            "coordinates",
            "hpcem.SetOfCoordinates",
            help="Picks: x, y in pixels of the micrograph (RELION's _rlnCoordinateX/Y), "
            "score = RELION's _rlnAutopickFigureOfMerit, micrograph_id.",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = []
        if p["diameter_min_A"] > p["diameter_max_A"]:
            problems.append(
                f"diameter_min_A {p['diameter_min_A']:g} Å is above diameter_max_A "
                f"{p['diameter_max_A']:g} Å"
            )
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.picking.steps import picking_steps
        from hpcem.relion.runner import relion_places

        p = ctx.params
        options = {k: p[k] for k in (prm.name for prm in self.params)}
        options |= relion_places(ctx)
        return picking_steps(ctx, "hpcem.protocols.relion_autopick_log:pick_one", options)
