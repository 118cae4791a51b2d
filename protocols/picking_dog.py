"""Reference-free particle picking by size: Difference of Gaussians (``picking.dog``).

One step per micrograph (:func:`pick_one`): the micrograph is binned by Fourier cropping,
band-passed by a DoG matched to ``diameter_A``, and the local maxima of the normalised
response above ``threshold`` are the picks (:mod:`hpcem.picking.dog`). A micrograph that
cannot be read, has NaN/Inf pixels, is constant, is smaller than two particle diameters
or has no CTF in a given ``ctfs`` input is rejected; zero picks is a count, not an error.
The ``register`` step writes the ``coordinates`` set (:mod:`hpcem.picking.steps`).
"""

from __future__ import annotations

from hpcem.errors import ItemRejected, ValidationError
from hpcem.picking import dog
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

VOSS_2009 = Citation(
    "Voss2009",
    "@article{Voss2009, author = {Voss, N. R. and Yoshioka, C. K. and Radermacher, M. and "
    "Potter, C. S. and Carragher, B.}, title = {{DoG} Picker and {TiltPicker}: software "
    "tools to facilitate particle selection in single particle electron microscopy}, "
    "journal = {J. Struct. Biol.}, volume = {166}, number = {2}, pages = {205--213}, "
    "year = {2009}, doi = {10.1016/j.jsb.2009.01.004}}",
)


def pick_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    ctf: dict | None,
    options: dict,
    picture: str | None = None,
) -> dict:
    """Step of ``picking.dog``: pick one micrograph file, write its picture, return
    :func:`hpcem.picking.steps.pick_result` plus the binning and the excluded area."""
    from hpcem.kernels import backend
    from hpcem.picking.steps import load_for_picking, picked, require_ctf

    require_ctf(ctf, micrograph_id)
    image, pixel_size_A = load_for_picking(path, micrograph_id, pixel_size_A)
    diameter_px = options["diameter_A"] / pixel_size_A
    if min(image.shape) < 2 * diameter_px:
        raise ItemRejected(
            f"micrograph {micrograph_id}: {image.shape[1]}x{image.shape[0]} px is smaller "
            f"than two particle diameters ({2 * diameter_px:.0f} px at {pixel_size_A} Å/px)"
        )
    try:
        picks = dog.pick_dog(
            image,
            pixel_size_A,
            options["diameter_A"],
            threshold=options["threshold"],
            min_distance_A=options["min_distance_A"],
            max_picks=options["max_picks"],
            n_picks=options["n_picks"],
            invert=options["invert"],
            exclusion_sd=options["exclusion_sd"],
            ctf=ctf if (ctf and options.get("phase_flip", True)) else None,
        )
    except ValidationError as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    result = picked(
        micrograph_id,
        image,
        picks["xy"],
        picks["scores"],
        diameter_px=diameter_px,
        picture=picture,
        method="DoG",
        backend={"peaks": backend("peaks")},
        capped_from=picks["capped_from"],
    )
    result["bin"] = round(picks["bin"], 4)
    result["excluded_fraction"] = round(picks["excluded_fraction"], 4)
    return result


class PickDoG(Protocol):
    name = "picking.dog"
    label = "Pick particles (Difference of Gaussians)"
    version = "1"
    help = (
        "Reference-free picking by particle size: each micrograph is binned (particle "
        "about 24 px across), band-passed by a Difference of Gaussians matched to the "
        "diameter, and the local maxima of the normalised response above the threshold "
        "are the picks; areas whose local mean or variance is far from the rest "
        "(carbon, contamination) are left out. One step per micrograph."
    )
    inputs = (
        Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to pick."),
        Input(
            "ctfs",
            ("hpcem.SetOfCTFs",),
            required=False,
            help="CTFs of the micrographs (optional): with phase_flip, each micrograph is "
            "phase-flipped before filtering; a micrograph without a CTF here is rejected.",
        ),
    )
    params = (
        Param.float(
            "diameter_A",
            150.0,
            min=10.0,
            max=5000.0,
            units="Å",
            help="Particle diameter (you must know it roughly; default 150 Å). The filter, "
            "the binning and the minimum distance follow it; measured on simulated "
            "micrographs, 0.6-1.3x the true size keeps F1 >= 0.98 (docs/protocols/"
            "picking_dog.md).",
        ),
        Param.float(
            "threshold",
            dog.DEFAULT_THRESHOLD,
            min=-100.0,
            max=1000.0,
            help="Keep maxima whose score (robust SDs of the DoG response above its "
            "median) exceeds this. Measured: particles of simulated micrographs at SNR "
            "0.1 score 3.6-21 (99 % above 4.3), the highest noise maxima of empty ones "
            "3.2-4.3 (about 1 pick per empty micrograph at 3.5). On a crowded real "
            "micrograph 2.5-3 also picked particles (docs/protocols/picking_dog.md).",
        ),
        Param.float(
            "min_distance_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Picks at least this far apart (0 = 0.7 x diameter_A).",
        ),
        Param.int(
            "max_picks",
            1000,
            min=1,
            max=1000000,
            help="At most this many picks per micrograph (the best); a micrograph with "
            "more above the threshold keeps the best and warns (ice contamination, or a "
            "threshold or diameter that is wrong).",
        ),
        Param.int(
            "n_picks",
            0,
            min=0,
            max=1000000,
            help="Pick exactly the best N maxima per micrograph whatever their score "
            "(0 = use threshold and max_picks).",
        ),
        Param.bool(
            "invert",
            True,
            help="Particles are darker than the background (cryo-EM, negative contrast): "
            "pick maxima of the inverted DoG response. Off for bright particles "
            "(negative stain after inversion, or inverted micrographs).",
        ),
        Param.float(
            "exclusion_sd",
            dog.DEFAULT_EXCLUSION_SD,
            min=0.0,
            max=100.0,
            help="Drop picks where the local mean (after removing a linear gradient) or "
            "the local SD over 2 diameters is more than this many times the micrograph's "
            "median local SD away from normal (carbon, thick ice, contamination); 0 = "
            "off. Clean simulated micrographs reach 2.2, a real Krios one 2.8, a planted "
            "carbon area of +0.25 pixel SD 5-6.5.",
        ),
        Param.bool(
            "phase_flip",
            True,
            expert=1,
            help="With a ctfs input, phase-flip each micrograph before filtering "
            "(keeping particles dark).",
        ),
    )
    outputs = (
        Output(
            "coordinates",
            "hpcem.SetOfCoordinates",
            help="Picks: x, y in pixels of the micrograph (origin at the first pixel's "
            "centre), score, micrograph_id.",
        ),
    )
    citations = (VOSS_2009,)

    def validate(self, ctx) -> list[str]:
        p = ctx.params
        problems = []
        if 0 < p["min_distance_A"] < 0.2 * p["diameter_A"]:
            problems.append(
                f"min_distance_A {p['min_distance_A']} Å is below 0.2 x diameter_A: "
                "one particle would give several picks"
            )
        return problems

    def steps(self, ctx) -> list[Step]:
        from hpcem.picking.steps import picking_steps

        p = ctx.params
        options = {
            k: p[k]
            for k in (
                "diameter_A",
                "threshold",
                "min_distance_A",
                "max_picks",
                "n_picks",
                "invert",
                "exclusion_sd",
                "phase_flip",
            )
        }
        return picking_steps(ctx, "hpcem.protocols.picking_dog:pick_one", options)
