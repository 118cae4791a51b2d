"""Consensus picking (Scipion's "picking consensus"): keep what several pickers agree on.

Two or more ``hpcem.SetOfCoordinates`` picked on the **same** micrographs (any pickers:
picking.dog, picking.template, imported crYOLO or RELION picks) are merged micrograph by
micrograph with :func:`hpcem.picking.consensus.consensus` (KD-tree neighbour search): a
position is kept when at least ``min_agree`` of the N sets have a pick within
``radius_px`` of it; it is the mean of the agreeing picks, its ``n_agree`` the number of
agreeing pickers and its ``score`` their mean normalised score (rank within each picker, so
that pickers with unrelated score scales can be averaged). The first input's picks are the
anchors: put the most reliable picker first. With ``unique_outputs`` the picks only one
input found go to ``unique_1``, ``unique_2``, ... (with their original ids).

The merge runs in one controller step (1,000 micrographs × 3 pickers × 500 picks take
about 1.5 s); the pictures (consensus picks over each micrograph) are drawn by worker
steps afterwards, 20 micrographs a step.
"""

from __future__ import annotations

import numpy as np
from hpcem.protocols.ctf_consensus import SCIPION_2016

from hpcem.errors import HpcemError, ValidationError
from hpcem.protocol import Input, Output, Param, Protocol, Step

#: Inputs beyond this many get no ``unique_K`` output (declared outputs are fixed).
MAX_UNIQUE_OUTPUTS = 4
_PICTURES_PER_STEP = 20


def _micrographs_ref(coordinates) -> str | None:
    """The ``run:output`` of the micrographs a coordinate set was picked on (lineage)."""
    refs = [r for r in coordinates.lineage["inputs"] if r.endswith(":micrographs")]
    return refs[0] if len(refs) == 1 else None


def _pixel_size_A(optics: dict) -> float:
    sizes = sorted({round(float(p), 6) for p in optics["pixel_size_A"]})
    if len(sizes) != 1:
        raise ValidationError(
            f"the micrographs have several pixel sizes {sizes} Å; give radius_px explicitly"
        )
    return sizes[0]


def _coordinate_inputs(ctx) -> list:
    sets = ctx.input("coordinates")
    return sets if isinstance(sets, list) else [sets]


def check_inputs(ctx) -> list[str]:
    """Problems with the coordinate sets: fewer than two, picked on different
    micrograph sets (by their lineage), or min_agree / unique outputs out of range."""
    p = ctx.params
    try:
        sets = _coordinate_inputs(ctx)
    except HpcemError:
        return []  # a missing input is reported by the framework
    refs = list(ctx.inputs.get("coordinates", []))
    problems = []
    if len(sets) < 2:
        problems.append(f"consensus needs at least 2 coordinate sets, got {len(sets)}")
    if p["min_agree"] > len(sets):
        problems.append(f"min_agree {p['min_agree']} is more than the {len(sets)} inputs")
    if p["unique_outputs"] and len(sets) > MAX_UNIQUE_OUTPUTS:
        problems.append(
            f"unique_outputs is declared for up to {MAX_UNIQUE_OUTPUTS} inputs, got {len(sets)}"
        )
    origins = {ref: _micrographs_ref(s) for ref, s in zip(refs, sets)}
    known = {m for m in origins.values() if m is not None}
    if len(known) > 1:
        listing = ", ".join(f"{ref} on {m}" for ref, m in origins.items())
        problems.append(
            f"the coordinate sets were picked on different micrograph sets ({listing}); "
            "consensus needs picks of the same micrographs"
        )
    if ctx.inputs.get("micrographs") and known:
        given = ctx.inputs["micrographs"][0]
        if given not in known:
            problems.append(
                f"micrographs {given} are not the ones the coordinates were picked on "
                f"({', '.join(sorted(known))})"
            )
    return problems


