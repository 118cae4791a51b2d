"""RELION micrographs, movies, CTFs, coordinates, motion metadata, classes and FSCs <->
hpcem: against files RELION itself writes (import, motion correction, extraction and 2D
classification run here on tiny data, about 1 s), ``starfile`` and RELION's own numbers
(its accumulated motion, its final resolution)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import starfile

from hpcem.convert import relion
from hpcem.convert import relion_results as rr
from hpcem.store.ragged import Ragged

ATOL = 5e-7
RELION = shutil.which("relion_run_motioncorr")
needs_relion = pytest.mark.skipif(RELION is None, reason="RELION 3.1 programs not installed")


def _run(argv, cwd):
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture
def relion_project(tmp_path):
    """A RELION project: 2 small movies imported and motion-corrected by RELION 3.1."""
    mrcfile = pytest.importorskip("mrcfile")
    rng = np.random.default_rng(0)
    (tmp_path / "Movies").mkdir()
    base = rng.normal(0, 1, (256, 256)).astype(np.float32)
    for m in range(2):
        frames = [
            np.roll(base, (i, 2 * i), axis=(0, 1)) + rng.normal(0, 1, base.shape) for i in range(6)
        ]
        with mrcfile.new(tmp_path / f"Movies/mov{m}.mrc") as f:
            f.set_data(np.stack(frames).astype(np.float32))
            f.voxel_size = 1.0
    (tmp_path / "Import/job001").mkdir(parents=True)
    _run(
        ["relion_import", "--do_movies", "--optics_group_name", "og1", "--angpix", "1.0"]
        + ["--kV", "300", "--Cs", "2.7", "--Q0", "0.1", "--i", "Movies/*.mrc"]
        + ["--odir", "Import/job001/", "--ofile", "movies.star"],
        tmp_path,
    )
    (tmp_path / "MotionCorr/job002").mkdir(parents=True)
    _run(
        ["relion_run_motioncorr", "--i", "Import/job001/movies.star", "--o", "MotionCorr/job002/"]
        + ["--use_own", "--j", "1", "--bin_factor", "1", "--bfactor", "150"]
        + ["--dose_per_frame", "1.5", "--preexposure", "0", "--patch_x", "1", "--patch_y", "1"]
        + ["--dose_weighting"],
        tmp_path,
    )
    return tmp_path


@needs_relion
def test_movies_from_relion_import(relion_project):
    conv = relion.read_movies(
        relion_project / "Import/job001/movies.star", root=relion_project, check_files=True
    )
    df = starfile.read(relion_project / "Import/job001/movies.star")
    assert [str(p) for p in conv.columns["image"]] == [
        str(relion_project / p) for p in df["movies"]["rlnMicrographMovieName"]
    ]
    assert conv.optics["pixel_size_A"][0] == df["optics"]["rlnMicrographOriginalPixelSize"][0]
    assert conv.optics["voltage_kV"][0] == 300.0
    out = relion_project / "movies_again.star"
    relion.write_movies(out, conv.columns, conv.optics, extra=conv.extra, root=relion_project)
    assert (
        starfile.read(out)["movies"]["rlnMicrographMovieName"].tolist()
        == df["movies"]["rlnMicrographMovieName"].tolist()
    )


@needs_relion
def test_motion_correction_outputs(relion_project):
    """corrected_micrographs.star and the per-micrograph motion STARs: our total and early
    drift equal RELION's own _rlnAccumMotionTotal/_rlnAccumMotionEarly."""
    mics = relion.read_micrographs(
        relion_project / "MotionCorr/job002/corrected_micrographs.star", root=relion_project
    )
    assert len(mics) == 2 and mics.optics["pixel_size_A"][0] == 1.0
    motion = rr.read_motion(rr.motion_files(mics, relion_project))
    np.testing.assert_allclose(
        motion.columns["total_drift"], mics.extra["rlnAccumMotionTotal"], atol=1e-5
    )
    np.testing.assert_allclose(
        motion.columns["early_drift"], mics.extra["rlnAccumMotionEarly"], atol=1e-5
    )
    shifts = starfile.read(relion_project / "MotionCorr/job002/Movies/mov0.star")["global_shift"]
    # hpcem keeps the displacement of each frame, RELION the shift that aligns it.
    np.testing.assert_allclose(motion.columns["shifts_x"][0], -shifts["rlnMicrographShiftX"] * 1.0)
    written = relion_project / "m_sign.star"
    rr.write_motion(written, [1.0, 2.0], [0.0, -3.0], {"rlnMicrographOriginalPixelSize": 2.0})
    raw = starfile.read(written)["global_shift"]
    assert list(raw["rlnMicrographShiftX"]) == [-0.5, -1.0]
    assert list(raw["rlnMicrographShiftY"]) == [0.0, 1.5]
    assert motion.columns["first_frame"][0] == 0 and motion.columns["last_frame"][0] == 5
    assert list(motion.extra["rlnMicrographMovieName"]) == ["Movies/mov0.mrc", "Movies/mov1.mrc"]
    # round trip of one motion STAR
    out = relion_project / "m.star"
    rr.write_motion(
        out,
        motion.columns["shifts_x"][0],
        motion.columns["shifts_y"][0],
        motion.extra["general"][0],
    )
    again = rr.read_motion([out])
    np.testing.assert_allclose(
        again.columns["shifts_y"][0], motion.columns["shifts_y"][0], atol=ATOL
    )
    assert again.columns["total_drift"][0] == pytest.approx(
        motion.columns["total_drift"][0], abs=1e-5
    )


