"""RELION results <-> hpcem sets: 2D/3D classes (``_model.star`` + ``_data.star``), FSC
curves (``postprocess.star``) and motion correction metadata (the per-micrograph STAR of
``relion_run_motioncorr`` that ``_rlnMicrographMetadata`` names).

Same rules as :mod:`hpcem.convert.relion`: pure functions, a :class:`Converted` out,
RELION labels without an hpcem field kept in ``extra``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert.relion_common import _data_block, _relative, _resolve, image_names
from hpcem.convert.relion_star import ImageNames, StarBlock, is_column, read_star, write_star
from hpcem.errors import DataFormatError, ValidationError
from hpcem.store.ragged import Ragged

#: FSC curves of postprocess.star's data_fsc: label in hpcem -> RELION label.
FSC_CURVES = {
    "corrected": "rlnFourierShellCorrelationCorrected",
    "unmasked": "rlnFourierShellCorrelationUnmaskedMaps",
    "masked": "rlnFourierShellCorrelationMaskedMaps",
    "phase_randomised_masked": "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
}

#: The FSC threshold of gold-standard resolution.
FSC_THRESHOLD = 0.143


def _block(path: str, blocks: Mapping[str, StarBlock], name: str, loop: bool) -> StarBlock:
    b = blocks.get(name)
    if b is None or b.loop != loop:
        found = ", ".join(f"data_{k}" for k in blocks) or "none"
        kind = "loop" if loop else "list of values"
        raise DataFormatError(f"{path}: no data_{name} {kind} (blocks: {found})")
    return b


def _require(path: str, block: StarBlock, labels: Sequence[str], what: str) -> None:
    have = block.columns if block.loop else block.values
    missing = [lab for lab in labels if lab not in have]
    if missing:
        raise DataFormatError(
            f"{path}, block data_{block.name}: missing mandatory "
            f"{', '.join('_' + m for m in missing)} (needed for {what})"
        )


# --- classes -------------------------------------------------------------------------------


def read_classes(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    particle_ids: np.ndarray | None = None,
    root: str | os.PathLike | None = None,
) -> Converted:
    """Read RELION class outputs (``run_itNNN_model.star`` and, for membership,
    ``run_itNNN_data.star``) into CLASS_2D or CLASS_3D columns.

    2D (``_rlnReferenceDimensionality`` 2, or references ``NNNNNN@stack``): the average
    is ``representative`` + 0-based ``representative_index``; 3D: ``representative`` is
    the class volume and ``resolution_A`` RELION's ``_rlnEstimatedResolution``. Class ids
    are RELION's class numbers (1..K). ``member_ids``: the ids of the data STAR's
    particles (``particle_ids``, one per row, e.g. the ids of the particle set imported
    from it; default: the 0-based row numbers) whose ``_rlnClassNumber`` is the class.
    """
    model_path = os.fspath(model_path)
    blocks = read_star(model_path)
    classes = _block(model_path, blocks, "model_classes", True)
    _require(model_path, classes, ("rlnReferenceImage",), "classes")
    refs = classes.columns["rlnReferenceImage"]
    k = len(refs)
    general = blocks.get("model_general")
    dim = general.values.get("rlnReferenceDimensionality") if general is not None else None
    if dim is None:
        dim = 2 if isinstance(refs, ImageNames) or all("@" in str(r) for r in refs) else 3
    cols: dict[str, Any] = {"id": np.arange(1, k + 1, dtype=np.int64)}
    if int(dim) == 2:
        index, stacks = image_names(model_path, classes.name, refs)
        cols["representative"] = _resolve(stacks, root)
        cols["representative_index"] = index
        set_type = "hpcem.SetOfClasses2D"
    else:
        cols["representative"] = _resolve(np.asarray(refs, dtype=object), root)
        if "rlnEstimatedResolution" in classes.columns:
            cols["resolution_A"] = np.asarray(classes.columns["rlnEstimatedResolution"], float)
        set_type = "hpcem.SetOfClasses3D"
    if data_path is not None:
        members = read_star(data_path)

        part = _data_block(os.fspath(data_path), members, "particles")
        _require(os.fspath(data_path), part, ("rlnClassNumber",), "class membership")
        number = np.asarray(part.columns["rlnClassNumber"]).astype(np.int64)
        ids = np.arange(len(number)) if particle_ids is None else np.asarray(particle_ids)
        if len(ids) != len(number):
            raise ValidationError(
                f"{len(ids)} particle_ids for {len(number)} particles in {os.fspath(data_path)}"
            )
        bad = (number < 1) | (number > k)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataFormatError(
                f"{os.fspath(data_path)}, row {i + 1}: class {number[i]} is not in "
                f"{model_path} (classes 1..{k})"
            )
        cols["member_ids"], cols["size"] = members_by_class(number, ids.astype(np.int64), k)
    else:
        cols["member_ids"] = Ragged.empty(k, "int64")
        cols["size"] = np.zeros(k, dtype=np.int64)
    used = {"rlnReferenceImage", "rlnEstimatedResolution"}
    extra: dict[str, Any] = {lab: v for lab, v in classes.columns.items() if lab not in used}
    extra["model_general"] = dict(general.values) if general is not None else {}
    return Converted(set_type, cols, {}, extra, model_path)


def read_optimiser_classes(
    optimiser_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    particle_ids: np.ndarray | None = None,
) -> Converted:
    """Classes of a RELION ``run_itNNN_optimiser.star`` (the node RELION 4/5 pipelines
    give Class2D/Class3D jobs): the model and data STARs it names
    (``_rlnModelStarFile``, ``_rlnExperimentalDataStarFile``, relative to ``root``, the
    RELION project folder) read with :func:`read_classes`."""
    optimiser_path = os.fspath(optimiser_path)
    blocks = read_star(optimiser_path)
    general = _block(optimiser_path, blocks, "optimiser_general", False)
    _require(
        optimiser_path,
        general,
        ("rlnModelStarFile", "rlnExperimentalDataStarFile"),
        "the class outputs",
    )
    model, data = _resolve(
        np.asarray(
            [general.values["rlnModelStarFile"], general.values["rlnExperimentalDataStarFile"]],
            dtype=object,
        ),
        root,
    )
    return read_classes(model, data, particle_ids, root)


def members_by_class(number: np.ndarray, ids: np.ndarray, k: int) -> tuple[Ragged, np.ndarray]:
    """Ragged member ids of classes 1..k from each particle's class number (vectorised)."""
    order = np.argsort(number, kind="stable")
    size = np.bincount(number, minlength=k + 1)[1 : k + 1].astype(np.int64)
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    inside = (number[order] >= 1) & (number[order] <= k)
    return Ragged(ids[order][inside], offsets), size


