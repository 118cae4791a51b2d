"""Gold-standard 3D refinement by projection matching (``refine.projmatch``).

Steps: ``prepare`` (controller; ``reconstruct.fourier``'s own step) writes the particle
table (stacks, indices, CTFs, optics per particle, half sets: the particles' own, or a
random half from ``seed`` and the particle's id); ``refine`` (one worker step, the two
half sets in two threads) runs :func:`hpcem.refine.steps.refine_step`: per iteration
and half, the half's reference is low-passed, projected on an orientation grid and
matched against the CTF-weighted particles (global search first, local searches at a
halving angular step after), and the half map is reconstructed by direct Fourier
inversion; the FSC of the half maps sets the next low-pass
(:mod:`hpcem.refine.projmatch`). ``register`` (controller) writes ``particles`` (the
input with rot, tilt, psi, shift_x/y in Å with RELION 3.1's sign, half_set, and the
pose's score in ``pose_score``; the scores are also
in ``poses.npz``), ``volume``
(full map, half maps 1 and 2) and ``fsc`` (the final gold-standard curve, 0.143).

Refused at validation (one message each): an unknown symmetry; particles without a CTF
(defocus_u <= 0), with several pixel sizes or boxes, or an empty set; a reference whose
box or pixel size differs from the particles' (resample it first, e.g.
``relion_image_handler --angpix P --new_box N``); a mask wider than the box.
"""

from __future__ import annotations

import numpy as np

from hpcem.errors import HpcemError, ValidationError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step
from hpcem.provenance.seeds import DEFAULT_SEED, MAX_SEED

PENCZEK_1994 = Citation(
    "Penczek1994",
    "@article{Penczek1994, author = {Penczek, Pawel A. and Grassucci, Robert A. and Frank, "
    "Joachim}, title = {The ribosome at improved resolution: new techniques for merging and "
    "orientation refinement in 3D cryo-electron microscopy of biological particles}, "
    "journal = {Ultramicroscopy}, volume = {53}, pages = {251--270}, year = {1994}, "
    "doi = {10.1016/0304-3991(94)90038-8}}",
)
SCHERES_CHEN_2012 = Citation(
    "Scheres2012b",
    "@article{Scheres2012b, author = {Scheres, Sjors H. W. and Chen, Shaoxia}, title = "
    "{Prevention of overfitting in cryo-EM structure determination}, journal = {Nat. "
    "Methods}, volume = {9}, pages = {853--854}, year = {2012}, doi = {10.1038/nmeth.2115}}",
)
ROSENTHAL_2003 = Citation(
    "Rosenthal2003",
    "@article{Rosenthal2003, author = {Rosenthal, Peter B. and Henderson, Richard}, title = "
    "{Optimal determination of particle orientation, absolute hand, and contrast loss in "
    "single-particle electron cryomicroscopy}, journal = {J. Mol. Biol.}, volume = {333}, "
    "pages = {721--745}, year = {2003}, doi = {10.1016/j.jmb.2003.07.013}}",
)
MAPS = ("full", "half1", "half2")
#: The particle field that takes each pose's score, once hpcem.model.types declares it.
SCORE_FIELD = "pose_score"


def particle_problems(particles) -> list[str]:
    """What makes a particle set unusable for refinement (empty when usable)."""
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
    problems = []
    if len(pixels) > 1:
        problems.append(f"the particles' optics groups have different pixel sizes {pixels} Å")
    if len(boxes) > 1:
        problems.append(f"the particles' optics groups have different boxes {boxes} px")
    if boxes[0] % 2:
        problems.append(f"the particles' box is {boxes[0]} px: refinement needs an even box")
    if len(particles) < 2:
        return problems + [f"refinement needs at least 2 particles, the set has {len(particles)}"]
    defocus = np.asarray(particles.read_columns(["defocus_u"])["defocus_u"])
    no_ctf = int((defocus <= 0).sum())
    if no_ctf:
        problems.append(
            f"{no_ctf} of {len(particles)} particles have no CTF (defocus_u <= 0): estimate "
            "the CTF of their micrographs (ctf.estimate) and extract them with it"
        )
    return problems


