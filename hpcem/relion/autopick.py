"""One micrograph picked by ``relion_autopick``: the step body that ``relion.autopick_log``
and ``relion.autopick_ref`` share; each protocol gives only its arguments.

The micrograph (and any reference file) is linked into the step's folder under the run's
``relion/`` (``mic_NNNNNN/``), ``relion_autopick`` runs there and its coordinate STAR is
read back: ``_rlnCoordinateX/Y`` (the particle centre in pixels of the micrograph, as
hpcem's coordinates) and ``_rlnAutopickFigureOfMerit`` as the score. A micrograph that
cannot be read, has NaN/Inf pixels or is constant is rejected before RELION sees it
(:func:`hpcem.picking.steps.load_for_picking`); one RELION fails on is rejected with
RELION's last stderr lines. Zero picks is a count, not an error: RELION 3.1 aborts while
plotting its summary of zero picks, after writing the empty coordinate file; that exit is
reported as a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError, ItemRejected

PROGRAM = "relion_autopick"
#: ``--pickname`` of every run: the coordinates are ``mic_NNNNNN_autopick.star``.
PICKNAME = "autopick"
#: Files relion_autopick writes besides the coordinates (summary plots): removed, they
#: take 150 kB per micrograph and describe one micrograph only.
SUMMARY_FILES = ("all_FOMs.eps", "all_nr_parts.eps", "logfile.pdf", "logfile.pdf.lst")


def pick_micrograph(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    options: dict,
    *,
    args_for: Callable[[str, float], list[str]],
    kind: str,
    diameter_A: float,
    picture: str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict:
    """Pick micrograph ``path`` with ``relion_autopick ARGS`` in its own folder.

    ``args_for(name, pixel_size_A)``: the program's arguments for the micrograph file
    ``name`` in the work folder; ``kind``: the picker's name in messages and the picture's
    title (``"LoG"``, ``"reference"``); ``diameter_A``: the circles drawn in the picture;
    ``links``: ``{file name: path}`` of other inputs to link into the folder (references).
    ``options`` holds ``site``, ``work`` and ``log`` (:func:`hpcem.relion.runner.
    relion_places`). Returns :func:`hpcem.picking.steps.pick_result` plus ``warning``,
    ``commands`` and ``relion_version``; ItemRejected for a micrograph that cannot be
    picked.
    """
    from hpcem.picking.steps import load_for_picking, picked
    from hpcem.relion.runner import RelionError, link_input, run_relion

    image, pixel_size_A = load_for_picking(path, micrograph_id, pixel_size_A)
    work = Path(options["work"]) / f"mic_{micrograph_id:06d}"
    name = f"mic_{micrograph_id:06d}.mrc"
    link_input(path, work / name)
    for link_name, target in (links or {}).items():
        link_input(target, work / link_name)
    coords = work / f"mic_{micrograph_id:06d}_{PICKNAME}.star"
    if coords.exists():
        coords.unlink()  # an earlier attempt's; only this command's output counts
    try:
        record = run_relion(
            PROGRAM,
            args_for(name, pixel_size_A),
            workdir=work,
            site=options["site"],
            log=options["log"],
            label=f"micrograph {micrograph_id}",
            check=False,
        )
    except RelionError as exc:
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    warning = None
    if record["returncode"] != 0:
        tail = " | ".join(record.get("stderr_tail") or ["no output"])
        if not coords.is_file() or coords.stat().st_size:
            raise ItemRejected(
                f"micrograph {micrograph_id}: {PROGRAM} exited with code "
                f"{record['returncode']}: {tail}"
            )
        # RELION 3.1 writes the empty coordinate file, then aborts plotting zero picks.
        warning = (
            f"micrograph {micrograph_id}: no {kind} picks; {PROGRAM} then exited with code "
            f"{record['returncode']} while plotting its summary ({tail})"
        )
    for extra in SUMMARY_FILES:
        (work / extra).unlink(missing_ok=True)
    if not coords.is_file():
        raise ItemRejected(f"micrograph {micrograph_id}: {PROGRAM} wrote no {coords.name}")
    cols = {}
    if coords.stat().st_size:
        from hpcem.convert.relion import read_coordinates

        try:
            cols = read_coordinates(coords, micrograph_id).columns
        except DataFormatError as exc:
            raise ItemRejected(f"micrograph {micrograph_id}: RELION's output: {exc}") from None
    xy = np.stack(
        [np.asarray(cols.get("x", []), dtype=float), np.asarray(cols.get("y", []), dtype=float)],
        axis=1,
    )
    fom = np.asarray(cols.get("score", np.zeros(len(xy))), dtype=float)
    result = picked(
        micrograph_id,
        image,
        xy,
        fom,
        diameter_px=diameter_A / pixel_size_A,
        picture=picture,
        method=f"RELION {kind}",
        backend=f"relion {record['version']}",
    )
    result["warning"] = warning
    result["commands"] = [record]
    result["relion_version"] = record["version"]
    return result