@needs_relion
def test_relion_extracts_our_coordinates(relion_project):
    """RELION's extraction reads the coordinate STARs we write, and cuts the box whose
    centre pixel (index size/2) is micrograph pixel (x, y), 0-based: hpcem's convention."""
    mrcfile = pytest.importorskip("mrcfile")
    coords = {
        "micrograph_id": np.array([1, 1, 2]),
        "x": np.array([100.0, 150.0, 128.0]),
        "y": np.array([90.0, 120.0, 60.0]),
        "score": np.array([0.5, 0.25, 1.0]),
    }
    names = {1: "MotionCorr/job002/Movies/mov0.mrc", 2: "MotionCorr/job002/Movies/mov1.mrc"}
    # RELION 3.1 looks for <coord_dir>/<mic path less its first two folders><suffix>
    files = relion.write_coordinate_files(relion_project / "AutoPick/job003/Movies", coords, names)
    (relion_project / "Extract/job004").mkdir(parents=True)
    _run(
        ["relion_preprocess", "--i", "MotionCorr/job002/corrected_micrographs.star"]
        + ["--coord_dir", "AutoPick/job003/", "--coord_suffix", "_autopick.star"]
        + ["--part_star", "Extract/job004/particles.star", "--part_dir", "Extract/job004/"]
        + ["--extract", "--extract_size", "64"],
        relion_project,
    )
    parts = relion.read_particles(
        relion_project / "Extract/job004/particles.star",
        root=relion_project,
        micrograph_ids={v: k for k, v in names.items()},
    )
    np.testing.assert_array_equal(parts.columns["coord_x"], coords["x"])
    np.testing.assert_array_equal(parts.columns["coord_score"], coords["score"])
    np.testing.assert_array_equal(parts.columns["micrograph_id"], coords["micrograph_id"])
    mic = mrcfile.read(relion_project / names[1])
    box = mrcfile.read(parts.columns["image"][0])[parts.columns["image_index"][0]]
    np.testing.assert_array_equal(box, mic[90 - 32 : 90 + 32, 100 - 32 : 100 + 32])
    # the per-micrograph files and the list read back
    one = relion.read_coordinates(files[0], micrograph_id=1)
    np.testing.assert_array_equal(one.columns["y"], [90.0, 120.0])
    listed = relion.read_coordinate_list(
        relion_project / "AutoPick/job003/Movies/autopick.star",
        micrograph_ids={v: k for k, v in names.items()},
    )
    np.testing.assert_array_equal(listed.columns["micrograph_id"], coords["micrograph_id"])
    np.testing.assert_array_equal(listed.columns["score"], coords["score"])


