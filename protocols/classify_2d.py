"""Reference-free 2D classification: particles → K class averages with their members,
each particle with its class and in-plane pose (psi, shift).

Steps: ``prepare`` (controller: the particle table as ``particles.npz`` in the run
folder), ``classify`` (the iteration of :mod:`hpcem.classify.em2d`; under MPI with
``ranks`` > 1, each rank aligning its share of the particles and the class sums reduced
with ``Allreduce``), ``register`` (controller: output sets ``classes`` and ``particles``).
Bad input (particles without CTF when CTF correction is on, more classes than particles,
optics groups of different pixel or box sizes, stacks whose images are not the box of
the set) is refused at validation, with one message each.
"""

from __future__ import annotations

import math
import os

import numpy as np

from hpcem.errors import HpcemError
from hpcem.protocol import MPI, Citation, Input, Output, Param, Protocol, Step

SCHERES_2012 = Citation(
    "Scheres2012",
    "@article{Scheres2012, author = {Scheres, Sjors H. W.}, title = {RELION: Implementation "
    "of a Bayesian approach to cryo-EM structure determination}, journal = {J. Struct. "
    "Biol.}, volume = {180}, pages = {519--530}, year = {2012}, "
    "doi = {10.1016/j.jsb.2012.09.006}}",
)
SORZANO_2010 = Citation(
    "Sorzano2010",
    "@article{Sorzano2010, author = {Sorzano, C. O. S. and Bilbao-Castro, J. R. and "
    "Shkolnisky, Y. and Alcorlo, M. and Melero, R. and Caffarena-Fern{\\'a}ndez, G. and "
    "Li, M. and Xu, G. and Marabini, R. and Carazo, J. M.}, title = {A clustering approach "
    "to multireference alignment of single-particle projections in electron microscopy}, "
    "journal = {J. Struct. Biol.}, volume = {171}, pages = {197--206}, year = {2010}, "
    "doi = {10.1016/j.jsb.2010.03.011}}",
)
DALCIN_2021 = Citation(
    "Dalcin2021",
    "@article{Dalcin2021, author = {Dalcin, Lisandro and Fang, Yao-Lung L.}, title = {mpi4py: "
    "Status Update After 12 Years of Development}, journal = {Computing in Science & "
    "Engineering}, volume = {23}, pages = {47--54}, year = {2021}, "
    "doi = {10.1109/MCSE.2021.3083216}}",
)

_CTF_COLUMNS = ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")


def _optics_rows(particles) -> np.ndarray:
    """Row of the optics table of each particle."""
    optics = particles.optics
    groups = np.asarray(optics["optics_group"], dtype=np.int64)
    order = np.argsort(groups)
    pos = np.searchsorted(groups[order], np.asarray(particles.column("optics_group")))
    return order[np.clip(pos, 0, len(groups) - 1)]


