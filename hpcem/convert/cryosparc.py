"""cryoSPARC ``.cs`` files (numpy structured arrays) <-> hpcem particle and micrograph sets.

A ``.cs`` file is ``np.save`` of a structured array whose field names carry a prefix per
result group: ``blob/*`` (the image: path, 0-based index, shape, pixel size),
``ctf/*``, ``location/*`` (fractional position on the micrograph),
``alignments2D/*`` and ``alignments3D/*`` (pose, shift in pixels, class, half set).
The conversions follow ``docs/conventions.md`` (functions in
:mod:`hpcem.convert.conventions`): the 3D pose is an axis-angle vector (radians) whose
Rodrigues rotation is the transpose of RELION's Euler matrix; the shift has RELION's
origin sign in pixels of ``alignments*/psize_A``; ``df_angle_rad`` is RELION's defocus
angle in radians; classes and half sets are 0-based (hpcem's ``class_id`` and
``half_set`` are 1-based, 0 = none).

Every field hpcem has no column for is kept in ``Converted.extra`` under its ``.cs``
name, and :func:`write_particles_cs` writes those back, so read -> write -> read keeps
the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert import Converted
from hpcem.convert import conventions as cv
from hpcem.errors import DataFormatError, ValidationError

#: Fields without which a particle ``.cs`` cannot be read (the image location and size).
REQUIRED_PARTICLE_FIELDS = ("blob/path", "blob/idx", "blob/psize_A")
#: CTF fields that come together: one present means all are needed.
CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad")
_OPTICS_CTF_FIELDS = ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")

# fields turned into hpcem columns (or optics) on reading; everything else goes to extra
_CONSUMED = {
    "blob/path",
    "blob/idx",
    "blob/psize_A",
    "blob/shape",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/phase_shift_rad",
    "ctf/exp_group_id",
    "ctf/ctf_fit_to_A",
    "ctf/cross_corr_ctffind4",
    "location/center_x_frac",
    "location/center_y_frac",
}
_ALIGN_CONSUMED = ("pose", "shift", "class", "split")


def load_cs(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` a ``.cs`` file, checking it is a 1-D structured array.

    The header limit is raised (as pyem does): a ``.cs`` with per-class alignment fields
    has a dtype description far over numpy's default 10,000 characters; with
    ``allow_pickle=False`` nothing in the file is executed.
    """
    try:
        data = np.load(os.fspath(path), allow_pickle=False, max_header_size=10_000_000)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a cryoSPARC .cs file (numpy .npy): {exc}") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise DataFormatError(f"{path}: not a cryoSPARC .cs file (no structured array of rows)")
    return data