@needs_relion
def test_relion31_coordinate_node(relion_project):
    """The RELION 3.1 layout (coords_suffix_autopick.star + one file per micrograph under
    the job folder): RELION's extraction takes what we write, and we read it back."""
    coords = {
        "micrograph_id": np.array([2, 1, 2]),
        "x": np.array([64.0, 80.0, 190.0]),
        "y": np.array([70.0, 100.0, 33.0]),
        "score": np.array([0.1, 0.2, 0.3]),
    }
    names = {1: "MotionCorr/job002/Movies/mov0.mrc", 2: "MotionCorr/job002/Movies/mov1.mrc"}
    job = relion_project / "AutoPick/job005"
    files = relion.write_coordinate_suffix(
        job, coords, names, "MotionCorr/job002/corrected_micrographs.star"
    )
    assert files[0] == str(job / "Movies/mov0_autopick.star")
    (relion_project / "Extract/job006").mkdir(parents=True)
    _run(
        ["relion_preprocess", "--i", "MotionCorr/job002/corrected_micrographs.star"]
        + ["--coord_dir", "AutoPick/job005/", "--coord_suffix", "_autopick.star"]
        + ["--part_star", "Extract/job006/particles.star", "--part_dir", "Extract/job006/"]
        + ["--extract", "--extract_size", "64"],
        relion_project,
    )
    parts = starfile.read(relion_project / "Extract/job006/particles.star")["particles"]
    assert sorted(zip(parts["rlnCoordinateX"], parts["rlnCoordinateY"])) == sorted(
        zip(coords["x"], coords["y"])
    )
    back = relion.read_coordinate_suffix(
        job / "coords_suffix_autopick.star",
        root=relion_project,
        micrograph_ids={v: k for k, v in names.items()},
    )
    order = np.lexsort((back.columns["x"], back.columns["micrograph_id"]))
    expect = np.lexsort((coords["x"], coords["micrograph_id"]))
    for f in ("x", "y", "score", "micrograph_id"):
        np.testing.assert_array_equal(back.columns[f][order], coords[f][expect])


def test_micrographs_with_ctf_roundtrip(tmp_path):
    mics = {
        "image": np.array(["MotionCorr/a.mrc", "MotionCorr/b.mrc"], dtype=object),
        "optics_group": np.array([1, 1]),
    }
    ctfs = {
        "defocus_u": np.array([15301.1, 20100.25]),
        "defocus_v": np.array([14916.4, 19800.5]),
        "defocus_angle": np.array([5.28, -45.0]),
        "phase_shift": np.array([0.0, 0.0]),
        "fit_resolution": np.array([3.5, 4.25]),
        "fit_score": np.array([0.1, 0.2]),
        "psd": np.array(["CtfFind/a.ctf", "CtfFind/b.ctf"], dtype=object),
    }
    optics = {"optics_group": [1], "pixel_size_A": [0.885], "voltage_kV": [300.0]}
    out = tmp_path / "micrographs_ctf.star"
    relion.write_micrographs(out, mics, optics, ctfs=ctfs)
    df = starfile.read(out)["micrographs"]
    np.testing.assert_allclose(df["rlnDefocusU"], ctfs["defocus_u"])
    assert list(df["rlnCtfImage"]) == ["CtfFind/a.ctf:mrc", "CtfFind/b.ctf:mrc"]
    back = relion.read_ctfs(out, micrograph_ids={"MotionCorr/a.mrc": 11, "MotionCorr/b.mrc": 12})
    for k, v in ctfs.items():
        if k == "psd":
            assert list(back.columns[k]) == list(v)
        else:
            np.testing.assert_allclose(back.columns[k], v, atol=ATOL)
    np.testing.assert_array_equal(back.columns["micrograph_id"], [11, 12])
    m = relion.read_micrographs(out)
    assert list(m.columns["image"]) == list(mics["image"])
    assert m.optics["pixel_size_A"][0] == pytest.approx(0.885)


MICS_30 = """
data_

loop_
_rlnMicrographName #1
_rlnCtfImage #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
_rlnMagnification #9
_rlnDetectorPixelSize #10
_rlnCtfFigureOfMerit #11
_rlnCtfMaxResolution #12
MotionCorr/a.mrc CtfFind/job003/a.ctf:mrc 10864.1 10575.7 77.06 300 2.7 0.1 10000 3.54 0.13 4.8
MotionCorr/b.mrc CtfFind/job003/b.ctf:mrc 9814.75 9484.72 81.12 300 2.7 0.1 10000 3.54 0.13 4.5
MotionCorr/c.mrc CtfFind/job003/c.ctf:mrc 10131.3 9804.41 -3.21 200 2.7 0.1 10000 3.54 0.12 5.1
"""