def input_problems(particles, p: dict, resolve) -> list[str]:
    """What is wrong with input ``particles`` for these parameters (``resolve`` turns a
    stored image path into an openable one)."""
    from hpcem.io.mrc import read_mrc_header

    problems = []
    n = len(particles)
    if p["n_classes"] > n:
        problems.append(f"n_classes {p['n_classes']} is larger than the number of particles ({n})")
    optics = particles.optics
    pixels = sorted({round(float(v), 6) for v in optics.get("pixel_size_A", [])})
    boxes = sorted({int(v) for v in optics.get("image_size_px", [])})
    if len(pixels) > 1:
        problems.append(
            f"the optics groups have different pixel sizes ({', '.join(map(str, pixels))} Å): "
            "classify particles of one pixel size (rescale them at extraction)"
        )
    if len(boxes) > 1:
        problems.append(f"the optics groups have different box sizes ({boxes} px)")
    if problems or not n:
        return problems
    box, pixel = boxes[0], pixels[0]
    if p["ctf_correction"]:
        du = np.asarray(particles.column("defocus_u"), dtype=np.float64)
        bad = np.flatnonzero(~(du > 0))
        if len(bad):
            ids = np.asarray(particles.column("id"))[bad[:3]].tolist()
            problems.append(
                f"{len(bad)} of {n} particles have no CTF (defocus_u <= 0, e.g. ids {ids}): "
                "give particles with CTFs or set ctf_correction false"
            )
    if p["mask_diameter_A"] > box * pixel:
        problems.append(
            f"mask_diameter_A {p['mask_diameter_A']:g} is larger than the box "
            f"({box} px x {pixel:g} Å = {box * pixel:g} Å)"
        )
    images = np.asarray(particles.column("image")).astype(str)
    index = np.asarray(particles.column("image_index"), dtype=np.int64)
    for path in np.unique(images):
        try:
            header = read_mrc_header(resolve(path))
        except (HpcemError, OSError) as exc:
            problems.append(f"particle stack {path}: {exc}")
            continue
        nz, ny, nx = header.shape if len(header.shape) == 3 else (1, *header.shape)
        if (nx, ny) != (box, box):
            problems.append(
                f"particle stack {path}: images are {nx}x{ny} px but the set's box "
                f"(optics image_size_px) is {box} px"
            )
        top = int(index[images == path].max())
        if top >= nz:
            problems.append(f"particle stack {path}: holds {nz} images, index {top} is asked")
    return problems


def prepare(ctx, table: str) -> dict:
    """Controller step: the particle table the ``classify`` step reads (``table``, .npz):
    image paths and indices, the CTF of each particle, pixel and box size."""
    particles = ctx.input("particles")
    optics = particles.optics
    rows = _optics_rows(particles)
    cols = particles.read_columns(["image", "image_index", *_CTF_COLUMNS])
    n = len(particles)
    data = {
        "image": np.array([ctx.path(str(v)) for v in cols["image"]]),
        "image_index": np.asarray(cols["image_index"], dtype=np.int64),
        "pixel_size_A": float(optics["pixel_size_A"][0]),
        "box_px": int(optics["image_size_px"][0]),
        **{k: np.asarray(cols[k], dtype=np.float64) for k in _CTF_COLUMNS},
        "voltage_kV": np.asarray(optics["voltage_kV"], dtype=np.float64)[rows],
        "cs_mm": np.asarray(optics["spherical_aberration_mm"], dtype=np.float64)[rows],
        "amplitude_contrast": np.asarray(optics["amplitude_contrast"], dtype=np.float64)[rows],
    }
    path = ctx.path(table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **data)
    return {"n_particles": n}


def register_classes(ctx) -> dict:
    """Controller step: output ``classes`` (averages in ``classes.mrcs``, member ids;
    classes are numbered 1..K, empty ones kept with size 0) and ``particles`` (the input
    with ``class_id`` 1..K, ``psi`` and ``shift_x``/``shift_y`` in Å, RELION 3.1 sign:
    centre = box centre − shift)."""
    result = ctx.result("classify")
    particles = ctx.input("particles")
    found = np.load(ctx.path(result["assignment"]))
    classes = np.asarray(found["class"], dtype=np.int64)
    pixel = float(particles.optics["pixel_size_A"][0])
    cols = particles.read_columns()
    ids = np.asarray(cols["id"], dtype=np.int64)
    k = len(result["sizes"])
    with ctx.create_set("classes", "hpcem.SetOfClasses2D") as writer:
        writer.append_columns(
            {
                "id": np.arange(1, k + 1),
                "representative": [ctx.path(result["averages"])] * k,
                "representative_index": np.arange(k),
                "size": np.bincount(classes, minlength=k),
                "member_ids": [ids[classes == i].tolist() for i in range(k)],
            }
        )
    cols["class_id"] = (classes + 1).astype(np.int32)
    cols["psi"] = np.asarray(found["psi_deg"], dtype=np.float32)
    cols["shift_x"] = (-found["shift_px"][:, 0] * pixel).astype(np.float32)
    cols["shift_y"] = (-found["shift_px"][:, 1] * pixel).astype(np.float32)
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        writer.set_optics(particles.optics)
        writer.append_columns(cols)
    return {
        "classes": k,
        "sizes": result["sizes"],
        "iterations_run": result["iterations_run"],
        "converged": result["converged"],
    }


