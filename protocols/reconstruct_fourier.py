"""3D reconstruction by direct Fourier inversion, with MPI across ranks (``reconstruct.fourier``).

Steps: ``prepare`` (controller) writes the particle table (``particles.npz``: stacks,
indices, poses, shifts, CTFs, optics per particle, half sets) into the run folder;
``reconstruct`` runs :func:`hpcem.reconstruct.mpi.reconstruct_step` on ``ranks`` MPI
ranks (each inserts its share of the particles with the Cython ``backproject`` kernel,
one Reduce to rank 0; ``ranks`` = 1 runs the same code in an ordinary worker, without
MPI); ``register`` (controller) writes ``volumes`` (full map, half maps 1 and 2) and
``fsc`` (the gold-standard curve with its 0.143 resolution).

Refused at validation (one message each): a symmetry that is not C_n, D_n, T, O, I;
particles without poses (every rot, tilt and psi 0: they were never aligned), without a
CTF (defocus 0) unless ``ctf`` is off, with several pixel sizes or boxes in their optics
groups, or whose stacks' images are not ``image_size_px`` square. Particles without a half
set (0) are put into halves at random: each particle's half is a function of the run's
``seed`` and the particle's id only (:func:`hpcem.provenance.seeds.coin_flips`), so it does
not depend on the order of the set; the result says how many were assigned.
"""

from __future__ import annotations

import numpy as np

from hpcem.errors import HpcemError, ValidationError
from hpcem.model.types import RECONSTRUCTION_FIELDS
from hpcem.protocol import MPI, Citation, Input, Output, Param, Protocol, Step
from hpcem.provenance.seeds import DEFAULT_SEED, MAX_SEED

PENCZEK_2004 = Citation(
    "Penczek2004",
    "@article{Penczek2004, author = {Penczek, Pawel A. and Renka, Robert and Schomberg, "
    "Hermann}, title = {Gridding-based direct Fourier inversion of the three-dimensional ray "
    "transform}, journal = {J. Opt. Soc. Am. A}, volume = {21}, pages = {499--509}, "
    "year = {2004}, doi = {10.1364/JOSAA.21.000499}}",
)
SCHERES_2012 = Citation(
    "Scheres2012",
    "@article{Scheres2012, author = {Scheres, Sjors H. W.}, title = {RELION: Implementation "
    "of a Bayesian approach to cryo-EM structure determination}, journal = {J. Struct. "
    "Biol.}, volume = {180}, pages = {519--530}, year = {2012}, "
    "doi = {10.1016/j.jsb.2012.09.006}}",
)
ROSENTHAL_2003 = Citation(
    "Rosenthal2003",
    "@article{Rosenthal2003, author = {Rosenthal, Peter B. and Henderson, Richard}, title = "
    "{Optimal determination of particle orientation, absolute hand, and contrast loss in "
    "single-particle electron cryomicroscopy}, journal = {J. Mol. Biol.}, volume = {333}, "
    "pages = {721--745}, year = {2003}, doi = {10.1016/j.jmb.2003.07.013}}",
)
DALCIN_2021 = Citation(
    "Dalcin2021",
    "@article{Dalcin2021, author = {Dalcin, Lisandro and Fang, Yao-Lung L.}, title = {mpi4py: "
    "Status Update After 12 Years of Development}, journal = {Computing in Science & "
    "Engineering}, volume = {23}, pages = {47--54}, year = {2021}, "
    "doi = {10.1109/MCSE.2021.3083216}}",
)