@pytest.mark.skipif(shutil.which("relion_convert_star") is None, reason="RELION not installed")
def test_30_micrographs_and_ctfs_as_relion_converts_them(tmp_path):
    """A RELION 3.0 micrographs_ctf.star (per-row optics, written here after RELION 3.0's
    CtfFind output): our optics groups, pixel sizes and CTFs equal those of RELION's own
    3.0 -> 3.1 conversion of the same file."""
    src = tmp_path / "mics30.star"
    src.write_text(MICS_30)
    out = tmp_path / "mics31.star"
    _run(["relion_convert_star", "--i", str(src), "--o", str(out)], tmp_path)
    ours, theirs = relion.read_micrographs(src), relion.read_micrographs(out)
    np.testing.assert_array_equal(ours.columns["optics_group"], [1, 1, 2])
    np.testing.assert_array_equal(ours.columns["optics_group"], theirs.columns["optics_group"])
    for f in ("pixel_size_A", "voltage_kV", "spherical_aberration_mm", "amplitude_contrast"):
        np.testing.assert_allclose(ours.optics[f], theirs.optics[f], rtol=1e-6)
    assert ours.optics["pixel_size_A"][0] == pytest.approx(3.54)
    c_ours, c_theirs = relion.read_ctfs(src), relion.read_ctfs(out)
    for f in ("defocus_u", "defocus_v", "defocus_angle", "fit_score", "fit_resolution"):
        np.testing.assert_allclose(c_ours.columns[f], c_theirs.columns[f], rtol=1e-6)
    assert list(c_ours.columns["psd"]) == [f"CtfFind/job003/{m}.ctf" for m in "abc"]


# --- classes ---------------------------------------------------------------------------


@pytest.fixture
def class2d(shared_data, tmp_path):
    """A RELION 3.1 2D classification (K=2, 1 iteration) of the 5 particles of relion31."""
    if shutil.which("relion_refine") is None:
        pytest.skip("RELION (relion_refine) not installed")
    folder = shared_data / "cryodrgn-4.3.1"
    conv = relion.read_particles(folder / "relion31.star", root=folder)
    relion.write_particles(tmp_path / "parts.star", conv.columns, conv.optics, extra=conv.extra)
    (tmp_path / "Class2D").mkdir()
    _run(
        ["relion_refine", "--i", "parts.star", "--o", "Class2D/run", "--K", "2", "--iter", "1"]
        + ["--tau2_fudge", "2", "--particle_diameter", "400", "--ctf", "--psi_step", "30"]
        + ["--offset_range", "3", "--offset_step", "3", "--zero_mask", "--j", "1"]
        + ["--dont_combine_weights_via_disc"],
        tmp_path,
    )
    return tmp_path


def test_class2d_from_relion(class2d):
    model = class2d / "Class2D/run_it001_model.star"
    data = class2d / "Class2D/run_it001_data.star"
    ids = np.array([10, 11, 12, 13, 14])
    conv = rr.read_classes(model, data, particle_ids=ids, root=class2d)
    assert conv.set_type == "hpcem.SetOfClasses2D"
    number = starfile.read(data)["particles"]["rlnClassNumber"].to_numpy()
    refs = starfile.read(model)["model_classes"]["rlnReferenceImage"]
    np.testing.assert_array_equal(conv.columns["id"], [1, 2])
    for k, cid in enumerate(conv.columns["id"]):
        assert sorted(conv.columns["member_ids"][k]) == sorted(ids[number == cid])
        assert conv.columns["size"][k] == np.sum(number == cid)
        index, stack = refs[k].split("@")
        assert conv.columns["representative_index"][k] == int(index) - 1
        assert conv.columns["representative"][k] == str(class2d / stack)
    # membership back to particles, and the model written and read again
    np.testing.assert_array_equal(rr.class_of_particles(conv.columns, ids), number)
    out = class2d / "again_model.star"
    rr.write_classes(out, conv.columns, 2, extra=conv.extra, root=class2d)
    again = rr.read_classes(out, root=class2d)
    assert list(again.columns["representative"]) == list(conv.columns["representative"])
    np.testing.assert_array_equal(
        again.columns["representative_index"], conv.columns["representative_index"]
    )
    np.testing.assert_allclose(again.extra["rlnClassDistribution"], conv.columns["size"] / 5)


