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

Particle and pick files are read and written a block of rows at a time
(:func:`_read_fields`, :func:`_write_table`): a field of a structured array is strided
by the row size, so filling or copying a 1 M-row table field by field would cross memory
once per field, while a block stays in cache. ``scripts/bench_convert.py`` times it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
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


#: Rows per block when a table is read or written field by field: a block (~2 MB for a
#: 144-byte particle row) stays in cache, so each byte of the file crosses memory once
#: instead of once per field (a field of a structured array is strided by the row size).
_BLOCK_ROWS = 16384


def load_cs(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """``np.load`` a ``.cs`` file, checking it is a 1-D structured array.

    The header limit is raised (as pyem does): a ``.cs`` with per-class alignment fields
    has a dtype description far over numpy's default 10,000 characters; with
    ``allow_pickle=False`` nothing in the file is executed. ``mmap``: a read-only memory
    map instead (its dtype, length and ``offset`` describe the file without reading it).
    """
    try:
        data = np.load(
            os.fspath(path),
            mmap_mode="r" if mmap else None,
            allow_pickle=False,
            max_header_size=10_000_000,
        )
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a cryoSPARC .cs file (numpy .npy): {exc}") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise DataFormatError(f"{path}: not a cryoSPARC .cs file (no structured array of rows)")
    return data


def _blocks(n: int) -> Iterator[slice]:
    """Consecutive slices of at most ``_BLOCK_ROWS`` rows covering ``range(n)``."""
    for start in range(0, n, _BLOCK_ROWS):
        yield slice(start, min(start + _BLOCK_ROWS, n))


def _field_words(rows: np.ndarray, name: str, buffer: np.ndarray) -> np.ndarray:
    """The bytes of field ``name`` of contiguous ``rows`` as ``(len(rows), k)`` uint64 words.

    ``buffer``: a zeroed ``(≥ len(rows), 8k)`` uint8 array reused between blocks (the
    bytes past the field's width stay zero). Comparing 8 bytes at a time is ~4× faster
    than numpy's comparison of byte strings.
    """
    m = len(rows)
    dtype, offset = rows.dtype.fields[name][:2]
    raw = rows.view(np.uint8).reshape(m, rows.dtype.itemsize)
    buffer[:m, : dtype.itemsize] = raw[:, offset : offset + dtype.itemsize]
    return buffer[:m].view(np.uint64)


def _empty_columns(n: int, dtypes: Mapping[str, tuple[Any, tuple[int, ...]]]) -> dict:
    """Uninitialised ``n``-row columns (name -> (dtype, shape per row)), carved from one
    allocation: twenty 4 MB arrays cost ~4× more page faults than one 80 MB buffer (numpy
    asks for huge pages only above 4 MiB)."""
    sizes = [
        (n * np.dtype(dt).itemsize * int(np.prod(shape)) + 63) // 64 * 64
        for dt, shape in dtypes.values()
    ]
    buffer = np.empty(sum(sizes), dtype=np.uint8)
    out, offset = {}, 0
    for (name, (dt, shape)), size in zip(dtypes.items(), sizes, strict=True):
        out[name] = np.ndarray((n, *shape), dtype=dt, buffer=buffer, offset=offset)
        offset += size
    return out


def _read_fields(
    path: str | os.PathLike,
    layout: np.ndarray,
    fields: Mapping[str, Any],
    runs: tuple[str, ...] = (),
    scratch: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Contiguous copies of ``fields`` of a ``.cs`` file and the runs of equal ``runs`` values.

    ``layout``: the file's :func:`load_cs` memory map (its dtype, length and offset; the
    map itself is not read). ``fields``: field name -> dtype of the copy (None: the
    file's); ``scratch``: more fields, the same way, in an allocation of their own (copies
    the caller converts and drops, so that they do not keep the others' memory).
    ``runs`` (byte-string
    fields such as ``blob/path``, never copied whole): ``(starts, values)``, the first row
    of each run of equal values and its value. The file is read once, a block of rows at
    a time into one reused buffer: no copy of the whole table is made (``np.load`` of a
    1 M-particle file allocates and fills 144 MB before a field is copied out).
    """
    dtype, n, offset = layout.dtype, len(layout), layout.offset
    out = {}
    for group in (fields, scratch or {}):
        specs = {
            name: (cast or dtype[name].base, dtype[name].shape) for name, cast in group.items()
        }
        out.update(_empty_columns(n, specs))
    heads = {name: np.empty(n, dtype=bool) for name in runs}
    found: dict[str, list] = {name: [] for name in runs}
    words_of = {
        name: np.zeros((min(n, _BLOCK_ROWS), -(-dtype[name].itemsize // 8) * 8), np.uint8)
        for name in runs
    }
    last: dict[str, np.ndarray] = {}
    block = np.empty(min(n, _BLOCK_ROWS), dtype=dtype)
    with open(os.fspath(path), "rb", buffering=0) as fh:
        fh.seek(offset)
        for sl in _blocks(n):
            rows = block[: sl.stop - sl.start]
            if fh.readinto(rows.view(np.uint8)) != rows.nbytes:
                raise DataFormatError(f"{path}: the file ends before row {sl.stop} of {n}")
            for name, column in out.items():
                column[sl] = rows[name]
            for name in runs:
                words = _field_words(rows, name, words_of[name])
                head = heads[name][sl]
                head[0] = sl.start == 0 or bool(np.any(words[0] != last[name]))
                np.not_equal(words[1:, 0], words[:-1, 0], out=head[1:])
                for k in range(1, words.shape[1]):
                    head[1:] |= words[1:, k] != words[:-1, k]
                last[name] = words[-1].copy()
                found[name].append(rows[name][head])
    return out, {
        name: (np.flatnonzero(heads[name]), np.concatenate(found[name] or [block[name][:0]]))
        for name in runs
    }


def _run_heads(values: np.ndarray) -> np.ndarray:
    """First row of each run of equal values of a 1-D array."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    head = np.empty(len(values), dtype=bool)
    head[0] = True
    np.not_equal(values[1:], values[:-1], out=head[1:])
    return np.flatnonzero(head)


def _paths_from_runs(
    starts: np.ndarray, values: np.ndarray, n: int, root: str | os.PathLike | None
) -> np.ndarray:
    """Object array of ``n`` str paths from runs (``starts``, bytes/str ``values``), less
    cryoSPARC's leading '>', under ``root``; each distinct path is decoded once."""
    if n == 0:
        return np.zeros(0, dtype=object)
    uniq, inverse = np.unique(values, return_inverse=True)
    decoded = []
    for raw in uniq.tolist():
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        text = text.removeprefix(">")
        if root is not None and not os.path.isabs(text):
            text = os.path.join(os.fspath(root), text)
        decoded.append(text)
    lengths = np.diff(np.append(starts, n))
    return np.repeat(np.array(decoded, dtype=object)[inverse.reshape(-1)], lengths)


def _decode_paths(values: np.ndarray, root: str | os.PathLike | None) -> np.ndarray:
    """Bytes/str path column -> object array of str, less cryoSPARC's leading '>', under root.

    Particles of one stack (picks of one micrograph) are consecutive in every real file:
    only the first row of each run of equal paths is decoded and joined.
    """
    starts = _run_heads(values)
    return _paths_from_runs(starts, np.asarray(values)[starts], len(values), root)


def _require(path: Any, names: tuple[str, ...], fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataFormatError(
            f"{path}: {what} needs the field(s) {', '.join(missing)}; the file has "
            f"{', '.join(names)}"
        )


def _cos_sin_from_tan_half(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cos x, sin x)`` from ``u = tan(x / 2)``: ``((1 − u²) / (1 + u²), 2u / (1 + u²))``
    (``1 − u²`` as ``(1 − u)(1 + u)``: no cancellation near ``u = 1``, ``x = π/2``).
    Tangents are finite for finite ``x``, so every ``x`` works, including ``±π``."""
    inv = 1.0 / (1.0 + u * u)
    return ((1.0 - u) * (1.0 + u)) * inv, (2.0 * inv) * u


def _euler_to_pose(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """:func:`conventions.euler_to_cryosparc_pose`, ~1.9× faster: the same quaternion, its
    sines and cosines from tangents of half angles (numpy's float64 ``tan`` is vectorised,
    its ``sin`` and ``cos`` are not: 1.4 vs 12 ms per million). Equal to it to 1e-14 rad
    (tested, and against scipy's rotations)."""
    rot, tilt, psi = np.broadcast_arrays(
        np.asarray(rot_deg, dtype=np.float64),
        np.asarray(tilt_deg, dtype=np.float64),
        np.asarray(psi_deg, dtype=np.float64),
    )
    quarter = np.pi / 720.0  # degrees -> half of the quaternion's half angle, in radians
    cb, sb = _cos_sin_from_tan_half(np.tan(tilt * quarter))
    cs, ss = _cos_sin_from_tan_half(np.tan((rot + psi) * quarter))
    cd, sd = _cos_sin_from_tan_half(np.tan((psi - rot) * quarter))
    qw, qz, qx, qy = cb * cs, cb * ss, sb * sd, sb * cd
    norm_v = np.sqrt(qx * qx + qy * qy + qz * qz)
    theta = 2.0 * np.arctan2(norm_v, np.abs(qw))  # the angle in [0, pi] (q or -q)
    small = norm_v <= 1e-12
    ratio = np.divide(theta, norm_v, out=np.full(norm_v.shape, 2.0), where=~small)
    ratio *= np.copysign(1.0, qw)
    out = np.empty(qw.shape + (3,))
    np.multiply(qx, ratio, out=out[..., 0])
    np.multiply(qy, ratio, out=out[..., 1])
    np.multiply(qz, ratio, out=out[..., 2])
    return out


def _poses_to_euler(pose_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conventions.cryosparc_pose_to_euler` of ``(n, 3)`` poses, a block of rows at
    a time (its dozen temporaries stay in cache instead of being 1 M-row arrays)."""
    n = len(pose_rad)
    angles = tuple(np.empty(n) for _ in range(3))
    for sl in _blocks(n):
        for out, values in zip(angles, cv.cryosparc_pose_to_euler(pose_rad[sl]), strict=True):
            out[sl] = values
    return angles


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


def _best_class_alignment(
    path: Any, data: Mapping[str, np.ndarray], names: tuple[str, ...], n: int
) -> tuple | None:
    """Pose of each particle's most probable class in a multi-class ``.cs`` (as pyem).

    cryoSPARC 4.5+ writes ``alignments3D_multi/*`` with one entry per class
    (``pose`` ``(n, K, 3)``, ``shift`` ``(n, K, 2)``, ``class_posterior`` ``(n, K)``);
    earlier versions ``alignments_class_<k>/*``. Returns ``(prefix, pose, shift, psize,
    class, split)`` for the class of highest posterior, or None without such fields.
    The per-class fields stay in ``extra``.
    """
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


def _optics_groups(
    path: Any, data: Mapping[str, np.ndarray], names: tuple[str, ...], n: int
) -> tuple[np.ndarray, dict]:
    """Optics group per row (``ctf/exp_group_id`` + 1, as pyem) and the optics table.

    Rows of one exposure group must share pixel size, voltage, Cs, amplitude contrast and
    box size; a group that does not is a :class:`DataFormatError` naming the row and group.
    """
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

    The file is read in blocks of rows, each copied field by field while it is in cache
    (:func:`_read_fields`); the image paths are decoded once per run of equal paths.
    """
    layout = load_cs(path, mmap=True)  # the header: names, rows, where they start
    names = layout.dtype.names
    _require(path, names, REQUIRED_PARTICLE_FIELDS, "a particle set")
    if any(f in names for f in CTF_FIELDS):
        _require(path, names, CTF_FIELDS + _OPTICS_CTF_FIELDS, "the CTF of a particle")
    if "location/center_x_frac" in names:
        _require(path, names, ("location/center_y_frac", "location/micrograph_shape"), "location")
    if micrograph_names is not None:
        _require(path, names, ("location/micrograph_path",), "micrograph_names")
    prefix = _alignment_prefix(names)
    consumed = set(_CONSUMED)
    if prefix is not None:
        _require(path, names, (f"{prefix}/shift",), f"{prefix} poses")
        consumed.update(f"{prefix}/{k}" for k in _ALIGN_CONSUMED)
    kept = {name: None for name in names if name not in consumed}  # extra, as they are
    kept["blob/idx"] = np.int32  # image_index
    converted = {name: None for name in names if name in consumed and name not in kept}
    del converted["blob/path"]  # decoded once per run instead
    data, runs = _read_fields(path, layout, kept, runs=("blob/path",), scratch=converted)
    n = len(layout)
    del layout
    cols: dict[str, Any] = {
        "image": _paths_from_runs(*runs["blob/path"], n, root),
        "image_index": data["blob/idx"],
    }
    if check_files:
        _require_files(path, cols["image"])
    group, optics = _optics_groups(path, data, names, n)
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
        shape = data["location/micrograph_shape"].reshape(n, -1)
        yfrac = data["location/center_y_frac"]
        if flip_y:
            yfrac = cv.flip_y_frac(yfrac)
        cols["coord_x"] = cv.cryosparc_frac_to_px(data["location/center_x_frac"], shape[:, 1])
        cols["coord_y"] = cv.cryosparc_frac_to_px(yfrac, shape[:, 0])
    if micrograph_names is not None:
        from hpcem.convert.boxfiles import match_micrographs

        micrographs = _decode_paths(data["location/micrograph_path"], None)
        cols["micrograph_id"] = match_micrographs(path, micrographs, micrograph_names)
    if prefix is not None:
        pose = data[f"{prefix}/pose"]
        if prefix == "alignments3D":
            cols["rot"], cols["tilt"], cols["psi"] = _poses_to_euler(pose.reshape(n, 3))
        else:
            cols["psi"] = cv.cryosparc_pose2d_to_psi(pose)
        apix = data[f"{prefix}/psize_A"] if f"{prefix}/psize_A" in names else data["blob/psize_A"]
        shift = data[f"{prefix}/shift"].reshape(n, 2)
        cols["shift_x"] = cv.cryosparc_shift_to_origin_A(shift[:, 0], apix)
        cols["shift_y"] = cv.cryosparc_shift_to_origin_A(shift[:, 1], apix)
        if f"{prefix}/class" in names:
            cols["class_id"] = data[f"{prefix}/class"].astype(np.int32) + 1
        if f"{prefix}/split" in names:
            cols["half_set"] = data[f"{prefix}/split"].astype(np.int8) + 1
    else:
        best = _best_class_alignment(path, data, names, n)
        if best is not None:
            prefix, pose, shift, apix, cls, split = best
            cols["rot"], cols["tilt"], cols["psi"] = _poses_to_euler(pose)
            cols["shift_x"] = cv.cryosparc_shift_to_origin_A(shift[:, 0], apix)
            cols["shift_y"] = cv.cryosparc_shift_to_origin_A(shift[:, 1], apix)
            cols["class_id"] = cls.astype(np.int32) + 1
            if split is not None:
                cols["half_set"] = split.astype(np.int8) + 1
    extra: dict[str, Any] = {name: data[name] for name in names if name not in consumed}
    extra["cs_alignments"] = prefix or ""
    return Converted("hpcem.SetOfParticles", cols, optics, extra, os.fspath(path))


#: A field to write: its dtype, its shape per row, and its values: an array-like of one
#: row per particle (sliced per block), or a function of the block's slice giving them.
_Field = tuple[Any, tuple[int, ...], Any]


def _write_table(path: str | os.PathLike, n: int, fields: Mapping[str, _Field]) -> None:
    """Write ``n`` rows of ``fields`` as ``np.save`` writes the structured array (same
    bytes), one block of rows at a time: no whole table in memory, and each block's fields
    are filled while the block is in cache."""
    dtype = np.dtype([(name, dt, shape) for name, (dt, shape, _) in fields.items()])
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    block = np.empty(min(n, _BLOCK_ROWS), dtype=dtype)
    with open(os.fspath(path), "wb") as fh:
        try:  # np.save's choice: version 1.0 unless the header needs 2.0's longer length
            np.lib.format.write_array_header_1_0(fh, header)
        except ValueError:
            np.lib.format.write_array_header_2_0(fh, header)
        for sl in _blocks(n):
            rows = block[: sl.stop - sl.start]
            for name, (_, _, values) in fields.items():
                rows[name] = values(sl) if callable(values) else values[sl]
            fh.write(rows.view(np.uint8))


class _OpticsRows:
    """Per-row values of the optics table: the table row of each particle's optics group.

    Raises :class:`ValidationError` (before anything is written) for a group not in the
    table. ``values(key, default)`` gives a function of a block's slice (for
    :func:`_write_table`) and whether every row has a finite value.
    """

    def __init__(self, optics: Mapping[str, Any], group: np.ndarray, what: str, item: str):
        self.optics = optics
        ids = np.asarray(optics.get("optics_group", ()), dtype=np.int64)
        self.rows = None
        if len(ids) == 0:
            return
        if len(group) == 0:
            self.rows = self.used = np.zeros(0, dtype=np.int64)
            return
        lo, hi = int(min(ids.min(), group.min())), int(max(ids.max(), group.max()))
        if hi - lo > 4 * len(group) + 1024:  # sparse ids: a sorted search, not a table
            order = np.argsort(ids, kind="stable")
            pos = np.clip(np.searchsorted(ids, group, sorter=order), 0, len(ids) - 1)
            rows = order[pos]
            rows[ids[rows] != group] = -1
        else:
            table = np.full(hi - lo + 1, -1, dtype=np.int64)
            table[ids[::-1] - lo] = np.arange(len(ids))[::-1]  # the first row of an id
            rows = table[group - lo]
        if np.any(rows < 0):
            bad = int(group[np.argmax(rows < 0)])
            raise ValidationError(
                f"{what}: optics group {bad} of a {item} is not in the optics table"
            )
        self.rows = rows
        self.used = np.flatnonzero(np.bincount(rows, minlength=len(ids)))  # rows in use

    def values(self, key: str, default: float) -> tuple[Any, bool]:
        """(function of a slice -> the rows' values of optics column ``key``, all finite)."""
        if key not in self.optics or self.rows is None:
            return (lambda sl: default), bool(np.isfinite(default))
        table = np.asarray(self.optics[key])
        finite = bool(np.all(np.isfinite(table[self.used].astype(np.float64))))
        rows = self.rows
        return (lambda sl: table[rows[sl]]), finite


def _uid_source() -> Any:
    """Function of a slice of rows -> those rows' uids (see :func:`new_uids`): a block at
    a time, the same numbers as one call for all rows."""
    rng = np.random.default_rng()
    start, step = rng.integers(0, np.iinfo(np.uint64).max, size=2, dtype=np.uint64)
    step |= np.uint64(1)

    def uids(sl: slice) -> np.ndarray:
        with np.errstate(over="ignore"):
            return start + np.arange(sl.start, sl.stop, dtype=np.uint64) * step

    return uids


def new_uids(n: int) -> np.ndarray:
    """``n`` distinct random-looking 64-bit uids, as cryoSPARC gives every row.

    ``start + i × step`` modulo 2**64 with a random odd ``step``: distinct within the file
    by construction (an odd step is invertible modulo 2**64), random across files.
    """
    return _uid_source()(slice(0, n))


def _path_source(values: Any) -> tuple[np.dtype, Any]:
    """Path column (str/bytes, any array) -> (fixed-width bytes dtype, its values for
    :func:`_write_table`); each run of equal paths is encoded once, rows are gathered
    per block (a 1 M-row column of 50-byte paths is never built)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr.dtype, arr
    if len(arr) == 0:
        return np.dtype("S1"), arr
    starts = _run_heads(arr)
    uniq, inverse = np.unique(arr[starts], return_inverse=True)
    encoded = np.array([str(p).encode("utf-8") for p in uniq.tolist()])[inverse.reshape(-1)]
    lengths = np.diff(np.append(starts, len(arr)))
    run_of_row = np.repeat(np.arange(len(starts), dtype=np.int32), lengths)
    return encoded.dtype, lambda sl: encoded[run_of_row[sl]]


def _encode_paths(values: Any) -> np.ndarray:
    """Path column (str/bytes, any array) -> fixed-width bytes, encoding each distinct path once."""
    arr = np.asarray(values)
    dtype, source = _path_source(arr)
    return source(slice(0, len(arr))) if callable(source) else np.asarray(source, dtype)


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

    Every check is made before the file is opened; the rows are then computed and written
    in blocks (:func:`_write_table`), so memory stays near the size of the columns.
    """
    for name in ("image", "image_index"):
        if name not in columns:
            raise ValidationError(f"write_particles_cs: column '{name}' is required")
    col = {name: np.asarray(values) for name, values in columns.items()}
    extra = dict(extra or {})
    n = len(col["image"])
    for name, values in col.items():
        if values.ndim != 1 or len(values) != n:
            raise ValidationError(
                f"write_particles_cs: column '{name}' has shape {values.shape}, "
                f"'image' has {n} rows"
            )
    group = col.get("optics_group", np.ones(n, dtype=np.int64)).astype(np.int64, copy=False)
    per_row = _OpticsRows(optics, group, "write_particles_cs", "particle")
    psize, finite = per_row.values("pixel_size_A", np.nan)
    if not finite:
        raise ValidationError("write_particles_cs: the optics table needs pixel_size_A")
    out: dict[str, _Field] = {}
    if "uid" in extra and len(np.asarray(extra["uid"])) == n:
        out["uid"] = (np.uint64, (), np.asarray(extra["uid"]))
    else:
        out["uid"] = (np.uint64, (), _uid_source())
    path_dtype, paths = _path_source(col["image"])
    out["blob/path"] = (path_dtype, (), paths)
    out["blob/idx"] = (np.uint32, (), col["image_index"])
    size, _ = per_row.values("image_size_px", 0)
    out["blob/shape"] = (np.uint32, (2,), lambda sl: np.asarray(size(sl))[..., None])
    out["blob/psize_A"] = (np.float32, (), psize)
    if "defocus_u" in col:
        for key, cs_name in (
            ("voltage_kV", "ctf/accel_kv"),
            ("spherical_aberration_mm", "ctf/cs_mm"),
            ("amplitude_contrast", "ctf/amp_contrast"),
        ):
            values, finite = per_row.values(key, np.nan)
            if not finite:
                raise ValidationError(f"write_particles_cs: the CTF needs {key} in the optics")
            out[cs_name] = (np.float32, (), values)
        out["ctf/exp_group_id"] = (np.uint32, (), lambda sl: group[sl] - 1)
        out["ctf/df1_A"] = (np.float32, (), col["defocus_u"])
        out["ctf/df2_A"] = (np.float32, (), col["defocus_v"])
        angle = col.get("defocus_angle", np.zeros(n))
        out["ctf/df_angle_rad"] = (
            np.float32,
            (),
            lambda sl: cv.deg_to_cryosparc_df_angle(angle[sl]),
        )
        phase = col.get("phase_shift", np.zeros(n))
        out["ctf/phase_shift_rad"] = (
            np.float32,
            (),
            lambda sl: np.deg2rad(np.asarray(phase[sl], np.float64)),
        )
        if "ctf_fit_resolution" in col:
            out["ctf/ctf_fit_to_A"] = (np.float32, (), col["ctf_fit_resolution"])
        if "ctf_fit_score" in col:
            out["ctf/cross_corr_ctffind4"] = (np.float32, (), col["ctf_fit_score"])
    if micrograph_shape is None:
        micrograph_shape = extra.get("location/micrograph_shape")
    if micrograph_path is None:
        micrograph_path = extra.get("location/micrograph_path")
    if "coord_x" in col and micrograph_shape is not None:
        shape = np.broadcast_to(np.asarray(micrograph_shape, dtype=np.uint32), (n, 2))
        if micrograph_path is not None:
            mics = np.asarray(micrograph_path)
            mics = np.broadcast_to(mics, (n,)) if mics.ndim == 0 else mics
            mic_dtype, mic_paths = _path_source(mics)
            out["location/micrograph_path"] = (mic_dtype, (), mic_paths)
        out["location/micrograph_shape"] = (np.uint32, (2,), shape)
        x, y = col["coord_x"], col["coord_y"]
        out["location/center_x_frac"] = (
            np.float32,
            (),
            lambda sl: cv.px_to_cryosparc_frac(x[sl], shape[sl, 1]),
        )
        out["location/center_y_frac"] = (
            np.float32,
            (),
            lambda sl: cv.px_to_cryosparc_frac(y[sl], shape[sl, 0]),
        )
    if alignments is None:
        if "rot" in col or "tilt" in col:
            alignments = "alignments3D"
        elif "psi" in col:
            alignments = "alignments2D"
    elif alignments not in ("alignments3D", "alignments2D"):
        raise ValidationError(f"write_particles_cs: unknown alignments {alignments!r}")
    if alignments is not None:
        out.update(_alignment_fields(alignments, col, extra, psize, n))
    for name, values in extra.items():
        if name in out or "/" not in name:
            continue
        arr = np.asarray(values)
        if arr.ndim >= 1 and len(arr) == n:
            out[name] = (arr.dtype, arr.shape[1:], arr)
    _write_table(path, n, out)


def _alignment_fields(
    prefix: str, col: Mapping[str, np.ndarray], extra: Mapping[str, Any], psize: Any, n: int
) -> dict[str, _Field]:
    """``alignments3D/*`` or ``alignments2D/*`` fields of particle columns: the pose from
    the Euler angles, the shift in pixels of ``psize_A`` (``extra``'s, else the image's),
    the 0-based class and half set."""
    zero = np.zeros(1)
    rot, tilt, psi = (col.get(k, zero) for k in ("rot", "tilt", "psi"))
    apix_name = f"{prefix}/psize_A"
    apix = np.asarray(extra[apix_name], np.float64) if apix_name in extra else None
    if apix is not None and apix.ndim and apix.shape != (n,):
        raise ValidationError(
            f"write_particles_cs: extra '{apix_name}' has shape {apix.shape} for {n} particles"
        )

    def pixel_size(sl: slice) -> np.ndarray:
        if apix is None:
            return np.asarray(psize(sl), np.float64)
        return apix[sl] if apix.ndim else apix

    def pose(sl: slice) -> np.ndarray:
        if prefix == "alignments3D":
            return _euler_to_pose(*(a[sl] if len(a) == n else a for a in (rot, tilt, psi)))
        return cv.psi_to_cryosparc_pose2d(psi[sl] if len(psi) == n else psi)

    def shift(sl: slice) -> np.ndarray:
        apix_sl = pixel_size(sl)
        out = np.empty((sl.stop - sl.start, 2))
        for k, name in enumerate(("shift_x", "shift_y")):
            out[:, k] = cv.origin_A_to_cryosparc_shift(col[name][sl], apix_sl) if name in col else 0
        return out

    fields: dict[str, _Field] = {
        f"{prefix}/pose": (np.float32, (3,) if prefix == "alignments3D" else (), pose),
        f"{prefix}/shift": (np.float32, (2,), shift),
        apix_name: (np.float32, (), pixel_size),
    }
    if "class_id" in col:
        cls = col["class_id"]
        fields[f"{prefix}/class"] = (
            np.uint32,
            (),
            lambda sl: np.clip(cls[sl].astype(np.int64) - 1, 0, None),
        )
    if "half_set" in col:
        half = col["half_set"]
        fields[f"{prefix}/split"] = (
            np.uint32,
            (),
            lambda sl: np.clip(half[sl].astype(np.int64) - 1, 0, None),
        )
    return fields


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

    layout = load_cs(path, mmap=True)  # the header: names, rows, where they start
    names = layout.dtype.names
    fields = (
        "location/micrograph_path",
        "location/center_x_frac",
        "location/center_y_frac",
        "location/micrograph_shape",
    )
    _require(path, names, fields, "a coordinate set")
    data, runs = _read_fields(path, layout, dict.fromkeys(names), runs=fields[:1])
    n = len(layout)
    del layout
    shape = data["location/micrograph_shape"].reshape(n, -1)
    yfrac = data["location/center_y_frac"]
    if flip_y:
        yfrac = cv.flip_y_frac(yfrac)
    micrographs = _paths_from_runs(*runs[fields[0]], n, None)
    cols: dict[str, Any] = {
        "micrograph_id": match_micrographs(path, micrographs, micrograph_names),
        "x": cv.cryosparc_frac_to_px(data["location/center_x_frac"], shape[:, 1]),
        "y": cv.cryosparc_frac_to_px(yfrac, shape[:, 0]),
    }
    if "pick_stats/ncc_score" in names:
        cols["score"] = data["pick_stats/ncc_score"].astype(np.float64)
    extra = {
        "micrograph": micrographs,
        **{k: data[k] for k in names if k not in fields[1:3]},
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
    per_row = _OpticsRows(optics, group, "write_micrographs_cs", "micrograph")
    psize, finite = per_row.values("pixel_size_A", np.nan)
    if not finite:
        raise ValidationError("write_micrographs_cs: the optics table needs pixel_size_A")
    everything = slice(0, n)
    uid = extra.get("uid")
    out: dict[str, np.ndarray] = {
        "uid": np.asarray(uid, np.uint64) if uid is not None and len(uid) == n else new_uids(n),
        "micrograph_blob/path": _encode_paths(columns["image"]),
        "micrograph_blob/idx": np.zeros(n, dtype=np.uint32),
        "micrograph_blob/shape": np.ascontiguousarray(
            np.broadcast_to(np.asarray(micrograph_shape, dtype=np.uint32), (n, 2))
        ),
        "micrograph_blob/psize_A": np.broadcast_to(psize(everything), n).astype(np.float32),
    }
    if ctfs is not None:
        ids = np.asarray(columns["id"], dtype=np.int64) if "id" in columns else None
        rows = _ctf_rows(ctfs, ids, n)
        for key, cs_name in (
            ("voltage_kV", "ctf/accel_kv"),
            ("spherical_aberration_mm", "ctf/cs_mm"),
            ("amplitude_contrast", "ctf/amp_contrast"),
        ):
            values, finite = per_row.values(key, np.nan)
            if not finite:
                raise ValidationError(f"write_micrographs_cs: the CTF needs {key} in the optics")
            out[cs_name] = np.broadcast_to(values(everything), n).astype(np.float32)
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
    _write_table(path, n, {name: (v.dtype, v.shape[1:], v) for name, v in out.items()})