def merge(ctx) -> dict:
    """Controller step: the consensus of every micrograph; writes ``coordinates`` (and
    ``unique_K``). Returns counts per micrograph and the parameters used."""
    from hpcem.picking.consensus import consensus

    p = ctx.params
    sets = _coordinate_inputs(ctx)
    cols = [s.read_columns(["id", "micrograph_id", "x", "y", "score"]) for s in sets]
    radius = radius_px(p, sets[0].optics)
    min_agree = p["min_agree"] or len(sets)
    mic_ids = sorted({int(m) for c in cols for m in c["micrograph_id"]})
    # Rows of each input by micrograph, without a Python loop over picks.
    groups = []
    for c in cols:
        mids = np.asarray(c["micrograph_id"], dtype=np.int64)
        order = np.argsort(mids, kind="stable")
        uniq, start = np.unique(mids[order], return_index=True)
        bounds = dict(zip(uniq.tolist(), zip(start, np.r_[start[1:], len(order)])))
        groups.append((order, bounds))
    out = {"micrograph_id": [], "x": [], "y": [], "score": [], "n_agree": []}
    unique_rows = [[] for _ in sets]
    per_micrograph = {}
    empty = np.zeros((0, 2))
    for mid in mic_ids:
        rows = []
        for (order, bounds), c in zip(groups, cols):
            a, b = bounds.get(mid, (0, 0))
            rows.append(order[a:b])
        xy = [
            np.stack([c["x"][r], c["y"][r]], axis=1) if len(r) else empty
            for c, r in zip(cols, rows)
        ]
        scores = [np.asarray(c["score"][r], dtype=np.float64) for c, r in zip(cols, rows)]
        res = consensus(xy, scores, radius, min_agree, return_unique=p["unique_outputs"])
        n = len(res["n_agree"])
        per_micrograph[str(mid)] = n
        out["micrograph_id"].append(np.full(n, mid, dtype=np.int64))
        out["x"].append(res["positions_px"][:, 0])
        out["y"].append(res["positions_px"][:, 1])
        out["score"].append(res["score"])
        out["n_agree"].append(res["n_agree"])
        if p["unique_outputs"]:
            for k, idx in enumerate(res["unique"]):
                unique_rows[k].append(rows[k][idx])
    columns = {
        k: (np.concatenate(v) if v else np.zeros(0)).astype(
            np.int64 if k in ("micrograph_id", "n_agree") else np.float32
        )
        for k, v in out.items()
    }
    with ctx.create_set("coordinates", "hpcem.SetOfCoordinates") as writer:
        writer.set_optics(sets[0].optics)
        if len(columns["x"]):
            writer.append_columns(columns)
    unique_counts = []
    if p["unique_outputs"]:
        for k, (s, c, rows) in enumerate(zip(sets, cols, unique_rows)):
            rows = np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.intp)
            unique_counts.append(len(rows))
            with ctx.create_set(f"unique_{k + 1}", "hpcem.SetOfCoordinates") as writer:
                writer.set_optics(s.optics)
                if len(rows):
                    writer.append_columns(s.take(rows))
    return {
        "count": len(columns["x"]),
        "radius_px": radius,
        "min_agree": min_agree,
        "inputs": len(sets),
        "input_counts": [len(c["x"]) for c in cols],
        "unique_counts": unique_counts,
        "per_micrograph": per_micrograph,
    }


def radius_px(p: dict, optics: dict) -> float:
    """The matching radius: ``radius_px``, or a third of ``diameter_A`` in pixels."""
    if p["radius_px"]:
        return float(p["radius_px"])
    return p["diameter_A"] / 3.0 / _pixel_size_A(optics)


