"""cryoSPARC ``.cs`` conversion on real files: values against ``np.load`` (and RELION's
STAR of the same particles, read with ``starfile``), read -> write -> read round trips,
written files loaded by cryosparc-tools itself, and bad input.

Round-trip tolerance: ``.cs`` stores float32, so values come back to float32 rounding
(defocus, shifts, CTF: exact float32 values; Euler angles through the float32 axis-angle
pose: 1e-4°; the rotation matrices to 1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hpcem.convert.cryosparc import (
    read_coordinates_cs,
    read_micrograph_ctfs_cs,
    read_micrographs_cs,
    read_particles_cs,
    write_micrographs_cs,
    write_particles_cs,
)
from hpcem.errors import DataFormatError, ValidationError
from hpcem.model.types import ACQUISITION, SET_TYPES

CS_FILES = (
    "empiar_10076_7.cs",
    "cryosparc_P12_J24_001_particles.cs",
    "cryosparc_J2_particles_exported.cs",
)


def _cs(shared_data, name):
    return shared_data / "cryodrgn-4.3.1" / name


def test_p12_values_against_np_load(shared_data):
    path = _cs(shared_data, "cryosparc_P12_J24_001_particles.cs")
    raw = np.load(path)
    conv = read_particles_cs(path)
    cols = conv.columns
    assert conv.set_type == "hpcem.SetOfParticles" and len(conv) == 2019
    assert cols["image"][0] == raw["blob/path"][0].decode()
    assert cols["image"][0].startswith("J19/extract/20150917_05196")
    np.testing.assert_array_equal(cols["image_index"], raw["blob/idx"])
    np.testing.assert_array_equal(cols["defocus_u"], raw["ctf/df1_A"])
    np.testing.assert_array_equal(cols["defocus_v"], raw["ctf/df2_A"])
    np.testing.assert_allclose(cols["defocus_angle"], np.degrees(raw["ctf/df_angle_rad"]))
    apix = raw["alignments3D/psize_A"].astype(np.float64)
    np.testing.assert_allclose(cols["shift_x"], raw["alignments3D/shift"][:, 0] * apix)
    np.testing.assert_allclose(cols["shift_y"], raw["alignments3D/shift"][:, 1] * apix)
    np.testing.assert_array_equal(cols["class_id"], raw["alignments3D/class"] + 1)
    np.testing.assert_array_equal(cols["half_set"], raw["alignments3D/split"] + 1)
    assert set(np.unique(cols["half_set"])) == {1, 2}
    # pose: RELION's matrix (scipy intrinsic ZYZ, transposed) = Rodrigues(pose) transposed
    euler = np.c_[cols["rot"], cols["tilt"], cols["psi"]]
    a = np.swapaxes(Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix(), 1, 2)
    r = Rotation.from_rotvec(raw["alignments3D/pose"].astype(np.float64)).as_matrix()
    np.testing.assert_allclose(a, np.swapaxes(r, 1, 2), atol=1e-9)
    opt = conv.optics
    assert opt["pixel_size_A"].tolist() == pytest.approx([2.95])
    assert opt["voltage_kV"].tolist() == [200.0]
    assert opt["spherical_aberration_mm"].tolist() == [2.0]
    assert opt["amplitude_contrast"].tolist() == pytest.approx([0.07])
    assert opt["image_size_px"].tolist() == [180]
    np.testing.assert_array_equal(conv.extra["uid"], raw["uid"])
    np.testing.assert_array_equal(conv.extra["alignments3D/error"], raw["alignments3D/error"])


def test_j2_alignments2d_and_higher_order_ctf(shared_data):
    path = _cs(shared_data, "cryosparc_J2_particles_exported.cs")
    raw = np.load(path)
    conv = read_particles_cs(path, root="/data/P1")
    cols = conv.columns
    assert len(conv) == 22 and "rot" not in cols and "tilt" not in cols
    np.testing.assert_allclose(cols["psi"], np.degrees(raw["alignments2D/pose"]))
    apix = raw["alignments2D/psize_A"].astype(np.float64)
    np.testing.assert_allclose(cols["shift_x"], raw["alignments2D/shift"][:, 0] * apix)
    np.testing.assert_array_equal(cols["class_id"], raw["alignments2D/class"] + 1)
    # cryoSPARC's '>' marker is dropped and the path put under root
    assert raw["blob/path"][0].decode().startswith(">J1/imported/")
    assert (
        cols["image"][0] == "/data/P1/J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"
    )
    for name in ("ctf/tetra_A", "ctf/anisomag", "ctf/trefoil_A", "ctf/tilt_A", "ctf/shift_A"):
        np.testing.assert_array_equal(conv.extra[name], raw[name])
    assert conv.optics["voltage_kV"].tolist() == [300.0]
    assert conv.optics["image_size_px"].tolist() == [300]


def test_empiar_particles_same_in_star_and_cs(shared_data):
    """The same 7 EMPIAR-10076 particles: CTF to 0.01 Å / 0.01° and the image locations
    (file + 0-based index) from RELION's STAR (read with starfile) and from the .cs."""
    import starfile

    star = starfile.read(shared_data / "cryodrgn-4.3.1/empiar_10076_7.star")
    conv = read_particles_cs(_cs(shared_data, "empiar_10076_7.cs"))
    cols = conv.columns
    np.testing.assert_allclose(cols["defocus_u"], star["rlnDefocusU"], atol=0.01)
    np.testing.assert_allclose(cols["defocus_v"], star["rlnDefocusV"], atol=0.01)
    np.testing.assert_allclose(cols["defocus_angle"], star["rlnDefocusAngle"], atol=0.01)
    parts = star["rlnImageName"].str.split("@")
    index1, stack = parts.str[0], parts.str[1]
    np.testing.assert_array_equal(cols["image_index"], index1.astype(int) - 1)
    assert cols["image"].tolist() == stack.tolist()
    # pixel size: RELION 3.0's 1e4 × DetectorPixelSize / Magnification
    apix = 1e4 * star["rlnDetectorPixelSize"][0] / star["rlnMagnification"][0]
    assert conv.optics["pixel_size_A"][0] == pytest.approx(apix, abs=1e-4)
    assert conv.optics["voltage_kV"][0] == star["rlnVoltage"][0]
    assert conv.optics["amplitude_contrast"][0] == pytest.approx(star["rlnAmplitudeContrast"][0])


