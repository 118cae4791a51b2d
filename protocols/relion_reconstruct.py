"""3D reconstruction from particles with known orientations (``relion.reconstruct``).

A controller step (:func:`write_particles`) writes the particle set as a RELION 3.1
particle STAR file into the run's ``relion/`` folder (optics table; per particle the
image as ``N@stack`` relative to that folder, Euler angles, ``_rlnOriginXAngst/YAngst``
from ``shift_x/y`` (hpcem keeps RELION 3.1's sign), the CTF, and ``_rlnRandomSubset``
for half maps); then one worker step per map runs ``relion_reconstruct`` (``--ctf`` for
CTF correction, ``--sym``, ``--maxres``, ``--pad``, ``--subset`` 1 or 2 for the half
maps); the ``register`` step writes output ``volumes`` (the full map, and with
``half_maps`` the two half maps, ``half`` = 1 and 2) with pixel size and box from the
particles' optics and the symmetry.

Half maps need the particles' ``half_set`` (1 or 2, as RELION's refinement writes it);
particles without one (0) are put into halves by their order in the set (odd rows to 1,
even rows to 2), and the register step says how many were.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from hpcem.errors import HpcemError
from hpcem.model.types import RECONSTRUCTION_FIELDS
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS

PROGRAM = "relion_reconstruct"
STEP_PREFIX = "reconstruct/"
STAR_NAME = "particles.star"
#: Map name, ``--subset`` and ``half`` of each map a run makes.
MAPS = {"full": (-1, 0), "half1": (1, 1), "half2": (2, 2)}
_SYMMETRY_RE = re.compile(r"^(C\d+|D\d+|T|O|I[1-5]?)$", re.IGNORECASE)


def write_particles(ctx, star: str, half_maps: bool) -> dict:
    """Controller step: the input particles as RELION's ``star`` (project-relative),
    written by :func:`hpcem.convert.relion.write_particles` with the stacks relative to
    the STAR file's folder (RELION runs there; a moved project keeps working)."""
    from hpcem.convert.relion import write_particles as write_star

    particles = ctx.input("particles")
    cols = particles.read_columns(list(RECONSTRUCTION_FIELDS))
    path = Path(ctx.path(star))
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(path.parent)
    stacks = {s: os.path.relpath(ctx.path(str(s)), folder) for s in set(map(str, cols["image"]))}
    cols["image"] = np.asarray([stacks[str(s)] for s in cols["image"]], dtype=object)
    assigned = 0
    if half_maps:
        halves = np.asarray(cols["half_set"], dtype=np.int64).copy()
        missing = ~np.isin(halves, (1, 2))
        assigned = int(missing.sum())
        halves[missing] = 1 + (np.flatnonzero(missing) % 2)
        cols["half_set"] = halves
    else:
        del cols["half_set"]
    write_star(path, cols, dict(particles.optics))
    return {"count": len(cols["image"]), "star": star, "half_sets_assigned": assigned}


def reconstruct_one(star: str, output: str, subset: int, options: dict) -> dict:
    """Step: ``relion_reconstruct`` of ``star`` into ``output`` (both project-relative,
    in the same folder); ``subset`` 1 or 2 for a half map, -1 for all particles."""
    from hpcem.relion.runner import run_relion

    work = Path(star).parent
    args = ["--i", Path(star).name, "--o", os.path.relpath(output, work)]
    args += ["--sym", options["symmetry"], "--pad", str(options["pad"])]
    if options["maxres_A"] > 0:
        args += ["--maxres", f"{options['maxres_A']:g}"]
    if options["ctf"]:
        args.append("--ctf")
    if subset in (1, 2):
        args += ["--subset", str(subset)]
    record = run_relion(
        PROGRAM,
        args,
        workdir=work,
        site=options["site"],
        log=options["log"],
        label=f"map {Path(output).stem}",
    )
    if not Path(output).is_file():
        raise HpcemError(f"{PROGRAM} wrote no {output}")
    return {
        "image": output,
        "subset": subset,
        "commands": [record],
        "relion_version": record["version"],
    }


