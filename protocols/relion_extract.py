"""Particle extraction with RELION's ``relion_preprocess --extract`` (``relion.extract``).

One step per micrograph that has coordinates (:func:`extract_one`): the micrograph is
linked into the step's folder under the run's ``relion/``, with a one-micrograph STAR
file (optics, and its CTF when ``ctfs`` is given) and a coordinate STAR file; RELION
extracts, normalises (``--norm --bg_radius``, background mean 0 and sd 1), optionally
rescales (``--scale``) and inverts (``--invert_contrast``) the boxes into
``Particles/mic_NNNNNN.mrcs`` there, and its ``particles.star`` is read back. The
``register`` step writes output ``particles`` with the same fields as hpcem's own
``particles.extract``: the coordinate's id, position and score, the stack and 0-based
index, the micrograph id, the CTF from input ``ctfs`` (unchanged), ``edge_padded`` for
boxes that cross the micrograph edge (RELION fills them), ``shift_x/y`` = the fraction of
the coordinate that RELION drops (it cuts around the coordinate truncated to a pixel), in
Å with RELION 3.1's origin sign, as ``particles.extract`` keeps its sub-pixel remainder,
and the optics with the particles' pixel size (RELION's ``_rlnImagePixelSize``) and
``image_size_px``.

A micrograph that cannot be read (or has NaN/Inf or constant pixels), is smaller than the
box, has no CTF in a given ``ctfs`` input, or that RELION fails on is rejected (with
RELION's last stderr lines); a coordinate whose pixel (RELION truncates coordinates to
the box centre) is outside its micrograph is dropped and counted before RELION sees it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ItemRejected, ValidationError
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS

PROGRAM = "relion_preprocess"
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


def _step_name(row: int) -> str:
    return f"{STEP_PREFIX}{row:06d}"


def _row_of(step_name: str) -> int:
    return int(step_name[len(STEP_PREFIX) :])


def default_bg_radius(box_px: int) -> int:
    """RELION's GUI default background radius: 75 % of half the final box, truncated."""
    return int(0.375 * int(box_px))


def preprocess_args(name: str, coord_suffix: str, options: dict) -> list[str]:
    """relion_preprocess's arguments for the micrograph STAR file ``name``."""
    box = options["box_size_px"]
    out_box = options["rescaled_box_px"] or box
    args = [
        "--i", name,
        "--coord_dir", "./",
        "--coord_suffix", coord_suffix,
        "--part_star", "particles.star",
        "--part_dir", "Particles/",
        "--extract",
        "--extract_size", str(box),
    ]  # fmt: skip
    if options["rescaled_box_px"]:
        args += ["--scale", str(out_box)]
    if options["normalize"]:
        radius = options["bg_radius_px"] or default_bg_radius(out_box)
        args += ["--norm", "--bg_radius", str(radius)]
        if not options["ramp"]:
            args.append("--no_ramp")
    dust = options["dust_sd"] if options["dust_sd"] > 0 else -1
    args += ["--white_dust", f"{dust:g}", "--black_dust", f"{dust:g}"]
    if options["invert_contrast"]:
        args.append("--invert_contrast")
    return args


def _micrograph_star(path: Path, name: str, optics: dict, ctf: dict | None) -> None:
    """The one-micrograph STAR file (optics, and the CTF when given) RELION extracts from."""
    from hpcem.convert.relion import write_micrographs

    table = {
        "optics_group": [1],
        "pixel_size_A": [optics["pixel_size_A"]],
        "voltage_kV": [optics["voltage_kV"]],
        "spherical_aberration_mm": [optics["cs_mm"]],
        "amplitude_contrast": [optics["amplitude_contrast"]],
    }
    ctfs = None
    if ctf:
        ctfs = {k: [ctf[k]] for k in ("defocus_u", "defocus_v", "defocus_angle")}
        ctfs["phase_shift"] = [ctf.get("phase_shift", 0.0)]
    write_micrographs(path, {"image": [name], "optics_group": [1]}, table, ctfs=ctfs)


