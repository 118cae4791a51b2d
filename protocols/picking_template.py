"""Template picking by fast local normalised cross-correlation (``picking.template``).

Step ``templates`` makes the templates once per run from input ``references`` (a 3D map
projected over the whole sphere every ``angular_step_deg``, or 2D class averages) at the
search grid's pixel size and writes them as ``templates.mrcs`` (plus a gallery PNG) in the
run folder. Then one step per micrograph (:func:`pick_one`): the micrograph is binned by
Fourier cropping (particle about 24 px across) and low-passed; the templates are rotated
in-plane every ``inplane_step_deg``, multiplied by the micrograph's CTF when ``ctfs`` is
given, and correlated by Roseman's fast local correlation (:mod:`hpcem.picking.template`);
the local maxima of the best NCC above ``threshold`` are the picks. ``register`` writes the
``coordinates`` set (:mod:`hpcem.picking.steps`).

A micrograph that cannot be read, is constant, has no CTF in a given ``ctfs`` input, is
smaller than two particle diameters or too coarse for the particle is rejected; zero picks
is a count, not an error. References of a wrong pixel size fail the ``templates`` step (and
validation) with the reason.
"""

from __future__ import annotations

from hpcem.errors import ItemRejected, ValidationError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

#: Default ``threshold`` (NCC), from measurements (scripts/figures_template.py, see
#: docs/protocols/picking_template.md): the highest maxima of empty simulated micrographs
#: (ice and noise, 1024² and 4096²) score 0.40-0.46, particles of simulated micrographs at
#: SNR 0.1 0.67-0.90 (and above 0.6 at SNR 0.05): 0.5 leaves empty micrographs empty.
DEFAULT_THRESHOLD = 0.5

ROSEMAN_2003 = Citation(
    "Roseman2003",
    "@article{Roseman2003, author = {Roseman, Alan M.}, title = {Particle finding in "
    "electron micrographs using a fast local correlation algorithm}, journal = "
    "{Ultramicroscopy}, volume = {94}, number = {3--4}, pages = {225--236}, year = {2003}, "
    "doi = {10.1016/S0304-3991(02)00333-9}}",
)

ROSEMAN_2004 = Citation(
    "Roseman2004",
    "@article{Roseman2004, author = {Roseman, Alan M.}, title = {{FindEM}---a fast, "
    "efficient program for automatic selection of particles from electron micrographs}, "
    "journal = {J. Struct. Biol.}, volume = {145}, number = {1--2}, pages = {91--99}, "
    "year = {2004}, doi = {10.1016/j.jsb.2003.11.007}}",
)

_TEMPLATE_STEP = "templates"


def make_templates(
    kind: str,
    files: list[str],
    indices: list[int],
    pixel_size_A: float,
    diameter_A: float,
    work_pixel_A: float,
    angular_step_deg: float,
    output: str,
    picture: str,
) -> dict:
    """Step ``templates``: write the templates of the references as an MRCS stack at
    ``work_pixel_A`` (``output``) and their gallery (``picture``)."""
    import os

    from hpcem.io import write_mrc
    from hpcem.picking.templates import reference_templates, write_gallery_png

    stack, angles = reference_templates(
        kind, files, indices, pixel_size_A, diameter_A, work_pixel_A, angular_step_deg
    )
    for path in (output, picture):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_mrc(output, stack, work_pixel_A, kind="stack", overwrite=True)
    what = (
        f"{len(stack)} projections every {angular_step_deg:g}°"
        if kind == "volume"
        else (f"{len(stack)} class averages")
    )
    write_gallery_png(picture, stack, f"templates: {what}, {work_pixel_A:.2f} Å/px")
    return {
        "path": output,
        "count": len(stack),
        "box_px": int(stack.shape[-1]),
        "pixel_size_A": round(work_pixel_A, 5),
        "angles_deg": None if angles is None else [[round(a, 3) for a in r] for r in angles],
        "picture": picture,
    }