def particle_problems(particles, ctf: bool, check_stacks: bool = True) -> list[str]:
    """What makes a particle set unusable for reconstruction (empty when usable)."""
    from hpcem.io import read_header

    problems = []
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
    if len(pixels) > 1:
        problems.append(
            f"the particles' optics groups have different pixel sizes {pixels} Å; "
            "reconstruct them separately or rescale them to one pixel size"
        )
    if len(boxes) > 1:
        problems.append(f"the particles' optics groups have different boxes {boxes} px")
    if len(particles) == 0:
        return problems + ["the particle set is empty"]
    cols = particles.read_columns(["rot", "tilt", "psi", "defocus_u", "image"])
    poses = np.stack([cols["rot"], cols["tilt"], cols["psi"]])
    if len(particles) > 1 and not np.any(poses):
        problems.append(
            f"the {len(particles)} particles have no orientations (rot = tilt = psi = 0 for "
            "all): reconstruction needs poses from a refinement or a simulation"
        )
    no_ctf = int((np.asarray(cols["defocus_u"]) <= 0).sum())
    if ctf and no_ctf:
        problems.append(
            f"{no_ctf} of {len(particles)} particles have no CTF (defocus_u <= 0): estimate "
            "the CTF first, or turn ctf off to reconstruct without CTF correction"
        )
    if check_stacks and not problems:
        box = boxes[0]
        for stack in sorted({str(s) for s in cols["image"]}):
            try:
                shape = read_header(stack).shape
            except HpcemError as exc:
                problems.append(f"particle stack {stack}: {exc}")
                break
            if shape[1:] != (box, box):
                problems.append(
                    f"particle stack {stack} holds {shape[2]}x{shape[1]} px images, but the "
                    f"particles' optics say image_size_px {box}"
                )
                break
    return problems


def assign_halves(ids: np.ndarray, half_set: np.ndarray, seed: int) -> np.ndarray:
    """Half sets (1 or 2) of the particles: their own where it is 1 or 2, else a random
    half drawn from (``seed``, particle id) — the same particle gets the same half in any
    order and next to any other particles."""
    from hpcem.provenance.seeds import coin_flips

    halves = np.asarray(half_set, dtype=np.int64).copy()
    missing = ~np.isin(halves, (1, 2))
    if missing.any():
        ids = np.asarray(ids, dtype=np.int64)[missing]
        halves[missing] = 1 + coin_flips(seed, ids).astype(np.int64)
    return halves


def prepare(ctx, table: str, seed: int = 0) -> dict:
    """Controller step: write the particle table for the reconstruction step (particles
    without a half set are assigned one from ``seed``, see :func:`assign_halves`)."""
    from hpcem.reconstruct.mpi import write_table

    particles = ctx.input("particles")
    cols = particles.read_columns(["id", *RECONSTRUCTION_FIELDS])
    optics = particles.optics
    row_of = {int(g): i for i, g in enumerate(optics["optics_group"])}
    rows = np.asarray([row_of[int(g)] for g in cols["optics_group"]], dtype=np.intp)
    missing = ~np.isin(np.asarray(cols["half_set"]), (1, 2))
    halves = assign_halves(cols["id"], cols["half_set"], seed)
    columns = {
        k: cols[k] for k in RECONSTRUCTION_FIELDS if k not in ("image", "half_set", "optics_group")
    }
    columns["stack"] = [ctx.relpath(ctx.path(str(s))) for s in cols["image"]]
    columns["half"] = halves
    for key in ("voltage_kV", "spherical_aberration_mm", "amplitude_contrast"):
        columns[key] = np.asarray(optics[key], dtype=np.float64)[rows]
    shared = {
        "pixel_size_A": float(optics["pixel_size_A"][0]),
        "image_size_px": int(optics["image_size_px"][0]),
    }
    path = ctx.path(table)
    write_table(path, columns, shared)
    return {"count": len(halves), "table": table, "half_sets_assigned": int(missing.sum())}


def register(ctx) -> dict:
    """Controller step: output ``volumes`` (full map, half 1, half 2) and ``fsc``."""
    result = ctx.result("reconstruct")
    prepared = ctx.result("prepare")
    symmetry = ctx.params["symmetry"].strip().upper()
    with ctx.create_set("volumes", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(result["maps"][k]) for k in ("full", "half1", "half2")],
                "pixel_size_A": [result["pixel_size_A"]] * 3,
                "box_size": [result["box_px"]] * 3,
                "half": [0, 1, 2],
                "symmetry": [symmetry] * 3,
            }
        )
    with ctx.create_set("fsc", "hpcem.SetOfFSCs") as writer:
        writer.append_columns(
            {
                "label": ["gold-standard (half maps, unmasked)"],
                "resolution_A": [result["resolution_A"]],
                "frequency": [result["frequency"]],
                "fsc": [result["fsc"]],
            }
        )
    return {
        "resolution_A": result["resolution_A"],
        "particles": result["particles"],
        "half_sets_assigned": prepared["half_sets_assigned"],
        "ranks": result["ranks"],
        "backend": result["backend"],
        "plot": result["plot"],
    }


