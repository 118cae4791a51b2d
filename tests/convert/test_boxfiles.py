"""crYOLO ``.cbox``, EMAN ``.box`` and plain coordinate files: the real crYOLO output of
napari-boxmanager's test data against ``starfile``, exact round trips, RELION's ``.box``
rule, micrograph matching and bad input.

Round-trip tolerance: none — the writers print floats as Python's shortest repr, so the
values read back are the same float64 numbers (``.box`` with ``decimals=0`` rounds the
corner to whole pixels on purpose, as EMAN and RELION expect integers).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hpcem.convert.boxfiles import (
    match_micrographs,
    read_box,
    read_cbox,
    read_coordinates_txt,
    write_box,
    write_cbox,
    write_coordinates_txt,
)
from hpcem.errors import DataFormatError

CBOX = ("TcdA1-0018_frames_sum.cbox", "TcdA1-0019_frames_sum.cbox")


def _cbox(shared_data, name):
    return shared_data / "napari-boxmanager-0.4.14" / name


@pytest.mark.parametrize("name", CBOX)
def test_cbox_values_against_starfile(shared_data, name):
    import starfile

    path = _cbox(shared_data, name)
    table = starfile.read(path, always_dict=True)["cryolo"]
    names = {
        "Micrographs/TcdA1-0018_frames_sum.mrc": 18,
        "Micrographs/TcdA1-0019_frames_sum.mrc": 19,
    }
    conv = read_cbox(path, micrograph_names=names)
    assert conv.set_type == "hpcem.SetOfCoordinates"
    assert len(conv) == len(table) > 100
    np.testing.assert_array_equal(conv.columns["x"], table["CoordinateX"] + table["Width"] / 2)
    np.testing.assert_array_equal(conv.columns["y"], table["CoordinateY"] + table["Height"] / 2)
    np.testing.assert_array_equal(conv.columns["score"], table["Confidence"])
    assert set(conv.columns["micrograph_id"]) == {18 if "0018" in name else 19}
    np.testing.assert_array_equal(conv.extra["EstWidth"], table["EstWidth"])
    assert conv.extra["micrograph"] == name.removesuffix(".cbox")
    assert set(conv.extra["Width"]) == {220.0}


@pytest.mark.parametrize("name", CBOX)
def test_cbox_round_trip_is_exact(shared_data, tmp_path, name):
    import starfile

    path = _cbox(shared_data, name)
    conv = read_cbox(path)
    out = tmp_path / name
    write_cbox(out, conv.columns, conv.extra["Width"], conv.extra)
    again = read_cbox(out)
    for key in ("x", "y", "score"):
        np.testing.assert_array_equal(again.columns[key], conv.columns[key])
    # the data rows are crYOLO's own text, and starfile reads the same table
    original = [line for line in path.read_text().splitlines() if line[:1].isdigit()]
    written = [line for line in out.read_text().splitlines() if line[:1].isdigit()]
    assert written == original
    a = starfile.read(path, always_dict=True)["cryolo"]
    b = starfile.read(out, always_dict=True)["cryolo"]
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_cbox_from_hpcem_picks(tmp_path):
    cols = {
        "x": np.array([100.0, 250.5]),
        "y": np.array([40.25, 3000.0]),
        "score": np.array([0.9, 0.3]),
    }
    write_cbox(tmp_path / "m.cbox", cols, 64)
    text = (tmp_path / "m.cbox").read_text()
    assert "68.0 8.25 <NA> 64.0 64.0 <NA> <NA> <NA> 0.9 <NA> <NA>" in text
    back = read_cbox(tmp_path / "m.cbox")
    for key, values in cols.items():
        np.testing.assert_array_equal(back.columns[key], values)


def test_box_corner_rule_is_relions(tmp_path):
    """RELION's .box reader (preprocessing.cpp): centre = x + w / 2 in integers. A box
    file written with integers reads back to RELION's centre; exact floats round trip."""
    cols = {"x": np.array([110.0, 2000.0, 37.0]), "y": np.array([3984.0, 10.0, 600.0])}
    write_box(tmp_path / "m.box", cols, 220, decimals=0)
    rows = np.loadtxt(tmp_path / "m.box", dtype=np.int64)
    relion_x = rows[:, 0] + rows[:, 2] // 2
    relion_y = rows[:, 1] + rows[:, 3] // 2
    np.testing.assert_array_equal(relion_x, cols["x"])
    np.testing.assert_array_equal(relion_y, cols["y"])
    assert rows[0].tolist() == [0, 3874, 220, 220]
    back = read_box(tmp_path / "m.box")
    np.testing.assert_array_equal(back.columns["x"], cols["x"])
    frac = {"x": np.array([110.37, 5.5]), "y": np.array([17.125, 99.0])}
    write_box(tmp_path / "f.box", frac, 221)
    again = read_box(tmp_path / "f.box")
    np.testing.assert_array_equal(again.columns["x"], frac["x"])
    np.testing.assert_array_equal(again.columns["y"], frac["y"])