def extract_one(
    path: str,
    micrograph_id: int,
    optics: dict,
    coordinates: dict,
    ctf: dict | None,
    options: dict,
) -> dict:
    """Step: extract the particles of one micrograph with relion_preprocess.

    ``optics``: ``pixel_size_A, voltage_kV, cs_mm, amplitude_contrast`` of its group;
    ``coordinates``: ``{"x": [...], "y": [...]}`` in pixels of the micrograph; ``ctf``:
    None (no ``ctfs`` input), ``{}`` (rejected: none for this micrograph) or its CTF;
    ``options``: the protocol's parameters and ``site``, ``work``, ``log``. Returns
    ``{"micrograph_id", "count", "stack", "kept": [coordinate indices, in stack order],
    "image_index", "outside": [indices dropped], "padded": [indices of kept boxes
    crossing the edge], "pixel_size_A", "image_size_px", "commands", "relion_version"}``.
    """
    from hpcem.convert.relion import read_particles, write_coordinates
    from hpcem.ctf.estimate import load_micrograph
    from hpcem.ctf.spectrum import micrograph_defect
    from hpcem.relion.runner import RelionError, link_input, run_relion

    if ctf is not None and not ctf:
        raise ItemRejected(f"micrograph {micrograph_id}: no CTF for it in input ctfs")
    try:
        image, _ = load_micrograph(path, optics["pixel_size_A"])
    except (DataFormatError, ValidationError, OSError) as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    defect = micrograph_defect(image)
    if defect is not None:
        raise ItemRejected(f"micrograph {micrograph_id}: {defect}")
    height, width = image.shape
    box = options["box_size_px"]
    if box > min(height, width):
        raise ItemRejected(
            f"micrograph {micrograph_id}: box {box} px is larger than the micrograph "
            f"({width}x{height} px)"
        )
    xy = np.stack(
        [np.asarray(coordinates["x"], np.float64), np.asarray(coordinates["y"], np.float64)], 1
    ).reshape(-1, 2)
    # RELION 3.1 (src/preprocessing.cpp) cuts [xpos - box/2, xpos + box/2 - 1] around
    # xpos = (long int) x: the coordinate *truncated*, not rounded (measured: a box cut
    # at 236.8 matches the micrograph slice centred on pixel 236, r = 0.99999).
    centre = np.trunc(xy).astype(np.int64)
    inside = (centre[:, 0] >= 0) & (centre[:, 0] < width)
    inside &= (centre[:, 1] >= 0) & (centre[:, 1] < height)
    crosses = (centre - box // 2 < 0).any(axis=1)
    crosses |= (centre[:, 0] + box // 2 - 1 >= width) | (centre[:, 1] + box // 2 - 1 >= height)
    given = np.flatnonzero(inside)

    stem = f"mic_{micrograph_id:06d}"
    work = Path(options["work"]) / stem
    link_input(path, work / f"{stem}.mrc")
    _micrograph_star(work / "micrographs.star", f"{stem}.mrc", optics, ctf)
    write_coordinates(work / f"{stem}_coords.star", {"x": xy[given, 0], "y": xy[given, 1]})
    for old in (work / "particles.star", work / "Particles" / f"{stem}.mrcs"):
        old.unlink(missing_ok=True)  # an earlier attempt's; only this command's output counts
    out_box = options["rescaled_box_px"] or box
    result = {
        "micrograph_id": int(micrograph_id),
        "count": 0,
        "stack": "",
        "kept": [],
        "image_index": [],
        "outside": np.flatnonzero(~inside).tolist(),
        "padded": [],
        "pixel_size_A": optics["pixel_size_A"] * box / out_box,
        "image_size_px": out_box,
        "commands": [],
        "relion_version": "",
    }
    if not len(given):
        return result
    try:
        record = run_relion(
            PROGRAM,
            preprocess_args("micrographs.star", "_coords.star", options),
            workdir=work,
            site=options["site"],
            log=options["log"],
            label=f"micrograph {micrograph_id}",
        )
    except RelionError as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    try:
        parts = read_particles(work / "particles.star")
    except (DataFormatError, ValidationError) as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: RELION's output: {exc}") from None
    # Each particle's coordinate, as RELION wrote it back (%f), is matched to the
    # coordinate it came from (RELION keeps their order; the match makes sure).
    cols = parts.columns
    out_xy = np.stack([np.asarray(cols["coord_x"], float), np.asarray(cols["coord_y"], float)], 1)
    kept = _match_rows(xy[given], out_xy, micrograph_id)
    stacks = {str(s) for s in cols["image"]}
    if len(stacks) != 1:
        raise ItemRejected(
            f"micrograph {micrograph_id}: RELION wrote particles into {sorted(stacks)}, "
            "expected one stack"
        )
    kept_rows = given[kept]
    result |= {
        "count": len(kept_rows),
        "stack": str(work / stacks.pop()),
        "kept": kept_rows.tolist(),
        "image_index": [int(i) for i in cols["image_index"]],
        "padded": kept_rows[crosses[kept_rows]].tolist(),
        "pixel_size_A": float(parts.optics["pixel_size_A"][0]),
        "image_size_px": int(parts.optics["image_size_px"][0]),
        "commands": [record],
        "relion_version": record["version"],
    }
    return result


def _match_rows(given_xy: np.ndarray, out_xy: np.ndarray, micrograph_id: int) -> np.ndarray:
    """Index into ``given_xy`` of each row of ``out_xy`` (equal within RELION's %f)."""
    if not len(out_xy):
        return np.zeros(0, dtype=np.int64)
    from scipy.spatial import cKDTree

    dist, index = cKDTree(given_xy).query(out_xy)
    if np.any(dist > 1e-3) or len(np.unique(index)) != len(index):
        raise ItemRejected(
            f"micrograph {micrograph_id}: RELION's particles.star has coordinates that are "
            "not the ones given (or repeats one)"
        )
    return index.astype(np.int64)


def register_particles(ctx) -> dict:
    """Controller step: write output ``particles`` from the extraction steps.

    Particles keep their coordinate's id and are in micrograph order, then RELION's stack
    order. Returns ``{"count", "per_micrograph", "rejected": [{"micrograph_id",
    "reason"}], "dropped_outside", "padded", "no_coordinates",
    "coordinates_without_micrograph", "relion_version"}``;
    raises HpcemError when every micrograph with coordinates was rejected.
    """
    from hpcem.protocols.particles_extract import coordinates_by_micrograph

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
    ctf_rows = _ctf_rows(ctx)
    ctf_cols = ctx.input("ctfs").read_columns(list(CTF_COLUMNS)) if ctf_rows is not None else None
    cols: dict[str, list] = {k: [] for k in ("rows", "image", "index", "mic", "group", "padded")}
    ctf_index: list[np.ndarray] = []
    per_micrograph: dict[str, int] = {}
    pixel_of_group: dict[int, float] = {}
    box = 0
    n_outside = n_padded = 0
    version = ""
    for name in sorted(found):
        r = found[name]
        row = _row_of(name)
        mid = int(mic_ids[row])
        rows = groups[mid][np.asarray(r["kept"], dtype=np.int64)]
        padded = np.isin(r["kept"], r["padded"]).astype(np.int8)
        n_outside += len(r["outside"])
        n_padded += len(r["padded"])
        per_micrograph[str(mid)] = len(rows)
        version = r["relion_version"] or version
        pixel_of_group.setdefault(int(mic_groups[row]), float(r["pixel_size_A"]))
        box = int(r["image_size_px"])
        if not len(rows):
            continue
        cols["rows"].append(rows)
        cols["image"] += [ctx.path(r["stack"])] * len(rows)
        cols["index"].append(np.asarray(r["image_index"], dtype=np.int32))
        cols["mic"].append(np.full(len(rows), mid, dtype=np.int64))
        cols["group"].append(np.full(len(rows), mic_groups[row], dtype=np.int32))
        cols["padded"].append(padded)
        if ctf_rows is not None:
            ctf_index.append(np.full(len(rows), ctf_rows[mid], dtype=np.int64))
    p = ctx.params
    optics = micrographs.optics
    out_optics = dict(optics)
    scale = p["box_size_px"] / (p["rescaled_box_px"] or p["box_size_px"])
    out_optics["pixel_size_A"] = np.array(
        [
            pixel_of_group.get(int(g), float(px) * scale)
            for g, px in zip(optics["optics_group"], optics["pixel_size_A"])
        ]
    )
    out_optics["image_size_px"] = np.full(
        len(optics["optics_group"]), box or p["rescaled_box_px"] or p["box_size_px"], np.int32
    )
    listed = set(mic_ids.tolist())
    count = 0
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        writer.set_optics(out_optics)
        if cols["rows"]:
            rows = np.concatenate(cols["rows"])
            groups_col = np.concatenate(cols["group"])
            mic_pixel = dict(
                zip((int(g) for g in optics["optics_group"]), map(float, optics["pixel_size_A"]))
            )
            pixel = np.array([mic_pixel[int(g)] for g in groups_col])
            # RELION cuts around the truncated coordinate and drops the fraction; hpcem
            # keeps it as the particle's shift (RELION 3.1 origin sign, as particles.extract)
            xy = np.stack([ccols["x"][rows], ccols["y"][rows]], 1).astype(np.float64)
            shifts = (np.trunc(xy) - xy) * pixel[:, None]
            columns = {
                "id": np.asarray(ccols["id"], dtype=np.int64)[rows],
                "image": cols["image"],
                "image_index": np.concatenate(cols["index"]),
                "micrograph_id": np.concatenate(cols["mic"]),
                "coord_x": ccols["x"][rows],
                "coord_y": ccols["y"][rows],
                "coord_score": ccols["score"][rows],
                "shift_x": shifts[:, 0],
                "shift_y": shifts[:, 1],
                "edge_padded": np.concatenate(cols["padded"]),
                "optics_group": groups_col,
            }
            if ctf_cols is not None:
                index = np.concatenate(ctf_index)
                for src, dst in CTF_COLUMNS.items():
                    columns[dst] = np.asarray(ctf_cols[src])[index]
            writer.append_columns(columns)
            count = len(rows)
    return {
        "count": count,
        "per_micrograph": per_micrograph,
        "rejected": rejected,
        "dropped_outside": n_outside,
        "padded": n_padded,
        "no_coordinates": [int(m) for m in mic_ids if int(m) not in groups],
        "coordinates_without_micrograph": int(
            sum(len(rows) for m, rows in groups.items() if m not in listed)
        ),
        "relion_version": version,
    }


def _ctf_rows(ctx) -> dict[int, int] | None:
    """Row of each micrograph's CTF in input ``ctfs`` (None: not given)."""
    if not ctx.inputs.get("ctfs"):
        return None
    mids = ctx.input("ctfs").column("micrograph_id")
    return {int(m): i for i, m in enumerate(mids)}


class ExtractRelion(Protocol):
    name = "relion.extract"
    label = "Extract particles (RELION)"
    version = "1"
    help = (
        "Extract, normalise, rescale and invert particle boxes with RELION 3.1's "
        "relion_preprocess --extract, one step (and one MRCS stack) per micrograph. The "
        "particles have the fields of particles.extract's: the coordinate's id and "
        "position, the micrograph and its CTF, the stack and index."
    )
    inputs = (
        Input("coordinates", ("hpcem.SetOfCoordinates",), help="Particle positions."),
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            help="The micrographs the coordinates were picked on.",
        ),
        Input(
            "ctfs",
            ("hpcem.SetOfCTFs",),
            required=False,
            help="CTFs of the micrographs: copied to the particles unchanged (and given to "
            "RELION in its micrograph STAR file). Micrographs without one are rejected.",
        ),
    )
    params = (
        Param.int(
            "box_size_px",
            128,
            min=8,
            max=4096,
            units="px",
            help="Edge of the box cut from the micrograph (even; --extract_size; RELION's "
            "GUI default 128).",
        ),
        Param.int(
            "rescaled_box_px",
            0,
            min=0,
            max=4096,
            units="px",
            help="Rescale the boxes to this edge (even; --scale; 0 = keep). The particles' "
            "pixel size becomes micrograph pixel size x box_size_px / rescaled_box_px.",
        ),
        Param.bool(
            "normalize",
            True,
            help="Normalise each box (--norm): mean 0 and sd 1 outside a circle of "
            "bg_radius_px around the centre.",
        ),
        Param.int(
            "bg_radius_px",
            0,
            min=0,
            max=2048,
            units="px",
            help="Radius of that circle, in pixels of the final box (--bg_radius; 0 = 75 % "
            "of half the final box, truncated, as RELION's GUI).",
        ),
        Param.bool(
            "ramp",
            True,
            expert=1,
            help="Subtract the background's least-squares plane first (off = --no_ramp).",
        ),
        Param.float(
            "dust_sd",
            0.0,
            min=0.0,
            max=100.0,
            help="Replace pixels more than this many background sd from its mean, either "
            "side, by noise (--white_dust and --black_dust; 0 = off, RELION's -1).",
        ),
        Param.bool(
            "invert_contrast",
            True,
            help="Make particles white (--invert_contrast; cryo-EM micrographs have dark "
            "particles).",
        ),
    )
    outputs = (
        Output(
            "particles",
            "hpcem.SetOfParticles",
            help="The particles: stack and 0-based index, the coordinate's id, position and "
            "score, the micrograph id and CTF, optics group (pixel size and image_size_px "
            "of the boxes), edge_padded.",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        p = ctx.params
        problems = []
        box, rescaled = p["box_size_px"], p["rescaled_box_px"]
        if box % 2:
            problems.append(f"box_size_px must be even (RELION), got {box}")
        if rescaled and (rescaled % 2 or rescaled < 8):
            problems.append(f"rescaled_box_px must be 0 or even and >= 8, got {rescaled}")
        out_box = rescaled or box
        radius = p["bg_radius_px"] or default_bg_radius(out_box)
        if p["normalize"] and 2 * radius > out_box:
            problems.append(
                f"bg_radius_px {radius} leaves no background in the {out_box}-px box "
                "(2 x radius must not exceed it)"
            )
        problems += _input_problems(ctx)
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.protocols.particles_extract import coordinates_by_micrograph

        from hpcem.relion.runner import relion_places

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
        options = {k: p[k] for k in (prm.name for prm in self.params)} | relion_places(ctx)
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
                k = ctf_rows.get(int(mid))
                ctf = {} if k is None else {key: float(ctf_cols[key][k]) for key in ctf_cols}
            steps.append(
                Step(
                    _step_name(i),
                    "hpcem.protocols.relion_extract:extract_one",
                    {
                        "path": ctx.relpath(str(path)),
                        "micrograph_id": int(mid),
                        "optics": {
                            "pixel_size_A": float(optics["pixel_size_A"][o]),
                            "voltage_kV": float(optics["voltage_kV"][o]),
                            "cs_mm": float(optics["spherical_aberration_mm"][o]),
                            "amplitude_contrast": float(optics["amplitude_contrast"][o]),
                        },
                        "coordinates": {
                            "x": [round(float(v), 3) for v in x[rows]],
                            "y": [round(float(v), 3) for v in y[rows]],
                        },
                        "ctf": ctf,
                        "options": options,
                    },
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.relion_extract:register_particles",
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps


def _input_problems(ctx) -> list[str]:
    """Coordinates picked on other micrographs (by lineage, or no micrograph id in
    common), or at another pixel size."""
    try:
        mics = ctx.input("micrographs")
        coords = ctx.input("coordinates")
    except HpcemError:
        return []
    problems = []
    picked_on = [r for r in coords.lineage.get("inputs", []) if r.endswith(":micrographs")]
    given = ctx.inputs["micrographs"][0]
    if len(picked_on) == 1 and picked_on[0] != given:
        problems.append(
            f"micrographs {given} are not the ones the coordinates were picked on "
            f"({picked_on[0]}, by the coordinates' lineage)"
        )
    mic_ids = {int(m) for m in mics.column("id")}
    coord_mics = {int(m) for m in np.unique(coords.column("micrograph_id"))}
    if coord_mics and not coord_mics & mic_ids:
        problems.append(
            f"none of the coordinates' {len(coord_mics)} micrographs (ids "
            f"{sorted(coord_mics)[:5]}...) is in input micrographs: give the micrographs "
            "they were picked on"
        )
    a = [float(v) for v in mics.optics.get("pixel_size_A", [])]
    b = [float(v) for v in coords.optics.get("pixel_size_A", [])]
    if a and b and not math.isclose(min(a), min(b), rel_tol=0.01):
        problems.append(
            f"coordinates are in pixels of {min(b):g} Å but the micrographs have "
            f"{min(a):g} Å pixels: pick on these micrographs (or rescale the coordinates)"
        )
    return problems
