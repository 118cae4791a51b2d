"""cryoSPARC ``.cs`` read and written a block of rows at a time (hpcem.convert.cryosparc).

The blocked writer must give exactly ``np.save``'s bytes of the whole table (built here
field by field from the conventions), and the blocked reader ``np.load``'s values, with
runs of equal paths across block boundaries, a path field at an odd offset and a width
that is not a multiple of 8; the reader's Euler angles, computed block by block, equal
the conventions function's of the whole column. The writer's Euler -> pose formula (tangents of
half angles) must equal :mod:`hpcem.convert.conventions`' and scipy's rotations. Small
blocks (64 rows) keep the files tiny while crossing many boundaries.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hpcem.convert import conventions as cv
from hpcem.convert import cryosparc
from hpcem.convert.cryosparc import read_particles_cs, write_particles_cs
from hpcem.errors import DataFormatError, ValidationError


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(cryosparc, "_BLOCK_ROWS", 64)


def _npsave_bytes(table: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    return buf.getvalue()


def _angles(rng, n):
    rot, tilt, psi = rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)
    if n >= 10:
        tilt[:4] = [0.0, 180.0, 1e-9, 90.0]  # gimbal lock, nearly locked, the equator
        rot[4:8] = [180.0, -180.0, 540.0, -721.5]  # the wrap and angles outside ±180
        psi[8:10] = [180.0, -180.0]
    return rot, tilt, psi


def test_euler_to_pose_equals_conventions_and_scipy():
    rng = np.random.default_rng(11)
    rot, tilt, psi = _angles(rng, 4000)
    pose = cryosparc._euler_to_pose(rot, tilt, psi)
    np.testing.assert_allclose(pose, cv.euler_to_cryosparc_pose(rot, tilt, psi), rtol=0, atol=1e-14)
    assert np.all(np.linalg.norm(pose, axis=1) <= np.pi + 1e-12)
    # scipy: the pose is the rotation vector of RELION's matrix transposed (pyem's expmap)
    relion = Rotation.from_euler("ZYZ", np.c_[rot, tilt, psi], degrees=True).as_matrix()
    np.testing.assert_allclose(Rotation.from_rotvec(pose).as_matrix(), relion, atol=1e-12)


def _particles(rng, n, paths):
    rot, tilt, psi = _angles(rng, n)
    cols = {
        "image": np.array(paths, dtype=object),
        "image_index": np.arange(n, dtype=np.int32) % 37,
        "defocus_u": rng.uniform(8000, 30000, n).astype(np.float32),
        "defocus_v": rng.uniform(8000, 30000, n).astype(np.float32),
        "defocus_angle": rng.uniform(-180, 180, n).astype(np.float32),
        "phase_shift": rng.uniform(0, 90, n).astype(np.float32),
        "ctf_fit_resolution": rng.uniform(2.5, 6, n).astype(np.float32),
        "rot": rot.astype(np.float32),
        "tilt": tilt.astype(np.float32),
        "psi": psi.astype(np.float32),
        "shift_x": rng.normal(0, 2, n).astype(np.float32),
        "shift_y": rng.normal(0, 2, n).astype(np.float32),
        "class_id": rng.integers(1, 5, n).astype(np.int32),
        "half_set": rng.integers(1, 3, n).astype(np.int8),
        "optics_group": rng.choice([2, 5, 9], n).astype(np.int32),
    }
    optics = {
        "optics_group": np.array([9, 2, 5], dtype=np.int32),  # not sorted
        "pixel_size_A": np.array([1.06, 0.83, 1.2], dtype=np.float32),
        "voltage_kV": np.array([300.0, 200.0, 300.0], dtype=np.float32),
        "spherical_aberration_mm": np.array([2.7, 2.0, 0.01], dtype=np.float32),
        "amplitude_contrast": np.array([0.1, 0.07, 0.1], dtype=np.float32),
        "image_size_px": np.array([256, 180, 300], dtype=np.int32),
    }
    return cols, optics


def _run_paths(rng, n):
    """Runs of equal paths of random lengths (some longer than a block, one ending exactly
    at a block boundary), a path that comes back later, one a prefix of another."""
    pool = ["J1/extract/a.mrc", "J1/extract/a.mrcs", "J1/extract/bb.mrc", ">J1/imported/c.mrcs"]
    lengths = [64, 1, 150, 3, 7, 64, 2]
    out = []
    while len(out) < n:
        out += [pool[len(out) % len(pool)]] * lengths[len(out) % len(lengths)]
        out += [pool[rng.integers(len(pool))]] * int(rng.integers(1, 90))
    return out[:n]


def test_blocked_write_is_np_save_of_the_whole_table(tmp_path, small_blocks):
    rng = np.random.default_rng(4)
    n = 700
    cols, optics = _particles(rng, n, _run_paths(rng, n))
    uid = rng.integers(0, 2**63, n, dtype=np.uint64)
    sign = rng.choice([-1.0, 1.0], n).astype(np.float32)
    out = tmp_path / "blocks.cs"
    write_particles_cs(out, cols, optics, extra={"uid": uid, "blob/sign": sign})
    # the same table built whole, field by field, from the conventions
    row = {9: 0, 2: 1, 5: 2}
    opt = np.array([row[g] for g in cols["optics_group"]])
    psize = optics["pixel_size_A"][opt]
    size = optics["image_size_px"][opt].astype(np.uint32)
    paths = np.array([p.encode() for p in cols["image"]])
    fields = {
        "uid": uid,
        "blob/path": paths,
        "blob/idx": cols["image_index"].astype(np.uint32),
        "blob/shape": np.c_[size, size],
        "blob/psize_A": psize,
        "ctf/accel_kv": optics["voltage_kV"][opt],
        "ctf/cs_mm": optics["spherical_aberration_mm"][opt],
        "ctf/amp_contrast": optics["amplitude_contrast"][opt],
        "ctf/exp_group_id": (cols["optics_group"] - 1).astype(np.uint32),
        "ctf/df1_A": cols["defocus_u"],
        "ctf/df2_A": cols["defocus_v"],
        "ctf/df_angle_rad": np.deg2rad(cols["defocus_angle"].astype(np.float64)),
        "ctf/phase_shift_rad": np.deg2rad(cols["phase_shift"].astype(np.float64)),
        "ctf/ctf_fit_to_A": cols["ctf_fit_resolution"],
        "alignments3D/pose": cryosparc._euler_to_pose(cols["rot"], cols["tilt"], cols["psi"]),
        "alignments3D/shift": np.c_[cols["shift_x"], cols["shift_y"]].astype(np.float64)
        / psize.astype(np.float64)[:, None],
        "alignments3D/psize_A": psize,
        "alignments3D/class": (cols["class_id"] - 1).astype(np.uint32),
        "alignments3D/split": (cols["half_set"] - 1).astype(np.uint32),
        "blob/sign": sign,
    }
    kinds = {"uid": np.uint64, "blob/path": paths.dtype}
    for name in ("blob/idx", "blob/shape", "ctf/exp_group_id", "alignments3D/class"):
        kinds[name] = np.uint32
    kinds["alignments3D/split"] = np.uint32
    table = np.empty(
        n, dtype=[(k, kinds.get(k, np.float32), np.shape(v)[1:]) for k, v in fields.items()]
    )
    for name, values in fields.items():
        table[name] = values
    assert out.read_bytes() == _npsave_bytes(table)
    # and the cryoSPARC pose is scipy's rotation vector of RELION's matrix transposed
    euler = np.c_[cols["rot"], cols["tilt"], cols["psi"]].astype(np.float64)
    written = np.load(out)["alignments3D/pose"].astype(np.float64)
    np.testing.assert_allclose(
        Rotation.from_rotvec(written).as_matrix(),
        Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix(),
        atol=1e-6,  # float32 poses
    )


def _odd_table(rng, n, paths):
    """A .cs whose path field is 13 bytes at offset 9 (after a one-byte field)."""
    dtype = [
        ("uid", "<u8"),
        ("flag", "u1"),
        ("blob/path", "S13"),
        ("blob/idx", "<u4"),
        ("blob/psize_A", "<f4"),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/class", "<u4"),
        ("alignments3D/split", "<u4"),
    ]
    table = np.zeros(n, dtype=dtype)
    table["uid"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    table["flag"] = rng.integers(0, 255, n)
    table["blob/path"] = paths
    table["blob/idx"] = np.arange(n)
    table["blob/psize_A"] = 1.5
    table["alignments3D/pose"] = rng.normal(0, 1.2, (n, 3))
    table["alignments3D/shift"] = rng.normal(0, 3, (n, 2))
    table["alignments3D/class"] = rng.integers(0, 4, n)
    table["alignments3D/split"] = rng.integers(0, 2, n)
    return table


def test_blocked_read_equals_np_load(tmp_path, small_blocks, monkeypatch):
    rng = np.random.default_rng(6)
    n = 900
    pool = [b"a/x.mrc", b"a/x.mrcs", b">a/y12345.mrc", b"b/x.mrc", b"a/x.mr"]
    paths = []
    while len(paths) < n:  # runs across block boundaries; a path seen before comes back
        paths += [pool[int(rng.integers(len(pool)))]] * int(rng.choice([1, 2, 63, 64, 65, 200]))
    paths = paths[:n]
    table = _odd_table(rng, n, paths)
    assert table.dtype.fields["blob/path"][1] == 9
    path = tmp_path / "odd.cs"
    with open(path, "wb") as fh:
        np.save(fh, table)
    conv = read_particles_cs(path, root="/proj")
    raw = np.load(path)
    expected = ["/proj/" + p.decode().removeprefix(">") for p in raw["blob/path"]]
    assert conv.columns["image"].tolist() == expected
    np.testing.assert_array_equal(conv.columns["image_index"], raw["blob/idx"])
    for name in ("uid", "flag", "alignments3D/psize_A"):
        if name in raw.dtype.names:
            np.testing.assert_array_equal(conv.extra[name], raw[name])
            assert conv.extra[name].flags.c_contiguous
    pose = raw["alignments3D/pose"].astype(np.float64)
    ref = np.array(cv.cryosparc_pose_to_euler(pose))
    np.testing.assert_array_equal([conv.columns[k] for k in ("rot", "tilt", "psi")], ref)
    np.testing.assert_allclose(conv.columns["shift_y"], raw["alignments3D/shift"][:, 1] * 1.5)
    np.testing.assert_array_equal(conv.columns["class_id"], raw["alignments3D/class"] + 1)
    # the same with one block for the whole file
    monkeypatch.setattr(cryosparc, "_BLOCK_ROWS", 1 << 20)
    again = read_particles_cs(path, root="/proj")
    for name, values in conv.columns.items():
        assert np.asarray(again.columns[name]).tolist() == np.asarray(values).tolist(), name


def test_read_write_read_across_blocks(tmp_path, small_blocks):
    """hpcem -> .cs -> hpcem: the columns come back (float32 rounding; rotations 1e-6)."""
    rng = np.random.default_rng(9)
    n = 500
    cols, optics = _particles(rng, n, _run_paths(rng, n))
    out = tmp_path / "trip.cs"
    write_particles_cs(out, cols, optics)
    back = read_particles_cs(out)
    assert back.columns["image"].tolist() == [p.removeprefix(">") for p in cols["image"]]
    for name in ("image_index", "class_id", "half_set", "optics_group"):
        np.testing.assert_array_equal(back.columns[name], cols[name], err_msg=name)
    for name in ("defocus_u", "defocus_v", "ctf_fit_resolution", "shift_x", "shift_y"):
        np.testing.assert_allclose(back.columns[name], cols[name], rtol=1e-6, atol=1e-6)
    e1 = np.c_[cols["rot"], cols["tilt"], cols["psi"]].astype(np.float64)
    e2 = np.c_[back.columns["rot"], back.columns["tilt"], back.columns["psi"]]
    m1 = Rotation.from_euler("ZYZ", e1, degrees=True).as_matrix()
    m2 = Rotation.from_euler("ZYZ", e2, degrees=True).as_matrix()
    np.testing.assert_allclose(m2, m1, atol=1e-6)
    assert len(np.unique(np.load(out)["uid"])) == n
    for key in ("optics_group", "pixel_size_A", "voltage_kV", "image_size_px"):
        order = np.argsort(optics["optics_group"])
        np.testing.assert_allclose(back.optics[key], optics[key][order], err_msg=key)


@pytest.mark.filterwarnings("ignore:Stored array in format 2.0")
def test_empty_wide_and_truncated_files(tmp_path, small_blocks):
    rng = np.random.default_rng(2)
    cols, optics = _particles(rng, 0, [])
    empty = tmp_path / "empty.cs"
    write_particles_cs(empty, cols, optics)
    assert empty.read_bytes() == _npsave_bytes(np.load(empty))
    assert len(np.load(empty)) == 0 and len(read_particles_cs(empty)) == 0
    # a header over 65,535 bytes: numpy format 2.0, as np.save chooses
    cols, optics = _particles(rng, 5, ["s.mrcs"] * 5)
    many = {f"alignments_class_{k}/class_posterior": rng.random(5) for k in range(2500)}
    wide = tmp_path / "wide.cs"
    write_particles_cs(wide, cols, optics, extra=many)
    assert wide.read_bytes()[6:8] == b"\x02\x00"
    assert wide.read_bytes() == _npsave_bytes(np.load(wide, max_header_size=10**7))
    assert len(read_particles_cs(wide).extra) > 2500
    # a file cut short is refused, naming it
    cols, optics = _particles(rng, 300, _run_paths(rng, 300))
    cut = tmp_path / "cut.cs"
    write_particles_cs(cut, cols, optics)
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"cut\.cs"):
        read_particles_cs(cut)


def test_unknown_optics_group_refused_before_the_file_is_made(tmp_path):
    rng = np.random.default_rng(3)
    cols, optics = _particles(rng, 10, ["s.mrcs"] * 10)
    cols["optics_group"][7] = 4
    out = tmp_path / "never.cs"
    with pytest.raises(ValidationError, match="optics group 4 of a particle"):
        write_particles_cs(out, cols, optics)
    assert not out.exists()
    cols["optics_group"][7] = 2
    with pytest.raises(ValidationError, match=r"column 'tilt' has shape \(9,\), 'image' has 10"):
        write_particles_cs(out, {**cols, "tilt": cols["tilt"][:9]}, optics)
    del optics["voltage_kV"]
    with pytest.raises(ValidationError, match="CTF needs voltage_kV"):
        write_particles_cs(out, cols, optics)
    assert not out.exists()


def test_coordinates_read_in_blocks_equal_np_load(tmp_path, small_blocks):
    rng = np.random.default_rng(8)
    n = 400
    mics = [b"J3/motion/mic_%03d.mrc" % (i // 70) for i in range(n)]  # runs of 70 picks
    dtype = [
        ("uid", "<u8"),
        ("location/micrograph_path", "S30"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
        ("pick_stats/ncc_score", "<f4"),
    ]
    table = np.zeros(n, dtype=dtype)
    table["uid"] = np.arange(n)
    table["location/micrograph_path"] = mics
    table["location/micrograph_shape"] = [4096, 5760]
    table["location/center_x_frac"] = rng.random(n)
    table["location/center_y_frac"] = rng.random(n)
    table["pick_stats/ncc_score"] = rng.random(n)
    with open(tmp_path / "picks.cs", "wb") as fh:
        np.save(fh, table)
    names = {f"MotionCorr/mic_{i:03d}.mrc": 100 + i for i in range(6)}
    conv = cryosparc.read_coordinates_cs(tmp_path / "picks.cs", micrograph_names=names)
    assert conv.columns["micrograph_id"].tolist() == [100 + i // 70 for i in range(n)]
    np.testing.assert_array_equal(
        conv.columns["x"], table["location/center_x_frac"].astype(np.float64) * 5760
    )
    np.testing.assert_array_equal(
        conv.columns["y"], table["location/center_y_frac"].astype(np.float64) * 4096
    )
    assert conv.extra["micrograph"].tolist() == [m.decode() for m in mics]
    np.testing.assert_array_equal(conv.extra["location/micrograph_path"], mics)