class Classify2D(Protocol):
    name = "classify.class2d"
    label = "2D classification"
    help = (
        "Reference-free 2D classification: align every particle to K class averages "
        "(in-plane rotation and shift), assign it to the best one, and average the "
        "classes with Wiener CTF correction; iterate until fewer than 1 % of the "
        "particles change class. Runs under MPI with ranks > 1."
    )
    inputs = (Input("particles", ("hpcem.SetOfParticles",), help="Particles to classify."),)
    params = (
        Param.int("n_classes", 10, min=1, max=1000, help="Number of classes K."),
        Param.int(
            "iterations",
            20,
            min=1,
            max=200,
            help="Most iterations (the run stops earlier once < 1 % of the particles "
            "change class).",
        ),
        Param.int("ranks", 1, min=1, max=4096, help="MPI ranks (1 = one process, no MPI)."),
        Param.float(
            "mask_diameter_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Diameter of the circular mask on particles and averages (0 = 90 % of the box).",
        ),
        Param.float(
            "angle_step_deg",
            5.0,
            min=0.5,
            max=90.0,
            units="deg",
            help="In-plane angular step of the search (refined below it by a parabola).",
        ),
        Param.float(
            "max_shift_A",
            0.0,
            min=0.0,
            max=1000.0,
            units="Å",
            help="Largest shift searched in x and y (0 = 6 % of the box, at least 2 pixels).",
        ),
        Param.int(
            "align_box_px",
            48,
            min=0,
            max=1024,
            expert=1,
            help="Particles are Fourier-cropped to this box for the search (a low-pass "
            "and smaller FFTs; 0 = full box). Averages are made at full size.",
        ),
        Param.int("seed", 0, min=0, max=2**31 - 1, help="Seed of the initial random subsets."),
        Param.bool(
            "ctf_correction",
            True,
            help="Correct the CTF (particles compared with CTF-multiplied references; "
            "Wiener-filtered averages). Needs particles with CTFs.",
        ),
    )
    outputs = (
        Output("classes", "hpcem.SetOfClasses2D", help="Class averages and their members."),
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The input particles with class_id, psi and shift_x/shift_y.",
        ),
    )
    citations = (SCHERES_2012, SORZANO_2010, DALCIN_2021)

    def validate(self, ctx) -> list[str]:
        try:
            particles = ctx.input("particles")
        except HpcemError as exc:
            return [str(exc)]
        return input_problems(particles, ctx.params, ctx.path)

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        particles = ctx.input("particles")
        box = int(particles.optics["image_size_px"][0])
        pixel = float(particles.optics["pixel_size_A"][0])
        table = ctx.relpath(str(ctx.run_dir / "particles.npz"))
        args = {
            "table": table,
            "out_dir": ctx.relpath(str(ctx.run_dir / "classes")),
            "n_classes": p["n_classes"],
            "iterations": p["iterations"],
            "mask_diameter_A": p["mask_diameter_A"] or 0.9 * box * pixel,
            "angle_step_deg": p["angle_step_deg"],
            "max_shift_A": p["max_shift_A"] or max(2, math.ceil(0.06 * box)) * pixel,
            "align_box_px": p["align_box_px"],
            "seed": p["seed"],
            "ctf_correction": p["ctf_correction"],
            "use_mpi": p["ranks"] > 1,
        }
        return [
            Step(
                "prepare", "hpcem.protocols.classify_2d:prepare", {"table": table}, controller=True
            ),
            Step(
                "classify",
                "hpcem.classify.mpi:classify_step",
                args,
                deps=("prepare",),
                mpi=MPI(ranks=p["ranks"]) if p["ranks"] > 1 else None,
            ),
            Step(
                "register",
                "hpcem.protocols.classify_2d:register_classes",
                deps=("classify",),
                controller=True,
            ),
        ]
