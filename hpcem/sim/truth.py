"""The ground truth of a simulated dataset, in one JSON file and one STAR file.

``ground_truth.json`` holds everything (the configuration, the volume, the optics, and
per item: defocus, astigmatism, phase shift, particle centres and orientations, frame
shifts and the local motion model); ``ground_truth.star`` holds the same in RELION 3.1
tables and column names, so that RELION and tools that read its files can use it:

* ``data_optics``: one optics group (``_rlnVoltage``, ``_rlnSphericalAberration``,
  ``_rlnAmplitudeContrast``, ``_rlnMicrographPixelSize``, ...);
* ``data_micrographs``: per micrograph or movie ``_rlnMicrographName`` (the file
  written; for movies also ``_rlnMicrographMovieName``), ``_rlnDefocusU/V/Angle`` (Å,
  deg, EMX/RELION: U along the direction at the angle from x) and ``_rlnPhaseShift``;
* ``data_particles``: ``_rlnMicrographName``, ``_rlnCoordinateX/Y`` (the nearest pixel,
  in pixels of the image, origin at the first pixel, frame 0 for movies),
  ``_rlnOriginXAngst/YAngst`` with the **RELION 3.1 sign: the particle's centre is at
  Coordinate − Origin** (checked against ``relion_project`` in
  tests/science/test_conventions_outside.py), ``_rlnAngleRot/Tilt/Psi`` (ZYZ, degrees,
  see :mod:`hpcem.sim.projection`) and the CTF of its micrograph;
* ``data_frame_shifts`` (movies): ``_rlnMicrographFrameNumber`` (1-based) and
  ``_rlnMicrographShiftX/Y`` in pixels with RELION's motion-correction sign, the shift
  that *aligns* the frame: the negative of the displacement ``shifts_px`` of the JSON
  (a feature at (x, y) in frame 0 is at (x + dx, y + dy) in frame i).

Both files are deterministic: same dataset, same bytes (no dates, fixed number formats).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

FORMAT = "hpcem.sim.ground_truth"
VERSION = 1
JSON_NAME = "ground_truth.json"
STAR_NAME = "ground_truth.star"


def _plain(value):
    """JSON-ready copy: numpy arrays/scalars to lists/numbers, floats rounded to 6
    significant decimals after the point (so files do not depend on the last ulp)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def write_json(path: str | os.PathLike, truth: dict) -> Path:
    """Write the whole ground truth as sorted, indented JSON."""
    path = Path(path)
    text = json.dumps(_plain({"format": FORMAT, "version": VERSION, **truth}), indent=1)
    path.write_text(text + "\n")
    return path


def _fmt(value) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else f'"{value}"'
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.6f}"


def _table(name: str, columns: dict[str, list]) -> list[str]:
    lines = ["", f"data_{name}", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    rows = zip(*columns.values())
    lines += [" ".join(_fmt(v) for v in row) for row in rows]
    return lines


def star_tables(truth: dict) -> dict[str, dict[str, list]]:
    """The STAR tables (name -> column -> values) of a dataset's ground truth."""
    optics = truth["optics"]
    items = truth["items"]
    tables = {
        "optics": {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [optics["voltage_kV"]],
            "rlnSphericalAberration": [optics["cs_mm"]],
            "rlnAmplitudeContrast": [optics["amplitude_contrast"]],
            "rlnMicrographPixelSize": [optics["pixel_size_A"]],
            "rlnMicrographOriginalPixelSize": [optics["pixel_size_A"]],
        }
    }
    if truth.get("kind") == "movies":
        tables["optics"]["rlnDosePerFrame"] = [optics["dose_per_frame_e_A2"]]
    mics: dict[str, list] = {"rlnMicrographName": []}
    if truth.get("kind") == "movies":
        mics["rlnMicrographMovieName"] = []
    mics |= {k: [] for k in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift")}
    mics["rlnOpticsGroup"] = []
    parts: dict[str, list] = {
        k: []
        for k in (
            "rlnMicrographName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnOriginXAngst",
            "rlnOriginYAngst",
            "rlnAngleRot",
            "rlnAngleTilt",
            "rlnAnglePsi",
            "rlnDefocusU",
            "rlnDefocusV",
            "rlnDefocusAngle",
            "rlnPhaseShift",
            "rlnOpticsGroup",
        )
    }
    shifts: dict[str, list] = {
        k: []
        for k in (
            "rlnMicrographMovieName",
            "rlnMicrographFrameNumber",
            "rlnMicrographShiftX",
            "rlnMicrographShiftY",
        )
    }
    px = optics["pixel_size_A"]
    for item in items:
        ctf = [item["defocus_u"], item["defocus_v"], item["defocus_angle"], item["phase_shift"]]
        mics["rlnMicrographName"].append(item["name"])
        if "rlnMicrographMovieName" in mics:
            mics["rlnMicrographMovieName"].append(item["name"])
        for key, value in zip(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"), ctf):
            mics[key].append(value)
        mics["rlnPhaseShift"].append(ctf[3])
        mics["rlnOpticsGroup"].append(1)
        p = item["particles"]
        for x, y, rot, tilt, psi in zip(p["x"], p["y"], p["rot"], p["tilt"], p["psi"]):
            cx, cy = round(x), round(y)
            parts["rlnMicrographName"].append(item["name"])
            parts["rlnCoordinateX"].append(int(cx))
            parts["rlnCoordinateY"].append(int(cy))
            # RELION 3.1: centre = coordinate − origin
            parts["rlnOriginXAngst"].append((cx - x) * px)
            parts["rlnOriginYAngst"].append((cy - y) * px)
            parts["rlnAngleRot"].append(rot)
            parts["rlnAngleTilt"].append(tilt)
            parts["rlnAnglePsi"].append(psi)
            for key, value in zip(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"), ctf):
                parts[key].append(value)
            parts["rlnPhaseShift"].append(ctf[3])
            parts["rlnOpticsGroup"].append(1)
        for i, (dx, dy) in enumerate(item.get("shifts_px") or []):
            shifts["rlnMicrographMovieName"].append(item["name"])
            shifts["rlnMicrographFrameNumber"].append(i + 1)
            shifts["rlnMicrographShiftX"].append(-dx)
            shifts["rlnMicrographShiftY"].append(-dy)
    tables["micrographs"] = mics
    tables["particles"] = parts
    if shifts["rlnMicrographFrameNumber"]:
        tables["frame_shifts"] = shifts
    return tables


def write_star(path: str | os.PathLike, truth: dict) -> Path:
    """Write the ground truth as RELION 3.1 STAR tables (see the module doc)."""
    path = Path(path)
    lines = [f"# {FORMAT} version {VERSION}: ground truth of a simulated dataset", ""]
    for name, columns in star_tables(truth).items():
        lines += ["# version 30001", *_table(name, columns), ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_truth(folder: str | os.PathLike, truth: dict) -> tuple[Path, Path]:
    """Write ``ground_truth.json`` and ``ground_truth.star`` into ``folder``."""
    folder = Path(folder)
    return write_json(folder / JSON_NAME, truth), write_star(folder / STAR_NAME, truth)


def read_truth(folder_or_file: str | os.PathLike) -> dict:
    """The ground truth of a dataset (its JSON file, or the folder holding it)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / JSON_NAME
    return json.loads(path.read_text())