def test_empiar_particles_same_as_hpcem_relion_reader(shared_data):
    """The same comparison through hpcem's own RELION reader, where it exists."""
    relion = pytest.importorskip("hpcem.convert.relion")
    reader = getattr(relion, "read_particles", None) or getattr(relion, "read_particles_star", None)
    if reader is None:
        pytest.skip("hpcem.convert.relion has no particle reader yet")
    star = reader(shared_data / "cryodrgn-4.3.1/empiar_10076_7.star")
    cs = read_particles_cs(_cs(shared_data, "empiar_10076_7.cs"))
    for name in ("defocus_u", "defocus_v", "defocus_angle"):
        np.testing.assert_allclose(star.columns[name], cs.columns[name], atol=0.01)
    np.testing.assert_array_equal(star.columns["image_index"], cs.columns["image_index"])
    assert [str(p).rsplit("/", 1)[-1] for p in star.columns["image"]] == list(cs.columns["image"])


@pytest.mark.parametrize("name", CS_FILES)
def test_round_trip_and_cryosparc_tools(shared_data, tmp_path, name):
    from cryosparc.dataset import Dataset

    path = _cs(shared_data, name)
    raw = np.load(path)
    first = read_particles_cs(path)
    out = tmp_path / "again.cs"
    write_particles_cs(out, first.columns, first.optics, first.extra)
    second = read_particles_cs(out)
    assert sorted(second.columns) == sorted(first.columns)
    for key, values in first.columns.items():
        if key in ("rot", "tilt", "psi"):
            continue
        if np.asarray(values).dtype.kind == "f":
            np.testing.assert_allclose(second.columns[key], values, rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(second.columns[key], values, err_msg=key)
    if "rot" in first.columns:
        e1 = np.c_[first.columns["rot"], first.columns["tilt"], first.columns["psi"]]
        e2 = np.c_[second.columns["rot"], second.columns["tilt"], second.columns["psi"]]
        m1 = Rotation.from_euler("ZYZ", e1, degrees=True).as_matrix()
        m2 = Rotation.from_euler("ZYZ", e2, degrees=True).as_matrix()
        np.testing.assert_allclose(m2, m1, atol=1e-6)
        wrapped = (e2 - e1 + 180.0) % 360.0 - 180.0
        assert np.abs(wrapped).max() < 1e-4
    for key, values in first.optics.items():
        np.testing.assert_array_equal(second.optics[key], values, err_msg=key)
    # the written file has every field of the original with the same values
    again = np.load(out)
    assert set(again.dtype.names) == set(raw.dtype.names)
    for field in raw.dtype.names:
        if field.endswith("/pose") and raw[field].ndim == 2:
            r1 = Rotation.from_rotvec(raw[field].astype(np.float64)).as_matrix()
            r2 = Rotation.from_rotvec(again[field].astype(np.float64)).as_matrix()
            np.testing.assert_allclose(r2, r1, atol=1e-6)
        elif field == "blob/path":
            assert again[field].tolist() == np.char.lstrip(raw[field], b">").tolist()
        elif raw[field].dtype.kind == "f":
            np.testing.assert_allclose(again[field], raw[field], rtol=1e-6, err_msg=field)
        else:
            np.testing.assert_array_equal(again[field], raw[field], err_msg=field)
    # cryosparc-tools itself loads it, with the same rows
    dataset = Dataset.load(out)
    assert len(dataset) == len(raw)
    np.testing.assert_array_equal(dataset["uid"], raw["uid"])
    np.testing.assert_array_equal(dataset["blob/idx"], raw["blob/idx"])
    np.testing.assert_array_equal(dataset["ctf/df1_A"], raw["ctf/df1_A"])


def test_written_from_hpcem_columns_loads_in_cryosparc_tools(tmp_path):
    """A set made in hpcem (no .cs extras): new unique uids, RELION 3D pose converted."""
    from cryosparc.dataset import Dataset

    rng = np.random.default_rng(3)
    n = 50
    cols = {
        "image": np.array([f"Extract/job004/mic_{i // 10:03d}.mrcs" for i in range(n)], object),
        "image_index": np.arange(n) % 10,
        "defocus_u": rng.uniform(1e4, 2e4, n),
        "defocus_v": rng.uniform(1e4, 2e4, n),
        "defocus_angle": rng.uniform(-180, 180, n),
        "rot": rng.uniform(-180, 180, n),
        "tilt": rng.uniform(0, 180, n),
        "psi": rng.uniform(-180, 180, n),
        "shift_x": rng.normal(0, 3, n),
        "shift_y": rng.normal(0, 3, n),
        "class_id": rng.integers(1, 4, n),
        "half_set": rng.integers(1, 3, n),
        "optics_group": np.ones(n, np.int32),
    }
    optics = {
        "optics_group": np.array([1]),
        "pixel_size_A": np.array([1.1]),
        "voltage_kV": np.array([300.0]),
        "spherical_aberration_mm": np.array([2.7]),
        "amplitude_contrast": np.array([0.1]),
        "image_size_px": np.array([128]),
    }
    out = tmp_path / "made.cs"
    write_particles_cs(out, cols, optics)
    dataset = Dataset.load(out)
    assert len(dataset) == n and len(np.unique(dataset["uid"])) == n
    assert dataset["blob/path"][0] == "Extract/job004/mic_000.mrcs"
    np.testing.assert_allclose(
        dataset["alignments3D/shift"][:, 0], cols["shift_x"] / 1.1, rtol=1e-6
    )
    np.testing.assert_array_equal(dataset["alignments3D/class"], cols["class_id"] - 1)
    # the pose is the rotation whose transpose is RELION's matrix of (rot, tilt, psi)
    a = Rotation.from_euler("ZYZ", np.c_[cols["rot"], cols["tilt"], cols["psi"]], degrees=True)
    r = Rotation.from_rotvec(dataset["alignments3D/pose"].astype(np.float64))
    np.testing.assert_allclose(r.as_matrix(), a.as_matrix(), atol=1e-6)
    back = read_particles_cs(out)
    np.testing.assert_allclose(back.columns["shift_x"], cols["shift_x"], rtol=1e-6, atol=1e-6)


def _location_cs(path, micrographs=("J3/motion/mic_a.mrc", "J3/motion/mic_b.mrc")):
    n = 4
    dtype = [
        ("uid", "<u8"),
        ("location/micrograph_path", "S40"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
        ("pick_stats/ncc_score", "<f4"),
    ]
    table = np.zeros(n, dtype=dtype)
    table["uid"] = np.arange(1, n + 1)
    table["location/micrograph_path"] = [micrographs[i % 2].encode() for i in range(n)]
    table["location/micrograph_shape"] = [4096, 5760]  # (ny, nx)
    table["location/center_x_frac"] = [0.25, 0.5, 0.75, 0.125]
    table["location/center_y_frac"] = [0.5, 0.25, 0.0625, 0.875]
    table["pick_stats/ncc_score"] = [0.1, 0.2, 0.3, 0.4]
    with open(path, "wb") as fh:
        np.save(fh, table)
    return table


def test_coordinates_from_location(tmp_path):
    table = _location_cs(tmp_path / "picked.cs")
    names = {"MotionCorr/mic_a.mrc": 10, "MotionCorr/mic_b.mrc": 11}
    conv = read_coordinates_cs(tmp_path / "picked.cs", micrograph_names=names)
    assert set(conv.columns) <= set(SET_TYPES[conv.set_type].field_names)
    frac_x = table["location/center_x_frac"].astype(np.float64)
    frac_y = table["location/center_y_frac"].astype(np.float64)
    np.testing.assert_array_equal(conv.columns["x"], frac_x * 5760)
    np.testing.assert_array_equal(conv.columns["y"], frac_y * 4096)
    assert conv.columns["micrograph_id"].tolist() == [10, 11, 10, 11]
    flipped = read_coordinates_cs(tmp_path / "picked.cs", flip_y=True)
    np.testing.assert_array_equal(flipped.columns["y"], (1 - frac_y) * 4096)
    with pytest.raises(DataFormatError, match="mic_b"):
        read_coordinates_cs(tmp_path / "picked.cs", micrograph_names={"x/mic_a.mrc": 1})


def test_exposures_and_their_ctf(tmp_path):
    dtype = [
        ("uid", "<u8"),
        ("micrograph_blob/path", "S40"),
        ("micrograph_blob/psize_A", "<f4"),
        ("micrograph_blob/shape", "<u4", (2,)),
        ("ctf/exp_group_id", "<u4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("ctf/ctf_fit_to_A", "<f4"),
        ("ctf/cross_corr_ctffind4", "<f4"),
    ]
    t = np.zeros(3, dtype=dtype)
    t["micrograph_blob/path"] = [b"J2/motion/a.mrc", b"J2/motion/b.mrc", b"J2/motion/c.mrc"]
    t["micrograph_blob/psize_A"] = 0.83
    t["micrograph_blob/shape"] = [4096, 5760]
    t["ctf/exp_group_id"] = [0, 0, 1]
    t["ctf/accel_kv"], t["ctf/cs_mm"], t["ctf/amp_contrast"] = 300, 2.7, 0.1
    t["ctf/df1_A"], t["ctf/df2_A"] = [12000, 13000, 14000], [11000, 12500, 13900]
    t["ctf/df_angle_rad"] = [0.1, -1.0, 2.0]
    t["ctf/ctf_fit_to_A"] = [3.1, 4.2, 5.5]
    with open(tmp_path / "exposures.cs", "wb") as fh:
        np.save(fh, t)
    mics = read_micrographs_cs(tmp_path / "exposures.cs", root="/p")
    assert mics.columns["image"].tolist() == [
        "/p/J2/motion/a.mrc",
        "/p/J2/motion/b.mrc",
        "/p/J2/motion/c.mrc",
    ]
    assert mics.columns["optics_group"].tolist() == [1, 1, 2]
    assert mics.optics["pixel_size_A"].tolist() == pytest.approx([0.83, 0.83])
    ctfs = read_micrograph_ctfs_cs(tmp_path / "exposures.cs")
    for conv in (mics, ctfs):  # hpcem fields only
        assert set(conv.columns) <= set(SET_TYPES[conv.set_type].field_names)
    assert set(mics.optics) <= set(ACQUISITION.field_names)
    np.testing.assert_allclose(ctfs.columns["defocus_angle"], np.degrees(t["ctf/df_angle_rad"]))
    np.testing.assert_array_equal(ctfs.columns["fit_resolution"], t["ctf/ctf_fit_to_A"])
    assert ctfs.columns["micrograph_id"].tolist() == [0, 1, 2]


# --- bad input -----------------------------------------------------------------------------


def _without(raw, drop):
    names = [n for n in raw.dtype.names if n not in drop]
    out = np.zeros(len(raw), dtype=[(n, raw.dtype[n]) for n in names])
    for n in names:
        out[n] = raw[n]
    return out


def test_missing_fields_are_named(shared_data, tmp_path):
    raw = np.load(_cs(shared_data, "empiar_10076_7.cs"))
    bad = tmp_path / "no_idx.cs"
    with open(bad, "wb") as fh:
        np.save(fh, _without(raw, {"blob/idx"}))
    with pytest.raises(DataFormatError, match=r"no_idx\.cs.*blob/idx"):
        read_particles_cs(bad)
    half_ctf = tmp_path / "half_ctf.cs"
    with open(half_ctf, "wb") as fh:
        np.save(fh, _without(raw, {"ctf/df2_A", "ctf/cs_mm"}))
    with pytest.raises(DataFormatError, match=r"ctf/df2_A, ctf/cs_mm"):
        read_particles_cs(half_ctf)


def test_not_a_cs_file_and_inconsistent_group(shared_data, tmp_path):
    text = tmp_path / "notes.cs"
    text.write_text("not numpy\n")
    with pytest.raises(DataFormatError, match="notes.cs"):
        read_particles_cs(text)
    plain = tmp_path / "plain.cs"
    with open(plain, "wb") as fh:
        np.save(fh, np.arange(5.0))
    with pytest.raises(DataFormatError, match="structured"):
        read_particles_cs(plain)
    raw = np.load(_cs(shared_data, "empiar_10076_7.cs"))
    raw["blob/psize_A"][4] = 1.5
    mixed = tmp_path / "mixed.cs"
    with open(mixed, "wb") as fh:
        np.save(fh, raw)
    with pytest.raises(DataFormatError, match=r"row 4: pixel_size_A .* exposure group 23"):
        read_particles_cs(mixed)


def test_particles_from_cs_store_as_an_hpcem_set(shared_data, project):
    """The columns and optics are real PARTICLE/ACQUISITION fields: a set stores them."""
    conv = read_particles_cs(_cs(shared_data, "cryosparc_P12_J24_001_particles.cs"), root="/cs/P12")
    run = project.create_run("import.particles")
    with project.create_set(run.id, "particles", conv.set_type) as writer:
        writer.set_optics(conv.optics)
        writer.append_columns(conv.columns)
    stored = project.open_set(run.id, "particles")
    assert len(stored) == 2019
    np.testing.assert_allclose(stored.column("defocus_u"), conv.columns["defocus_u"], rtol=1e-7)
    np.testing.assert_allclose(stored.column("rot"), conv.columns["rot"], atol=1e-4)
    assert stored.column("image")[0] == conv.columns["image"][0]
    assert stored.optics["pixel_size_A"].tolist() == pytest.approx([2.95])


def test_particle_locations_written_and_read_back(tmp_path):
    """Coordinates go out as fractions of (nx, ny) and come back; cryosparc-tools loads."""
    from cryosparc.dataset import Dataset

    n = 3
    cols = {
        "image": np.array(["p.mrcs"] * n, object),
        "image_index": np.arange(n),
        "coord_x": np.array([100.0, 2880.0, 5000.0]),
        "coord_y": np.array([50.0, 2048.0, 4000.0]),
    }
    optics = {"optics_group": np.array([1]), "pixel_size_A": np.array([0.83])}
    out = tmp_path / "located.cs"
    mics = np.array(["J2/mic_a.mrc", "J2/mic_a.mrc", "J2/mic_b.mrc"], object)
    write_particles_cs(out, cols, optics, micrograph_path=mics, micrograph_shape=(4096, 5760))
    dataset = Dataset.load(out)
    np.testing.assert_allclose(dataset["location/center_x_frac"], cols["coord_x"] / 5760, rtol=1e-7)
    np.testing.assert_allclose(dataset["location/center_y_frac"], cols["coord_y"] / 4096, rtol=1e-7)
    assert list(dataset["location/micrograph_path"]) == list(mics)
    back = read_particles_cs(out, micrograph_names={"Micrographs/mic_a.mrc": 1, "mic_b.mrc": 2})
    np.testing.assert_allclose(back.columns["coord_x"], cols["coord_x"], rtol=1e-6)
    np.testing.assert_allclose(back.columns["coord_y"], cols["coord_y"], rtol=1e-6)
    assert back.columns["micrograph_id"].tolist() == [1, 1, 2]


def test_exposures_written_read_back_and_loaded(tmp_path):
    from cryosparc.dataset import Dataset

    mics = {
        "id": np.array([5, 6, 7]),
        "image": np.array(["Motion/a.mrc", "Motion/b.mrc", "Motion/c.mrc"], object),
        "optics_group": np.array([1, 1, 2]),
    }
    optics = {
        "optics_group": np.array([1, 2]),
        "pixel_size_A": np.array([0.83, 1.06]),
        "voltage_kV": np.array([300.0, 200.0]),
        "spherical_aberration_mm": np.array([2.7, 2.7]),
        "amplitude_contrast": np.array([0.1, 0.07]),
    }
    ctfs = {  # in another order than the micrographs, matched by micrograph_id
        "micrograph_id": np.array([7, 5, 6]),
        "defocus_u": np.array([17000.0, 15000.0, 16000.0]),
        "defocus_v": np.array([16500.0, 14000.0, 15800.0]),
        "defocus_angle": np.array([-30.0, 12.5, 80.0]),
        "fit_resolution": np.array([4.5, 3.2, 3.9]),
    }
    out = tmp_path / "exposures.cs"
    write_micrographs_cs(out, mics, optics, (4096, 5760), ctfs=ctfs)
    assert len(Dataset.load(out)) == 3
    back = read_micrographs_cs(out)
    assert back.columns["image"].tolist() == mics["image"].tolist()
    assert back.columns["optics_group"].tolist() == [1, 1, 2]
    assert back.optics["voltage_kV"].tolist() == [300.0, 200.0]
    back_ctf = read_micrograph_ctfs_cs(out)
    np.testing.assert_array_equal(back_ctf.columns["defocus_u"], [15000.0, 16000.0, 17000.0])
    np.testing.assert_allclose(back_ctf.columns["defocus_angle"], [12.5, 80.0, -30.0], atol=1e-5)
    np.testing.assert_allclose(back_ctf.columns["fit_resolution"], [3.2, 3.9, 4.5], rtol=1e-6)
    with pytest.raises(ValidationError, match="micrograph 6 has no CTF"):
        write_micrographs_cs(
            out, mics, optics, (4096, 5760), ctfs={**ctfs, "micrograph_id": np.array([7, 5, 9])}
        )


def test_wide_cs_header(tmp_path):
    """A .cs with many per-class fields has a numpy header over the default 10,000 chars."""
    fields = [("blob/path", "S10"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")]
    fields += [(f"alignments_class_{k}/class_posterior", "<f4") for k in range(400)]
    table = np.zeros(2, dtype=fields)
    with open(tmp_path / "wide.cs", "wb") as fh:
        np.save(fh, table)
    with pytest.raises(ValueError, match="[Hh]eader"):
        np.load(tmp_path / "wide.cs")  # what a plain np.load says
    conv = read_particles_cs(tmp_path / "wide.cs")
    assert len(conv) == 2 and "alignments_class_399/class_posterior" in conv.extra


@pytest.mark.parametrize("layout", ["multi", "per_class"])
def test_most_probable_class_pose(tmp_path, layout):
    """Heterogeneous refinement: the pose of each particle's most probable class (pyem's
    rule), in cryoSPARC 4.5+'s alignments3D_multi layout and the older per-class one."""
    rng = np.random.default_rng(8)
    n, k = 6, 3
    pose = rng.normal(0, 1, (n, k, 3)).astype(np.float32)
    shift = rng.normal(0, 4, (n, k, 2)).astype(np.float32)
    posterior = rng.dirichlet(np.ones(k), n).astype(np.float32)
    fields = [("blob/path", "S8"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")]
    if layout == "multi":
        fields += [
            ("alignments3D_multi/pose", "<f4", (k, 3)),
            ("alignments3D_multi/shift", "<f4", (k, 2)),
            ("alignments3D_multi/class_posterior", "<f4", (k,)),
            ("alignments3D_multi/split", "<u4"),
        ]
    else:
        for c in range(k):
            fields += [
                (f"alignments_class_{c}/pose", "<f4", (3,)),
                (f"alignments_class_{c}/shift", "<f4", (2,)),
                (f"alignments_class_{c}/class_posterior", "<f4"),
                (f"alignments_class_{c}/split", "<u4"),
            ]
    table = np.zeros(n, dtype=fields)
    table["blob/psize_A"] = 1.5
    split = rng.integers(0, 2, n)
    if layout == "multi":
        table["alignments3D_multi/pose"] = pose
        table["alignments3D_multi/shift"] = shift
        table["alignments3D_multi/class_posterior"] = posterior
        table["alignments3D_multi/split"] = split
    else:
        for c in range(k):
            table[f"alignments_class_{c}/pose"] = pose[:, c]
            table[f"alignments_class_{c}/shift"] = shift[:, c]
            table[f"alignments_class_{c}/class_posterior"] = posterior[:, c]
            table[f"alignments_class_{c}/split"] = split
    with open(tmp_path / "hetero.cs", "wb") as fh:
        np.save(fh, table)
    conv = read_particles_cs(tmp_path / "hetero.cs")
    best = np.argmax(posterior, axis=1)
    assert conv.columns["class_id"].tolist() == (best + 1).tolist()
    assert conv.columns["half_set"].tolist() == (split + 1).tolist()
    chosen = pose[np.arange(n), best].astype(np.float64)
    euler = np.c_[conv.columns["rot"], conv.columns["tilt"], conv.columns["psi"]]
    a = Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix()
    np.testing.assert_allclose(a, Rotation.from_rotvec(chosen).as_matrix(), atol=1e-9)
    np.testing.assert_allclose(
        conv.columns["shift_x"], shift[np.arange(n), best, 0] * 1.5, rtol=1e-6
    )


def test_missing_image_stacks_refused_on_request(shared_data, tmp_path):
    path = _cs(shared_data, "empiar_10076_7.cs")
    with pytest.raises(
        DataFormatError,
        match=r"1 of its 1 image file\(s\) do not exist, e.g. .*empiar_10076_7\.mrc",
    ):
        read_particles_cs(path, root=tmp_path, check_files=True)
    read_particles_cs(path, root=shared_data / "cryodrgn-4.3.1", check_files=True)  # it is there
    assert len(read_particles_cs(path, root=tmp_path)) == 7  # not checked by default


def test_cryosparc_to_relion_star_as_csparc2star(shared_data, tmp_path):
    """The real P12 particles .cs -> hpcem -> RELION 3.1 STAR (hpcem's RELION writer),
    read back with starfile: what pyem's csparc2star.py would write — angles from the
    transposed Rodrigues matrix, _rlnOriginXAngst = shift × psize, 1-based image numbers,
    class + 1, split + 1, DefocusAngle = degrees(df_angle_rad)."""
    import starfile

    relion = pytest.importorskip("hpcem.convert.relion")
    if not hasattr(relion, "write_particles"):
        pytest.skip("hpcem.convert.relion has no particle writer yet")
    path = _cs(shared_data, "cryosparc_P12_J24_001_particles.cs")
    raw = np.load(path)
    conv = read_particles_cs(path)
    out = tmp_path / "particles.star"
    relion.write_particles(out, conv.columns, conv.optics)
    star = starfile.read(out, always_dict=True)
    parts, optics = star["particles"], star["optics"]
    euler = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    a = np.swapaxes(Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix(), 1, 2)
    pyem = np.swapaxes(
        Rotation.from_rotvec(raw["alignments3D/pose"].astype(float)).as_matrix(), 1, 2
    )
    np.testing.assert_allclose(a, pyem, atol=1e-4)  # 6 decimals of degrees in the STAR
    apix = raw["alignments3D/psize_A"].astype(float)
    np.testing.assert_allclose(
        parts["rlnOriginXAngst"], raw["alignments3D/shift"][:, 0] * apix, atol=1e-5
    )
    np.testing.assert_allclose(
        parts["rlnOriginYAngst"], raw["alignments3D/shift"][:, 1] * apix, atol=1e-5
    )
    numbers = parts["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()
    np.testing.assert_array_equal(numbers, raw["blob/idx"] + 1)
    np.testing.assert_array_equal(parts["rlnClassNumber"], raw["alignments3D/class"] + 1)
    np.testing.assert_array_equal(parts["rlnRandomSubset"], raw["alignments3D/split"] + 1)
    np.testing.assert_allclose(
        parts["rlnDefocusAngle"], np.degrees(raw["ctf/df_angle_rad"]), atol=1e-5
    )
    np.testing.assert_allclose(parts["rlnDefocusU"], raw["ctf/df1_A"], atol=1e-2)
    assert optics["rlnImagePixelSize"].tolist() == pytest.approx([2.95])
    assert optics["rlnVoltage"].tolist() == [200.0]