def draw_pictures(run_id: int, micrographs: list, diameter_px: float) -> dict:
    """Worker step: a PNG per micrograph ``[id, image path, png path, pixel size]`` with
    the consensus picks of run ``run_id`` (read from its ``coordinates`` set)."""
    from hpcem.ctf.estimate import load_micrograph
    from hpcem.picking.plot import write_picks_png
    from hpcem.store import Project

    coords = Project.open(".").open_set(run_id, "coordinates")
    cols = coords.read_columns(["micrograph_id", "x", "y", "n_agree"])
    written, failed = [], {}
    for mid, image_path, png, pixel_size_A in micrographs:
        try:
            image, _ = load_micrograph(image_path, pixel_size_A)
        except HpcemError as exc:  # the pickers rejected it too: say so, draw the others
            failed[str(mid)] = str(exc)
            continue
        sel = cols["micrograph_id"] == mid
        xy = np.stack([cols["x"][sel], cols["y"][sel]], axis=1)
        title = f"micrograph {mid}: {int(sel.sum())} consensus picks"
        write_picks_png(png, image, xy, diameter_px, title=title)
        written.append(png)
    return {"pictures": written, "failed": failed}


class PickingConsensus(Protocol):
    name = "picking.consensus"
    label = "Consensus picking"
    help = (
        "Keep the picks that at least min_agree of several coordinate sets (of the same "
        "micrographs) agree on within radius_px; merged position = mean of the agreeing "
        "picks, n_agree = agreeing pickers, score = their mean rank-normalised score."
    )
    inputs = (
        Input(
            "coordinates",
            ("hpcem.SetOfCoordinates",),
            many=True,
            help="Two or more coordinate sets of the same micrographs; the first one's "
            "picks anchor the matching.",
        ),
        Input(
            "micrographs",
            ("hpcem.SetOfMicrographs",),
            required=False,
            help="The micrographs, to draw the consensus picks over them (optional).",
        ),
    )
    params = (
        Param.float(
            "diameter_A",
            150.0,
            min=1.0,
            max=5000.0,
            units="Å",
            help="Particle diameter; sets the default radius (a third of it) and the "
            "circles of the pictures.",
        ),
        Param.float(
            "radius_px",
            0.0,
            min=0.0,
            max=10000.0,
            units="px",
            help="Picks within this distance of a position agree on it (0 = diameter_A / 3 "
            "in micrograph pixels).",
        ),
        Param.int(
            "min_agree",
            0,
            min=0,
            max=100,
            help="Keep a position found by at least this many inputs (0 = all of them).",
        ),
        Param.bool(
            "unique_outputs",
            False,
            help="Also output, per input K, the picks only it found (unique_K).",
        ),
    )
    outputs = (
        Output("coordinates", "hpcem.SetOfCoordinates", help="The consensus picks."),
        *(
            Output(
                f"unique_{k}",
                "hpcem.SetOfCoordinates",
                help=f"Picks only input {k} found (with unique_outputs).",
            )
            for k in range(1, MAX_UNIQUE_OUTPUTS + 1)
        ),
    )
    citations = (SCIPION_2016,)

    def validate(self, ctx) -> list[str]:
        return check_inputs(ctx)

    def steps(self, ctx) -> list[Step]:
        steps = [Step("merge", "hpcem.protocols.picking_consensus:merge", controller=True)]
        if not ctx.inputs.get("micrographs"):
            return steps
        micrographs = ctx.input("micrographs")
        diameter_px = ctx.params["diameter_A"] / _pixel_size_A(micrographs.optics)
        optics = micrographs.optics
        pixel_size = dict(zip(optics["optics_group"].tolist(), optics["pixel_size_A"].tolist()))
        rows = [
            [
                int(mid),
                ctx.relpath(str(path)),
                ctx.relpath(str(ctx.run_dir / "pictures" / f"micrograph_{int(mid):06d}.png")),
                float(pixel_size[int(group)]),
            ]
            for mid, path, group in zip(
                micrographs.column("id"),
                micrographs.column("image"),
                micrographs.column("optics_group"),
            )
        ]
        for start in range(0, len(rows), _PICTURES_PER_STEP):
            steps.append(
                Step(
                    f"pictures/{start // _PICTURES_PER_STEP:05d}",
                    "hpcem.protocols.picking_consensus:draw_pictures",
                    {
                        "run_id": ctx.run_id,
                        "micrographs": rows[start : start + _PICTURES_PER_STEP],
                        "diameter_px": diameter_px,
                    },
                    deps=("merge",),
                )
            )
        return steps