def _require(path: Any, names: tuple[str, ...], fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataFormatError(
            f"{path}: {what} needs the field(s) {', '.join(missing)}; the file has "
            f"{', '.join(names)}"
        )


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique values, inverse)`` of a path column, fast when equal values come in runs.

    Particles of one stack are consecutive in every real file, so comparing neighbours
    (vectorised) leaves only the run heads to sort: 1 M rows of 5,000 stacks take tens
    of ms instead of a 1 M-string sort.
    """
    n = len(values)
    if n == 0:
        return values[:0], np.zeros(0, dtype=np.int64)
    head = np.empty(n, dtype=bool)
    head[0] = True
    np.not_equal(values[1:], values[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    run_of_row = np.cumsum(head) - 1
    uniq, run_inverse = np.unique(values[starts], return_inverse=True)
    return uniq, run_inverse[run_of_row]


def _decode_paths(values: np.ndarray, root: str | os.PathLike | None) -> np.ndarray:
    """Bytes/str path field -> object array of str, less cryoSPARC's leading '>', under root.

    Decoding and joining happen once per distinct path (a particle set has few stacks).
    """
    uniq, inverse = _factorize(values)
    out = []
    for raw in uniq.tolist():
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        text = text.removeprefix(">")
        if root is not None and not os.path.isabs(text):
            text = os.path.join(os.fspath(root), text)
        out.append(text)
    return np.array(out, dtype=object)[inverse]


def _require_files(path: Any, files: np.ndarray) -> None:
    """Refuse a set whose image files do not exist (checked once per distinct file)."""
    uniq = list(dict.fromkeys(files.tolist()))
    missing = [f for f in uniq if not os.path.exists(f)]
    if missing:
        raise DataFormatError(
            f"{path}: {len(missing)} of its {len(uniq)} image file(s) do not exist, e.g. "
            f"{missing[0]} (give root= the cryoSPARC project folder the paths are relative to)"
        )


def _alignment_prefix(names: tuple[str, ...]) -> str | None:
    if "alignments3D/pose" in names:
        return "alignments3D"
    if "alignments2D/pose" in names:
        return "alignments2D"
    return None


def _best_class_alignment(path: Any, data: np.ndarray, names: tuple[str, ...]) -> tuple | None:
    """Pose of each particle's most probable class in a multi-class ``.cs`` (as pyem).

    cryoSPARC 4.5+ writes ``alignments3D_multi/*`` with one entry per class
    (``pose`` ``(n, K, 3)``, ``shift`` ``(n, K, 2)``, ``class_posterior`` ``(n, K)``);
    earlier versions ``alignments_class_<k>/*``. Returns ``(prefix, pose, shift, psize,
    class, split)`` for the class of highest posterior, or None without such fields.
    The per-class fields stay in ``extra``.
    """
    n = len(data)
    rows = np.arange(n)
    if "alignments3D_multi/pose" in names:
        prefix = "alignments3D_multi"
        need = tuple(f"{prefix}/{k}" for k in ("shift", "class_posterior"))
        _require(path, names, need, "multi-class poses")
        posterior = np.asarray(data[f"{prefix}/class_posterior"], np.float64).reshape(n, -1)
        k = posterior.shape[1]
        pose = np.asarray(data[f"{prefix}/pose"], np.float64).reshape(n, k, 3)
        shift = np.asarray(data[f"{prefix}/shift"], np.float64).reshape(n, k, 2)
        apix = np.asarray(
            data[f"{prefix}/psize_A"] if f"{prefix}/psize_A" in names else data["blob/psize_A"],
            np.float64,
        )
        split = data[f"{prefix}/split"] if f"{prefix}/split" in names else None
    else:
        classes = sorted(
            int(name.split("/")[0].rsplit("_", 1)[1])
            for name in names
            if name.startswith("alignments_class_") and name.endswith("/pose")
        )
        if not classes:
            return None
        prefix = "alignments_class"
        need = tuple(
            f"alignments_class_{c}/{f}" for c in classes for f in ("shift", "class_posterior")
        )
        _require(path, names, need, "per-class poses")
        posterior = np.stack(
            [data[f"alignments_class_{c}/class_posterior"] for c in classes], axis=1
        ).astype(np.float64)
        pose = np.stack([data[f"alignments_class_{c}/pose"] for c in classes], axis=1)
        shift = np.stack([data[f"alignments_class_{c}/shift"] for c in classes], axis=1)
        pose, shift = pose.astype(np.float64), shift.astype(np.float64)
        first = f"alignments_class_{classes[0]}"
        apix = np.asarray(
            data[f"{first}/psize_A"] if f"{first}/psize_A" in names else data["blob/psize_A"],
            np.float64,
        )
        split = data[f"{first}/split"] if f"{first}/split" in names else None
        apix = apix.reshape(n, -1)[:, 0] if apix.ndim > 1 else apix
    best = np.argmax(posterior, axis=1)
    apix = apix.reshape(n, -1)[rows, best] if apix.ndim > 1 else apix
    if split is not None:
        split = np.asarray(split).reshape(n, -1)[:, 0]
    return prefix, pose[rows, best], shift[rows, best], apix, best, split


def _group_index(group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, first row of each id, id position of each row)`` of small integer ids.

    Counting instead of ``np.unique``'s sort: 1 M rows of a few groups in ~10 ms.
    """
    n = len(group)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    lo = int(group.min())
    span = int(group.max()) - lo + 1
    if span > 4 * n + 1024:  # sparse ids: sorting is cheaper than a huge table
        return np.unique(group, return_index=True, return_inverse=True)
    present = np.zeros(span, dtype=bool)
    present[group - lo] = True
    ids = np.flatnonzero(present) + lo
    inverse = (np.cumsum(present) - 1)[group - lo]
    first = np.full(len(ids), n, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(n))
    return ids, first, inverse


def _group_table(
    path: Any, group: np.ndarray, props: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Optics table of the exposure groups, refusing a group whose rows disagree."""
    ids, first, inverse = _group_index(group)
    for key, values in props.items():
        # one group (the usual case): compare with a scalar instead of a gathered column
        differ = values != (values[first[0]] if len(ids) == 1 else values[first][inverse])
        if np.any(differ):
            row = int(np.argmax(differ))
            raise DataFormatError(
                f"{path}: row {row}: {key} {values[row]} differs from {values[first[inverse[row]]]}"
                f" of the first row of its exposure group {int(group[row]) - 1}"
                " (ctf/exp_group_id); one optics group needs one value"
            )
    optics: dict[str, Any] = {
        "optics_group": ids.astype(np.int32),
        "name": np.array([f"exp_group_{i - 1}" for i in ids], dtype=str),
    }
    for key, values in props.items():
        optics[key] = values[first].astype(np.int64 if key == "image_size_px" else np.float64)
    return group.astype(np.int32), optics


def _optics_groups(path: Any, data: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    """Optics group per row (``ctf/exp_group_id`` + 1, as pyem) and the optics table.

    Rows of one exposure group must share pixel size, voltage, Cs, amplitude contrast and
    box size; a group that does not is a :class:`DataFormatError` naming the row and group.
    """
    n = len(data)
    exp = data["ctf/exp_group_id"] if "ctf/exp_group_id" in names else None
    group = (exp.astype(np.int64) + 1) if exp is not None else np.ones(n, dtype=np.int64)
    props: dict[str, np.ndarray] = {"pixel_size_A": data["blob/psize_A"]}
    if all(f in names for f in _OPTICS_CTF_FIELDS):
        props["voltage_kV"] = data["ctf/accel_kv"]
        props["spherical_aberration_mm"] = data["ctf/cs_mm"]
        props["amplitude_contrast"] = data["ctf/amp_contrast"]
    if "blob/shape" in names:
        props["image_size_px"] = np.asarray(data["blob/shape"])[:, 0]
    return _group_table(path, group, props)


def read_particles_cs(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    flip_y: bool = False,
    micrograph_names: Mapping[str, int] | None = None,
    check_files: bool = False,
) -> Converted:
    """Read a particle ``.cs`` file into PARTICLE columns, optics and extra fields.

    Parameters
    ----------
    path
        The ``.cs`` file (``np.load``-able structured array).
    root
        Folder the ``blob/path`` values are relative to (the cryoSPARC project folder);
        None keeps them as written (less cryoSPARC's leading ``>``).
    flip_y
        Flip the ``location`` y fraction (``1 − frac``), for micrographs that are the
        y-flip of the ones cryoSPARC picked on (see docs/conventions.md; pyem's
        ``csparc2star.py`` flips by default).
    micrograph_names
        Micrograph name -> id of the micrograph set the particles come from: fills
        ``micrograph_id`` from ``location/micrograph_path`` (matched by name, then stem);
        a particle of a micrograph not in it is a :class:`DataFormatError` naming it.
    check_files
        Refuse the file (:class:`DataFormatError`, naming the first missing stack and how
        many) when image stacks do not exist under ``root``.
    """
    data = load_cs(path)
    names = data.dtype.names
    _require(path, names, REQUIRED_PARTICLE_FIELDS, "a particle set")
    if any(f in names for f in CTF_FIELDS):
        _require(path, names, CTF_FIELDS + _OPTICS_CTF_FIELDS, "the CTF of a particle")
    n = len(data)
    cols: dict[str, Any] = {
        "image": _decode_paths(data["blob/path"], root),
        "image_index": data["blob/idx"].astype(np.int32),
    }
    if check_files:
        _require_files(path, cols["image"])
    group, optics = _optics_groups(path, data, names)
    cols["optics_group"] = group
    if "ctf/df1_A" in names:
        cols["defocus_u"] = data["ctf/df1_A"].astype(np.float64)
        cols["defocus_v"] = data["ctf/df2_A"].astype(np.float64)
        cols["defocus_angle"] = cv.cryosparc_df_angle_to_deg(data["ctf/df_angle_rad"])
        if "ctf/phase_shift_rad" in names:
            cols["phase_shift"] = np.rad2deg(data["ctf/phase_shift_rad"].astype(np.float64))
        if "ctf/ctf_fit_to_A" in names:
            cols["ctf_fit_resolution"] = data["ctf/ctf_fit_to_A"].astype(np.float64)
        if "ctf/cross_corr_ctffind4" in names:
            cols["ctf_fit_score"] = data["ctf/cross_corr_ctffind4"].astype(np.float64)
    if "location/center_x_frac" in names:
        _require(path, names, ("location/center_y_frac", "location/micrograph_shape"), "location")
        shape = np.asarray(data["location/micrograph_shape"]).reshape(n, -1)
        yfrac = data["location/center_y_frac"]
        if flip_y:
            yfrac = cv.flip_y_frac(yfrac)
        cols["coord_x"] = cv.cryosparc_frac_to_px(data["location/center_x_frac"], shape[:, 1])
        cols["coord_y"] = cv.cryosparc_frac_to_px(yfrac, shape[:, 0])
    if micrograph_names is not None:
        from hpcem.convert.boxfiles import match_micrographs

        _require(path, names, ("location/micrograph_path",), "micrograph_names")
        micrographs = _decode_paths(data["location/micrograph_path"], None)
        cols["micrograph_id"] = match_micrographs(path, micrographs, micrograph_names)
    consumed = set(_CONSUMED)
    prefix = _alignment_prefix(names)
    if prefix is not None:
        _require(path, names, (f"{prefix}/shift",), f"{prefix} poses")
        pose = np.asarray(data[f"{prefix}/pose"], dtype=np.float64)
        if prefix == "alignments3D":
            cols["rot"], cols["tilt"], cols["psi"] = cv.cryosparc_pose_to_euler(pose.reshape(n, 3))
        else:
            cols["psi"] = cv.cryosparc_pose2d_to_psi(pose)
        apix = data[f"{prefix}/psize_A"] if f"{prefix}/psize_A" in names else data["blob/psize_A"]
        shift = np.asarray(data[f"{prefix}/shift"], dtype=np.float64).reshape(n, 2)
        cols["shift_x"] = cv.cryosparc_shift_to_origin_A(shift[:, 0], apix)
        cols["shift_y"] = cv.cryosparc_shift_to_origin_A(shift[:, 1], apix)
        if f"{prefix}/class" in names:
            cols["class_id"] = data[f"{prefix}/class"].astype(np.int32) + 1
        if f"{prefix}/split" in names:
            cols["half_set"] = data[f"{prefix}/split"].astype(np.int8) + 1
        consumed.update(f"{prefix}/{k}" for k in _ALIGN_CONSUMED)
    else:
        best = _best_class_alignment(path, data, names)
        if best is not None:
            prefix, pose, shift, apix, cls, split = best
            cols["rot"], cols["tilt"], cols["psi"] = cv.cryosparc_pose_to_euler(pose)
            cols["shift_x"] = cv.cryosparc_shift_to_origin_A(shift[:, 0], apix)
            cols["shift_y"] = cv.cryosparc_shift_to_origin_A(shift[:, 1], apix)
            cols["class_id"] = cls.astype(np.int32) + 1
            if split is not None:
                cols["half_set"] = split.astype(np.int8) + 1
    extra: dict[str, Any] = {name: np.asarray(data[name]) for name in names if name not in consumed}
    extra["cs_alignments"] = prefix or ""
    return Converted("hpcem.SetOfParticles", cols, optics, extra, os.fspath(path))


def _per_row(optics: Mapping[str, Any], key: str, group: np.ndarray, default: float) -> Any:
    """Value of optics column ``key`` for each row's optics group (``default`` if absent)."""
    if key not in optics or len(optics.get("optics_group", ())) == 0:
        return np.full(len(group), default)
    ids = np.asarray(optics["optics_group"])
    order = np.argsort(ids)
    pos = np.searchsorted(ids, group, sorter=order)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[order][pos] == group
    if not np.all(found):
        bad = int(group[np.argmin(found)])
        raise ValidationError(f"optics group {bad} of a particle is not in the optics table")
    return np.asarray(optics[key])[order][pos]


def new_uids(n: int) -> np.ndarray:
    """``n`` distinct random-looking 64-bit uids, as cryoSPARC gives every row.

    ``start + i × step`` modulo 2**64 with a random odd ``step``: distinct within the file
    by construction (an odd step is invertible modulo 2**64), random across files.
    """
    rng = np.random.default_rng()
    start, step = rng.integers(0, np.iinfo(np.uint64).max, size=2, dtype=np.uint64)
    step |= np.uint64(1)
    with np.errstate(over="ignore"):
        return start + np.arange(n, dtype=np.uint64) * step


def _encode_paths(values: Any) -> np.ndarray:
    """Path column (str/bytes, any array) -> fixed-width bytes, encoding each distinct path once."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr
    if len(arr) == 0:
        return np.zeros(0, dtype="S1")
    uniq, inverse = _factorize(arr)
    encoded = np.array([str(p).encode("utf-8") for p in uniq.tolist()])
    return encoded[inverse]


def write_particles_cs(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    alignments: str | None = None,
    micrograph_path: Any = None,
    micrograph_shape: Any = None,
) -> None:
    """Write PARTICLE columns as a cryoSPARC particle ``.cs`` (loads in cryosparc-tools).

    Parameters
    ----------
    columns, optics
        hpcem particle columns (``image``, ``image_index`` required) and the optics table
        (pixel size required; voltage, Cs, amplitude contrast for the CTF; image size).
    extra
        Per-row ``.cs`` fields to write as they are (e.g. the ``extra`` of
        :func:`read_particles_cs`: ``uid``, ``blob/sign``, alignment scores); fields
        derived from ``columns`` take precedence. Non-array entries are ignored.
    alignments
        ``"alignments3D"``, ``"alignments2D"`` or None (default: 3D when the columns
        have ``rot``/``tilt``, 2D when only ``psi``, none otherwise).
    micrograph_path, micrograph_shape
        Where the particles were picked, for ``location/*``: the micrograph file of each
        row, and the micrograph's ``(ny, nx)`` (one pair, or one per row). With the
        ``coord_x/coord_y`` columns they give ``location/center_*_frac``; without them
        the same fields of ``extra`` are used, if any.
    """
    for name in ("image", "image_index"):
        if name not in columns:
            raise ValidationError(f"write_particles_cs: column '{name}' is required")
    extra = dict(extra or {})
    n = len(columns["image"])
    group = np.asarray(columns.get("optics_group", np.ones(n)), dtype=np.int64)
    psize = _per_row(optics, "pixel_size_A", group, np.nan)
    if np.any(~np.isfinite(psize)):
        raise ValidationError("write_particles_cs: the optics table needs pixel_size_A")
    out: dict[str, np.ndarray] = {}
    if "uid" in extra and len(np.asarray(extra["uid"])) == n:
        out["uid"] = np.asarray(extra["uid"], dtype=np.uint64)
    else:
        out["uid"] = new_uids(n)
    out["blob/path"] = _encode_paths(columns["image"])
    out["blob/idx"] = np.asarray(columns["image_index"], dtype=np.uint32)
    size = _per_row(optics, "image_size_px", group, 0).astype(np.uint32)
    out["blob/shape"] = np.stack([size, size], axis=1)
    out["blob/psize_A"] = psize.astype(np.float32)
    if "defocus_u" in columns:
        for key, cs_name in (
            ("voltage_kV", "ctf/accel_kv"),
            ("spherical_aberration_mm", "ctf/cs_mm"),
            ("amplitude_contrast", "ctf/amp_contrast"),
        ):
            values = _per_row(optics, key, group, np.nan)
            if np.any(~np.isfinite(values)):
                raise ValidationError(f"write_particles_cs: the CTF needs {key} in the optics")
            out[cs_name] = values.astype(np.float32)
        out["ctf/exp_group_id"] = (group - 1).astype(np.uint32)
        out["ctf/df1_A"] = np.asarray(columns["defocus_u"], dtype=np.float32)
        out["ctf/df2_A"] = np.asarray(columns["defocus_v"], dtype=np.float32)
        angle = columns.get("defocus_angle", np.zeros(n))
        out["ctf/df_angle_rad"] = cv.deg_to_cryosparc_df_angle(angle).astype(np.float32)
        phase = np.deg2rad(np.asarray(columns.get("phase_shift", np.zeros(n)), np.float64))
        out["ctf/phase_shift_rad"] = phase.astype(np.float32)
        if "ctf_fit_resolution" in columns:
            out["ctf/ctf_fit_to_A"] = np.asarray(columns["ctf_fit_resolution"], np.float32)
        if "ctf_fit_score" in columns:
            out["ctf/cross_corr_ctffind4"] = np.asarray(columns["ctf_fit_score"], np.float32)
    if micrograph_shape is None:
        micrograph_shape = extra.get("location/micrograph_shape")
    if micrograph_path is None:
        micrograph_path = extra.get("location/micrograph_path")
    if "coord_x" in columns and micrograph_shape is not None:
        shape = np.broadcast_to(np.asarray(micrograph_shape, dtype=np.uint32), (n, 2))
        if micrograph_path is not None:
            paths = np.asarray(micrograph_path)
            paths = np.broadcast_to(paths, (n,)) if paths.ndim == 0 else paths
            out["location/micrograph_path"] = _encode_paths(paths)
        out["location/micrograph_shape"] = np.ascontiguousarray(shape)
        out["location/center_x_frac"] = cv.px_to_cryosparc_frac(
            columns["coord_x"], shape[:, 1]
        ).astype(np.float32)
        out["location/center_y_frac"] = cv.px_to_cryosparc_frac(
            columns["coord_y"], shape[:, 0]
        ).astype(np.float32)
    if alignments is None:
        if "rot" in columns or "tilt" in columns:
            alignments = "alignments3D"
        elif "psi" in columns:
            alignments = "alignments2D"
    elif alignments not in ("alignments3D", "alignments2D"):
        raise ValidationError(f"write_particles_cs: unknown alignments {alignments!r}")
    if alignments is not None:
        zeros = np.zeros(n)
        apix_name = f"{alignments}/psize_A"
        apix = np.asarray(extra.get(apix_name, psize), dtype=np.float64)
        if alignments == "alignments3D":
            out[f"{alignments}/pose"] = cv.euler_to_cryosparc_pose(
                columns.get("rot", zeros), columns.get("tilt", zeros), columns.get("psi", zeros)
            ).astype(np.float32)
        else:
            out[f"{alignments}/pose"] = cv.psi_to_cryosparc_pose2d(
                columns.get("psi", zeros)
            ).astype(np.float32)
        out[f"{alignments}/shift"] = np.stack(
            [
                cv.origin_A_to_cryosparc_shift(columns.get("shift_x", zeros), apix),
                cv.origin_A_to_cryosparc_shift(columns.get("shift_y", zeros), apix),
            ],
            axis=1,
        ).astype(np.float32)
        out[apix_name] = apix.astype(np.float32) * np.ones(n, np.float32)
        if "class_id" in columns:
            cls = np.asarray(columns["class_id"], dtype=np.int64) - 1
            out[f"{alignments}/class"] = np.clip(cls, 0, None).astype(np.uint32)
        if "half_set" in columns:
            half = np.asarray(columns["half_set"], dtype=np.int64) - 1
            out[f"{alignments}/split"] = np.clip(half, 0, None).astype(np.uint32)
    for name, values in extra.items():
        if name in out or "/" not in name:
            continue
        arr = np.asarray(values)
        if arr.ndim >= 1 and len(arr) == n:
            out[name] = arr
    dtype = [(name, arr.dtype, arr.shape[1:]) for name, arr in out.items()]
    table = np.empty(n, dtype=dtype)
    for name, arr in out.items():
        table[name] = arr
    with open(os.fspath(path), "wb") as fh:
        np.save(fh, table, allow_pickle=False)


def read_coordinates_cs(
    path: str | os.PathLike,
    micrograph_names: Mapping[str, int] | None = None,
    flip_y: bool = False,
) -> Converted:
    """Picks of a ``.cs`` with ``location/*`` (a picker's or extraction's output) as COORDINATE.

    ``x = center_x_frac × shape[1]``, ``y = center_y_frac × shape[0]``
    (``location/micrograph_shape`` is ``(ny, nx)``); ``flip_y`` as in
    :func:`read_particles_cs`. ``micrograph_names`` (name -> micrograph id) gives each
    pick its ``micrograph_id`` from ``location/micrograph_path``; a micrograph not in it
    is a :class:`DataFormatError` naming it.
    """
    from hpcem.convert.boxfiles import match_micrographs

    data = load_cs(path)
    names = data.dtype.names
    fields = (
        "location/micrograph_path",
        "location/center_x_frac",
        "location/center_y_frac",
        "location/micrograph_shape",
    )
    _require(path, names, fields, "a coordinate set")
    n = len(data)
    shape = np.asarray(data["location/micrograph_shape"]).reshape(n, -1)
    yfrac = data["location/center_y_frac"]
    if flip_y:
        yfrac = cv.flip_y_frac(yfrac)
    micrographs = _decode_paths(data["location/micrograph_path"], None)
    cols: dict[str, Any] = {
        "micrograph_id": match_micrographs(path, micrographs, micrograph_names),
        "x": cv.cryosparc_frac_to_px(data["location/center_x_frac"], shape[:, 1]),
        "y": cv.cryosparc_frac_to_px(yfrac, shape[:, 0]),
    }
    if "pick_stats/ncc_score" in names:
        cols["score"] = data["pick_stats/ncc_score"].astype(np.float64)
    extra = {
        "micrograph": micrographs,
        **{k: np.asarray(data[k]) for k in names if k not in fields[1:3]},
    }
    return Converted("hpcem.SetOfCoordinates", cols, {}, extra, os.fspath(path))


def read_micrographs_cs(
    path: str | os.PathLike, root: str | os.PathLike | None = None, check_files: bool = False
) -> Converted:
    """Exposures ``.cs`` (``micrograph_blob/*``) as MICROGRAPH columns and optics.

    Optics groups come from ``ctf/exp_group_id`` (+1) when present, else one group; the
    pixel size is ``micrograph_blob/psize_A``. ``micrograph_blob/shape`` and the rest go
    to ``extra``. The CTF of the same file: :func:`read_micrograph_ctfs_cs`.
    ``check_files``: refuse the file when micrographs do not exist under ``root``.
    """
    data = load_cs(path)
    names = data.dtype.names
    _require(path, names, ("micrograph_blob/path", "micrograph_blob/psize_A"), "a micrograph set")
    n = len(data)
    exp = data["ctf/exp_group_id"] if "ctf/exp_group_id" in names else None
    group = (exp.astype(np.int64) + 1) if exp is not None else np.ones(n, dtype=np.int64)
    props = {"pixel_size_A": data["micrograph_blob/psize_A"]}
    if all(f in names for f in _OPTICS_CTF_FIELDS):
        props["voltage_kV"] = data["ctf/accel_kv"]
        props["spherical_aberration_mm"] = data["ctf/cs_mm"]
        props["amplitude_contrast"] = data["ctf/amp_contrast"]
    group, optics = _group_table(path, group, props)
    cols = {"image": _decode_paths(data["micrograph_blob/path"], root), "optics_group": group}
    if check_files:
        _require_files(path, cols["image"])
    consumed = {"micrograph_blob/path", "micrograph_blob/psize_A"}
    extra = {k: np.asarray(data[k]) for k in names if k not in consumed}
    return Converted("hpcem.SetOfMicrographs", cols, optics, extra, os.fspath(path))


def read_micrograph_ctfs_cs(path: str | os.PathLike) -> Converted:
    """The per-micrograph CTF of an exposures ``.cs`` (``ctf/*``) as CTF_MODEL columns.

    ``micrograph_id`` is the 0-based row of the micrograph in the same file (the order of
    :func:`read_micrographs_cs`); the importer maps it to the ids it gave the micrographs.
    """
    data = load_cs(path)
    names = data.dtype.names
    _require(path, names, CTF_FIELDS, "a CTF set")
    n = len(data)
    cols: dict[str, Any] = {
        "micrograph_id": np.arange(n, dtype=np.int64),
        "defocus_u": data["ctf/df1_A"].astype(np.float64),
        "defocus_v": data["ctf/df2_A"].astype(np.float64),
        "defocus_angle": cv.cryosparc_df_angle_to_deg(data["ctf/df_angle_rad"]),
    }
    if "ctf/phase_shift_rad" in names:
        cols["phase_shift"] = np.rad2deg(data["ctf/phase_shift_rad"].astype(np.float64))
    if "ctf/ctf_fit_to_A" in names:
        cols["fit_resolution"] = data["ctf/ctf_fit_to_A"].astype(np.float64)
    if "ctf/cross_corr_ctffind4" in names:
        cols["fit_score"] = data["ctf/cross_corr_ctffind4"].astype(np.float64)
    if "ctf/type" in names:
        cols["estimator"] = _decode_paths(data["ctf/type"], None)
    return Converted("hpcem.SetOfCTFs", cols, {}, {}, os.fspath(path))


def _ctf_rows(ctfs: Mapping[str, Any], micrograph_ids: np.ndarray | None, n: int) -> np.ndarray:
    """Row of ``ctfs`` for each micrograph: by ``micrograph_id`` against the micrographs'
    ``id`` when both are given, else by order (same length)."""
    m = len(ctfs["defocus_u"])
    if micrograph_ids is not None and "micrograph_id" in ctfs:
        if m == 0:
            raise ValidationError("write_micrographs_cs: the CTF set is empty")
        ctf_ids = np.asarray(ctfs["micrograph_id"], dtype=np.int64)
        order = np.argsort(ctf_ids, kind="stable")
        pos = np.clip(np.searchsorted(ctf_ids, micrograph_ids, sorter=order), 0, m - 1)
        rows = order[pos]
        missing = ctf_ids[rows] != micrograph_ids
        if np.any(missing):
            bad = int(micrograph_ids[np.argmax(missing)])
            raise ValidationError(f"write_micrographs_cs: micrograph {bad} has no CTF")
        return rows
    if m != n:
        raise ValidationError(
            f"write_micrographs_cs: {m} CTFs for {n} micrographs and no ids to match them"
        )
    return np.arange(n)


def write_micrographs_cs(
    path: str | os.PathLike,
    columns: Mapping[str, Any],
    optics: Mapping[str, Any],
    micrograph_shape: Any,
    ctfs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write MICROGRAPH columns (and their CTFs) as a cryoSPARC exposures ``.cs``.

    ``micrograph_shape``: ``(ny, nx)`` of every micrograph (one pair or one per row).
    ``ctfs``: CTF_MODEL columns, matched to the micrographs by ``micrograph_id`` = ``id``
    (or by order); the optics give voltage, Cs and amplitude contrast. ``extra``: per-row
    ``.cs`` fields written as they are (e.g. from :func:`read_micrographs_cs`).
    """
    if "image" not in columns:
        raise ValidationError("write_micrographs_cs: column 'image' is required")
    extra = dict(extra or {})
    n = len(columns["image"])
    group = np.asarray(columns.get("optics_group", np.ones(n)), dtype=np.int64)
    psize = _per_row(optics, "pixel_size_A", group, np.nan)
    if np.any(~np.isfinite(psize)):
        raise ValidationError("write_micrographs_cs: the optics table needs pixel_size_A")
    uid = extra.get("uid")
    out: dict[str, np.ndarray] = {
        "uid": np.asarray(uid, np.uint64) if uid is not None and len(uid) == n else new_uids(n),
        "micrograph_blob/path": _encode_paths(columns["image"]),
        "micrograph_blob/idx": np.zeros(n, dtype=np.uint32),
        "micrograph_blob/shape": np.ascontiguousarray(
            np.broadcast_to(np.asarray(micrograph_shape, dtype=np.uint32), (n, 2))
        ),
        "micrograph_blob/psize_A": psize.astype(np.float32),
    }
    if ctfs is not None:
        ids = np.asarray(columns["id"], dtype=np.int64) if "id" in columns else None
        rows = _ctf_rows(ctfs, ids, n)
        for key, cs_name in (
            ("voltage_kV", "ctf/accel_kv"),
            ("spherical_aberration_mm", "ctf/cs_mm"),
            ("amplitude_contrast", "ctf/amp_contrast"),
        ):
            values = _per_row(optics, key, group, np.nan)
            if np.any(~np.isfinite(values)):
                raise ValidationError(f"write_micrographs_cs: the CTF needs {key} in the optics")
            out[cs_name] = values.astype(np.float32)
        out["ctf/exp_group_id"] = (group - 1).astype(np.uint32)
        zeros = np.zeros(len(ctfs["defocus_u"]))
        pick = {
            "ctf/df1_A": np.asarray(ctfs["defocus_u"], np.float64),
            "ctf/df2_A": np.asarray(ctfs["defocus_v"], np.float64),
            "ctf/df_angle_rad": cv.deg_to_cryosparc_df_angle(ctfs.get("defocus_angle", zeros)),
            "ctf/phase_shift_rad": np.deg2rad(np.asarray(ctfs.get("phase_shift", zeros), float)),
        }
        if "fit_resolution" in ctfs:
            pick["ctf/ctf_fit_to_A"] = np.asarray(ctfs["fit_resolution"], np.float64)
        if "fit_score" in ctfs:
            pick["ctf/cross_corr_ctffind4"] = np.asarray(ctfs["fit_score"], np.float64)
        for name, values in pick.items():
            out[name] = values[rows].astype(np.float32)
    for name, values in extra.items():
        arr = np.asarray(values)
        if name not in out and "/" in name and arr.ndim >= 1 and len(arr) == n:
            out[name] = arr
    table = np.empty(n, dtype=[(k, v.dtype, v.shape[1:]) for k, v in out.items()])
    for name, arr in out.items():
        table[name] = arr
    with open(os.fspath(path), "wb") as fh:
        np.save(fh, table, allow_pickle=False)