def test_box_from_cbox_picks_same_centres(shared_data, tmp_path):
    conv = read_cbox(_cbox(shared_data, CBOX[0]))
    write_box(tmp_path / "TcdA1-0018_frames_sum.box", conv.columns, 220)
    box = read_box(tmp_path / "TcdA1-0018_frames_sum.box")
    np.testing.assert_array_equal(box.columns["x"], conv.columns["x"])
    np.testing.assert_array_equal(box.columns["y"], conv.columns["y"])
    assert box.extra["micrograph"] == "TcdA1-0018_frames_sum"


def test_plain_coordinates_round_trip(tmp_path):
    path = tmp_path / "mic_007.txt"
    path.write_text("# x y score from some picker\n10.5 20.25 0.5\n\n300 400 0.125  # a comment\n")
    conv = read_coordinates_txt(path, micrograph_names={"Micrographs/mic_007.mrc": 7})
    assert conv.columns["x"].tolist() == [10.5, 300.0]
    assert conv.columns["y"].tolist() == [20.25, 400.0]
    assert conv.columns["score"].tolist() == [0.5, 0.125]
    assert conv.columns["micrograph_id"].tolist() == [7, 7]
    write_coordinates_txt(tmp_path / "again.txt", conv.columns)
    again = read_coordinates_txt(tmp_path / "again.txt")
    for key in ("x", "y", "score"):
        np.testing.assert_array_equal(again.columns[key], conv.columns[key])
    xy = tmp_path / "xy.txt"
    xy.write_text("1 2\n3 4\n")
    assert "score" not in read_coordinates_txt(xy).columns
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing picked\n")
    assert len(read_coordinates_txt(empty)) == 0


def test_micrograph_matching():
    names = {"MotionCorr/job002/Movies/a.mrc": 1, "Other/b.mrc": 2, "x/c.mrc": 3, "y/c.mrc": 4}
    got = match_micrographs("f", np.array(["a", "Other/b.mrc", "b.cbox", "a"], object), names)
    assert got.tolist() == [1, 2, 2, 1]
    assert match_micrographs("f", np.array(["y/c.mrc"], object), names).tolist() == [4]
    with pytest.raises(DataFormatError, match="'c'"):  # stem shared by two micrographs
        match_micrographs("f", np.array(["c"], object), names)
    assert match_micrographs("f", np.array(["zz"], object), None).tolist() == [-1]


# --- bad input -----------------------------------------------------------------------------


def test_cbox_missing_columns_named(shared_data, tmp_path):
    text = _cbox(shared_data, CBOX[0]).read_text()
    bad = tmp_path / "no_width.cbox"
    bad.write_text(text.replace("_Width #4", "_Wide #4"))
    with pytest.raises(DataFormatError, match=r"no_width\.cbox: block data_cryolo lacks .*_Width"):
        read_cbox(bad)
    no_block = tmp_path / "other.cbox"
    no_block.write_text("data_global\n\n_cbox_format_version 1.0\n")
    with pytest.raises(DataFormatError, match="no 'data_cryolo'"):
        read_cbox(no_block)
    with pytest.raises(DataFormatError, match="no such file"):
        read_cbox(tmp_path / "absent.cbox")


def test_box_bad_lines_named(tmp_path):
    short = tmp_path / "short.box"
    short.write_text("10 20 64 64\n30 40 64\n")
    with pytest.raises(DataFormatError, match=r"short\.box, line 2: 3 column"):
        read_box(short)
    ragged = tmp_path / "ragged.box"
    ragged.write_text("10 20 64 64\n30 40 64 64 1\n")
    with pytest.raises(
        DataFormatError, match=r"ragged\.box, line 2: 5 columns, earlier lines have 4"
    ):
        read_box(ragged)
    words = tmp_path / "words.box"
    words.write_text("10 20 64 64\nx 40 64 64\n")
    with pytest.raises(DataFormatError, match=r"words\.box, line 2: not numbers"):
        read_box(words)


