"""import.particles, import.coordinates and import.ctfs as real runs on real files of other
programs (../shared/data: cryodrgn's RELION 3.0/3.1 STAR and cryoSPARC .cs of the same
EMPIAR-10076 particles, napari-boxmanager's crYOLO .cbox, ASPIRE's CTFFIND4 output).

Expected values come from outside hpcem: ``starfile`` reading the same STAR/.cbox files,
numbers written in the test from the files' text, and the formats' documented rules
(box corner + size / 2 = centre; CTFFIND azimuth in degrees, phase shift in radians).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import starfile

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import write_mrc


def _run(project, wait_for_run, protocol, params, inputs=None):
    run = lifecycle.create_run(project, protocol, params, inputs or {})
    lifecycle.launch(project, run.id, workers=1, foreground=True)  # the controller inline
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    return run.id, steps["register"]["result"]


def _micrographs(project, wait_for_run, folder, names, shape=(256, 256), pixel_A=1.0):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_mrc(folder / f"{name}.mrc", np.zeros(shape, np.float32), pixel_A)
    run, _ = _run(
        project,
        wait_for_run,
        "import.micrographs",
        {"files": str(folder / "*.mrc"), "pixel_size_A": pixel_A, "check_pixel_size": False},
    )
    return run


# --- import.particles ------------------------------------------------------------------------


def test_relion31_particles_match_starfile(project, shared_data, wait_for_run):
    star = shared_data / "cryodrgn-4.3.1/relion31.star"
    run, result = _run(project, wait_for_run, "import.particles", {"file": str(star)})
    assert result["count"] == 5 and result["relion_version"] == "3.1"
    parts = project.open_set(run, "particles")
    ref = starfile.read(star)
    p, optics = ref["particles"], ref["optics"]
    for field, label in (
        ("defocus_u", "rlnDefocusU"),
        ("defocus_v", "rlnDefocusV"),
        ("defocus_angle", "rlnDefocusAngle"),
        ("rot", "rlnAngleRot"),
        ("tilt", "rlnAngleTilt"),
        ("psi", "rlnAnglePsi"),
        ("shift_x", "rlnOriginXAngst"),
        ("shift_y", "rlnOriginYAngst"),
    ):
        np.testing.assert_allclose(parts.column(field), p[label], rtol=1e-6, atol=1e-4)
    # "000003@relion31.mrcs": RELION's 1-based index -> hpcem's 0-based one
    index = [int(n.split("@")[0]) - 1 for n in p["rlnImageName"]]
    assert parts.column("image_index").tolist() == index
    assert all(str(f).endswith("relion31.mrcs") for f in parts.column("image"))
    np.testing.assert_allclose(parts.optics["pixel_size_A"], optics["rlnImagePixelSize"])
    assert parts.optics["image_size_px"].tolist() == optics["rlnImageSize"].tolist()


def test_star_and_cs_of_the_same_particles_agree(project, shared_data, wait_for_run):
    """EMPIAR-10076: RELION 3.0 STAR (pixel size from magnification 38168 and detector
    5 µm: 5e4 / 38168 = 1.31 Å) and the cryoSPARC .cs of the same 7 particles."""
    d = shared_data / "cryodrgn-4.3.1"
    star_run, _ = _run(
        project, wait_for_run, "import.particles", {"file": str(d / "empiar_10076_7.star")}
    )
    cs_run, res = _run(
        project, wait_for_run, "import.particles", {"file": str(d / "empiar_10076_7.cs")}
    )
    assert res["format"] == "cs"
    a, b = project.open_set(star_run, "particles"), project.open_set(cs_run, "particles")
    assert len(a) == len(b) == 7
    ref = starfile.read(d / "empiar_10076_7.star")
    np.testing.assert_allclose(a.column("defocus_u"), ref["rlnDefocusU"], atol=0.01)
    for f in ("defocus_u", "defocus_v", "defocus_angle"):
        np.testing.assert_allclose(a.column(f), b.column(f), atol=0.01)
    assert a.column("image_index").tolist() == b.column("image_index").tolist() == list(range(7))
    np.testing.assert_allclose(a.optics["pixel_size_A"], 5e4 / 38168, rtol=1e-5)
    np.testing.assert_allclose(b.optics["pixel_size_A"], 1.31, rtol=1e-5)


def test_bad_particle_files_store_nothing(project, shared_data, tmp_path):
    d = shared_data / "cryodrgn-4.3.1"
    text = (d / "relion31.star").read_text()
    bad = tmp_path / "no_image.star"
    bad.write_text(text.replace("_rlnImageName", "_rlnSomethingElse"))
    with pytest.raises(ValidationError, match=r"no_image.star.*_rlnImageName"):
        lifecycle.create_run(project, "import.particles", {"file": str(bad)})
    lost = tmp_path / "lost.star"
    lost.write_text(text)  # its relion31.mrcs is not next to it
    with pytest.raises(ValidationError, match=r"lost.star: 5 image stack|do not exist"):
        lifecycle.create_run(project, "import.particles", {"file": str(lost)})
    # a RELION 3.0 file with neither magnification nor pixel size (PfCRT has both; drop them)
    old = tmp_path / "old.star"
    old.write_text(
        (d / "empiar_10076_7.star")
        .read_text()
        .replace("_rlnMagnification #9\n", "")
        .replace("_rlnDetectorPixelSize #10\n", "")
        .replace(" 38168 5\n", "\n")
    )
    with pytest.raises(ValidationError, match="old.star"):
        lifecycle.create_run(project, "import.particles", {"file": str(old), "check_files": False})
    assert project.runs == [] or all(r.protocol != "import.particles" for r in project.runs)
    shutil.copy(d / "empiar_10076_7.mrc", tmp_path / "empiar_10076_7.mrc")
    run = lifecycle.create_run(
        project,
        "import.particles",
        {"file": str(old), "pixel_size_A": 1.31},
    )
    assert run.protocol == "import.particles"


# --- import.coordinates ------------------------------------------------------------------------


def test_cbox_picks_are_box_centres(project, shared_data, tmp_path, wait_for_run):
    """crYOLO .cbox: ``_CoordinateX/Y`` is the lower box corner (napari-boxmanager's reader
    adds half the box); a third file names a micrograph that is not in the set."""
    d = shared_data / "napari-boxmanager-0.4.14"
    stems = ["TcdA1-0018_frames_sum", "TcdA1-0019_frames_sum"]
    ref = {s: starfile.read(d / f"{s}.cbox")["cryolo"] for s in stems}
    top = max(float((r["CoordinateY"] + r["Height"]).max()) for r in ref.values())
    right = max(float((r["CoordinateX"] + r["Width"]).max()) for r in ref.values())
    # micrographs just big enough for every pick but one row/column of the 0019 ones
    cut = float((ref[stems[1]]["CoordinateX"] + ref[stems[1]]["Width"] / 2).max())
    shape = (int(top) + 8, int(right) + 8)
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", stems[:1], shape)
    # 0019 gets a narrower micrograph: its rightmost pick falls outside
    write_mrc(
        tmp_path / "mics" / f"{stems[1]}.mrc", np.zeros((shape[0], int(cut)), np.float32), 1.0
    )
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", [], shape)
    picks = tmp_path / "cbox"
    picks.mkdir()
    for s in stems:
        shutil.copy(d / f"{s}.cbox", picks / f"{s}.cbox")
    shutil.copy(d / f"{stems[0]}.cbox", picks / "not_a_micrograph.cbox")
    run, result = _run(
        project,
        wait_for_run,
        "import.coordinates",
        {"files": str(picks / "*.cbox")},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    assert [r["file"].rsplit("/", 1)[-1] for r in result["rejected"]] == ["not_a_micrograph.cbox"]
    assert "not_a_micrograph" in result["rejected"][0]["reason"]
    coords = project.open_set(run, "coordinates")
    ids = project.open_set(mics, "micrographs").column("id")
    names = [str(p) for p in project.open_set(mics, "micrographs").column("image")]
    by_stem = {n.rsplit("/", 1)[-1][:-4]: int(i) for n, i in zip(names, ids)}
    expected_x, expected_y, expected_mic = [], [], []
    for s in stems:
        r = ref[s]
        x = (r["CoordinateX"] + r["Width"] / 2).to_numpy()
        y = (r["CoordinateY"] + r["Height"] / 2).to_numpy()
        expected_x.append(x)
        expected_y.append(y)
        expected_mic.append(np.full(len(x), by_stem[s]))
    ex, ey, em = map(np.concatenate, (expected_x, expected_y, expected_mic))
    nx_0019 = int(cut)
    keep = ~((em == by_stem[stems[1]]) & (ex > nx_0019 - 1))
    assert result["dropped_outside"] == int((~keep).sum()) >= 1
    order = np.lexsort((ex[keep], em[keep]))
    got = np.lexsort((coords.column("x"), coords.column("micrograph_id")))
    np.testing.assert_allclose(coords.column("x")[got], ex[keep][order], atol=1e-3)
    np.testing.assert_allclose(coords.column("y")[got], ey[keep][order], atol=1e-3)
    assert coords.column("micrograph_id")[got].tolist() == em[keep][order].tolist()


def test_box_and_text_files(project, tmp_path, wait_for_run):
    """EMAN .box (corner, written here by hand) with the box size given, plain text
    (centres) and a micrograph of the set without picks."""
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", ["a", "b", "c"])
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "a.box").write_text("10 20 0 0\n100 50 0 0\n")
    (tmp_path / "box" / "b.box").write_text("0 0 0 0\n250 250 0 0\n")
    run, result = _run(
        project,
        wait_for_run,
        "import.coordinates",
        {"files": str(tmp_path / "box" / "*.box"), "box_size_px": 32},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    c = project.open_set(run, "coordinates")
    # b's second box centre (266, 266) is outside the 256 x 256 micrograph
    assert result["dropped_outside"] == 1 and result["count"] == 3
    np.testing.assert_allclose(c.column("x"), [26, 116, 16])
    np.testing.assert_allclose(c.column("y"), [36, 66, 16])
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "c_picks.txt").write_text("# x y score\n5.5 6.5 0.9\n")
    run, result = _run(
        project,
        wait_for_run,
        "import.coordinates",
        {"files": str(tmp_path / "txt" / "*.txt")},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    c = project.open_set(run, "coordinates")
    assert c.column("x").tolist() == [5.5] and c.column("score").tolist() == [pytest.approx(0.9)]


# --- import.ctfs -----------------------------------------------------------------------------


def test_ctffind_output(project, shared_data, tmp_path, wait_for_run):
    """ASPIRE's CTFFIND 4.1.14 output for 'test_img.mrc': defocus 9982.502930 Å (both),
    azimuth 0°, phase shift 0.035256 rad, CC 0.565683, fit to 1.980663 Å."""
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", ["test_img", "other"])
    (tmp_path / "ctf").mkdir()
    shutil.copy(shared_data / "aspire-github/ctffind4_diagnostic_output.txt", tmp_path / "ctf")
    text = (shared_data / "aspire-github/ctffind4_diagnostic_output.txt").read_text()
    (tmp_path / "ctf" / "stranger.txt").write_text(text.replace("test_img.mrc", "stranger.mrc"))
    (tmp_path / "ctf" / "test_img_avrot.txt").write_text("not a summary\n")
    run, result = _run(
        project,
        wait_for_run,
        "import.ctfs",
        {"files": str(tmp_path / "ctf" / "*.txt")},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    assert result["count"] == 1 and result["micrographs_without_ctf"] == 1
    assert len(result["rejected"]) == 1 and "stranger" in result["rejected"][0]["reason"]
    c = project.open_set(run, "ctfs")
    m = project.open_set(mics, "micrographs")
    test_img = [i for i, p in zip(m.column("id"), m.column("image")) if "test_img" in str(p)]
    assert c.column("micrograph_id").tolist() == test_img
    np.testing.assert_allclose(c.column("defocus_u"), [9982.502930], rtol=1e-6)
    np.testing.assert_allclose(c.column("defocus_v"), [9982.502930], rtol=1e-6)
    np.testing.assert_allclose(c.column("phase_shift"), [math.degrees(0.035256)], rtol=1e-5)
    np.testing.assert_allclose(c.column("fit_score"), [0.565683], rtol=1e-5)
    np.testing.assert_allclose(c.column("fit_resolution"), [1.980663], rtol=1e-5)
    assert c.column("estimator").tolist() == ["ctffind4"]


def test_ctffind_pixel_size_mismatch_is_rejected(project, shared_data, tmp_path, wait_for_run):
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", ["test_img"], pixel_A=1.5)
    src = shared_data / "aspire-github/ctffind4_diagnostic_output.txt"
    run = lifecycle.create_run(
        project, "import.ctfs", {"files": str(src)}, {"micrographs": [f"{mics}:micrographs"]}
    )
    lifecycle.launch(project, run.id, workers=1, foreground=True)
    done = wait_for_run(project, run.id)
    assert done.state == "failed" and "1 Å/px" in done.error and "1.5" in done.error


def test_relion_ctf_star(project, tmp_path, wait_for_run):
    """A RELION 3.1 micrographs_ctf.star written with starfile (outside hpcem's writer);
    a row of a micrograph not in the set is rejected by name."""
    import pandas as pd

    mics = _micrographs(project, wait_for_run, tmp_path / "rel" / "mics", ["m0", "m1"])
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographPixelSize": [1.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    rows = pd.DataFrame(
        {
            "rlnMicrographName": ["mics/m1.mrc", "mics/m0.mrc", "mics/zz.mrc"],
            "rlnOpticsGroup": [1, 1, 1],
            "rlnCtfImage": ["ctf/m1.ctf:mrc", "ctf/m0.ctf:mrc", "ctf/zz.ctf:mrc"],
            "rlnDefocusU": [21000.5, 15000.25, 1.0],
            "rlnDefocusV": [20000.5, 14000.25, 1.0],
            "rlnDefocusAngle": [33.0, -12.5, 0.0],
            "rlnCtfFigureOfMerit": [0.2, 0.3, 0.1],
            "rlnCtfMaxResolution": [4.5, 5.5, 9.0],
        }
    )
    path = tmp_path / "rel" / "micrographs_ctf.star"
    starfile.write({"optics": optics, "micrographs": rows}, path)
    run, result = _run(
        project,
        wait_for_run,
        "import.ctfs",
        {"files": str(path)},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    assert [r.get("micrograph") for r in result["rejected"]] == ["mics/zz.mrc"]
    c = project.open_set(run, "ctfs")
    m = project.open_set(mics, "micrographs")
    ids = {str(p).rsplit("/", 1)[-1]: int(i) for p, i in zip(m.column("image"), m.column("id"))}
    assert c.column("micrograph_id").tolist() == [ids["m0.mrc"], ids["m1.mrc"]]
    np.testing.assert_allclose(c.column("defocus_u"), [15000.25, 21000.5])
    np.testing.assert_allclose(c.column("defocus_angle"), [-12.5, 33.0])
    np.testing.assert_allclose(c.column("fit_resolution"), [5.5, 4.5])
    assert c.column("estimator").tolist() == ["relion", "relion"]
    assert str(c.column("psd")[0]).endswith("rel/ctf/m0.ctf")


def test_cryosparc_locations(project, tmp_path, wait_for_run):
    """A picker's .cs (numpy structured array with cryoSPARC's location/* fields, written
    here with numpy): x = center_x_frac * nx, y = center_y_frac * ny (micrograph_shape is
    (ny, nx)); picks of a micrograph that is not in the set are rejected by name."""
    mics = _micrographs(project, wait_for_run, tmp_path / "mics", ["a", "b"], shape=(200, 300))
    dtype = [
        ("uid", "<u8"),
        ("location/micrograph_path", "S40"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
    ]
    rows = [
        (1, b"J3/motioncorrected/a.mrc", (200, 300), 0.25, 0.5),
        (2, b"J3/motioncorrected/b.mrc", (200, 300), 0.5, 0.125),
        (3, b"J3/motioncorrected/zz.mrc", (200, 300), 0.5, 0.5),
        (4, b"J3/motioncorrected/a.mrc", (200, 300), 0.75, 0.25),
    ]
    path = tmp_path / "picked.cs"
    with open(path, "wb") as fh:
        np.save(fh, np.array(rows, dtype=dtype))
    run, result = _run(
        project,
        wait_for_run,
        "import.coordinates",
        {"files": str(path)},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    assert result["count"] == 3 and len(result["rejected"]) == 1
    assert "zz.mrc" in result["rejected"][0]["reason"]
    c = project.open_set(run, "coordinates")
    m = project.open_set(mics, "micrographs")
    ids = {str(p).rsplit("/", 1)[-1]: int(i) for p, i in zip(m.column("image"), m.column("id"))}
    got = sorted(
        zip(c.column("micrograph_id").tolist(), c.column("x").tolist(), c.column("y").tolist())
    )
    assert got == sorted(
        [(ids["a.mrc"], 75.0, 100.0), (ids["b.mrc"], 150.0, 25.0), (ids["a.mrc"], 225.0, 50.0)]
    )