@pytest.fixture
def class3d(tmp_path):
    """A RELION 3.1 3D classification (K=2, 1 iteration) of 20 noise particles of 32 px
    with random angles, from a reference reconstructed by relion_reconstruct (~1 s)."""
    if shutil.which("relion_refine") is None or shutil.which("relion_reconstruct") is None:
        pytest.skip("RELION (relion_refine, relion_reconstruct) not installed")
    mrcfile = pytest.importorskip("mrcfile")
    rng = np.random.default_rng(0)
    n = 20
    with mrcfile.new(tmp_path / "parts.mrcs") as f:
        f.set_data(rng.normal(0, 1, (n, 32, 32)).astype(np.float32))
    cols = {
        "image": np.array(["parts.mrcs"] * n, dtype=object),
        "image_index": np.arange(n),
        "rot": rng.uniform(-180, 180, n),
        "tilt": rng.uniform(0, 180, n),
        "psi": rng.uniform(-180, 180, n),
        "defocus_u": np.full(n, 15000.0),
        "defocus_v": np.full(n, 14000.0),
        "defocus_angle": np.zeros(n),
    }
    optics = {
        "optics_group": [1],
        "pixel_size_A": [4.0],
        "voltage_kV": [300.0],
        "spherical_aberration_mm": [2.7],
        "amplitude_contrast": [0.1],
        "image_size_px": [32],
    }
    relion.write_particles(tmp_path / "parts.star", cols, optics)
    _run(["relion_reconstruct", "--i", "parts.star", "--o", "ref.mrc", "--ctf"], tmp_path)
    (tmp_path / "Class3D").mkdir()
    _run(
        ["relion_refine", "--i", "parts.star", "--o", "Class3D/run", "--ref", "ref.mrc"]
        + ["--ini_high", "30", "--K", "2", "--iter", "1", "--tau2_fudge", "4"]
        + ["--particle_diameter", "100", "--ctf", "--healpix_order", "0", "--sym", "C1"]
        + ["--offset_range", "2", "--offset_step", "2", "--zero_mask", "--j", "1"]
        + ["--pool", "20", "--dont_combine_weights_via_disc"],
        tmp_path,
    )
    return tmp_path


def test_class3d_from_relion(class3d):
    model = class3d / "Class3D/run_it001_model.star"
    data = class3d / "Class3D/run_it001_data.star"
    conv = rr.read_classes(model, data, root=class3d)
    assert conv.set_type == "hpcem.SetOfClasses3D"
    classes = starfile.read(model)["model_classes"]
    number = starfile.read(data)["particles"]["rlnClassNumber"].to_numpy()
    np.testing.assert_allclose(conv.columns["resolution_A"], classes["rlnEstimatedResolution"])
    for k in range(2):
        assert conv.columns["representative"][k] == str(class3d / classes["rlnReferenceImage"][k])
        assert (class3d / classes["rlnReferenceImage"][k]).exists()
        np.testing.assert_array_equal(conv.columns["member_ids"][k], np.nonzero(number == k + 1)[0])
    assert conv.columns["size"].sum() == 20
    np.testing.assert_array_equal(rr.class_of_particles(conv.columns, np.arange(20)), number)


MODEL_3D = """
# version 30001

data_model_general

_rlnReferenceDimensionality                        3
_rlnDataDimensionality                             2
_rlnNrClasses                                      3
_rlnPixelSize                               2.806000

# version 30001

data_model_classes

loop_
_rlnReferenceImage #1
_rlnClassDistribution #2
_rlnAccuracyRotations #3
_rlnAccuracyTranslationsAngst #4
_rlnEstimatedResolution #5
_rlnOverallFourierCompleteness #6
Class3D/job016/run_it025_class001.mrc 0.500000     3.120000     1.100000    12.500000     0.980000
Class3D/job016/run_it025_class002.mrc 0.333333     4.000000     1.300000    15.250000     0.950000
Class3D/job016/run_it025_class003.mrc 0.166667     9.500000     2.000000    31.000000         -nan
"""

DATA_3D = """
# version 30001

data_particles

loop_
_rlnImageName #1
_rlnClassNumber #2
000001@Extract/job007/a.mrcs 1
000002@Extract/job007/a.mrcs 2
000003@Extract/job007/a.mrcs 1
000001@Extract/job007/b.mrcs 3
000002@Extract/job007/b.mrcs 1
000003@Extract/job007/b.mrcs 2
"""