def reference_of(ctx) -> dict:
    """The initial model: ``{"file"`` (project-relative), ``"pixel_size_A"``, ``"box_px"}``
    (the set's full map, half 0, else its first row)."""
    from hpcem.io import read_header

    refs = ctx.input("reference")
    if isinstance(refs, list):
        refs = refs[0]
    cols = refs.read_columns(["image", "pixel_size_A", "half"])
    if not len(cols["image"]):
        raise ValidationError("reference: the set of volumes is empty")
    full = [i for i, h in enumerate(cols["half"]) if int(h) == 0]
    row = full[0] if full else 0
    path = ctx.path(str(cols["image"][row]))
    shape = read_header(path).shape
    if len(shape) != 3 or len(set(shape)) != 1:
        raise ValidationError(f"reference {path}: a cubic 3D map is needed, got shape {shape}")
    return {
        "file": ctx.relpath(path),
        "pixel_size_A": float(cols["pixel_size_A"][row]),
        "box_px": int(shape[0]),
    }


def reference_problems(reference: dict, particles) -> list[str]:
    """A reference that does not fit the particles' box and pixel size."""
    box = int(particles.optics["image_size_px"][0])
    pixel = float(particles.optics["pixel_size_A"][0])
    if reference["box_px"] == box and abs(reference["pixel_size_A"] - pixel) <= 0.005 * pixel:
        return []
    message = (
        f"the reference is {reference['box_px']} px at {reference['pixel_size_A']:.4g} Å/px, "
        f"the particles {box} px at {pixel:.4g} Å/px: resample the map to the particles' "
        f"box and pixel size first (e.g. relion_image_handler --angpix {pixel:.4g} "
        f"--new_box {box})"
    )
    return [message]


def register(ctx) -> dict:
    """Controller step: outputs ``particles`` (new poses), ``volume`` and ``fsc``."""
    result = ctx.result("refine")
    prepared = ctx.result("prepare")
    particles = ctx.input("particles")
    symmetry = ctx.params["symmetry"].strip().upper()
    found = np.load(ctx.path(result["poses"]))
    pixel = float(result["pixel_size_A"])
    cols = particles.read_columns()
    cols["rot"] = found["angles"][:, 0].astype(np.float32)
    cols["tilt"] = found["angles"][:, 1].astype(np.float32)
    cols["psi"] = found["angles"][:, 2].astype(np.float32)
    cols["shift_x"] = (-found["shift_px"][:, 0] * pixel).astype(np.float32)
    cols["shift_y"] = (-found["shift_px"][:, 1] * pixel).astype(np.float32)
    cols["half_set"] = found["half"].astype(np.int8)
    cols[SCORE_FIELD] = found["score"].astype(np.float32)
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        writer.set_optics(particles.optics)
        writer.append_columns(cols)
    with ctx.create_set("volume", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(result["maps"][k]) for k in MAPS],
                "pixel_size_A": [pixel] * 3,
                "box_size": [result["box_px"]] * 3,
                "half": [0, 1, 2],
                "symmetry": [symmetry] * 3,
            }
        )
    with ctx.create_set("fsc", "hpcem.SetOfFSCs") as writer:
        writer.append_columns(
            {
                "label": ["gold-standard (half maps, unmasked), projection matching"],
                "resolution_A": [result["resolution_A"]],
                "frequency": [result["frequency"]],
                "fsc": [result["fsc"]],
            }
        )
    return {
        "resolution_A": result["resolution_A"],
        "particles": result["particles"],
        "half_sets_assigned": prepared["half_sets_assigned"],
        "iterations_run": result["iterations_run"],
        "converged": result["converged"],
        "refine_s": result["refine_s"],
        "backend": result["backend"],
        "plot": result["plot"],
        "history_plot": result["history_plot"],
        "mean_score": float(np.mean(found["score"])),
    }