def test_picks_for_a_micrograph_not_in_the_set(shared_data):
    with pytest.raises(DataFormatError, match=r"micrograph 'TcdA1-0018_frames_sum' is not in"):
        read_cbox(
            _cbox(shared_data, CBOX[0]),
            micrograph_names={"Micrographs/TcdA1-0019_frames_sum.mrc": 1},
        )


@pytest.mark.skipif(
    shutil.which("relion_preprocess") is None, reason="relion_preprocess not on PATH"
)
def test_box_files_we_write_are_extracted_centred_by_relion(tmp_path):
    """RELION's own extraction from a ``.box`` we wrote: a bright pixel at each pick's
    centre (x = column, y = row, 0-based) sits at the box centre (size // 2) of every
    particle RELION cuts, and RELION's particle STAR has our centres as coordinates."""
    import mrcfile
    import starfile

    from hpcem.command import run_command

    size, box = 256, 32
    centres = np.array([[40.0, 60.0], [200.0, 45.0], [128.0, 190.0], [75.0, 150.0]])
    mic = np.zeros((size, size), dtype=np.float32)
    mic[centres[:, 1].astype(int), centres[:, 0].astype(int)] = 100.0
    with mrcfile.new(tmp_path / "mic1.mrc") as mrc:
        mrc.set_data(mic)
        mrc.voxel_size = 1.0
    write_box(tmp_path / "mic1.box", {"x": centres[:, 0], "y": centres[:, 1]}, box, decimals=0)
    (tmp_path / "mics.star").write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
        "_rlnMicrographPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
        "_rlnAmplitudeContrast #6\nopticsGroup1 1 1.0 300 2.7 0.1\n\n\n"
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\nmic1.mrc 1\n"
    )
    argv = [
        "relion_preprocess",
        "--i",
        "mics.star",
        "--coord_dir",
        "./",
        "--coord_suffix",
        ".box",
        "--part_dir",
        "out/",
        "--part_star",
        "out/particles.star",
        "--extract",
        "--extract_size",
        str(box),
    ]
    run_command(argv, cwd=tmp_path, timeout_s=120)
    stack = mrcfile.read(tmp_path / "out" / "mic1.mrcs")
    assert stack.shape == (len(centres), box, box)
    for particle in stack:
        assert np.unravel_index(np.argmax(particle), particle.shape) == (box // 2, box // 2)
    table = starfile.read(tmp_path / "out" / "particles.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(table["rlnCoordinateX"], centres[:, 0])
    np.testing.assert_array_equal(table["rlnCoordinateY"], centres[:, 1])
    back = read_box(tmp_path / "mic1.box")
    np.testing.assert_array_equal(np.c_[back.columns["x"], back.columns["y"]], centres)


def test_picks_store_as_an_hpcem_set(shared_data, project):
    conv = read_cbox(_cbox(shared_data, CBOX[1]), micrograph_names={"TcdA1-0019_frames_sum.mrc": 4})
    run = project.create_run("import.coordinates")
    with project.create_set(run.id, "coordinates", conv.set_type) as writer:
        writer.append_columns(conv.columns)
    stored = project.open_set(run.id, "coordinates")
    assert len(stored) == len(conv)
    np.testing.assert_allclose(stored.column("x"), conv.columns["x"], rtol=1e-7)
    assert set(stored.column("micrograph_id")) == {4}


def test_old_plain_cbox(tmp_path):
    """crYOLO < 1.8 .cbox: EMAN-like columns plus the confidence (napari-boxmanager's
    ``read_cbox_boxfile_old``: x, y, width, height, confidence)."""
    path = tmp_path / "old.cbox"
    path.write_text("3700.5 3874.25 220 220 0.65\n888 3747 220 220 0.43\n")
    conv = read_cbox(path)
    assert conv.columns["x"].tolist() == [3810.5, 998.0]
    assert conv.columns["y"].tolist() == [3984.25, 3857.0]
    assert conv.columns["score"].tolist() == [0.65, 0.43]
    short = tmp_path / "short.cbox"
    short.write_text("1 2 3 4\n")
    with pytest.raises(DataFormatError, match=r"short\.cbox, line 1: 4 column"):
        read_cbox(short)
