"""Particle extraction: boxes around picked coordinates, one MRCS stack per micrograph.

One step per micrograph that has coordinates (:func:`extract_one`), then the controller
step :func:`register_particles` writing output ``particles``. The numerics and their
conventions (nearest-pixel cut and the remainder as a shift, edge fill, phase flip,
binning, dust, RELION's normalisation, inversion) are in :mod:`hpcem.particles.extract`.

Bad input is per item: a micrograph that cannot be read (missing, truncated, NaN/Inf or
constant pixels, a header pixel size that disagrees with the optics), smaller than the
box, or without a CTF in a given ``ctfs`` input is *rejected* (its step raises
:class:`~hpcem.errors.ItemRejected`; the other micrographs go on). A single coordinate
whose nearest pixel is outside its micrograph, or whose box crosses the edge with
``edge = "drop"``, is *dropped* and counted. Micrographs without coordinates make no step.
``register`` lists all of these.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ItemRejected, ValidationError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step
from hpcem.provenance.seeds import DEFAULT_SEED, MAX_SEED

STEP_PREFIX = "extract/"
#: CTF columns copied from ``ctfs`` to the particles (CTF column -> particle column).
CTF_COLUMNS = {
    "defocus_u": "defocus_u",
    "defocus_v": "defocus_v",
    "defocus_angle": "defocus_angle",
    "phase_shift": "phase_shift",
    "fit_resolution": "ctf_fit_resolution",
    "fit_score": "ctf_fit_score",
}
#: How many dropped coordinate ids the register result lists (counts are always complete).
MAX_LISTED_DROPS = 1000

SCHERES_2012 = Citation(
    "Scheres2012",
    "@article{Scheres2012, author = {Scheres, Sjors H. W.}, title = {{RELION}: "
    "Implementation of a Bayesian approach to cryo-{EM} structure determination}, "
    "journal = {J. Struct. Biol.}, volume = {180}, number = {3}, pages = {519--530}, "
    "year = {2012}, doi = {10.1016/j.jsb.2012.09.006}}",
)


def _step_name(row: int) -> str:
    """Name of the extraction step of row ``row`` of the input micrographs."""
    return f"{STEP_PREFIX}{row:06d}"


def _row_of(step_name: str) -> int:
    return int(step_name[len(STEP_PREFIX) :])


def coordinates_by_micrograph(coordinates) -> dict[int, np.ndarray]:
    """Rows of the coordinate set per micrograph id, each in set order (stable)."""
    mic = np.asarray(coordinates.column("micrograph_id"), dtype=np.int64)
    order = np.argsort(mic, kind="stable")
    ids, starts = np.unique(mic[order], return_index=True)
    return {int(m): rows for m, rows in zip(ids, np.split(order, starts[1:]))}


def _ctf_rows(ctx) -> dict[int, int] | None:
    """Row of each micrograph's CTF in input ``ctfs`` (None: not given)."""
    if not ctx.inputs.get("ctfs"):
        return None
    mids = ctx.input("ctfs").column("micrograph_id")
    return {int(m): i for i, m in enumerate(mids)}


def _options(p: dict) -> dict:
    options = {
        "box_size_px": p["box_size_px"],
        "rescaled_box_px": p["rescaled_box_px"],
        "phase_flip": p["phase_flip"],
        "normalize": p["normalize"],
        "bg_radius_px": p["bg_radius_px"],
        "ramp": p["ramp"],
        "dust_sd": p["dust_sd"],
        "invert_contrast": p["invert_contrast"],
        "edge": p["edge"],
    }
    if p["dust_sd"] > 0:
        # Only dust removal draws random numbers: without it the steps (and their stored
        # identities, so a continued run keeps its finished steps) do not depend on the
        # seed. Runs made before the parameter existed have none: the default.
        options["seed"] = int(p.get("seed", DEFAULT_SEED))
    return options


@contextlib.contextmanager
def micrograph_pixels(path: str, pixel_size_A: float) -> Iterator[np.ndarray]:
    """The micrograph as a 2D float32 array, its header pixel size checked against
    ``pixel_size_A``: a read-only memory map of a float32 MRC (no copy of the whole
    image; valid inside the ``with`` block), otherwise the file read whole (TIFF, integer
    modes, a movie averaged). Raises DataFormatError, ValidationError or OSError."""
    from hpcem.ctf.estimate import load_micrograph
    from hpcem.io import check_pixel_size, read_header
    from hpcem.io.mrc import mmap_mrc

    header = read_header(path)
    if header.format == "mrc" and header.shape[0] == 1:
        check_pixel_size(header, pixel_size_A)
        with mmap_mrc(path) as (_, data):
            native = data.dtype == np.dtype(np.float32)
            yield data[0] if native else np.asarray(data[0], dtype=np.float32)
    else:
        yield load_micrograph(path, pixel_size_A)[0]