class RefineProjmatch(Protocol):
    name = "refine.projmatch"
    label = "3D refinement (projection matching, gold standard)"
    version = "1"
    help = (
        "Find each particle's orientation and shift by matching it against CTF-weighted "
        "projections of a reference (global search, then local searches at a halving "
        "angular step), reconstruct the two half sets independently and iterate, each "
        "half against its own map low-passed at the current gold-standard resolution."
    )
    inputs = (
        Input(
            "particles",
            ("hpcem.SetOfParticles",),
            help="Extracted particles with a CTF (particles.extract); half_set 1/2 is kept, "
            "0 is assigned at random from seed.",
        ),
        Input(
            "reference",
            ("hpcem.SetOfVolumes",),
            help="The initial model (import.volumes), at the particles' box and pixel size.",
        ),
    )
    params = (
        Param.string("symmetry", "C1", help="Point group: C1, Cn, Dn, T, O, I (RELION's axes)."),
        Param.int(
            "iterations",
            5,
            min=1,
            max=50,
            help="Most iterations (two global searches, then local ones at half the step "
            "each; stops once the median pose change is below half the finest step).",
        ),
        Param.float(
            "angular_step_deg",
            15.0,
            min=0.5,
            max=45.0,
            units="deg",
            help="Angular step of the global search (directions and in-plane angles).",
        ),
        Param.float(
            "max_shift_px",
            5.0,
            min=0.0,
            max=100.0,
            units="px",
            help="Largest shift of a particle's centre from its box centre, in x and y.",
        ),
        Param.float(
            "initial_lowpass_A",
            30.0,
            min=1.0,
            max=1000.0,
            units="Å",
            help="Low-pass of the initial model for the first iteration.",
        ),
        Param.float(
            "mask_diameter_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Diameter of the soft circular/spherical mask on particles and references "
            "(0 = the box less 4 pixels).",
        ),
        Param.int(
            "seed",
            DEFAULT_SEED,
            min=0,
            max=MAX_SEED,
            help="Seed of the random half sets of particles without one (half_set 0); a "
            "particle's half depends only on the seed and its id.",
        ),
    )
    outputs = (
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The particles with rot, tilt, psi, shift_x/y (Å) and half_set.",
        ),
        Output("volume", "hpcem.SetOfVolumes", help="Final map (half 0) and half maps 1, 2."),
        Output("fsc", "hpcem.SetOfFSCs", help="Gold-standard FSC of the final half maps."),
    )
    citations = (PENCZEK_1994, SCHERES_CHEN_2012, ROSENTHAL_2003)

    def validate(self, ctx) -> list[str]:
        from hpcem.reconstruct.symmetry import normalise_symmetry

        problems = []
        try:
            normalise_symmetry(ctx.params["symmetry"])
        except ValidationError as exc:
            problems.append(str(exc))
        try:
            particles = ctx.input("particles")
        except HpcemError:
            return problems
        found = particle_problems(particles)
        problems += found
        if found:
            return problems
        try:
            problems += reference_problems(reference_of(ctx), particles)
        except HpcemError as exc:
            problems.append(f"reference: {exc}")
        box = int(particles.optics["image_size_px"][0])
        pixel = float(particles.optics["pixel_size_A"][0])
        if ctx.params["mask_diameter_A"] > box * pixel:
            problems.append(
                f"mask_diameter_A {ctx.params['mask_diameter_A']:g} Å is wider than the box "
                f"({box} px at {pixel:.4g} Å/px = {box * pixel:.1f} Å)"
            )
        return problems

    def steps(self, ctx) -> list[Step]:
        from hpcem.reconstruct.symmetry import normalise_symmetry

        p = ctx.params
        run = ctx.run_dir

        def rel(name: str) -> str:
            return ctx.relpath(str(run / name))

        table = rel("particles.npz")
        out = {
            "full": rel("maps/full.mrc"),
            "half1": rel("maps/half1.mrc"),
            "half2": rel("maps/half2.mrc"),
            "poses": rel("poses.npz"),
            "fsc": rel("maps/fsc.npz"),
            "plot": rel("fsc.png"),
            "history_plot": rel("fsc_iterations.png"),
        }
        options = {
            "symmetry": normalise_symmetry(p["symmetry"]),
            "iterations": p["iterations"],
            "angular_step_deg": p["angular_step_deg"],
            "max_shift_px": p["max_shift_px"],
            "initial_lowpass_A": p["initial_lowpass_A"],
            "mask_diameter_A": p["mask_diameter_A"],
            "threads": 2,
        }
        reference = reference_of(ctx)["file"]
        return [
            Step(
                "prepare",
                "hpcem.protocols.reconstruct_fourier:prepare",
                {"table": table, "seed": int(p["seed"])},
                controller=True,
            ),
            Step(
                "refine",
                "hpcem.refine.steps:refine_step",
                {"table": table, "reference": reference, "options": options, "out": out},
                deps=("prepare",),
            ),
            Step(
                "register",
                "hpcem.protocols.refine_projmatch:register",
                deps=("refine",),
                controller=True,
            ),
        ]
