"""Protocol plumbing the pickers share: one step per micrograph, then ``register``.

A picker protocol declares inputs ``micrographs`` (and optionally ``ctfs``) and output
``coordinates``; its ``steps`` returns :func:`picking_steps` with its step function. The
step function receives ``path, micrograph_id, pixel_size_A, ctf, options, picture`` and
returns :func:`pick_result`; :func:`register_coordinates` writes the set. A micrograph
that cannot be read, or that has no CTF in a given ``ctfs`` input, is rejected
(:class:`~hpcem.errors.ItemRejected`) and listed; zero picks is a count, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpcem.errors import DataFormatError, HpcemError, ItemRejected, ValidationError
from hpcem.protocol import Step

STEP_PREFIX = "pick/"
#: CTF columns a picker step receives (with the optics of the micrograph's group).
CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")


def step_name(row: int) -> str:
    """Name of the picking step of row ``row`` of the input micrographs."""
    return f"{STEP_PREFIX}{row:06d}"


def _ctfs_by_micrograph(ctx) -> dict[int, dict] | None:
    """CTF rows of the optional ``ctfs`` input by micrograph id (None: not given)."""
    if not ctx.inputs.get("ctfs"):
        return None
    ctfs = ctx.input("ctfs")
    cols = ctfs.read_columns(["micrograph_id", *CTF_KEYS])
    return {
        int(mid): {k: float(cols[k][i]) for k in CTF_KEYS}
        for i, mid in enumerate(cols["micrograph_id"])
    }


def picking_steps(ctx, step_func: str, options: dict, before: Sequence[Step] = ()) -> list[Step]:
    """``before`` (steps every micrograph step waits for, e.g. making templates), one
    ``step_func`` step per micrograph of input ``micrographs`` (its picture under the
    run's ``pictures/``), and the controller step ``register``."""
    micrographs = ctx.input("micrographs")
    optics = micrographs.optics
    by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
    ctfs = _ctfs_by_micrograph(ctx)
    first = tuple(s.name for s in before)
    steps = list(before)
    for i, (path, mic_id, group) in enumerate(
        zip(
            micrographs.column("image"),
            micrographs.column("id"),
            micrographs.column("optics_group"),
        )
    ):
        row = by_group[int(group)]
        ctf = None
        if ctfs is not None:
            ctf = ctfs.get(int(mic_id), {})
            if ctf:
                ctf = {
                    **ctf,
                    "voltage_kV": float(optics["voltage_kV"][row]),
                    "cs_mm": float(optics["spherical_aberration_mm"][row]),
                    "amplitude_contrast": float(optics["amplitude_contrast"][row]),
                }
        png = ctx.run_dir / "pictures" / f"micrograph_{int(mic_id):06d}.png"
        steps.append(
            Step(
                step_name(i),
                step_func,
                {
                    "path": ctx.relpath(str(path)),
                    "micrograph_id": int(mic_id),
                    "pixel_size_A": float(optics["pixel_size_A"][row]),
                    # {} = a ctfs input was given but has no CTF for this micrograph.
                    "ctf": ctf,
                    "options": options,
                    "picture": ctx.relpath(str(png)),
                },
                deps=first,
            )
        )
    steps.append(
        Step(
            "register",
            "hpcem.picking.steps:register_coordinates",
            deps=tuple(s.name for s in steps),
            controller=True,
        )
    )
    return steps


def require_ctf(ctf: dict | None, micrograph_id: int) -> None:
    """Reject a micrograph that a given ``ctfs`` input has no CTF for (``ctf == {}``)."""
    if ctf is not None and not ctf:
        raise ItemRejected(f"micrograph {micrograph_id}: no CTF for it in input ctfs")


def load_for_picking(
    path: str, micrograph_id: int, pixel_size_A: float | None = None
) -> tuple[np.ndarray, float]:
    """The micrograph as float32 and its pixel size; ItemRejected, naming the micrograph,
    for a file that cannot be read, NaN/Inf pixels or a constant image."""
    from hpcem.ctf.estimate import load_micrograph
    from hpcem.ctf.spectrum import micrograph_defect

    try:
        image, pixel_size = load_micrograph(path, pixel_size_A)
    except (DataFormatError, ValidationError, OSError) as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    defect = micrograph_defect(image)
    if defect is not None:
        raise ItemRejected(f"micrograph {micrograph_id}: {defect}")
    return np.asarray(image, dtype=np.float32), pixel_size


def pick_result(
    micrograph_id: int,
    xy: np.ndarray,
    scores: np.ndarray,
    picture: str | None,
    backend: str | dict,
    capped_from: int = 0,
) -> dict:
    """What a picker step returns (JSON): coordinates rounded to 0.01 px, scores, the
    picture, the kernel backend, and a warning when ``capped_from`` picks were cut to
    the ``len(xy)`` best."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(xy):
        raise ValidationError(f"{len(xy)} positions but {len(scores)} scores")
    warning = None
    if capped_from > len(xy):
        warning = (
            f"micrograph {micrograph_id}: {capped_from:,} picks above the threshold, kept "
            f"the best {len(xy):,} (max_picks; ice contamination or a threshold too low?)"
        )
    return {
        "micrograph_id": int(micrograph_id),
        "count": len(xy),
        "x": [round(float(v), 2) for v in xy[:, 0]],
        "y": [round(float(v), 2) for v in xy[:, 1]],
        "score": [round(float(v), 5) for v in scores],
        "picture": picture or "",
        "backend": backend,
        "warning": warning,
    }


def picked(
    micrograph_id: int,
    image: np.ndarray,
    xy: np.ndarray,
    scores: np.ndarray,
    *,
    diameter_px: float,
    picture: str | None,
    method: str,
    backend: str | dict,
    capped_from: int = 0,
) -> dict:
    """The tail of every picker step: the picks drawn over ``image`` into ``picture``
    (when given; titled with the ``method``'s name) and :func:`pick_result`."""
    if picture:
        from hpcem.picking.plot import write_picks_png

        write_picks_png(
            picture,
            image,
            xy,
            diameter_px,
            title=f"micrograph {micrograph_id}: {len(xy)} {method} picks",
        )
    return pick_result(micrograph_id, xy, scores, picture, backend, capped_from)


def register_coordinates(ctx) -> dict:
    """Controller step: write output ``coordinates`` (in micrograph order, optics of the
    micrographs) from the picking steps' results.

    Returns ``{"count", "per_micrograph": {id: n}, "rejected": [{"micrograph_id",
    "reason"}], "warnings": [...]}``; raises HpcemError when every micrograph was
    rejected (the run fails with the first reason instead of an empty set).
    """
    found = ctx.results(STEP_PREFIX)
    rejections = ctx.rejections(STEP_PREFIX)
    micrographs = ctx.input("micrographs")
    ids = micrographs.column("id")
    rejected = [
        {"micrograph_id": int(ids[int(name[len(STEP_PREFIX) :])]), "reason": rejections[name]}
        for name in sorted(rejections)
    ]
    if rejected and not found:
        raise HpcemError(f"all {len(rejected)} micrographs were rejected: {rejected[0]['reason']}")
    rows = [found[k] for k in sorted(found)]
    columns = {
        "micrograph_id": np.concatenate(
            [np.full(r["count"], r["micrograph_id"], dtype=np.int64) for r in rows]
        )
        if rows
        else np.zeros(0, dtype=np.int64),
        **{
            k: np.asarray([v for r in rows for v in r[k]], dtype=np.float32)
            for k in ("x", "y", "score")
        },
    }
    with ctx.create_set("coordinates", "hpcem.SetOfCoordinates") as writer:
        writer.set_optics(micrographs.optics)
        if len(columns["x"]):
            writer.append_columns(columns)
    return {
        "count": len(columns["x"]),
        "per_micrograph": {str(r["micrograph_id"]): r["count"] for r in rows},
        "rejected": rejected,
        "warnings": [r["warning"] for r in rows if r.get("warning")],
    }
