"""RELION optics: the 3.1+ ``data_optics`` table, RELION 3.0's per-row optics turned
into groups (as RELION's own ``StarConverter::convert_3p0_particlesTo_3p1`` does), and
the checks of optics group ids and pixel sizes.

hpcem's optics table is the ACQUISITION item type (``optics_group``, ``name``,
``voltage_kV``, ...); what RELION has beyond it (beam tilt, odd/even Zernike, MagMat,
``_rlnCtfDataAreCtfPremultiplied``, ...) is kept by label in ``extra["optics"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert.relion_star import is_column
from hpcem.errors import DataFormatError, ValidationError

#: Pixel-size label of the optics table by set kind (RELION 3.1 conventions).
PIXEL_LABEL = {
    "particles": "rlnImagePixelSize",
    "micrographs": "rlnMicrographPixelSize",
    "movies": "rlnMicrographOriginalPixelSize",
}

#: hpcem ACQUISITION field -> RELION optics label (pixel size: see :data:`PIXEL_LABEL`).
OPTICS_LABELS = {
    "optics_group": "rlnOpticsGroup",
    "name": "rlnOpticsGroupName",
    "voltage_kV": "rlnVoltage",
    "spherical_aberration_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "magnification": "rlnMagnification",
    "image_size_px": "rlnImageSize",
}

#: RELION 3.0 per-row labels that define an optics group, in RELION's own order
#: (``StarConverter::convert_3p0_particlesTo_3p1``), plus the pixel-size labels that some
#: 3.0-era files carry per row.
GROUP_LABELS_30 = (
    "rlnAmplitudeContrast",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnDetectorPixelSize",
    "rlnMagnification",
    "rlnImagePixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize",
)

#: RELION 3.0 labels that RELION 3.1 replaces by the pixel size (not written in 3.1).
_NOT_31 = frozenset({"rlnDetectorPixelSize", "rlnMagnification"})

#: Relative difference above which two pixel sizes of the same thing disagree.
PIXEL_TOLERANCE = 1e-3


def optics_from_table(
    path: str, table: Mapping[str, np.ndarray], kind: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A 3.1+ ``data_optics`` table -> (ACQUISITION columns, other optics labels)."""
    if "rlnOpticsGroup" not in table:
        raise DataFormatError(f"{path}, block data_optics: no _rlnOpticsGroup column")
    optics: dict[str, np.ndarray] = {}
    used = set()
    for field, label in OPTICS_LABELS.items():
        if label in table:
            optics[field] = table[label]
            used.add(label)
    pix = _pixel_label(table, kind)
    if pix is None:
        raise DataFormatError(
            f"{path}, block data_optics: no pixel size column "
            f"(_{PIXEL_LABEL.get(kind, 'rlnImagePixelSize')})"
        )
    optics["pixel_size_A"] = np.asarray(table[pix], dtype=np.float64)
    used.add(pix)
    ids = np.asarray(table["rlnOpticsGroup"])
    if len(np.unique(ids)) != len(ids):
        raise DataFormatError(f"{path}, block data_optics: optics group ids repeat: {ids.tolist()}")
    if "name" in optics:
        optics["name"] = np.asarray([str(v) for v in optics["name"]], dtype=object)
    rest = {lab: np.asarray(v) for lab, v in table.items() if lab not in used}
    return _typed(optics), rest


#: Pixel-size labels that may give a kind's pixel size, in order. A particle's pixel
#: size is never taken from the micrograph's (particles are often downsampled).
_PIXEL_SOURCES = {
    "particles": ("rlnImagePixelSize",),
    "micrographs": ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"),
    "movies": ("rlnMicrographOriginalPixelSize", "rlnMicrographPixelSize"),
}


def _pixel_label(table: Mapping[str, Any], kind: str) -> str | None:
    """The pixel-size label to use for ``kind`` (see :data:`_PIXEL_SOURCES`)."""
    order = _PIXEL_SOURCES.get(kind, ("rlnImagePixelSize",))
    return next((lab for lab in order if lab in table), None)


def _typed(optics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in optics.items():
        if k in ("optics_group", "image_size_px"):
            out[k] = np.asarray(v).astype(np.int32)
        elif k == "name":
            out[k] = v
        else:
            out[k] = np.asarray(v, dtype=np.float64)
    return out


def optics_from_rows_30(
    path: str,
    block: str,
    table: Mapping[str, np.ndarray],
    kind: str,
    pixel_size_A: float | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], set[str]]:
    """RELION 3.0 rows -> (optics group of each row, ACQUISITION columns, other optics
    labels, labels consumed). Groups are numbered 1.. in order of first appearance of
    each distinct combination of :data:`GROUP_LABELS_30`, as RELION 3.1 converts them;
    the pixel size is DetectorPixelSize (µm) × 10⁴ / Magnification, else the per-row
    pixel-size label, else ``pixel_size_A``.
    """
    import pandas as pd

    n = len(next(iter(table.values())))
    labels = [lab for lab in GROUP_LABELS_30 if lab in table]
    if labels:
        frame = pd.DataFrame({lab: np.asarray(table[lab]) for lab in labels})
        group = frame.groupby(labels, sort=False).ngroup().to_numpy() + 1
        first = np.unique(group, return_index=True)[1]
    else:
        group = np.ones(n, dtype=np.int64)
        first = np.zeros(1 if n else 0, dtype=np.int64)
    rows_pix = _pixel_per_row_30(path, block, table, kind)
    if rows_pix is None:
        if pixel_size_A is None:
            raise ValidationError(
                f"{path}, block data_{block}: a RELION 3.0 file without "
                "_rlnMagnification/_rlnDetectorPixelSize or a pixel size column "
                f"(_{PIXEL_LABEL.get(kind, 'rlnImagePixelSize')}); give the pixel size as "
                "pixel_size_A=... (Å/px)"
            )
        rows_pix = np.full(n, float(pixel_size_A))
    elif pixel_size_A is not None:
        check_pixel_size(path, rows_pix, pixel_size_A)
    optics: dict[str, np.ndarray] = {
        "optics_group": np.arange(1, len(first) + 1, dtype=np.int32),
        "name": np.asarray([f"opticsGroup{i}" for i in range(1, len(first) + 1)], dtype=object),
        "pixel_size_A": rows_pix[first].astype(np.float64),
    }
    for field, label in OPTICS_LABELS.items():
        if label in table and field not in optics:
            optics[field] = np.asarray(table[label])[first]
    rest = {
        lab: np.asarray(table[lab])[first]
        for lab in labels
        if lab not in OPTICS_LABELS.values() and lab not in PIXEL_LABEL.values()
    }
    return group.astype(np.int32), _typed(optics), rest, set(labels)