def register_volumes(ctx, maps: dict) -> dict:
    """Controller step: write output ``volumes`` (one row per map, full map first)."""
    particles = ctx.input("particles")
    optics = particles.optics
    pixel = float(optics["pixel_size_A"][0])
    box = int(optics["image_size_px"][0])
    rows = [ctx.result(STEP_PREFIX + name) for name in maps]
    with ctx.create_set("volumes", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(r["image"]) for r in rows],
                "pixel_size_A": [pixel] * len(rows),
                "box_size": [box] * len(rows),
                "half": [maps[name] for name in maps],
                "symmetry": [ctx.params["symmetry"].upper()] * len(rows),
            }
        )
    prepared = ctx.result("prepare")
    return {
        "count": len(rows),
        "particles": prepared["count"],
        "half_sets_assigned": prepared["half_sets_assigned"],
        "relion_version": rows[0]["relion_version"],
    }


class ReconstructRelion(Protocol):
    name = "relion.reconstruct"
    label = "Reconstruct a map (RELION)"
    version = "1"
    help = (
        "Reconstruct a 3D map from particles with known orientations, shifts and CTFs with "
        "RELION 3.1's relion_reconstruct (Fourier gridding, CTF correction), optionally "
        "also the two half maps (one step each, run in parallel)."
    )
    inputs = (
        Input(
            "particles",
            ("hpcem.SetOfParticles",),
            help="Particles with rot, tilt, psi, shift_x/y (Å, RELION 3.1 sign) and CTF.",
        ),
    )
    params = (
        Param.string("symmetry", "C1", help="Point-group symmetry (--sym: C1, Cn, Dn, T, O, I)."),
        Param.bool("ctf", True, help="Correct the CTF of each particle (--ctf)."),
        Param.bool(
            "half_maps",
            False,
            help="Also reconstruct the two half maps from the particles' half_set (for "
            "relion.postprocess).",
        ),
        Param.float(
            "maxres_A",
            0.0,
            min=0.0,
            max=1000.0,
            units="Å",
            help="Use Fourier components up to this resolution (--maxres; 0 = Nyquist).",
        ),
        Param.int(
            "pad", 2, min=1, max=4, expert=1, help="Padding factor of the reconstruction (--pad)."
        ),
    )
    outputs = (
        Output(
            "volumes",
            "hpcem.SetOfVolumes",
            help="The map (half = 0) and, with half_maps, the half maps (half = 1, 2).",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = []
        if not _SYMMETRY_RE.match(p["symmetry"]):
            problems.append(
                f"symmetry {p['symmetry']!r} is not a point group RELION knows "
                "(C1, Cn, Dn, T, O, I1-I5)"
            )
        try:
            particles = ctx.input("particles")
        except HpcemError:
            particles = None
        if particles is not None:
            optics = particles.optics
            boxes = sorted({int(b) for b in optics.get("image_size_px", [])})
            pixels = sorted({round(float(v), 4) for v in optics.get("pixel_size_A", [])})
            if not boxes or boxes[0] <= 0:
                problems.append(
                    "the particles' optics have no image_size_px (box edge): extract them "
                    "with particles.extract or relion.extract"
                )
            elif len(boxes) > 1 or len(pixels) > 1:
                problems.append(
                    f"the particles have several box sizes {boxes} or pixel sizes {pixels} Å; "
                    "relion_reconstruct needs one"
                )
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.relion.runner import relion_places

        p = ctx.params
        places = relion_places(ctx)
        star = f"{places['work']}/{STAR_NAME}"
        options = {k: p[k] for k in ("symmetry", "ctf", "maxres_A", "pad")} | {
            "site": places["site"],
            "log": places["log"],
        }
        names = list(MAPS) if p["half_maps"] else ["full"]
        steps = [
            Step(
                "prepare",
                "hpcem.protocols.relion_reconstruct:write_particles",
                {"star": star, "half_maps": p["half_maps"]},
                controller=True,
            )
        ]
        for name in names:
            steps.append(
                Step(
                    STEP_PREFIX + name,
                    "hpcem.protocols.relion_reconstruct:reconstruct_one",
                    {
                        "star": star,
                        "output": f"{places['work']}/{name}.mrc",
                        "subset": MAPS[name][0],
                        "options": options,
                    },
                    deps=("prepare",),
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.relion_reconstruct:register_volumes",
                {"maps": {name: MAPS[name][1] for name in names}},
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