def _extract(image: np.ndarray, micrograph_id: int, pixel_size_A: float, xy, ctf, options):
    """Checks of the micrograph (ItemRejected) and :func:`extract_particles`."""
    from hpcem.ctf.spectrum import micrograph_defect
    from hpcem.particles.extract import extract_particles

    defect = micrograph_defect(image)
    if defect is not None:
        raise ItemRejected(f"micrograph {micrograph_id}: {defect}")
    box = options["box_size_px"]
    if box > min(image.shape):
        raise ItemRejected(
            f"micrograph {micrograph_id}: box {box} px is larger than the micrograph "
            f"({image.shape[1]}x{image.shape[0]} px)"
        )
    return extract_particles(
        image,
        xy,
        box,
        pixel_size_A,
        rescaled_box_px=options["rescaled_box_px"],
        ctf=ctf if options["phase_flip"] else None,
        normalize=options["normalize"],
        bg_radius_px=options["bg_radius_px"],
        ramp=options["ramp"],
        dust_sd=options["dust_sd"],
        invert_contrast=options["invert_contrast"],
        edge=options["edge"],
        seed=(int(options.get("seed", DEFAULT_SEED)), int(micrograph_id)),
    )


def extract_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    coordinates: dict,
    ctf: dict | None,
    options: dict,
    stack: str,
) -> dict:
    """Step: extract the particles of one micrograph into the MRCS file ``stack``.

    ``coordinates`` is ``{"x": [...], "y": [...]}`` in pixels of the micrograph; ``ctf``
    is None (no ``ctfs`` input), ``{}`` (a ``ctfs`` input without this micrograph: the
    micrograph is rejected) or the CTF with the optics of its group. Returns
    ``{"micrograph_id", "count", "stack", "outside": [indices], "edge": [indices],
    "padded": [indices], "dust_pixels", "backend"}``: indices into the coordinate lists
    of the coordinates dropped (nearest pixel outside the micrograph; box crossing the
    edge with edge = drop) and of the kept boxes that were padded.
    """
    from hpcem.io import write_mrc
    from hpcem.kernels import backend
    from hpcem.particles.extract import CROSSES_EDGE, KERNEL, OUTSIDE

    if ctf is not None and not ctf:
        raise ItemRejected(f"micrograph {micrograph_id}: no CTF for it in input ctfs")
    xy = np.stack(
        [np.asarray(coordinates["x"], np.float64), np.asarray(coordinates["y"], np.float64)], 1
    )
    try:
        with micrograph_pixels(path, pixel_size_A) as image:
            result = _extract(image, micrograph_id, pixel_size_A, xy, ctf, options)
    except (DataFormatError, ValidationError, OSError) as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    box = options["box_size_px"]
    out_box = options["rescaled_box_px"] or box
    written = ""
    if len(result.kept):
        Path(stack).parent.mkdir(parents=True, exist_ok=True)
        write_mrc(stack, result.stack, pixel_size_A * box / out_box, kind="stack", overwrite=True)
        written = stack
    status = result.status
    return {
        "micrograph_id": int(micrograph_id),
        "count": len(result.kept),
        "stack": written,
        "outside": np.flatnonzero(status == OUTSIDE).tolist(),
        "edge": np.flatnonzero(status == CROSSES_EDGE).tolist()
        if options["edge"] == "drop"
        else [],
        "padded": result.kept[result.edge_padded].tolist(),
        "dust_pixels": int(result.dust_pixels),
        "backend": backend(KERNEL),
    }


#: Particles shown in the run's gallery.png.
GALLERY_SIZE = 32