class ReconstructFourier(Protocol):
    name = "reconstruct.fourier"
    label = "Reconstruct a map (direct Fourier inversion)"
    version = "1"
    help = (
        "Reconstruct a 3D map and its two half maps from particles with known orientations, "
        "shifts and CTFs by CTF-weighted insertion of their Fourier transforms (trilinear, "
        "padded), Wiener-style division and gridding correction; the gold-standard FSC of "
        "the half maps gives the resolution. MPI: ranks insert their share, one reduction."
    )
    inputs = (
        Input(
            "particles",
            ("hpcem.SetOfParticles",),
            help="Particles with rot, tilt, psi, shift_x/y (Å, RELION 3.1 sign), CTF and "
            "optionally half_set (1, 2; 0 = assign at random).",
        ),
    )
    params = (
        Param.string("symmetry", "C1", help="Point group: C1, Cn, Dn, T, O, I (RELION's axes)."),
        Param.bool("ctf", True, help="Weight by each particle's CTF and correct it (Wiener)."),
        Param.float(
            "wiener",
            0.001,
            min=0.0,
            max=10.0,
            help="Regularisation of the division by the CTF² weights, as a fraction of each "
            "shell's mean weight (0 = plain division).",
        ),
        Param.float(
            "max_res_A",
            0.0,
            min=0.0,
            max=1000.0,
            units="Å",
            help="Insert Fourier components up to this resolution (0 = Nyquist).",
        ),
        Param.int("pad", 2, min=1, max=4, expert=1, help="Oversampling of the Fourier volume."),
        Param.int(
            "seed",
            DEFAULT_SEED,
            min=0,
            max=MAX_SEED,
            help="Seed of the random half sets given to particles without one (half_set 0); "
            "a particle's half depends only on the seed and its id.",
        ),
        Param.int(
            "ranks",
            1,
            min=1,
            max=4096,
            help="MPI ranks (1 = one process, same kernel, no MPI launcher).",
        ),
    )
    outputs = (
        Output("volumes", "hpcem.SetOfVolumes", help="Full map (half 0) and half maps 1, 2."),
        Output("fsc", "hpcem.SetOfFSCs", help="Gold-standard FSC of the half maps (0.143)."),
    )
    citations = (PENCZEK_2004, SCHERES_2012, ROSENTHAL_2003, DALCIN_2021)

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
        return problems + particle_problems(particles, ctx.params["ctf"])

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
            "fsc": rel("maps/fsc.npz"),
            "plot": rel("fsc.png"),
        }
        options = {
            "symmetry": normalise_symmetry(p["symmetry"]),
            "pad": p["pad"],
            "wiener": p["wiener"],
            "max_res_A": p["max_res_A"],
            "ctf": p["ctf"],
        }
        ranks = p["ranks"]
        return [
            Step(
                "prepare",
                "hpcem.protocols.reconstruct_fourier:prepare",
                # runs made before the parameter existed have no seed: the default
                {"table": table, "seed": int(p.get("seed", DEFAULT_SEED))},
                controller=True,
            ),
            Step(
                "reconstruct",
                "hpcem.reconstruct.mpi:reconstruct_step",
                {"table": table, "out": out, "options": options, "use_mpi": ranks > 1},
                deps=("prepare",),
                mpi=MPI(ranks=ranks) if ranks > 1 else None,
            ),
            Step(
                "register",
                "hpcem.protocols.reconstruct_fourier:register",
                deps=("reconstruct",),
                controller=True,
            ),
        ]