def test_class3d_model(tmp_path):
    """A Class3D model/data pair written here after RELION 3.1's format (labels as its
    MlModel::write writes them, ``-nan`` as C prints it)."""
    (tmp_path / "model.star").write_text(MODEL_3D)
    (tmp_path / "data.star").write_text(DATA_3D)
    conv = rr.read_classes(tmp_path / "model.star", tmp_path / "data.star")
    assert conv.set_type == "hpcem.SetOfClasses3D"
    np.testing.assert_allclose(conv.columns["resolution_A"], [12.5, 15.25, 31.0])
    assert conv.columns["member_ids"] == Ragged.from_list([[0, 2, 4], [1, 5], [3]], "int64")
    np.testing.assert_array_equal(conv.columns["size"], [3, 2, 1])
    assert np.isnan(conv.extra["rlnOverallFourierCompleteness"][2])
    assert conv.columns["representative"][1] == "Class3D/job016/run_it025_class002.mrc"
    out = tmp_path / "again.star"
    rr.write_classes(out, conv.columns, 3, extra=conv.extra)
    again = rr.read_classes(out, tmp_path / "data.star")
    np.testing.assert_allclose(again.columns["resolution_A"], conv.columns["resolution_A"])
    np.testing.assert_allclose(again.extra["rlnClassDistribution"], [0.5, 1 / 3, 1 / 6], atol=ATOL)


def test_optimiser_names_model_and_data(shared_data, tmp_path):
    """RELION 4/5 pipelines point Class2D jobs at the optimiser STAR; it names the model
    and data STARs (here the tutorial's, relative to the project folder)."""
    optimiser = shared_data / "starfile-0.5.13/relion_tutorial/run_it025_optimiser_2D.star"
    general = starfile.read(optimiser)
    model = tmp_path / general["rlnModelStarFile"]
    data = tmp_path / general["rlnExperimentalDataStarFile"]
    model.parent.mkdir(parents=True)
    model.write_text(MODEL_3D)
    data.write_text(DATA_3D)
    conv = rr.read_optimiser_classes(optimiser, root=tmp_path)
    np.testing.assert_array_equal(conv.columns["size"], [3, 2, 1])


# --- FSC -------------------------------------------------------------------------------


def test_postprocess_fsc(shared_data, tmp_path):
    path = shared_data / "starfile-0.5.13/postprocess.star"
    conv = rr.read_postprocess(path)
    blocks = starfile.read(path)
    fsc = blocks["fsc"]
    labels = list(conv.columns["label"])
    assert labels == ["corrected", "unmasked", "masked", "phase_randomised_masked"]
    for k, name in enumerate(labels):
        np.testing.assert_array_equal(conv.columns["fsc"][k], fsc[rr.FSC_CURVES[name]])
        np.testing.assert_array_equal(conv.columns["frequency"][k], fsc["rlnResolution"])
    assert conv.columns["resolution_A"][0] == pytest.approx(16.36, abs=0.01)
    assert conv.columns["resolution_A"][0] == blocks["general"]["rlnFinalResolution"]
    # RELION's 0.143 rule, applied here to its corrected curve, gives its own number
    ours = rr.fsc_resolution_A(fsc["rlnAngstromResolution"], fsc[rr.FSC_CURVES["corrected"]])
    assert ours == pytest.approx(blocks["general"]["rlnFinalResolution"], rel=1e-6)
    out = tmp_path / "postprocess.star"
    rr.write_postprocess(out, conv.columns, conv.extra["general"])
    again = rr.read_postprocess(out)
    assert again.columns["fsc"] == conv.columns["fsc"]
    assert again.columns["frequency"] == conv.columns["frequency"]
    np.testing.assert_allclose(
        again.columns["resolution_A"], conv.columns["resolution_A"], rtol=1e-4
    )
    assert again.extra["general"]["rlnMaskName"] == "mask.mrc"


PIPELINE_31 = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter                       7

# version 30001

data_pipeline_processes

loop_
_rlnPipeLineProcessName #1
_rlnPipeLineProcessAlias #2
_rlnPipeLineProcessType #3
_rlnPipeLineProcessStatus #4
Import/job001/ None 0 2
MotionCorr/job002/ None 1 2
AutoPick/job005/ None 4 2
Extract/job006/ None 5 2

