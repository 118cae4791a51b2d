"""The STAR block reader and writer under the RELION conversions: every block of the real
files as ``starfile`` reads them, edge cases of the format, and the writer's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from hpcem.convert import relion
from hpcem.convert.relion_star import (
    ImageNames,
    format_float,
    format_int,
    read_star,
    write_star,
)
from hpcem.errors import DataFormatError, ValidationError

REAL = [
    "cryodrgn-4.3.1/relion31.star",
    "cryodrgn-4.3.1/relion5.star",
    "cryodrgn-4.3.1/relion31.6opticsgroups.star",
    "cryodrgn-4.3.1/empiar_10076_7.star",
    "cryodrgn-4.3.1/FinalRefinement-OriginalParticles-PfCRT.star",
    "starfile-0.5.13/postprocess.star",
    "starfile-0.5.13/default_pipeline.star",
    "starfile-0.5.13/rln3.1_data_style.star",
    "starfile-0.5.13/relion_tutorial/run_it025_optimiser_2D.star",
    "starfile-0.5.13/relion_tutorial/run_it025_optimiser_3D.star",
    "starfile-0.5.13/relion_tutorial/run_it025_sampling_2D.star",
    "starfile-0.5.13/relion_tutorial/run_it025_sampling_3D.star",
]


def _values(col):
    return col.strings() if isinstance(col, ImageNames) else col


@pytest.mark.parametrize("name", REAL)
def test_blocks_match_starfile(shared_data, name):
    ours = read_star(shared_data / name)
    theirs = starfile.read(shared_data / name, always_dict=True)
    assert list(ours) == list(theirs)
    for block, value in theirs.items():
        mine = ours[block]
        if isinstance(value, dict):
            assert not mine.loop and set(mine.values) == set(value)
            for k, v in value.items():
                if isinstance(v, float):
                    assert mine.values[k] == pytest.approx(v, nan_ok=True)
                else:
                    assert str(mine.values[k]) == str(v)
            continue
        assert mine.loop and mine.labels == list(value.columns)
        assert len(mine) == len(value)
        for label in value.columns:
            got = mine.columns[label]
            if isinstance(got, ImageNames):  # compared as (index, stack): RELION reads
                pairs = [s.split("@") for s in value[label]]  # "1@x" as "000001@x"
                assert list(got.index0 + 1) == [int(i) for i, _ in pairs]
                assert list(got.stacks) == [s for _, s in pairs]
                continue
            if value[label].dtype.kind in "fi" and np.asarray(got).dtype.kind in "fi":
                np.testing.assert_allclose(got, value[label].to_numpy(float), rtol=1e-15)
            else:
                assert [str(x) for x in got] == [str(x) for x in value[label]], label


def test_versions(shared_data):
    assert read_star(shared_data / "cryodrgn-4.3.1/relion5.star")["particles"].version == 50001
    assert read_star(shared_data / "cryodrgn-4.3.1/relion31.star")["optics"].version == 30001
    assert read_star(shared_data / "cryodrgn-4.3.1/empiar_10076_7.star")[""].version == 0


def test_format_edge_cases(tmp_path):
    path = tmp_path / "edge.star"
    path.write_bytes(
        b"# a comment\r\n\r\ndata_general\r\n\r\n_rlnFinalResolution 3.5\r\n"
        b'_rlnMaskName "my mask.mrc"\r\n\r\n'
        b"data_empty\r\n\r\nloop_\r\n_rlnA #1\r\n_rlnB #2\r\n\r\n"
        b"data_rows\r\nloop_\r\n_rlnA #1\r\n_rlnB #2\r\n_rlnImageName #3\r\n"
        b"  1  -nan 2@a.mrcs\r\n# inside\r\n 2 inf 3@a.mrcs\r\n\r\n"
    )
    blocks = read_star(path)
    assert blocks["general"].values == {"rlnFinalResolution": 3.5, "rlnMaskName": "my mask.mrc"}
    assert blocks["empty"].loop and len(blocks["empty"]) == 0
    rows = blocks["rows"]
    np.testing.assert_array_equal(rows.columns["rlnA"], [1, 2])
    assert np.isnan(rows.columns["rlnB"][0]) and np.isinf(rows.columns["rlnB"][1])
    assert list(_values(rows.columns["rlnImageName"])) == ["000002@a.mrcs", "000003@a.mrcs"]


def test_image_names_without_fixed_form(tmp_path):
    """Names of different widths, a name without ``@`` (a single-image file) and an ``@``
    in another column all read (by the plain path)."""
    path = tmp_path / "names.star"
    path.write_text(
        "data_particles\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n"
        "1@a.mrcs m@1.mrc\n12@a.mrcs m@1.mrc\nsingle.mrc m2.mrc\n"
    )
    block = read_star(path)["particles"]
    index, stacks = relion.image_names(str(path), "particles", block.columns["rlnImageName"])
    np.testing.assert_array_equal(index, [0, 11, 0])
    assert list(stacks) == ["a.mrcs", "a.mrcs", "single.mrc"]
    assert list(block.columns["rlnMicrographName"]) == ["m@1.mrc", "m@1.mrc", "m2.mrc"]


def test_writer_numbers(tmp_path):
    """The writer's digits are those of ``%.6f`` / ``%d`` (Python's formatting as the
    outside reference), negatives and zero included."""
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [rng.normal(0, 1000, 500), [0.0, -0.0, -1e-9, 123456.5, -7.25, 99999.9999996]]
    )
    text = [bytes(r).decode().strip() for r in format_float(x).T]
    assert text == [f"{v:.6f}".replace("-0.000000", "0.000000") for v in x]
    # at a decimal tie the last digit may differ from printf's by one: still within 5e-7
    tie = float(bytes(format_float(np.array([0.4999995]))[:, 0]).decode())
    assert abs(tie - 0.4999995) <= 5e-7 + 1e-12
    ints = np.array([0, -1, 7, 123456789, -40])
    assert [bytes(r).decode().strip() for r in format_int(ints).T] == [str(i) for i in ints]
    huge = [bytes(r).decode().strip() for r in format_float(np.array([1e20, np.nan])).T]
    assert [float(h) for h in huge[:1]] == [1e20] and huge[1] == "nan"


def test_write_read_roundtrip(tmp_path):
    cols = {
        "rlnImageName": ImageNames(
            np.array([0, 1, 999999]), np.array(["a.mrcs", "c", "c"], object)
        ),
        "rlnDefocusU": np.array([1.5, -2.25, 1e-7]),
        "rlnClassNumber": np.array([1, 2, 3]),
        "rlnMicrographName": np.array(["m1", "", "m3"], dtype=object),
    }
    path = tmp_path / "w.star"
    write_star(path, [("general", {"rlnX": 1.25, "rlnName": "with space"}), ("particles", cols)])
    blocks = read_star(path)
    assert blocks["general"].values == {"rlnX": 1.25, "rlnName": "with space"}
    got = blocks["particles"].columns
    index, stacks = relion.image_names("w", "particles", got["rlnImageName"])
    np.testing.assert_array_equal(index, [0, 1, 999999])
    assert list(stacks) == ["a.mrcs", "c", "c"]
    np.testing.assert_allclose(got["rlnDefocusU"], [1.5, -2.25, 0.0], atol=5e-7)
    assert list(got["rlnMicrographName"]) == ["m1", "None", "m3"]  # RELION's "no file"
    df = starfile.read(path)["particles"]  # an outside reader takes it too
    assert list(df["rlnClassNumber"]) == [1, 2, 3]
    bad = {"rlnImageName": ImageNames(np.array([0]), np.array(["a b.mrcs"], dtype=object))}
    with pytest.raises(ValidationError, match="white space"):
        write_star(tmp_path / "bad.star", [("particles", bad)])
    assert not (tmp_path / "bad.star").exists()


def test_parallel_pieces_give_the_same_table(shared_data, tmp_path, monkeypatch):
    """Large loops are tokenized in pieces (threads); a small threshold here makes the
    139-row file take that path: same values, and errors still name the right row/line."""
    import os

    from hpcem.convert import relion_star

    path = shared_data / "cryodrgn-4.3.1/relion31.6opticsgroups.star"
    whole = read_star(path)["particles"]
    monkeypatch.setattr(relion_star, "PARALLEL_BYTES", 1000)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    pieces = read_star(path)["particles"]
    for label, col in whole.columns.items():
        got = pieces.columns[label]
        if isinstance(col, ImageNames):
            np.testing.assert_array_equal(got.index0, col.index0)
            assert list(got.stacks) == list(col.stacks)
        elif col.dtype == object:
            assert list(got) == list(col)
        else:
            np.testing.assert_array_equal(got, col)
    lines = path.read_text().splitlines()
    row = 120  # 0-based row of the particle loop, in the 4th piece
    first = max(i for i, ln in enumerate(lines) if ln.startswith("_rln")) + 1
    lines[first + row] = " ".join(lines[first + row].split()[:-3])
    bad = tmp_path / "short.star"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"short.star, block data_particles: row {row + 1} "):
        read_star(bad)


def test_writer_in_chunks_and_threads(shared_data, tmp_path, monkeypatch):
    """Rows are formatted in chunks (threads, written in order): a 139-row file written in
    chunks of 10 reads back exactly as one written in one piece."""
    import os

    from hpcem.convert import relion_star

    conv = relion.read_particles(shared_data / "cryodrgn-4.3.1/relion31.6opticsgroups.star")
    one = tmp_path / "one.star"
    relion.write_particles(one, conv.columns, conv.optics, extra=conv.extra)
    monkeypatch.setattr(relion_star, "CHUNK_ROWS", 10)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    many = tmp_path / "many.star"
    relion.write_particles(many, conv.columns, conv.optics, extra=conv.extra)
    a, b = starfile.read(one)["particles"], starfile.read(many)["particles"]
    assert list(a.columns) == list(b.columns) and len(b) == 139
    for col in a.columns:
        assert a[col].tolist() == b[col].tolist(), col


def test_key_value_blocks(tmp_path):
    path = tmp_path / "kv.star"
    path.write_text("data_general\n_rlnMaskName 1\n_rlnFinalResolution -nan\n_rlnX 'open\n")
    with pytest.raises(DataFormatError, match=r"kv.star, line 4"):
        read_star(path)
    path.write_text("data_general\n_rlnMaskName 1\n_rlnFinalResolution -nan\n")
    values = read_star(path)["general"].values
    assert values["rlnMaskName"] == "1" and np.isnan(values["rlnFinalResolution"])