def pick_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    ctf: dict | None,
    options: dict,
    picture: str | None = None,
) -> dict:
    """Step of ``picking.template``: pick one micrograph with the run's templates, write
    its picture, return :func:`hpcem.picking.steps.pick_result` plus the binned pixel
    size and the best template/in-plane angle of each pick."""
    from hpcem.io.mrc import read_mrc
    from hpcem.kernels import backend
    from hpcem.picking.steps import load_for_picking, picked, require_ctf
    from hpcem.picking.template import pick_micrograph

    require_ctf(ctf, micrograph_id)
    image, pixel_size_A = load_for_picking(path, micrograph_id, pixel_size_A)
    diameter_px = options["diameter_A"] / pixel_size_A
    if min(image.shape) < 2 * diameter_px:
        raise ItemRejected(
            f"micrograph {micrograph_id}: {image.shape[1]}x{image.shape[0]} px is smaller "
            f"than two particle diameters ({2 * diameter_px:.0f} px at {pixel_size_A} Å/px)"
        )
    templates = read_mrc(options["templates"])
    if templates.ndim == 2:
        templates = templates[None]
    template_pixel_A = options["template_pixel_A"]
    diameter_A = options["diameter_A"]
    try:
        picks = pick_micrograph(
            image,
            pixel_size_A,
            templates,
            template_pixel_A,
            diameter_A,
            ctf,
            lowpass_A=options["lowpass_A"],
            inplane_step_deg=options["inplane_step_deg"],
            threshold=options["threshold"],
            min_distance_A=options["min_distance_A"],
            max_picks=options["max_picks"],
        )
    except ValidationError as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    result = picked(
        micrograph_id,
        image,
        picks["xy"],
        picks["scores"],
        diameter_px=diameter_A / pixel_size_A,
        picture=picture,
        method="template",
        backend={"ncc": picks["backend"], "peaks": backend("peaks")},
        capped_from=picks["n_above"],
    )
    result["binned_pixel_A"] = round(picks["binned_pixel_A"], 5)
    result["template"] = [int(i) // picks["n_angles"] for i in picks["template_index"]]
    result["inplane_deg"] = [
        round((int(i) % picks["n_angles"]) * 360.0 / picks["n_angles"], 3)
        for i in picks["template_index"]
    ]
    return result


def references_of(ctx) -> dict:
    """What the templates step needs from input ``references``: ``kind``, ``files``
    (project-relative), ``indices`` and the set's ``pixel_size_A``."""
    refs = ctx.input("references")
    if isinstance(refs, list):
        refs = refs[0]
    if refs.type_name == "hpcem.SetOfVolumes":
        cols = refs.read_columns(["image", "pixel_size_A", "half"])
        if not len(cols["image"]):
            raise ValidationError("references: the set of volumes is empty")
        full = [i for i, h in enumerate(cols["half"]) if int(h) == 0]
        row = full[0] if full else 0
        return {
            "kind": "volume",
            "files": [ctx.relpath(str(cols["image"][row]))],
            "indices": [0],
            "pixel_size_A": float(cols["pixel_size_A"][row]),
        }
    cols = refs.read_columns(["representative", "representative_index"])
    if not len(cols["representative"]):
        raise ValidationError("references: the set of classes is empty")
    return {
        "kind": "averages",
        "files": [ctx.relpath(str(p)) for p in cols["representative"]],
        "indices": [int(i) for i in cols["representative_index"]],
        "pixel_size_A": float(refs.optics["pixel_size_A"][0]),
    }


class PickTemplate(Protocol):
    name = "picking.template"
    label = "Pick particles (templates, NCC)"
    version = "1"
    help = (
        "Template matching: projections of a reference map (or 2D class averages), "
        "rotated in-plane and multiplied by each micrograph's CTF, are correlated with "
        "the binned micrograph by Roseman's fast local normalised cross-correlation; "
        "the local maxima of the best NCC above the threshold are the picks. Templates "
        "are made once per run, then one step per micrograph."
    )
    inputs = (
        Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to pick."),
        Input(
            "references",
            ("hpcem.SetOfVolumes", "hpcem.SetOfClasses2D"),
            help="A 3D map (the first full map of the set is projected) or 2D class "
            "averages, protein bright; the pixel size of their set is used (a file header "
            "that disagrees is refused).",
        ),
        Input(
            "ctfs",
            ("hpcem.SetOfCTFs",),
            required=False,
            help="CTFs of the micrographs (optional, recommended): each micrograph's "
            "templates are multiplied by its CTF; a micrograph without a CTF here is "
            "rejected. Without it the templates are only inverted (dark particles).",
        ),
    )
    params = (
        Param.float(
            "diameter_A",
            150.0,
            min=10.0,
            max=5000.0,
            units="Å",
            help="Particle diameter (you must know it roughly; default 150 Å): sets the "
            "binning (particle 24 px across), the NCC mask (a disc of this diameter) and "
            "the default minimum distance.",
        ),
        Param.float(
            "angular_step_deg",
            30.0,
            min=2.0,
            max=180.0,
            units="°",
            help="Projection directions over the whole sphere about this far apart (a "
            "map reference; 30° gives 46 templates). Ignored for class averages.",
        ),
        Param.float(
            "inplane_step_deg",
            10.0,
            min=1.0,
            max=360.0,
            units="°",
            help="In-plane rotations searched (10° = 36 angles per template).",
        ),
        Param.float(
            "lowpass_A",
            20.0,
            min=0.0,
            max=200.0,
            units="Å",
            help="Low-pass of templates and micrographs (0 = none beyond the binning).",
        ),
        Param.float(
            "threshold",
            DEFAULT_THRESHOLD,
            min=-1.0,
            max=1.0,
            help="Keep maxima whose NCC (-1..1) exceeds this. Measured on simulated "
            "micrographs: the highest maxima of empty ones score 0.40-0.46, particles at "
            "SNR 0.1 0.67-0.90. Real micrographs score lower (coloured noise, imperfect "
            "templates): 0.35 picked a real EPU micrograph well "
            "(docs/protocols/picking_template.md).",
        ),
        Param.float(
            "min_distance_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Picks at least this far apart (0 = 0.8 x diameter_A).",
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
    )
    outputs = (
        Output(
            "coordinates",
            "hpcem.SetOfCoordinates",
            help="Picks: x, y in pixels of the micrograph (origin at the first pixel's "
            "centre), score (the NCC), micrograph_id.",
        ),
    )
    citations = (ROSEMAN_2003, ROSEMAN_2004)

    def validate(self, ctx) -> list[str]:
        from hpcem.picking.templates import check_reference_pixel_size

        p = ctx.params
        problems = []
        if 0 < p["min_distance_A"] < 0.2 * p["diameter_A"]:
            problems.append(
                f"min_distance_A {p['min_distance_A']} Å is below 0.2 x diameter_A: "
                "one particle would give several picks"
            )
        if p["lowpass_A"] and p["lowpass_A"] > 0.5 * p["diameter_A"]:
            problems.append(
                f"lowpass_A {p['lowpass_A']} Å is more than half the diameter_A: the "
                "templates would be featureless blobs"
            )
        refs = references_of(ctx)
        for path in sorted(set(refs["files"])):
            try:
                check_reference_pixel_size(ctx.path(path), refs["pixel_size_A"], p["diameter_A"])
            except ValidationError as exc:
                problems.append(str(exc))
        return problems

    def steps(self, ctx) -> list[Step]:
        from hpcem.picking.steps import picking_steps
        from hpcem.picking.template import working_pixel_size_A

        p = ctx.params
        refs = references_of(ctx)
        finest_A = float(min(ctx.input("micrographs").optics["pixel_size_A"]))
        work_A = working_pixel_size_A(p["diameter_A"], finest_A, p["lowpass_A"])
        output = ctx.relpath(str(ctx.run_dir / "templates.mrcs"))
        templates = Step(
            _TEMPLATE_STEP,
            "hpcem.protocols.picking_template:make_templates",
            {
                **refs,
                "diameter_A": p["diameter_A"],
                "work_pixel_A": work_A,
                "angular_step_deg": p["angular_step_deg"],
                "output": output,
                "picture": ctx.relpath(str(ctx.run_dir / "pictures" / "templates.png")),
            },
        )
        options = {
            k: p[k]
            for k in (
                "diameter_A",
                "angular_step_deg",
                "inplane_step_deg",
                "lowpass_A",
                "threshold",
                "min_distance_A",
                "max_picks",
            )
        }
        options["templates"] = output
        options["template_pixel_A"] = work_A
        options["references"] = refs["files"]
        return picking_steps(
            ctx, "hpcem.protocols.picking_template:pick_one", options, before=[templates]
        )
