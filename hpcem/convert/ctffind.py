"""CTFFIND4 output: the summary ``*.txt`` (one row per micrograph) and ``*_avrot.txt``.

The summary has comment lines (version, input file, pixel size, voltage, Cs, amplitude
contrast, search ranges) and rows of 7 columns: micrograph number (1-based, within the
input stack), defocus 1 and 2 (Å, positive = underfocus), azimuth of astigmatism
(degrees from x to the defocus-1 axis), additional phase shift (radians), cross
correlation, and the resolution (Å) up to which Thon rings were fit (``inf`` possible).
CTFFIND 5 adds columns (tilt axis, tilt angle, sample thickness): kept in ``extra``.

Defocus 1/2 and the azimuth are hpcem's (and RELION's) ``defocus_u/defocus_v`` and
``defocus_angle`` unchanged — RELION's ``CtffindRunner::getCtffind4Results`` copies
columns 2-4 as they are; the phase shift becomes degrees. See docs/conventions.md.
"""

from __future__ import annotations

import datetime
import io
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert import conventions as cv
from hpcem.errors import DataFormatError, ValidationError

#: Column count of a CTFFIND 4 summary row.
CTFFIND_COLUMNS = 7
_EXTRA_COLUMNS = ("tilt_axis_angle_deg", "tilt_angle_deg", "sample_thickness_A")
_AVROT_ROWS = (
    "spatial_frequency",
    "rotational_average_no_astig",
    "rotational_average",
    "ctf_fit",
    "cross_correlation",
    "two_sigma_noise_cc",
)

_HEADER_NUMBERS = {
    "pixel_size_A": r"Pixel size:\s*([-+0-9.eE]+)",
    "voltage_kV": r"acceleration voltage:\s*([-+0-9.eE]+)",
    "spherical_aberration_mm": r"spherical aberration:\s*([-+0-9.eE]+)",
    "amplitude_contrast": r"amplitude contrast:\s*([-+0-9.eE]+)",
    "box_size_px": r"Box size:\s*([-+0-9.eE]+)",
    "min_resolution_A": r"min\. res\.:\s*([-+0-9.eE]+)",
    "max_resolution_A": r"max\. res\.:\s*([-+0-9.eE]+)",
    "min_defocus_A": r"min\. def\.:\s*([-+0-9.eE]+)",
    "max_defocus_A": r"max\. def\.\s*:?\s*([-+0-9.eE]+)",
}


