"""The few small STAR tables the RELION protocols hand to RELION and read back.

Columns come from hpcem sets (one row per micrograph or coordinate); the tables are
written with ``starfile``. Sets hold RELION 3.1's conventions already (coordinates of the
particle centre in pixels of the micrograph, defocus in Å with the angle from x to U;
see :mod:`hpcem.convert.conventions`), so values are copied, not converted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hpcem.errors import DataFormatError


def optics_table(optics: Mapping, pixel_key: str = "rlnMicrographPixelSize") -> dict:
    """A one-row RELION 3.1 ``data_optics`` table from scalar optics values."""
    return {
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": [1],
        pixel_key: [float(optics["pixel_size_A"])],
        "rlnVoltage": [float(optics["voltage_kV"])],
        "rlnSphericalAberration": [float(optics["cs_mm"])],
        "rlnAmplitudeContrast": [float(optics["amplitude_contrast"])],
    }


def write_star(path: str | os.PathLike, blocks: Mapping[str, Mapping]) -> Path:
    """Write ``blocks`` (block name -> column name without ``_`` -> values) as loops."""
    import pandas as pd
    import starfile

    frames = {
        name: pd.DataFrame({k: list(v) for k, v in cols.items()}) for name, cols in blocks.items()
    }
    path = Path(path)
    starfile.write(frames, path, overwrite=True)
    return path


def read_loop(path: str | os.PathLike, block: str | None = None, required=()) -> dict:
    """Columns (name without ``_rln`` prefix kept as ``rlnX``) of one loop of a STAR file
    written by RELION: ``block`` by name, else the file's only or last block. Missing
    ``required`` columns raise DataFormatError naming the file."""
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


def particles_blocks(
    columns: Mapping, optics: Mapping, image_paths, half_sets=None
) -> dict[str, dict]:
    """RELION 3.1 ``data_optics`` and ``data_particles`` tables of a particle set.

    ``columns``: the set's columns (``image_index``, angles, ``shift_x/y`` in Å with
    RELION 3.1's sign, CTF, ``optics_group``); ``optics``: its optics table (pixel size
    and ``image_size_px`` of the boxes); ``image_paths``: each particle's stack as
    RELION should open it (relative to RELION's working folder); ``half_sets``: the
    ``_rlnRandomSubset`` of each particle (None: not written). Vectorised: one array per
    column.
    """
    n_groups = len(optics["optics_group"])
    optics_cols = {
        "rlnOpticsGroupName": [f"opticsGroup{int(g)}" for g in optics["optics_group"]],
        "rlnOpticsGroup": np.asarray(optics["optics_group"], dtype=np.int64),
        "rlnVoltage": np.asarray(optics["voltage_kV"], dtype=np.float64),
        "rlnSphericalAberration": np.asarray(optics["spherical_aberration_mm"], np.float64),
        "rlnAmplitudeContrast": np.asarray(optics["amplitude_contrast"], np.float64),
        "rlnImagePixelSize": np.asarray(optics["pixel_size_A"], np.float64),
        "rlnImageSize": np.asarray(optics["image_size_px"], dtype=np.int64),
        "rlnImageDimensionality": np.full(n_groups, 2, dtype=np.int64),
    }
    index = np.asarray(columns["image_index"], dtype=np.int64) + 1
    names = [f"{i:06d}@{p}" for i, p in zip(index, image_paths)]
    parts = {
        "rlnImageName": names,
        "rlnAngleRot": np.asarray(columns["rot"], np.float64),
        "rlnAngleTilt": np.asarray(columns["tilt"], np.float64),
        "rlnAnglePsi": np.asarray(columns["psi"], np.float64),
        "rlnOriginXAngst": np.asarray(columns["shift_x"], np.float64),
        "rlnOriginYAngst": np.asarray(columns["shift_y"], np.float64),
        "rlnDefocusU": np.asarray(columns["defocus_u"], np.float64),
        "rlnDefocusV": np.asarray(columns["defocus_v"], np.float64),
        "rlnDefocusAngle": np.asarray(columns["defocus_angle"], np.float64),
        "rlnPhaseShift": np.asarray(columns["phase_shift"], np.float64),
        "rlnOpticsGroup": np.asarray(columns["optics_group"], dtype=np.int64),
    }
    if half_sets is not None:
        parts["rlnRandomSubset"] = np.asarray(half_sets, dtype=np.int64)
    return {"optics": optics_cols, "particles": parts}
