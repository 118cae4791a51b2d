"""Bad RELION STAR input: one clear message naming the file and the block/line/column, and
nothing half-imported (the readers return everything or raise)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hpcem.convert import relion
from hpcem.convert.relion_star import read_star
from hpcem.errors import DataFormatError, ValidationError

CRYODRGN = "cryodrgn-4.3.1"


def _edit(src, dst, fn):
    text = src.read_text()
    dst.write_text(fn(text))
    return dst


def test_missing_mandatory_column(shared_data, tmp_path):
    bad = _edit(
        shared_data / CRYODRGN / "relion31.star",
        tmp_path / "noimage.star",
        lambda t: t.replace("_rlnImageName ", "_rlnSomethingElse "),
    )
    with pytest.raises(DataFormatError) as err:
        relion.read_particles(bad)
    msg = str(err.value)
    assert "noimage.star" in msg and "data_particles" in msg and "_rlnImageName" in msg


def test_missing_ctf_column(shared_data, tmp_path):
    src = tmp_path / "mics.star"
    relion.write_micrographs(
        src,
        {"image": np.array(["a.mrc"], dtype=object)},
        {"optics_group": [1], "pixel_size_A": [1.0]},
        ctfs={"defocus_u": [1.0e4], "defocus_v": [1.1e4]},
    )
    with pytest.raises(
        DataFormatError, match=r"mics.star, block data_micrographs.*_rlnDefocusAngle"
    ):
        relion.read_ctfs(src)


def test_unknown_optics_group(shared_data, tmp_path):
    """A particle referring to group 7 when the optics block has groups 1-6."""
    import starfile

    blocks = starfile.read(shared_data / CRYODRGN / "relion31.6opticsgroups.star")
    blocks["particles"].loc[2, "rlnOpticsGroup"] = 7
    bad = tmp_path / "group7.star"
    starfile.write(blocks, bad)
    with pytest.raises(DataFormatError) as err:
        relion.read_particles(bad)
    msg = str(err.value)
    assert "group7.star" in msg and "row 3" in msg and "optics group 7" in msg
    assert "[1, 2, 3, 4, 5, 6]" in msg


def test_inconsistent_pixel_size_argument(shared_data):
    with pytest.raises(ValidationError, match=r"inconsistent pixel sizes.*2\.806.*2\.0"):
        relion.read_particles(shared_data / CRYODRGN / "relion31.star", pixel_size_A=2.0)
    # the same value is accepted
    conv = relion.read_particles(shared_data / CRYODRGN / "relion31.star", pixel_size_A=2.806)
    assert conv.optics["pixel_size_A"][0] == pytest.approx(2.806)


def test_inconsistent_pixel_sizes_in_a_30_file(shared_data, tmp_path):
    """Magnification/DetectorPixelSize say 1.31 Å, an _rlnImagePixelSize column says 1.5."""

    def add_column(text):
        text = text.replace(
            "_rlnDetectorPixelSize #10", "_rlnDetectorPixelSize #10\n_rlnImagePixelSize #11"
        )
        return re.sub(r"(38168 5)\n", r"\1 1.5\n", text)

    bad = _edit(shared_data / CRYODRGN / "empiar_10076_7.star", tmp_path / "pix.star", add_column)
    with pytest.raises(DataFormatError, match=r"pix.star, block data_, row 1: inconsistent pixel"):
        relion.read_particles(bad)


def test_30_without_pixel_size(shared_data, tmp_path):
    bad = _edit(
        shared_data / CRYODRGN / "empiar_10076_7.star",
        tmp_path / "nopix.star",
        lambda t: t.replace("_rlnMagnification", "_rlnSomeOther"),
    )
    with pytest.raises(ValidationError, match=r"nopix.star.*pixel_size_A="):
        relion.read_particles(bad)
    conv = relion.read_particles(bad, pixel_size_A=1.31)
    assert conv.optics["pixel_size_A"][0] == pytest.approx(1.31)


def test_missing_image_files(shared_data, tmp_path):
    src = shared_data / CRYODRGN / "relion31.6opticsgroups.star"
    with pytest.raises(DataFormatError) as err:
        relion.read_particles(src, root=tmp_path, check_files=True)
    msg = str(err.value)
    n_stacks = len(set(relion.read_particles(src).columns["image"]))
    assert f"{n_stacks} file(s)" in msg and str(tmp_path) in msg and "root=" in msg
    assert relion.missing_files(relion.read_particles(src).columns["image"], tmp_path)


def test_truncated_star(shared_data, tmp_path):
    """A file cut in the middle of a row: the row is named, nothing is returned."""
    text = (shared_data / CRYODRGN / "relion31.6opticsgroups.star").read_text()
    bad = tmp_path / "cut.star"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(
        DataFormatError, match=r"cut.star, block data_particles: row \d+ .*truncated"
    ):
        relion.read_particles(bad)


def test_row_with_too_many_values(shared_data, tmp_path):
    src = shared_data / CRYODRGN / "relion31.star"
    lines = src.read_text().splitlines()
    i = max(k for k, ln in enumerate(lines) if "relion31.mrcs" in ln)
    lines[i] += " 42"
    bad = tmp_path / "long.star"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"long.star, block data_particles.*line {i + 1}"):
        relion.read_particles(bad)


def test_not_a_star_file(tmp_path):
    bad = tmp_path / "x.star"
    bad.write_text("hello\nworld\n")
    with pytest.raises(DataFormatError, match="x.star: no 'data_' block"):
        read_star(bad)
    with pytest.raises(DataFormatError, match="cannot read"):
        read_star(tmp_path / "absent.star")


def test_not_a_number(shared_data, tmp_path):
    bad = _edit(
        shared_data / CRYODRGN / "empiar_10076_7.star",
        tmp_path / "nan.star",
        lambda t: t.replace("15150.7", "abc"),
    )
    with pytest.raises(
        DataFormatError, match=r"nan.star, block data_, row 3: _rlnDefocusU is 'abc'"
    ):
        relion.read_particles(bad)


def test_micrograph_not_in_set(shared_data):
    src = shared_data / CRYODRGN / "relion31.star"
    with pytest.raises(
        DataFormatError, match=r"micrograph .*18aug10a.* is not in the micrograph set"
    ):
        relion.read_particles(src, micrograph_ids={"other.mrc": 1})


def test_coordinate_list_with_missing_file(tmp_path):
    folder = tmp_path / "AutoPick"
    relion.write_coordinate_files(
        folder,
        {"micrograph_id": np.array([1]), "x": np.array([10.0]), "y": np.array([20.0])},
        {1: "mic1.mrc", 2: "mic2.mrc"},
    )
    (folder / "mic2_autopick.star").unlink()
    with pytest.raises(DataFormatError, match=r"1 coordinate file\(s\).*mic2_autopick.star"):
        relion.read_coordinate_list(folder / "autopick.star")


def test_write_errors(tmp_path):
    with pytest.raises(ValidationError, match="image and image_index"):
        relion.write_particles(tmp_path / "a.star", {"defocus_u": [1.0]}, {})
    with pytest.raises(ValidationError, match="version"):
        relion.write_particles(
            tmp_path / "a.star", {"image": ["a"], "image_index": [0]}, {}, version="4"
        )
    cols = {
        "image": np.array(["a"], dtype=object),
        "image_index": np.array([0]),
        "optics_group": [2],
    }
    with pytest.raises(ValidationError, match="optics group 2"):
        relion.write_particles(
            tmp_path / "a.star", cols, {"optics_group": [1], "pixel_size_A": [1.0]}
        )
    assert not (tmp_path / "a.star").exists()