# version 30001

data_pipeline_nodes

loop_
_rlnPipeLineNodeName #1
_rlnPipeLineNodeType #2
Import/job001/movies.star 0
MotionCorr/job002/corrected_micrographs.star 1
AutoPick/job005/coords_suffix_autopick.star 2
Extract/job006/particles.star 3

# version 30001

data_pipeline_input_edges

loop_
_rlnPipeLineEdgeFromNode #1
_rlnPipeLineEdgeProcess #2
Import/job001/movies.star MotionCorr/job002/
MotionCorr/job002/corrected_micrographs.star AutoPick/job005/
MotionCorr/job002/corrected_micrographs.star Extract/job006/
AutoPick/job005/coords_suffix_autopick.star Extract/job006/

# version 30001

data_pipeline_output_edges

loop_
_rlnPipeLineEdgeProcess #1
_rlnPipeLineEdgeToNode #2
Import/job001/ Import/job001/movies.star
MotionCorr/job002/ MotionCorr/job002/corrected_micrographs.star
AutoPick/job005/ AutoPick/job005/coords_suffix_autopick.star
Extract/job006/ Extract/job006/particles.star
"""


@needs_relion
def test_continue_a_relion_project(relion_project):
    """A RELION 3.1 project (import, motion correction by RELION, picks, extraction by
    RELION): its pipeline read and every node read into hpcem sets, in lineage order."""
    from hpcem.convert.relion_pipeline import read_node, read_pipeline

    names = {1: "MotionCorr/job002/Movies/mov0.mrc", 2: "MotionCorr/job002/Movies/mov1.mrc"}
    coords = {
        "micrograph_id": np.array([1, 2]),
        "x": np.array([100.0, 60.0]),
        "y": np.array([90.0, 70.0]),
    }
    relion.write_coordinate_suffix(
        relion_project / "AutoPick/job005",
        coords,
        names,
        "MotionCorr/job002/corrected_micrographs.star",
    )
    (relion_project / "Extract/job006").mkdir(parents=True)
    _run(
        ["relion_preprocess", "--i", "MotionCorr/job002/corrected_micrographs.star"]
        + ["--coord_dir", "AutoPick/job005/", "--coord_suffix", "_autopick.star"]
        + ["--part_star", "Extract/job006/particles.star", "--part_dir", "Extract/job006/"]
        + ["--extract", "--extract_size", "64"],
        relion_project,
    )
    (relion_project / "default_pipeline.star").write_text(PIPELINE_31)
    pipe = read_pipeline(relion_project / "default_pipeline.star")
    assert [j.name for j in pipe.jobs] == [
        "Import/job001/",
        "MotionCorr/job002/",
        "AutoPick/job005/",
        "Extract/job006/",
    ]
    assert pipe.parents("Extract/job006/") == ["MotionCorr/job002/", "AutoPick/job005/"]
    sets = {}
    mic_ids = None
    for job in pipe.jobs:
        for node in job.outputs:
            for conv in read_node(pipe.nodes[node], relion_project, mic_ids):
                sets[conv.set_type] = conv
                if conv.set_type == "hpcem.SetOfMicrographs":  # ids the store would keep
                    mic_ids = {
                        os.path.relpath(p, relion_project): 10 + i
                        for i, p in enumerate(conv.columns["image"])
                    }
    assert set(sets) == {
        "hpcem.SetOfMovies",
        "hpcem.SetOfMicrographs",
        "hpcem.SetOfCoordinates",
        "hpcem.SetOfParticles",
    }
    assert len(sets["hpcem.SetOfMovies"]) == 2 and len(sets["hpcem.SetOfMicrographs"]) == 2
    np.testing.assert_array_equal(sets["hpcem.SetOfCoordinates"].columns["x"], coords["x"])
    parts = sets["hpcem.SetOfParticles"]
    np.testing.assert_array_equal(parts.columns["coord_y"], coords["y"])
    np.testing.assert_array_equal(parts.columns["micrograph_id"], [10, 11])
    np.testing.assert_array_equal(sets["hpcem.SetOfCoordinates"].columns["micrograph_id"], [10, 11])
    assert all(str(p).startswith(str(relion_project)) for p in parts.columns["image"])
