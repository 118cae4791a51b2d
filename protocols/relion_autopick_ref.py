"""Template picking with RELION's reference-based autopick (``relion.autopick_ref``).

The references are either 2D class averages (input ``references`` a SetOfClasses2D: the
averages of the classes with members, in class order, copied into one stack) or a 3D
map (a SetOfVolumes: its first full map, which relion_autopick projects at healpix order
``healpix_order`` with ``symmetry``). A controller step ``references`` writes the stack
or links the map into the run's ``relion/`` folder; then one step per micrograph
(:func:`pick_one`, the body shared with ``relion.autopick_log``:
:mod:`hpcem.relion.autopick`) links the micrograph and the references into its folder and runs
``relion_autopick --ref`` there (``--angpix_ref`` the references' pixel size,
``--invert`` with ``invert``: references with white particles, as RELION makes them
from contrast-inverted particles, against micrographs with dark ones). Its coordinate
STAR is read back (``_rlnCoordinateX/Y``: the particle centre in micrograph pixels;
``_rlnAutopickFigureOfMerit`` as the score) and ``register`` writes ``coordinates``
(:mod:`hpcem.picking.steps`), as ``relion.autopick_log`` does.

The references are not CTF-modulated (no ``--ctf``: that needs a micrograph STAR with
the CTF of each micrograph); use class averages, or a map low-pass filtered by
``lowpass_A``, at a resolution the CTF's first zero does not reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcem.errors import HpcemError
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS
from hpcem.relion.autopick import PICKNAME, PROGRAM

STACK_NAME = "references.mrcs"
MAP_NAME = "reference.mrc"


def _first_set(value):
    return value[0] if isinstance(value, list) else value


def reference_plan(ctx, folder: str) -> dict:
    """Where the references will be (project-relative, in ``folder``) and their pixel
    size: ``{"reference", "pixel_size_A", "kind"}`` (``kind`` "2d" or "3d")."""
    from hpcem.io import read_header

    refs = _first_set(ctx.input("references"))
    if refs.type_name == "hpcem.SetOfVolumes":
        halves = [int(h) for h in refs.column("half")]
        row = halves.index(0) if 0 in halves else 0
        return {
            "reference": f"{folder}/{MAP_NAME}",
            "source": ctx.relpath(ctx.path(str(refs.column("image")[row]))),
            "pixel_size_A": float(refs.column("pixel_size_A")[row]),
            "kind": "3d",
        }
    pixel = 0.0
    optics = refs.optics
    if len(optics.get("pixel_size_A", [])):
        pixel = float(optics["pixel_size_A"][0])
    if not pixel and len(refs):
        pixel = float(
            read_header(ctx.path(str(refs.column("representative")[0]))).pixel_size_A or 0
        )
    return {"reference": f"{folder}/{STACK_NAME}", "pixel_size_A": pixel, "kind": "2d"}


def write_references(ctx, plan: dict) -> dict:
    """Controller step: the references where ``plan`` (:func:`reference_plan`) says: the
    stack of the non-empty classes' averages, or a link to the map."""
    from hpcem.io import read_image, write_mrc
    from hpcem.relion.runner import link_input

    out = Path(ctx.path(plan["reference"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    if plan["kind"] == "3d":
        link_input(ctx.path(plan["source"]), out)
        return {"reference": plan["reference"], "count": 1}
    refs = _first_set(ctx.input("references"))
    cols = refs.read_columns(["representative", "representative_index", "size"])
    keep = np.flatnonzero(np.asarray(cols["size"]) > 0)
    if not len(keep):
        raise HpcemError("every class of input references is empty: no averages to pick with")
    images = []
    for k in keep:
        stack = read_image(ctx.path(str(cols["representative"][k])))
        stack = stack[None] if stack.ndim == 2 else stack
        images.append(stack[int(cols["representative_index"][k])])
    write_mrc(
        out, np.stack(images).astype(np.float32), plan["pixel_size_A"], kind="stack",
        overwrite=True,
    )  # fmt: skip
    return {"reference": plan["reference"], "count": len(images), "classes": keep.tolist()}


def autopick_args(name: str, ref: str, pixel_size_A: float, ref_pixel_A: float, options):
    """relion_autopick's arguments for micrograph ``name`` and reference file ``ref``."""
    args = [
        "--i", name,
        "--odir", "./",
        "--pickname", PICKNAME,
        "--ref", ref,
        "--angpix", f"{pixel_size_A:g}",
        "--angpix_ref", f"{ref_pixel_A:g}",
        "--particle_diameter", f"{options['particle_diameter_A']:g}",
        "--ang", f"{options['angular_step_deg']:g}",
        "--lowpass", f"{options['lowpass_A']:g}",
        "--threshold", f"{options['threshold']:g}",
        "--shrink", f"{options['shrink']:g}",
    ]  # fmt: skip
    if options["min_distance_A"] > 0:
        args += ["--min_distance", f"{options['min_distance_A']:g}"]
    if options["max_stddev_noise"] > 0:
        args += ["--max_stddev_noise", f"{options['max_stddev_noise']:g}"]
    if options["invert"]:
        args.append("--invert")
    if ref.endswith(".mrc"):  # a 3D map: projected by relion_autopick
        args += ["--sym", options["symmetry"].upper()]
        args += ["--healpix_order", str(options["healpix_order"])]
    return args


def pick_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    ctf: dict | None,
    options: dict,
    picture: str | None = None,
) -> dict:
    """Step: pick one micrograph with relion_autopick and the run's references
    (``options["references"]``: :func:`reference_plan`;
    :func:`hpcem.relion.autopick.pick_micrograph`)."""
    from hpcem.relion.autopick import pick_micrograph

    refs = options["references"]
    ref_name = Path(refs["reference"]).name
    return pick_micrograph(
        path,
        micrograph_id,
        pixel_size_A,
        options,
        args_for=lambda name, pixel_A: autopick_args(
            name, ref_name, pixel_A, refs["pixel_size_A"], options
        ),
        kind="reference",
        diameter_A=options["particle_diameter_A"],
        picture=picture,
        links={ref_name: refs["reference"]},
    )


class AutopickRef(Protocol):
    name = "relion.autopick_ref"
    label = "Pick particles (RELION references)"
    version = "1"
    help = (
        "Template picking with RELION 3.1's relion_autopick --ref: 2D class averages, or "
        "projections of a 3D map, rotated in-plane and cross-correlated with each "
        "micrograph (RELION's probability-ratio figure of merit). One step per micrograph; "
        "RELION's output is in the run's relion.log and the exact commands in the steps' "
        "results."
    )
    inputs = (
        Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to pick."),
        Input(
            "references",
            ("hpcem.SetOfClasses2D", "hpcem.SetOfVolumes"),
            help="2D class averages (classes with members are used) or a 3D map (its "
            "first full map), particles white as RELION makes them.",
        ),
    )
    params = (
        Param.float(
            "particle_diameter_A",
            200.0,
            min=1.0,
            max=10000.0,
            units="Å",
            help="Diameter of the circular mask on the references (--particle_diameter).",
        ),
        Param.float(
            "angular_step_deg",
            5.0,
            min=1.0,
            max=360.0,
            units="deg",
            help="In-plane rotation step of the references (--ang; 360 = no rotation).",
        ),
        Param.float(
            "lowpass_A",
            20.0,
            min=0.0,
            max=1000.0,
            units="Å",
            help="Low-pass filter of the references (--lowpass), against Einstein from noise.",
        ),
        Param.float(
            "threshold",
            0.25,
            min=-100.0,
            max=100.0,
            help="Picking threshold on RELION's figure of merit (--threshold): lower for "
            "more picks.",
        ),
        Param.float(
            "min_distance_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Smallest distance between two picks (--min_distance; 0 = RELION's default, "
            "half the reference box).",
        ),
        Param.bool(
            "invert",
            True,
            help="The references' particles are white and the micrographs' dark (--invert): "
            "on for class averages and maps made from extracted, contrast-inverted particles.",
        ),
        Param.string(
            "symmetry", "C1", help="Symmetry of a 3D reference (--sym; C1, Cn, Dn, T, O, I)."
        ),
        Param.int(
            "healpix_order",
            1,
            min=0,
            max=4,
            help="Projection directions of a 3D reference (--healpix_order; 0 = 60°, 1 = 30°).",
        ),
        Param.float(
            "shrink",
            1.0,
            min=0.0,
            max=1.0,
            expert=1,
            help="Micrograph scale during the calculation (--shrink; 0 = down to lowpass_A).",
        ),
        Param.float(
            "max_stddev_noise",
            0.0,
            min=0.0,
            max=1000.0,
            expert=1,
            help="Drop picks whose surroundings have a larger standard deviation "
            "(--max_stddev_noise; 0 = no limit), e.g. on carbon edges.",
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
        from hpcem.relion.refine import symmetry_problems

        problems = symmetry_problems(ctx.params["symmetry"])
        try:
            refs = _first_set(ctx.input("references"))
        except HpcemError:
            refs = None
        if refs is not None and len(refs) == 0:
            problems.append("the reference set is empty")
        elif refs is not None and not reference_plan(ctx, "")["pixel_size_A"]:
            problems.append("the references have no pixel size (optics nor MRC header)")
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.picking.steps import picking_steps
        from hpcem.relion.runner import relion_places

        p = ctx.params
        options = {k: p[k] for k in (prm.name for prm in self.params)}
        options |= relion_places(ctx)
        options["references"] = reference_plan(ctx, f"{options['work']}/references")
        before = Step(
            "references",
            "hpcem.protocols.relion_autopick_ref:write_references",
            {"plan": options["references"]},
            controller=True,
        )
        steps = picking_steps(
            ctx, "hpcem.protocols.relion_autopick_ref:pick_one", options, before=[before]
        )
        return steps