def _pixel_per_row_30(
    path: str, block: str, table: Mapping[str, np.ndarray], kind: str
) -> np.ndarray | None:
    """Per-row pixel size of a 3.0 file, and a check that its two sources agree."""
    from_mag = None
    if "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
        from_mag = (
            np.asarray(table["rlnDetectorPixelSize"], dtype=np.float64)
            * 1e4
            / np.asarray(table["rlnMagnification"], dtype=np.float64)
        )
    label = _pixel_label(table, kind)
    from_col = None if label is None else np.asarray(table[label], dtype=np.float64)
    if from_mag is not None and from_col is not None:
        bad = np.abs(from_mag - from_col) > PIXEL_TOLERANCE * from_col
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(
                f"{path}, block data_{block}, row {i + 1}: inconsistent pixel sizes: "
                f"_rlnDetectorPixelSize × 10⁴ / _rlnMagnification = {from_mag[i]:.4f} Å but "
                f"_{label} = {from_col[i]:.4f} Å"
            )
    return from_mag if from_mag is not None else from_col


def check_pixel_size(path: str, file_pixel_A: np.ndarray, pixel_size_A: float) -> None:
    """A ``pixel_size_A`` argument must agree with the file's own pixel sizes."""
    file_pixel_A = np.asarray(file_pixel_A, dtype=np.float64)
    bad = np.abs(file_pixel_A - pixel_size_A) > PIXEL_TOLERANCE * pixel_size_A
    if bad.any():
        raise ValidationError(
            f"{path}: inconsistent pixel sizes: the file says "
            f"{sorted(set(np.round(file_pixel_A[bad], 4).tolist()))} Å, "
            f"pixel_size_A={pixel_size_A} was given"
        )


def check_groups(path: str, block: str, group: np.ndarray, optics: Mapping[str, Any]) -> None:
    """Every row's optics group must be in the optics table."""
    ids = np.asarray(optics["optics_group"])
    known = np.isin(group, ids)
    if not known.all():
        i = int(np.argmin(known))
        raise DataFormatError(
            f"{path}, block data_{block}, row {i + 1}: optics group {int(group[i])} is not in "
            f"data_optics (groups {sorted(ids.tolist())})"
        )


def per_row(optics: Mapping[str, Any], field: str, group: np.ndarray) -> np.ndarray:
    """The optics value ``field`` of each row's group."""
    ids = np.asarray(optics["optics_group"])
    order = np.argsort(ids)
    pos = order[np.clip(np.searchsorted(ids, group, sorter=order), 0, len(ids) - 1)]
    if not np.array_equal(ids[pos], group):
        bad = int(np.asarray(group)[np.argmax(ids[pos] != group)])
        raise ValidationError(f"optics group {bad} of an item is not in the optics table")
    return np.asarray(optics[field])[pos]


def optics_table(
    optics: Mapping[str, Any], kind: str, extra_optics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """ACQUISITION columns (+ kept RELION optics labels) -> a ``data_optics`` table."""
    if "optics_group" not in optics or not len(optics["optics_group"]):
        raise ValidationError("writing RELION 3.1 needs an optics table with optics_group ids")
    ids = np.asarray(optics["optics_group"]).astype(np.int64)
    k = len(ids)
    table: dict[str, Any] = {"rlnOpticsGroup": ids}
    names = optics.get("name")
    if names is None or not all(str(s) for s in names):
        names = [f"opticsGroup{i}" for i in ids]
    table["rlnOpticsGroupName"] = np.asarray([str(s) for s in names], dtype=object)
    for field in ("amplitude_contrast", "spherical_aberration_mm", "voltage_kV"):
        if field in optics:
            table[OPTICS_LABELS[field]] = np.asarray(optics[field], dtype=np.float64)
    if "pixel_size_A" not in optics:
        raise ValidationError("writing RELION 3.1 needs pixel_size_A in the optics table")
    table[PIXEL_LABEL[kind]] = np.asarray(optics["pixel_size_A"], dtype=np.float64)
    if kind == "particles":
        size = np.asarray(optics.get("image_size_px", np.zeros(k)), dtype=np.int64)
        if np.all(size > 0):
            table["rlnImageSize"] = size
            table["rlnImageDimensionality"] = np.full(k, 2, dtype=np.int64)
    for lab, v in (extra_optics or {}).items():
        if lab in _NOT_31:
            continue
        if lab not in table and is_column(v) and len(v) == k:
            table[lab] = np.asarray(v)
    return table