def register_particles(ctx) -> dict:
    """Controller step: write output ``particles`` from the extraction steps.

    Particles keep their coordinate's id; they are in micrograph order, then coordinate
    order. ``coord_x``/``coord_y`` are the box centres (the nearest pixel of the picked
    position, RELION's ``rlnCoordinateX/Y``) and ``shift_x``/``shift_y`` the remainder in
    Å with RELION 3.1's origin sign: picked position = coord − shift / pixel size.

    Draws the first :data:`GALLERY_SIZE` particles into the run's ``gallery.png``.
    Returns ``{"count", "gallery", "per_micrograph": {id: n}, "rejected": [{"micrograph_id",
    "reason"}], "dropped_outside", "dropped_edge": counts, "dropped_ids": [{"id",
    "reason"}] (the first 1000), "padded", "no_coordinates": [micrograph ids],
    "coordinates_without_micrograph", "backend"}``. Raises HpcemError when every
    micrograph with coordinates was rejected.
    """
    from hpcem.particles.extract import nearest_pixel, shifts_A

    p = ctx.params
    micrographs = ctx.input("micrographs")
    coords = ctx.input("coordinates")
    found = ctx.results(STEP_PREFIX)
    rejections = ctx.rejections(STEP_PREFIX)
    mic_ids = np.asarray(micrographs.column("id"), dtype=np.int64)
    rejected = [
        {"micrograph_id": int(mic_ids[_row_of(name)]), "reason": rejections[name]}
        for name in sorted(rejections)
    ]
    if rejected and not found:
        raise HpcemError(f"all {len(rejected)} micrographs were rejected: {rejected[0]['reason']}")
    groups = coordinates_by_micrograph(coords)
    ccols = coords.read_columns(["id", "x", "y", "score"])
    mic_groups = np.asarray(micrographs.column("optics_group"), dtype=np.int32)
    optics = micrographs.optics
    pixel_of_group = {
        int(g): float(px) for g, px in zip(optics["optics_group"], optics["pixel_size_A"])
    }
    ctf_rows = _ctf_rows(ctx)
    ctf_cols = ctx.input("ctfs").read_columns(list(CTF_COLUMNS)) if ctf_rows is not None else None

    parts: dict[str, list] = {k: [] for k in ("rows", "image", "index", "mic", "group", "padded")}
    ctf_index: list[np.ndarray] = []
    per_micrograph: dict[str, int] = {}
    dropped_ids: list[dict] = []
    n_outside = n_edge = n_padded = 0
    backend = ""
    for name in sorted(found):
        r = found[name]
        row = _row_of(name)
        mid = int(mic_ids[row])
        rows = groups[mid]
        drop = np.zeros(len(rows), dtype=bool)
        for key, reason in (
            ("outside", "outside the micrograph"),
            ("edge", "box crosses the edge"),
        ):
            drop[r[key]] = True
            dropped_ids += [{"id": int(ccols["id"][rows[i]]), "reason": reason} for i in r[key]]
        n_outside += len(r["outside"])
        n_edge += len(r["edge"])
        kept = rows[~drop]
        padded = np.zeros(len(rows), dtype=np.int8)
        padded[r["padded"]] = 1
        n_padded += len(r["padded"])
        per_micrograph[str(mid)] = len(kept)
        backend = r["backend"]
        if not len(kept):
            continue
        parts["rows"].append(kept)
        parts["image"] += [ctx.path(r["stack"])] * len(kept)
        parts["index"].append(np.arange(len(kept), dtype=np.int32))
        parts["mic"].append(np.full(len(kept), mid, dtype=np.int64))
        parts["group"].append(np.full(len(kept), mic_groups[row], dtype=np.int32))
        parts["padded"].append(padded[~drop])
        if ctf_rows is not None:
            ctf_index.append(np.full(len(kept), ctf_rows[mid], dtype=np.int64))

    out_box = p["rescaled_box_px"] or p["box_size_px"]
    scale = p["box_size_px"] / out_box
    out_optics = dict(optics)
    out_optics["pixel_size_A"] = np.asarray(optics["pixel_size_A"], np.float64) * scale
    out_optics["image_size_px"] = np.full(len(optics["optics_group"]), out_box, dtype=np.int32)
    count = 0
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        writer.set_optics(out_optics)
        if parts["rows"]:
            rows = np.concatenate(parts["rows"])
            groups_col = np.concatenate(parts["group"])
            xy = np.stack([ccols["x"][rows], ccols["y"][rows]], 1).astype(np.float64)
            group_ids = np.array(sorted(pixel_of_group), dtype=np.int64)
            pixels = np.array([pixel_of_group[g] for g in group_ids.tolist()])
            pixel = pixels[np.searchsorted(group_ids, groups_col)]
            # the box centre (RELION's rlnCoordinateX) and the remainder as its origin:
            # the picked position is coord - shift / pixel size
            centres = nearest_pixel(xy)
            shifts = shifts_A(xy, 1.0) * pixel[:, None]
            columns = {
                "id": np.asarray(ccols["id"], dtype=np.int64)[rows],
                "image": parts["image"],
                "image_index": np.concatenate(parts["index"]),
                "micrograph_id": np.concatenate(parts["mic"]),
                "coord_x": centres[:, 0].astype(np.float32),
                "coord_y": centres[:, 1].astype(np.float32),
                "coord_score": ccols["score"][rows],
                "shift_x": shifts[:, 0],
                "shift_y": shifts[:, 1],
                "edge_padded": np.concatenate(parts["padded"]),
                "optics_group": groups_col,
            }
            if ctf_cols is not None:
                index = np.concatenate(ctf_index)
                for src, dst in CTF_COLUMNS.items():
                    columns[dst] = np.asarray(ctf_cols[src])[index]
            writer.append_columns(columns)
            count = len(rows)
    gallery = ""
    if count:
        from hpcem.particles.gallery import first_images, write_gallery

        stacks = list(dict.fromkeys(parts["image"]))
        images = first_images(stacks, GALLERY_SIZE)
        gallery = ctx.relpath(str(ctx.run_dir / "gallery.png"))
        write_gallery(
            ctx.path(gallery),
            images,
            f"first {len(images)} of {count} particles ({out_box} px, "
            f"{float(out_optics['pixel_size_A'][0]):.2f} Å/px)",
        )
    listed = set(mic_ids.tolist())
    return {
        "count": count,
        "gallery": gallery,
        "per_micrograph": per_micrograph,
        "rejected": rejected,
        "dropped_outside": n_outside,
        "dropped_edge": n_edge,
        "dropped_ids": dropped_ids[:MAX_LISTED_DROPS],
        "padded": n_padded,
        "no_coordinates": [int(m) for m in mic_ids if int(m) not in groups],
        "coordinates_without_micrograph": int(
            sum(len(rows) for m, rows in groups.items() if m not in listed)
        ),
        "backend": backend,
    }