def _read_text(path: Any) -> str:
    try:
        with open(os.fspath(path), encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not a CTFFIND text file") from None


def _header(lines: list[str]) -> dict[str, Any]:
    """What the comment lines say: version, input file, optics and search ranges."""
    text = "\n".join(line for line in lines if line.startswith("#"))
    info: dict[str, Any] = {}
    version = re.search(r"CTF[Ff]ind version\s*([0-9][0-9.]*)", text)
    if version:
        info["ctffind_version"] = version.group(1)
    source = re.search(r"Input file:\s*(.*?)\s*(;|$)", text, re.MULTILINE)
    if source:
        info["input_file"] = source.group(1)
    for key, pattern in _HEADER_NUMBERS.items():
        found = re.search(pattern, text)
        if found:
            info[key] = float(found.group(1))
    return info


def read_ctffind_txt(
    path: str | os.PathLike,
    micrograph_id: int | None = None,
    micrograph_names: Mapping[str, int] | None = None,
) -> Converted:
    """Read a CTFFIND4 summary ``.txt`` into CTF_MODEL columns (one row per micrograph).

    ``micrograph_id``: the id of the micrograph the file was fitted on (a file of one
    micrograph). Or ``micrograph_names`` (name -> id): the header's "Input file" is
    matched to it (full name, then stem); a micrograph not in it is a
    :class:`DataFormatError` naming it. Without either, ``micrograph_id`` is -1;
    ``extra["micrograph_number"]`` always holds CTFFIND's 1-based numbers. The optics of
    the header (pixel size, voltage, Cs, amplitude contrast) become a one-row optics
    table; the rest of the header goes to ``extra``.
    """
    text = _read_text(path)
    lines = text.splitlines()
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        if len(words) < CTFFIND_COLUMNS or (rows and len(words) != len(rows[0])):
            expected = len(rows[0]) if rows else CTFFIND_COLUMNS
            raise DataFormatError(
                f"{path}, line {number}: {len(words)} columns, a CTFFIND summary row has "
                f"{expected} (micrograph number, defocus 1, defocus 2, azimuth, phase shift, "
                "cross correlation, fit resolution)"
            )
        rows.append(words)
        line_numbers.append(number)
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except ValueError:
        for words, number in zip(rows, line_numbers, strict=True):
            for word in words:
                try:
                    float(word)
                except ValueError:
                    raise DataFormatError(
                        f"{path}, line {number}: {word!r} is not a number"
                    ) from None
        raise
    if table.shape[1] == 0:
        table = np.zeros((0, CTFFIND_COLUMNS))
    info = _header(lines)
    n = len(table)
    if (micrograph_id is not None or micrograph_names is not None) and n != 1:
        raise ValidationError(
            f"{path}: micrograph_id/micrograph_names are for a file of one micrograph; this "
            f"one has {n} rows"
        )
    if micrograph_names is not None:
        from hpcem.convert.boxfiles import match_micrographs

        if "input_file" not in info:
            raise DataFormatError(f"{path}: no '# Input file:' line to match micrograph_names")
        source = np.array([info["input_file"]], dtype=object)
        micrograph_id = int(match_micrographs(path, source, micrograph_names)[0])
    cols: dict[str, Any] = {
        "micrograph_id": np.full(n, -1 if micrograph_id is None else micrograph_id, np.int64),
        "defocus_u": table[:, 1],
        "defocus_v": table[:, 2],
        "defocus_angle": cv.ctffind_azimuth_to_defocus_angle(table[:, 3]),
        "phase_shift": cv.ctffind_phase_shift_to_deg(table[:, 4]),
        "fit_score": table[:, 5],
        "fit_resolution": table[:, 6],
        "estimator": np.full(n, f"CTFFIND {info.get('ctffind_version', '')}".strip(), object),
    }
    optics: dict[str, Any] = {}
    if "pixel_size_A" in info:
        optics = {"optics_group": np.array([1], np.int32)}
        for key in ("voltage_kV", "spherical_aberration_mm", "amplitude_contrast", "pixel_size_A"):
            if key in info:
                optics[key] = np.array([info[key]])
    extra: dict[str, Any] = {"micrograph_number": table[:, 0].astype(np.int64)}
    for k in range(CTFFIND_COLUMNS, table.shape[1]):
        name = _EXTRA_COLUMNS[k - CTFFIND_COLUMNS] if k - CTFFIND_COLUMNS < 3 else f"column_{k + 1}"
        extra[name] = table[:, k]
    extra.update(info)
    return Converted("hpcem.SetOfCTFs", cols, optics, extra, os.fspath(path))


def _optics_value(optics: Mapping[str, Any], key: str) -> float:
    if key not in optics or len(np.atleast_1d(optics[key])) == 0:
        raise ValidationError(f"write_ctffind_txt: the optics need {key} (CTFFIND's header)")
    values = np.unique(np.atleast_1d(np.asarray(optics[key], dtype=np.float64)))
    if len(values) != 1:
        raise ValidationError(
            f"write_ctffind_txt: one CTFFIND file has one {key}, the optics have {values}"
        )
    return float(values[0])


def write_ctffind_txt(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    input_file: str = "unknown.mrc",
    box_size_px: int = 512,
) -> None:
    """Write CTF_MODEL columns as a CTFFIND 4.1 summary ``.txt`` (RELION's parser reads it).

    The header has CTFFIND's layout (RELION takes pixel size, voltage, Cs and amplitude
    contrast from fixed word positions of the "acceleration voltage" line); rows have
    CTFFIND's 7 columns with 6 decimals (``%.6f``), so a read gives back defocus values to
    1e-6 Å and the phase shift to 6e-5°.
    """
    n = len(columns["defocus_u"])
    values = {
        "pixel_size_A": _optics_value(optics, "pixel_size_A"),
        "voltage_kV": _optics_value(optics, "voltage_kV"),
        "spherical_aberration_mm": _optics_value(optics, "spherical_aberration_mm"),
        "amplitude_contrast": _optics_value(optics, "amplitude_contrast"),
    }
    zeros = np.zeros(n)
    table = np.column_stack(
        [
            np.arange(1, n + 1, dtype=np.float64),
            np.asarray(columns["defocus_u"], dtype=np.float64),
            np.asarray(columns["defocus_v"], dtype=np.float64),
            np.asarray(columns.get("defocus_angle", zeros), dtype=np.float64),
            np.deg2rad(np.asarray(columns.get("phase_shift", zeros), dtype=np.float64)),
            np.asarray(columns.get("fit_score", zeros), dtype=np.float64),
            np.asarray(columns.get("fit_resolution", zeros), dtype=np.float64),
        ]
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    optics_line = (
        f"# Pixel size: {values['pixel_size_A']:.3f} Angstroms ; acceleration voltage: "
        f"{values['voltage_kV']:.1f} keV ; spherical aberration: "
        f"{values['spherical_aberration_mm']:.2f} mm ; amplitude contrast: "
        f"{values['amplitude_contrast']:.2f}"
    )
    search_line = (
        f"# Box size: {int(box_size_px)} pixels ; min. res.: 30.0 Angstroms ; max. res.: "
        "5.0 Angstroms ; min. def.: 5000.0 um; max. def. 50000.0 um"
    )
    columns_line = (
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; "
        "#6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were "
        "fit successfully"
    )
    header = [
        f"# Output from CTFFind version 4.1.14 (hpcem writer), run on {stamp}",
        f"# Input file: {input_file} ; Number of micrographs: {n}",
        optics_line,
        search_line,
        columns_line,
    ]
    buf = io.StringIO()
    np.savetxt(buf, table, fmt="%.6f", delimiter=" ")
    with open(os.fspath(path), "w", encoding="utf-8") as fh:
        fh.write("\n".join(header) + "\n" + buf.getvalue())


def read_ctffind_avrot(path: str | os.PathLike) -> dict[str, Any]:
    """Read a CTFFIND4 ``*_avrot.txt``: 6 lines of numbers per micrograph.

    Returns ``{name: (n_micrographs, n_shells) array}`` for ``spatial_frequency`` (1/Å;
    converted from 1/pixel with the header's pixel size where the header says so),
    ``rotational_average_no_astig``, ``rotational_average``, ``ctf_fit``,
    ``cross_correlation`` and ``two_sigma_noise_cc``, plus the header's values.
    """
    text = _read_text(path)
    lines = text.splitlines()
    data = [
        (number, line.split())
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(data) % len(_AVROT_ROWS):
        raise DataFormatError(
            f"{path}: {len(data)} data lines; a CTFFIND _avrot.txt has 6 per micrograph"
        )
    width = len(data[0][1]) if data else 0
    for number, words in data:
        if len(words) != width:
            raise DataFormatError(
                f"{path}, line {number}: {len(words)} values, line {data[0][0]} has {width}"
            )
    try:
        table = np.array([words for _, words in data], dtype=np.float64)
    except ValueError:
        raise DataFormatError(f"{path}: a data line holds something that is not a number") from None
    table = table.reshape(-1, len(_AVROT_ROWS), width)
    out: dict[str, Any] = {name: table[:, i, :] for i, name in enumerate(_AVROT_ROWS)}
    info = _header(lines)
    header_text = "\n".join(line for line in lines if line.startswith("#"))
    if "spatial frequency (1/pixels)" in header_text:
        if "pixel_size_A" not in info:
            raise DataFormatError(f"{path}: frequencies in 1/pixel but no pixel size in the header")
        out["spatial_frequency"] = out["spatial_frequency"] / info["pixel_size_A"]
    out.update(info)
    return out