def class_of_particles(classes: Mapping[str, Any], particle_ids: np.ndarray) -> np.ndarray:
    """``_rlnClassNumber`` for each particle id from CLASS_* columns (``id`` and
    ``member_ids``); 0 for particles in no class."""
    members = classes["member_ids"]
    if not isinstance(members, Ragged):
        members = Ragged.from_list(members, "int64")
    cls = np.repeat(np.asarray(classes["id"], dtype=np.int64), members.lengths)
    vals = members.values[members.offsets[0] : members.offsets[-1]]
    ids = np.asarray(particle_ids, dtype=np.int64)
    order = np.argsort(vals)
    pos = np.clip(np.searchsorted(vals, ids, sorter=order), 0, max(len(vals) - 1, 0))
    out = np.zeros(len(ids), dtype=np.int64)
    if len(vals):
        hit = vals[order[pos]] == ids
        out[hit] = cls[order[pos[hit]]]
    return out


def write_classes(
    model_path: str | os.PathLike,
    columns: Mapping[str, Any],
    dimensionality: int,
    extra: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> None:
    """Write CLASS_2D (``dimensionality`` 2) or CLASS_3D (3) columns as a RELION
    ``_model.star`` (``data_model_general`` + ``data_model_classes``: reference image,
    class distribution from the sizes, estimated resolution). Write the membership as a
    ``_data.star`` with :func:`hpcem.convert.relion.write_particles` after setting
    ``class_id`` from :func:`class_of_particles`."""
    if dimensionality not in (2, 3):
        raise ValidationError(f"class dimensionality {dimensionality}: 2 or 3")
    k = len(columns["representative"])
    refs = _relative(columns["representative"], root)
    size = np.asarray(columns.get("size", np.zeros(k)), dtype=np.float64)
    total = size.sum()
    table: dict[str, Any] = {}
    if dimensionality == 2:
        index = np.asarray(columns.get("representative_index", np.arange(k)))
        table["rlnReferenceImage"] = ImageNames(np.asarray(index), np.asarray(refs, dtype=object))
    else:
        table["rlnReferenceImage"] = refs
    table["rlnClassDistribution"] = size / total if total > 0 else np.zeros(k)
    if "resolution_A" in columns:
        table["rlnEstimatedResolution"] = np.asarray(columns["resolution_A"], dtype=np.float64)
    for lab, v in (extra or {}).items():
        if lab.startswith("rln") and lab not in table and is_column(v) and len(v) == k:
            table[lab] = np.asarray(v)
    general = {"rlnReferenceDimensionality": dimensionality, "rlnNrClasses": k}
    for lab, v in ((extra or {}).get("model_general") or {}).items():
        general.setdefault(lab, v)
    write_star(model_path, [("model_general", general), ("model_classes", table)])


# --- FSC -----------------------------------------------------------------------------------


def fsc_resolution_A(
    resolution_A: np.ndarray, fsc: np.ndarray, threshold: float = FSC_THRESHOLD
) -> float:
    """RELION's rule (``Postprocessing::run``): the resolution of the last shell before the
    FSC first drops below ``threshold`` (no interpolation); shell 0 is skipped."""
    fsc = np.asarray(fsc, dtype=np.float64)
    below = np.nonzero(fsc[1:] < threshold)[0]
    last = len(fsc) - 1 if not len(below) else below[0]
    return float(np.asarray(resolution_A, dtype=np.float64)[max(last, 1)])


def read_postprocess(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Converted:
    """Read ``postprocess.star`` into FSC rows, one per curve present (``corrected``,
    ``unmasked``, ``masked``, ``phase_randomised_masked``): ``frequency`` in 1/Å
    (``_rlnResolution``), ``fsc``, ``resolution_A`` (``_rlnFinalResolution`` for the
    corrected curve, RELION's 0.143 rule for the others). ``data_general`` values are in
    ``extra["general"]`` (half-map and mask names joined to ``root``)."""
    path = os.fspath(path)
    blocks = read_star(path)
    general = _block(path, blocks, "general", False)
    fsc = _block(path, blocks, "fsc", True)
    _require(path, general, ("rlnFinalResolution",), "the resolution")
    _require(path, fsc, ("rlnResolution", "rlnAngstromResolution"), "FSC curves")
    curves = [(name, lab) for name, lab in FSC_CURVES.items() if lab in fsc.columns]
    if not curves:
        raise DataFormatError(f"{path}, block data_fsc: no FSC column ({', '.join(FSC_CURVES)})")
    freq = np.asarray(fsc.columns["rlnResolution"], dtype=np.float64)
    ang = np.asarray(fsc.columns["rlnAngstromResolution"], dtype=np.float64)
    labels, res, values = [], [], []
    for name, lab in curves:
        curve = np.asarray(fsc.columns[lab], dtype=np.float64)
        labels.append(name)
        values.append(curve)
        final = float(general.values["rlnFinalResolution"])
        res.append(final if name == "corrected" else fsc_resolution_A(ang, curve))
    n = len(curves)
    cols = {
        "id": np.arange(1, n + 1, dtype=np.int64),
        "label": np.asarray(labels, dtype=object),
        "resolution_A": np.asarray(res),
        "frequency": Ragged(np.tile(freq, n), np.arange(n + 1) * len(freq)),
        "fsc": Ragged(np.concatenate(values), np.arange(n + 1) * len(freq)),
    }
    gen = dict(general.values)
    for lab in ("rlnUnfilteredMapHalf1", "rlnUnfilteredMapHalf2", "rlnMaskName"):
        if lab in gen:
            gen[lab] = str(_resolve(np.asarray([str(gen[lab])], dtype=object), root)[0])
    extra: dict[str, Any] = {"general": gen}
    if "guinier" in blocks:
        extra["guinier"] = blocks["guinier"].columns
    return Converted("hpcem.SetOfFSCs", cols, {}, extra, path)


def write_postprocess(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    general: Mapping[str, Any] | None = None,
) -> None:
    """Write FSC rows (labels as :data:`FSC_CURVES`, one shared frequency grid) as a
    ``postprocess.star``: ``data_general`` (``_rlnFinalResolution`` = the corrected
    curve's resolution, or the first row's) and ``data_fsc``."""
    labels = [str(s) for s in columns["label"]]
    unknown = [s for s in labels if s not in FSC_CURVES]
    if unknown:
        raise ValidationError(f"FSC labels {unknown}: RELION knows {list(FSC_CURVES)}")
    freq = _ragged(columns["frequency"])
    fsc = _ragged(columns["fsc"])
    grid = freq[0]
    if any(len(f) != len(grid) or not np.allclose(f, grid) for f in freq):
        raise ValidationError("the FSC curves do not share one frequency grid")
    with np.errstate(divide="ignore"):
        ang = np.where(grid > 0, 1.0 / np.where(grid > 0, grid, 1.0), 999.0)
    table: dict[str, Any] = {
        "rlnSpectralIndex": np.arange(len(grid), dtype=np.int64),
        "rlnResolution": np.asarray(grid, dtype=np.float64),
        "rlnAngstromResolution": ang,
    }
    for s, curve in zip(labels, fsc):
        table[FSC_CURVES[s]] = np.asarray(curve, dtype=np.float64)
    res = np.asarray(columns["resolution_A"], dtype=np.float64)
    main = labels.index("corrected") if "corrected" in labels else 0
    gen = {"rlnFinalResolution": float(res[main])}
    gen.update({k: v for k, v in (general or {}).items() if k != "rlnFinalResolution"})
    write_star(path, [("general", gen), ("fsc", table)])


def read_model_fsc(model_path: str | os.PathLike, class_number: int = 1) -> Converted:
    """The gold-standard FSC of a RELION refinement's ``_model.star`` (``run_model.star``
    of an auto-refine; ``data_model_class_N``'s ``_rlnGoldStandardFsc`` between the two
    unmasked half maps) as one FSC row labelled ``"gold_standard"``: ``frequency`` in 1/Å
    (``_rlnResolution``), ``fsc``, and ``resolution_A`` = ``_rlnCurrentResolution`` of
    ``data_model_general`` (RELION's own estimate of the refinement's resolution)."""
    model_path = os.fspath(model_path)
    blocks = read_star(model_path)
    general = _block(model_path, blocks, "model_general", False)
    table = _block(model_path, blocks, f"model_class_{class_number}", True)
    _require(model_path, general, ("rlnCurrentResolution",), "the resolution")
    _require(model_path, table, ("rlnResolution", "rlnGoldStandardFsc"), "the FSC")
    freq = np.asarray(table.columns["rlnResolution"], dtype=np.float64)
    fsc = np.asarray(table.columns["rlnGoldStandardFsc"], dtype=np.float64)
    cols = {
        "id": np.asarray([1], dtype=np.int64),
        "label": np.asarray(["gold_standard"], dtype=object),
        "resolution_A": np.asarray([float(general.values["rlnCurrentResolution"])]),
        "frequency": Ragged(freq, np.asarray([0, len(freq)])),
        "fsc": Ragged(fsc, np.asarray([0, len(fsc)])),
    }
    return Converted("hpcem.SetOfFSCs", cols, {}, {"general": dict(general.values)}, model_path)


def _ragged(values: Any) -> list[np.ndarray]:
    return values.tolist() if isinstance(values, Ragged) else [np.asarray(v) for v in values]


# --- motion correction ---------------------------------------------------------------------


def read_motion(
    paths: Sequence[str | os.PathLike],
    root: str | os.PathLike | None = None,
    movie_ids: Mapping[str, int] | None = None,
    early_exposure_e_A2: float = 4.0,
) -> Converted:
    """Read RELION motion-correction metadata STARs (one per micrograph, as named by
    ``_rlnMicrographMetadata``) into MOVIE_ALIGNMENT rows: whole-frame shifts in Å
    (RELION's ``_rlnMicrographShiftX/Y`` are in unbinned pixels: × the original pixel
    size), first/last frame (0-based), total and early drift (steps between frames whose
    accumulated exposure is at most ``early_exposure_e_A2``). RELION's local motion model
    (``data_local_motion_model``) is kept in ``extra["local_motion_model"]`` (not mapped
    to hpcem's local model, whose layout differs); ``local`` is 1 when it is present.
    ``movie_id`` from ``movie_ids`` (movie name -> id), else -1."""
    from hpcem.motion.align import drift_stats

    rows: dict[str, list] = {
        k: []
        for k in ("movie_id", "first_frame", "last_frame", "total_drift", "early_drift", "local")
    }
    sx, sy, names, local_models, general = [], [], [], [], []
    for p in _resolve(np.asarray([os.fspath(x) for x in paths], dtype=object), root):
        blocks = read_star(p)
        gen = _block(p, blocks, "general", False)
        shifts = _block(p, blocks, "global_shift", True)
        _require(p, gen, ("rlnMicrographOriginalPixelSize",), "shifts in Å")
        _require(p, shifts, ("rlnMicrographShiftX", "rlnMicrographShiftY"), "shifts")
        pix = float(gen.values["rlnMicrographOriginalPixelSize"])
        x = np.asarray(shifts.columns["rlnMicrographShiftX"], dtype=np.float64)
        y = np.asarray(shifts.columns["rlnMicrographShiftY"], dtype=np.float64)
        frames = np.asarray(
            shifts.columns.get("rlnMicrographFrameNumber", np.arange(1, len(x) + 1))
        )
        dose = float(gen.values.get("rlnMicrographDoseRate", 0.0))
        pre = float(gen.values.get("rlnMicrographPreExposure", 0.0))
        total, early = drift_stats(np.stack([x, y], 1), pre + dose * frames, early_exposure_e_A2)
        name = str(gen.values.get("rlnMicrographMovieName", ""))
        mid = -1
        if movie_ids is not None:
            mid = movie_ids.get(name, movie_ids.get(os.path.basename(name)))
            if mid is None:
                raise DataFormatError(f"{p}: movie {name!r} is not in the movie set")
        rows["movie_id"].append(mid)
        rows["first_frame"].append(int(frames[0]) - 1 if len(frames) else 0)
        rows["last_frame"].append(int(frames[-1]) - 1 if len(frames) else -1)
        rows["total_drift"].append(total * pix)
        rows["early_drift"].append(early * pix if dose > 0 else 0.0)
        local = blocks.get("local_motion_model")
        rows["local"].append(int(local is not None and local.loop and len(local) > 0))
        local_models.append(local.columns if local is not None else {})
        sx.append(-x * pix)  # RELION's aligning shift -> hpcem's displacement
        sy.append(-y * pix)
        names.append(name)
        general.append(dict(gen.values))
    cols: dict[str, Any] = {k: np.asarray(v) for k, v in rows.items()}
    cols["shifts_x"] = Ragged.from_list(sx, "float64")
    cols["shifts_y"] = Ragged.from_list(sy, "float64")
    extra = {
        "rlnMicrographMovieName": np.asarray(names, dtype=object),
        "general": general,
        "local_motion_model": local_models,
    }
    return Converted("hpcem.SetOfMovieAlignments", cols, {}, extra, "")


def write_motion(
    path: str | os.PathLike,
    shifts_x_A: np.ndarray,
    shifts_y_A: np.ndarray,
    general: Mapping[str, Any],
    first_frame: int = 0,
) -> None:
    """Write one micrograph's whole-frame shifts (Å, hpcem's sign: the displacement of
    each frame, written negated as RELION's aligning shifts) as a RELION motion metadata
    STAR (``data_general`` + ``data_global_shift`` in unbinned pixels). ``general`` must hold
    ``rlnMicrographOriginalPixelSize`` and should hold RELION's other general labels
    (image size, movie name, dose rate, ...)."""
    if "rlnMicrographOriginalPixelSize" not in general:
        raise ValidationError("motion metadata needs rlnMicrographOriginalPixelSize")
    pix = float(general["rlnMicrographOriginalPixelSize"])
    x = -np.asarray(shifts_x_A, dtype=np.float64) / pix
    y = -np.asarray(shifts_y_A, dtype=np.float64) / pix
    frames = np.arange(first_frame + 1, first_frame + 1 + len(x), dtype=np.int64)
    write_star(
        path,
        [
            ("general", dict(general)),
            (
                "global_shift",
                {
                    "rlnMicrographFrameNumber": frames,
                    "rlnMicrographShiftX": x,
                    "rlnMicrographShiftY": y,
                },
            ),
        ],
    )


def motion_files(micrographs: Converted, root: str | os.PathLike | None = None) -> list[str]:
    """The motion metadata files a micrograph set read from ``corrected_micrographs.star``
    names (``extra["rlnMicrographMetadata"]``), joined to ``root``."""
    names = micrographs.extra.get("rlnMicrographMetadata")
    if names is None:
        raise DataFormatError(
            f"{micrographs.source}: no _rlnMicrographMetadata column (not a RELION motion "
            "correction output)"
        )
    return [str(p) for p in _resolve(np.asarray(names, dtype=object), root)]