class ExtractParticles(Protocol):
    name = "particles.extract"
    label = "Extract particles"
    version = "1"
    help = (
        "Cut a box around each coordinate from its micrograph (one step and one MRCS stack "
        "per micrograph), optionally phase-flipped and binned, normalised as in RELION "
        "(background outside a circle: mean 0, sd 1) and contrast-inverted. Particles keep "
        "the id of their coordinate and carry its micrograph, position and CTF."
    )
    inputs = (
        Input("coordinates", ("hpcem.SetOfCoordinates",), help="Particle positions."),
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            help="The (aligned, dose-weighted) micrographs the coordinates were picked on.",
        ),
        Input(
            "ctfs",
            ("hpcem.SetOfCTFs",),
            required=False,
            help="CTFs of the micrographs, copied to the particles; needed for phase_flip. "
            "Micrographs without a CTF in it are rejected.",
        ),
    )
    params = (
        Param.int(
            "box_size_px",
            256,
            min=8,
            max=4096,
            units="px",
            help="Edge of the box cut from the micrograph, in micrograph pixels (even).",
        ),
        Param.int(
            "rescaled_box_px",
            0,
            min=0,
            max=4096,
            units="px",
            help="Bin the boxes by Fourier cropping to this edge (even, at most box_size_px; "
            "0 = no binning). The particles' pixel size becomes "
            "micrograph pixel size x box_size_px / rescaled_box_px.",
        ),
        Param.bool(
            "phase_flip",
            False,
            help="Flip the phases where the CTF is negative, in the micrograph-sized box before "
            "binning (needs input ctfs).",
        ),
        Param.bool(
            "normalize",
            True,
            help="Normalise each box as RELION: mean 0 and sd 1 in the background, the pixels "
            "outside a circle of radius bg_radius_px around the centre.",
        ),
        Param.int(
            "bg_radius_px",
            0,
            min=0,
            max=2048,
            units="px",
            help="Radius of the background circle in pixels of the final box (0 = 75 % of "
            "half the final box, truncated, as RELION).",
        ),
        Param.bool(
            "ramp",
            True,
            expert=1,
            help="Subtract the least-squares plane of the background before normalising "
            "(RELION's default; off = RELION's --no_ramp).",
        ),
        Param.float(
            "dust_sd",
            0.0,
            min=0.0,
            max=100.0,
            help="Replace pixels further than this many background sd from the background "
            "mean, on either side, by gaussian noise of that mean and sd (RELION's "
            "--white_dust and --black_dust with one value; 0 = off, as RELION's default).",
        ),
        Param.int(
            "seed",
            DEFAULT_SEED,
            min=0,
            max=MAX_SEED,
            expert=1,
            help="Seed of the dust-removal noise (used when dust_sd > 0): each micrograph "
            "draws from (seed, micrograph id), whatever the number of workers or the order.",
        ),
        Param.bool(
            "invert_contrast",
            True,
            help="Multiply by -1 so that particles are white (cryo-EM micrographs have dark "
            "particles).",
        ),
        Param.enum(
            "edge",
            ("drop", "pad"),
            "drop",
            help="Boxes that cross the micrograph edge: drop them (counted), or pad them "
            "with the nearest micrograph pixel (RELION's fill) and set edge_padded = 1.",
        ),
    )
    outputs = (
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The particles: image and image_index in their stack, the coordinate's id "
            "and position, the micrograph id and CTF, optics group, sub-pixel shift, "
            "edge_padded.",
        ),
    )
    citations = (SCHERES_2012,)

    def validate(self, ctx) -> list[str]:
        from hpcem.particles.extract import default_bg_radius

        p = ctx.params
        problems = []
        box, rescaled = p["box_size_px"], p["rescaled_box_px"]
        if box % 2:
            problems.append(f"box_size_px must be even, got {box}")
        if rescaled and (rescaled % 2 or rescaled > box or rescaled < 8):
            problems.append(
                f"rescaled_box_px must be 0 or even, >= 8 and at most box_size_px ({box}), "
                f"got {rescaled}"
            )
        out_box = rescaled or box
        radius = p["bg_radius_px"] or default_bg_radius(out_box)
        if p["normalize"] and 2 * radius > out_box:
            problems.append(
                f"bg_radius_px {radius} leaves no background in the {out_box}-px box "
                "(2 x radius must not exceed it)"
            )
        if p["phase_flip"] and not ctx.inputs.get("ctfs"):
            problems.append("phase_flip needs input ctfs")
        problems += self._pixel_size_problems(ctx)
        return problems

    @staticmethod
    def _pixel_size_problems(ctx) -> list[str]:
        """Coordinates picked on micrographs of another pixel size (e.g. binned copies)."""
        try:
            mics = ctx.input("micrographs").optics
            coords = ctx.input("coordinates").optics
        except HpcemError:
            return []
        a = [float(v) for v in mics.get("pixel_size_A", [])]
        b = [float(v) for v in coords.get("pixel_size_A", [])]
        if a and b and not math.isclose(min(a), min(b), rel_tol=0.01):
            problem = (
                f"coordinates are in pixels of {min(b):g} Å but the micrographs have "
                f"{min(a):g} Å pixels: pick on these micrographs (or rescale the coordinates)"
            )
            return [problem]
        return []

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        micrographs = ctx.input("micrographs")
        coords = ctx.input("coordinates")
        groups = coordinates_by_micrograph(coords)
        x, y = coords.column("x"), coords.column("y")
        optics = micrographs.optics
        by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
        ctf_rows = _ctf_rows(ctx)
        ctf_cols = (
            ctx.input("ctfs").read_columns(
                ["defocus_u", "defocus_v", "defocus_angle", "phase_shift"]
            )
            if ctf_rows is not None
            else None
        )
        options = _options(p)
        steps = []
        for i, (path, mid, group) in enumerate(
            zip(
                micrographs.column("image"),
                micrographs.column("id"),
                micrographs.column("optics_group"),
            )
        ):
            rows = groups.get(int(mid))
            if rows is None:
                continue  # no coordinates: no step (listed by register)
            o = by_group[int(group)]
            ctf = None
            if ctf_cols is not None:
                ctf = {}
                if int(mid) in ctf_rows:
                    k = ctf_rows[int(mid)]
                    ctf = {key: float(ctf_cols[key][k]) for key in ctf_cols}
                    ctf |= {
                        "voltage_kV": float(optics["voltage_kV"][o]),
                        "cs_mm": float(optics["spherical_aberration_mm"][o]),
                        "amplitude_contrast": float(optics["amplitude_contrast"][o]),
                    }
            stack = ctx.run_dir / "particles" / f"mic_{int(mid):06d}.mrcs"
            steps.append(
                Step(
                    _step_name(i),
                    "hpcem.protocols.particles_extract:extract_one",
                    {
                        "path": ctx.relpath(str(path)),
                        "micrograph_id": int(mid),
                        "pixel_size_A": float(optics["pixel_size_A"][o]),
                        "coordinates": {
                            "x": [float(v) for v in x[rows]],
                            "y": [float(v) for v in y[rows]],
                        },
                        "ctf": ctf,
                        "options": options,
                        "stack": ctx.relpath(str(stack)),
                    },
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.particles_extract:register_particles",
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
