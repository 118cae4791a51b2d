"""Reading the tables of RELION's own output files that hpcem has no set for.

What RELION reads (micrographs, movies, coordinates, particles) is written with
:mod:`hpcem.convert.relion`; the per-movie motion STAR files and
``corrected_micrographs.star`` of ``relion_run_motioncorr`` are read here, by column,
with ``starfile``.
"""

from __future__ import annotations

import os

import numpy as np

from hpcem.errors import DataFormatError


def read_loop(path: str | os.PathLike, block: str | None = None, required=()) -> dict:
    """Columns by label without the leading underscore (``rlnMicrographShiftX``) of one
    loop of a STAR file written by RELION: ``block`` by name, else the file's last block.
    Missing ``required`` columns raise DataFormatError naming the file."""
    import starfile

    try:
        data = starfile.read(path, always_dict=True)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # damaged file
        raise DataFormatError(f"{path}: cannot read as a STAR file: {exc}") from None
    if not data:
        return {name: np.zeros(0) for name in required}
    if block is None:
        frame = list(data.values())[-1]
    elif block in data:
        frame = data[block]
    else:
        raise DataFormatError(f"{path}: no data_{block} block (blocks: {', '.join(data)})")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path}: no column(s) {', '.join('_' + c for c in missing)}")
    return {c: frame[c].to_numpy() for c in frame.columns}
