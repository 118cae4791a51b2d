"""RELION particle STARs (3.0, 3.1, 5) <-> hpcem: values against ``starfile`` (an outside
reader) and RELION's own programs, round trips, RELION 3.0 optics and shifts."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import starfile

from hpcem.convert import relion

CRYODRGN = "cryodrgn-4.3.1"
FILES_31 = ["relion31.star", "relion31.v2.star", "relion31.6opticsgroups.star", "relion5.star"]

#: Written precision of floats (``%.6f``): half a unit of the 6th decimal.
ATOL = 5e-7


def _outside(path):
    """The particle table and optics table as ``starfile`` reads them."""
    blocks = starfile.read(path, always_dict=True)
    parts = blocks.get("particles", next(iter(blocks.values())))
    return parts, blocks.get("optics")


@pytest.mark.parametrize("name", FILES_31)
def test_31_values_match_starfile(shared_data, name):
    path = shared_data / CRYODRGN / name
    conv = relion.read_particles(path)
    df, optics = _outside(path)
    assert len(conv) == len(df)
    c = conv.columns
    for field, label in relion.PARTICLE_LABELS.items():
        if label in df.columns:
            np.testing.assert_allclose(c[field], df[label].to_numpy(float), rtol=1e-12)
    # hpcem's shift is RELION 3.1's origin (docs/conventions.md), copied as it is
    np.testing.assert_array_equal(c["shift_x"], df["rlnOriginXAngst"].to_numpy(float))
    index = df["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()
    np.testing.assert_array_equal(c["image_index"], index - 1)
    assert list(c["image"]) == list(df["rlnImageName"].str.split("@").str[1])
    np.testing.assert_allclose(conv.optics["pixel_size_A"], optics["rlnImagePixelSize"])
    np.testing.assert_array_equal(conv.optics["optics_group"], optics["rlnOpticsGroup"])
    assert list(conv.optics["name"]) == list(optics["rlnOpticsGroupName"])
    assert list(conv.extra["rlnMicrographName"]) == list(df["rlnMicrographName"])


def test_six_optics_groups(shared_data):
    path = shared_data / CRYODRGN / "relion31.6opticsgroups.star"
    conv = relion.read_particles(path)
    df, optics = _outside(path)
    # each particle's group is one of the 6, with that group's pixel size
    assert set(conv.columns["optics_group"]) <= set(optics["rlnOpticsGroup"])
    assert len(conv.optics["optics_group"]) == 6
    pix = dict(zip(optics["rlnOpticsGroup"], optics["rlnImagePixelSize"]))
    expected = [pix[g] for g in df["rlnOpticsGroup"]]
    got = dict(zip(conv.optics["optics_group"], conv.optics["pixel_size_A"]))
    assert [got[g] for g in conv.columns["optics_group"]] == pytest.approx(expected)
    np.testing.assert_allclose(
        conv.optics["spherical_aberration_mm"], optics["rlnSphericalAberration"]
    )


def test_relion5_optics_kept(shared_data):
    path = shared_data / CRYODRGN / "relion5.star"
    conv = relion.read_particles(path)
    _, optics = _outside(path)
    assert conv.extra["relion_version"] == "5"
    kept = conv.extra["optics"]
    for label in ("rlnBeamTiltX", "rlnBeamTiltY", "rlnMagMat00", "rlnMagMat11"):
        np.testing.assert_allclose(kept[label], optics[label].to_numpy(float))
    for label in ("rlnOddZernike", "rlnEvenZernike"):
        assert list(kept[label]) == list(optics[label])
    # ... and written back
    conv2 = _roundtrip(conv, None)
    assert list(conv2.extra["optics"]["rlnEvenZernike"]) == list(optics["rlnEvenZernike"])
    np.testing.assert_allclose(conv2.extra["optics"]["rlnBeamTiltX"], kept["rlnBeamTiltX"])


def _roundtrip(conv, tmp_path, version="3.1", name="out.star"):
    import tempfile
    from pathlib import Path

    folder = Path(tmp_path or tempfile.mkdtemp())
    out = folder / name
    relion.write_particles(out, conv.columns, conv.optics, extra=conv.extra, version=version)
    return relion.read_particles(out)


def _assert_same(a, b, atol=ATOL):
    assert set(a.columns) == set(b.columns)
    for k, v in a.columns.items():
        if np.asarray(v).dtype == object:
            assert list(v) == list(b.columns[k]), k
        else:
            np.testing.assert_allclose(b.columns[k], v, rtol=0, atol=atol, err_msg=k)
    for k, v in a.optics.items():
        if k == "magnification" and a.extra["relion_version"] == "3.0":
            continue  # RELION 3.1 has no magnification (its converter drops it too)
        if np.asarray(v).dtype == object:
            assert list(v) == list(b.optics[k]), k
        else:
            np.testing.assert_allclose(b.optics[k], v, rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("name", FILES_31 + ["FinalRefinement-OriginalParticles-PfCRT.star"])
def test_roundtrip_31(shared_data, tmp_path, name):
    """read -> write (3.1) -> read: identical within the written precision (values that
    came from RELION's text with ≤ 6 decimals come back exactly)."""
    conv = relion.read_particles(shared_data / CRYODRGN / name)
    back = _roundtrip(conv, tmp_path)
    _assert_same(conv, back)
    for label, v in conv.extra.items():
        if label.startswith("rln") and relion.is_column(v):
            got = back.extra[label]
            if hasattr(v, "strings"):
                assert list(got.strings()) == list(v.strings()), label
            elif np.asarray(v).dtype == object:
                assert list(got) == list(v), label
            else:
                np.testing.assert_allclose(got, v, rtol=0, atol=ATOL, err_msg=label)


def test_roundtrip_30(shared_data, tmp_path):
    """3.1 -> write as 3.0 (origins in px, Magnification/DetectorPixelSize) -> read."""
    conv = relion.read_particles(shared_data / CRYODRGN / "relion31.6opticsgroups.star")
    back = _roundtrip(conv, tmp_path, version="3.0")
    assert back.extra["relion_version"] == "3.0"
    c, b = conv.columns, back.columns
    # shifts went through pixels (written with 6 decimals): |error| <= 5e-7 px × pixel size
    np.testing.assert_allclose(b["shift_x"], c["shift_x"], atol=ATOL * 1.26)
    for f in ("defocus_u", "rot", "tilt", "psi", "coord_x"):
        np.testing.assert_allclose(b[f], c[f], atol=ATOL)
    # 3.0 groups are rebuilt from the per-row values: same pixel size per particle
    pix_a = relion.ro.per_row(conv.optics, "pixel_size_A", c["optics_group"])
    pix_b = relion.ro.per_row(back.optics, "pixel_size_A", b["optics_group"])
    np.testing.assert_allclose(pix_b, pix_a, atol=ATOL)


def test_30_pixel_size_from_magnification(shared_data):
    """RELION 3.0: pixel size = DetectorPixelSize (µm) × 10⁴ / Magnification."""
    path = shared_data / CRYODRGN / "empiar_10076_7.star"
    conv = relion.read_particles(path)
    df, _ = _outside(path)
    expected = df["rlnDetectorPixelSize"][0] * 1e4 / df["rlnMagnification"][0]
    assert conv.optics["pixel_size_A"][0] == pytest.approx(expected, rel=1e-12)
    assert conv.optics["pixel_size_A"][0] == pytest.approx(1.31, abs=0.001)
    assert conv.extra["relion_version"] == "3.0"
    np.testing.assert_allclose(conv.columns["defocus_u"], df["rlnDefocusU"])
    np.testing.assert_array_equal(conv.columns["image_index"], np.arange(7))


def test_30_shifts_in_angstrom(shared_data):
    path = shared_data / CRYODRGN / "FinalRefinement-OriginalParticles-PfCRT.star"
    conv = relion.read_particles(path)
    df, _ = _outside(path)
    pix = 1.035 * 1e4 / 10000  # DetectorPixelSize 1.035 µm at Magnification 10000
    np.testing.assert_allclose(conv.columns["shift_x"], df["rlnOriginX"] * pix, rtol=1e-12)
    np.testing.assert_allclose(conv.columns["shift_y"], df["rlnOriginY"] * pix, rtol=1e-12)
    np.testing.assert_array_equal(conv.columns["half_set"], df["rlnRandomSubset"])


RELION_CONVERT = shutil.which("relion_convert_star")
RELION_HANDLER = shutil.which("relion_star_handler")


@pytest.mark.skipif(RELION_CONVERT is None, reason="RELION (relion_convert_star) not installed")
@pytest.mark.parametrize(
    "name", ["FinalRefinement-OriginalParticles-PfCRT.star", "empiar_10076_7.star"]
)
def test_30_conversion_matches_relion(shared_data, tmp_path, name):
    """Our 3.0 -> hpcem equals RELION 3.1's own 3.0 -> 3.1 conversion, read back."""
    src = tmp_path / name
    shutil.copy(shared_data / CRYODRGN / name, src)
    out = tmp_path / "relion31.star"
    subprocess.run(
        [RELION_CONVERT, "--i", str(src), "--o", str(out)], check=True, capture_output=True
    )
    ours = relion.read_particles(src)
    theirs = relion.read_particles(out)
    assert theirs.extra["relion_version"] == "3.1"
    np.testing.assert_array_equal(ours.columns["optics_group"], theirs.columns["optics_group"])
    np.testing.assert_allclose(
        ours.optics["pixel_size_A"], theirs.optics["pixel_size_A"], rtol=1e-5
    )
    for f in ("voltage_kV", "spherical_aberration_mm"):
        np.testing.assert_allclose(ours.optics[f], theirs.optics[f])
    for f in ("shift_x", "shift_y", "defocus_u", "defocus_v", "defocus_angle"):
        if f in theirs.columns:
            # RELION writes its converted origins with 5 significant digits
            np.testing.assert_allclose(ours.columns[f], theirs.columns[f], rtol=1e-4, atol=1e-5)
    assert list(ours.columns["image"]) == list(theirs.columns["image"])
    np.testing.assert_array_equal(ours.columns["image_index"], theirs.columns["image_index"])


@pytest.mark.skipif(RELION_HANDLER is None, reason="RELION (relion_star_handler) not installed")
@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_relion_reads_what_we_write(shared_data, tmp_path, version):
    """RELION's own STAR reader takes our file (3.1, or 3.0 which it converts on reading)
    and writes back the same particles."""
    conv = relion.read_particles(shared_data / CRYODRGN / "relion31.6opticsgroups.star")
    ours = tmp_path / "ours.star"
    relion.write_particles(ours, conv.columns, conv.optics, extra=conv.extra, version=version)
    copy = tmp_path / "copy.star"
    done = subprocess.run(
        [RELION_HANDLER, "--i", str(ours), "--o", str(copy)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    back = relion.read_particles(copy)
    assert back.extra["relion_version"] == "3.1"
    c, b = conv.columns, back.columns
    for f in ("defocus_u", "defocus_v", "defocus_angle", "rot", "tilt", "psi", "shift_x"):
        np.testing.assert_allclose(b[f], c[f], rtol=1e-5, atol=1e-5, err_msg=f)
    np.testing.assert_array_equal(b["image_index"], c["image_index"])
    assert list(b["image"]) == list(c["image"])
    pix_a = relion.ro.per_row(conv.optics, "pixel_size_A", c["optics_group"])
    pix_b = relion.ro.per_row(back.optics, "pixel_size_A", b["optics_group"])
    np.testing.assert_allclose(pix_b, pix_a, rtol=1e-5)


def test_root_and_check_files(shared_data):
    folder = shared_data / CRYODRGN
    conv = relion.read_particles(folder / "relion31.star", root=folder, check_files=True)
    assert set(conv.columns["image"]) == {str(folder / "relion31.mrcs")}


def test_micrograph_ids(shared_data):
    path = shared_data / CRYODRGN / "relion31.6opticsgroups.star"
    df, _ = _outside(path)
    names = sorted(set(df["rlnMicrographName"]))
    ids = {n: 100 + i for i, n in enumerate(names)}
    conv = relion.read_particles(path, micrograph_ids=ids)
    np.testing.assert_array_equal(
        conv.columns["micrograph_id"], [ids[n] for n in df["rlnMicrographName"]]
    )


def test_write_with_micrograph_names(tmp_path):
    cols = {
        "image": np.array(["a.mrcs", "a.mrcs", "b.mrcs"], dtype=object),
        "image_index": np.array([0, 1, 0]),
        "micrograph_id": np.array([7, 7, 9]),
        "defocus_u": np.array([10000.5, 10000.5, 20000.25]),
        "optics_group": np.array([1, 1, 1]),
    }
    optics = {"optics_group": np.array([1]), "pixel_size_A": np.array([1.1]), "image_size_px": [64]}
    out = tmp_path / "p.star"
    relion.write_particles(out, cols, optics, micrograph_names={7: "m7.mrc", 9: "m9.mrc"})
    df = starfile.read(out)["particles"]
    assert list(df["rlnMicrographName"]) == ["m7.mrc", "m7.mrc", "m9.mrc"]
    assert list(df["rlnImageName"]) == ["000001@a.mrcs", "000002@a.mrcs", "000001@b.mrcs"]
    np.testing.assert_allclose(df["rlnDefocusU"], cols["defocus_u"])
    assert starfile.read(out)["optics"]["rlnImageSize"][0] == 64


def test_same_particles_from_star_and_cs(shared_data):
    """The 7 EMPIAR-10076 particles read from the RELION 3.0 STAR and from the cryoSPARC
    .cs give the same CTF (to 0.01 Å) and image locations."""
    cs = pytest.importorskip("hpcem.convert.cryosparc")
    star = relion.read_particles(shared_data / CRYODRGN / "empiar_10076_7.star")
    other = cs.read_particles_cs(shared_data / CRYODRGN / "empiar_10076_7.cs")
    for f in ("defocus_u", "defocus_v"):
        np.testing.assert_allclose(other.columns[f], star.columns[f], atol=0.01)
    np.testing.assert_allclose(
        other.columns["defocus_angle"], star.columns["defocus_angle"], atol=0.01
    )
    np.testing.assert_array_equal(other.columns["image_index"], star.columns["image_index"])
    assert [str(p).rsplit("/", 1)[-1] for p in other.columns["image"]] == list(
        star.columns["image"]
    )
    np.testing.assert_allclose(other.optics["pixel_size_A"], star.optics["pixel_size_A"], atol=1e-3)


def test_converted_sets_go_into_the_store(shared_data, project):
    """What the readers return appends as it is to hpcem sets (field names and dtypes the
    store accepts), optics included, and reads back with the same values."""
    from hpcem.convert import relion_results as rr

    run_id = project.create_run("hpcem.test", label="relion import").id
    convs = [
        relion.read_particles(shared_data / CRYODRGN / "relion31.6opticsgroups.star"),
        relion.read_particles(shared_data / CRYODRGN / "empiar_10076_7.star"),
        rr.read_postprocess(shared_data / "starfile-0.5.13/postprocess.star"),
    ]
    for k, conv in enumerate(convs):
        with project.create_set(run_id, f"s{k}", conv.set_type) as w:
            if conv.optics:
                w.set_optics(conv.optics)
            w.append_columns(conv.columns)
        got = project.open_set(run_id, f"s{k}")
        assert len(got) == len(conv)
    parts = project.open_set(run_id, "s0")
    cols = parts.columns
    np.testing.assert_allclose(cols["defocus_u"], convs[0].columns["defocus_u"], rtol=1e-6)
    np.testing.assert_array_equal(cols["optics_group"], convs[0].columns["optics_group"])
    np.testing.assert_allclose(parts.optics["pixel_size_A"], convs[0].optics["pixel_size_A"])
