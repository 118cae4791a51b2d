"""Image files: real MRC headers, corrupt files, pixel-size checks, round trips."""

import hashlib
import shutil
import time
import warnings

import mrcfile
import numpy as np
import pytest
import tifffile

from hpcem.errors import DataFormatError, ValidationError
from hpcem.io import (
    check_pixel_size,
    read_header,
    read_image,
    write_mrc,
    write_tiff_movie,
)
from hpcem.io.mrc import ToleratedFormatWarning, mmap_mrc


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- real files ------------------------------------------------------------------------
def test_fei_micrograph_header(shared_file):
    path = shared_file("mrcfile-1.5.4/fei-extended.mrc")
    header = read_header(path)
    assert header.shape == (1, 3838, 3710)
    assert header.dtype == np.uint16
    assert header.kind == "micrograph"
    assert header.pixel_size_A == pytest.approx(0.8538, abs=1e-4)
    assert check_pixel_size(header, 0.8538) == []


def test_fei_micrograph_pixel_size_mismatch_is_validation_error(shared_file):
    header = read_header(shared_file("mrcfile-1.5.4/fei-extended.mrc"))
    with pytest.raises(ValidationError, match=r"fei-extended.mrc: header pixel size 0.8538"):
        check_pixel_size(header, 1.06)


def test_fei_micrograph_reads_as_float32_2d(shared_file):
    image = read_image(shared_file("mrcfile-1.5.4/fei-extended.mrc"))
    assert image.shape == (3838, 3710) and image.dtype == np.float32
    assert image.min() >= 0  # uint16 counts


@pytest.mark.parametrize(
    ("name", "shape", "pixel_size_A"),
    [("EMD-3197.map", (20, 20, 20), 11.4), ("EMD-3001.map", (25, 43, 73), 0.44825)],
)
def test_emdb_maps_are_volumes(shared_file, name, shape, pixel_size_A):
    header = read_header(shared_file(f"mrcfile-1.5.4/{name}"))
    assert header.kind == "volume"
    assert header.shape == shape
    assert header.pixel_size_A == pytest.approx(pixel_size_A, rel=1e-4)


def test_emd_3001_keeps_non_cubic_voxels_and_symmetry_header(shared_file):
    path = shared_file("mrcfile-1.5.4/EMD-3001.map")
    header = read_header(path)
    assert header.voxel_size_A == pytest.approx((0.45875, 0.3925, 0.44825), rel=1e-4)
    assert read_image(path, index=3).shape == (43, 73)


def test_relion_stack_without_map_id_is_tolerated(shared_file):
    """Older writers omit the MAP ID; we accept the file and record the oddity."""
    header = read_header(shared_file("cryodrgn-4.3.1/relion31.mrcs"))
    assert header.kind == "stack" and header.shape == (5, 256, 256)
    assert header.pixel_size_A is None  # voxel size 1.0 means "not set"
    assert any("Map ID" in w for w in header.warnings)
    assert check_pixel_size(header, 2.806)  # a note, no error


def test_relion_stack_without_map_id_reads_with_a_warning(shared_file):
    path = shared_file("cryodrgn-4.3.1/relion31.mrcs")
    with pytest.warns(ToleratedFormatWarning, match=r"relion31.mrcs: read despite: Map ID"):
        stack = read_image(path)
    assert stack.shape == (5, 256, 256) and stack.dtype == np.float32
    with pytest.warns(ToleratedFormatWarning):
        np.testing.assert_array_equal(read_image(path, index=4), stack[4])


def _blank_map_id(path):
    """What RELION/EMAN-style writers leave: four zero bytes where 'MAP ' belongs."""
    raw = bytearray(path.read_bytes())
    assert raw[208:212] == b"MAP "
    raw[208:212] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))


@pytest.fixture
def stack_without_map_id(tmp_path):
    data = np.random.default_rng(5).normal(size=(4, 24, 20)).astype(np.float32)
    path = tmp_path / "no-map-id.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 1.25
    _blank_map_id(path)
    with pytest.raises(ValueError, match="Map ID string not found"):
        mrcfile.open(path, mode="r")  # strict mrcfile refuses it
    return path, data


def test_stack_without_map_id_every_read_path_warns_and_reads(stack_without_map_id):
    path, data = stack_without_map_id
    header = read_header(path)
    assert header.shape == (4, 24, 20) and header.kind == "stack"
    assert header.pixel_size_A == pytest.approx(1.25)
    assert any("Map ID" in w for w in header.warnings)
    with pytest.warns(ToleratedFormatWarning, match=r"no-map-id.mrcs: read despite: Map ID"):
        np.testing.assert_array_equal(read_image(path), data)
    with pytest.warns(ToleratedFormatWarning, match="Map ID"):
        np.testing.assert_array_equal(read_image(path, index=2), data[2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mmap_mrc(path) as (mapped_header, mapped):
            assert mapped_header.shape == (4, 24, 20)
            assert not mapped.flags.writeable  # a read-only map of the input
            np.testing.assert_array_equal(mapped[1:3], data[1:3])
    assert [w.category for w in caught] == [ToleratedFormatWarning]
    assert "no-map-id.mrcs: read despite: Map ID" in str(caught[0].message)


def test_well_formed_stack_reads_without_warning(tmp_path):
    data = np.ones((2, 8, 8), dtype=np.float32)
    path = write_mrc(tmp_path / "ok.mrcs", data, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(read_image(path), data)
        with mmap_mrc(path) as (_, mapped):
            np.testing.assert_array_equal(mapped, data)


# --- corrupt files ---------------------------------------------------------------------
def test_truncated_mrc_is_data_format_error_and_untouched(shared_file, tmp_path):
    source = shared_file("mrcfile-1.5.4/EMD-3197.map")
    broken = tmp_path / "truncated.map"
    broken.write_bytes(source.read_bytes()[:20000])
    before = _sha(broken)
    with pytest.raises(
        DataFormatError, match=r"truncated.map: not an MRC file or corrupt: truncated"
    ):
        read_header(broken)
    with pytest.raises(DataFormatError, match=r"truncated.map"):
        read_image(broken)
    assert _sha(broken) == before


def test_random_bytes_are_data_format_error(tmp_path):
    path = tmp_path / "noise.mrc"
    path.write_bytes(np.random.default_rng(1).bytes(50_000))
    before = _sha(path)
    with pytest.raises(DataFormatError, match=r"noise.mrc: not an MRC file or corrupt") as info:
        read_image(path)
    assert "\n" not in str(info.value)
    assert _sha(path) == before


def test_tiny_file_and_missing_file(tmp_path):
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"MRC")
    with pytest.raises(DataFormatError, match="tiny.mrc: .*shorter than the 1024-byte header"):
        read_header(tiny)
    with pytest.raises(DataFormatError, match="absent.mrc: cannot read"):
        read_header(tmp_path / "absent.mrc")


def test_tiff_claiming_more_pixels_than_the_file_holds_is_refused_at_header_time(tmp_path):
    """Patched ImageWidth/ImageLength: without the check, reading allocates 56 GiB."""
    path = write_tiff_movie(tmp_path / "huge.tif", np.zeros((3, 64, 64), dtype=np.uint16))
    with tifffile.TiffFile(path, mode="r+") as tif:
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(100_000)
            page.tags["ImageLength"].overwrite(100_000)
    length = path.stat().st_size
    expected = (
        f"{path}: not a TIFF file or corrupt: truncated: header claims 3x100000x100000 "
        f"uint16, 60000000000 bytes (55.9 GiB) uncompressed, but the file has {length} bytes"
    )
    for read in (read_header, read_image):
        with pytest.raises(DataFormatError) as info:
            read(path)
        assert str(info.value) == expected


def test_tiff_page_pointing_past_the_end_is_refused(tmp_path):
    path = write_tiff_movie(tmp_path / "cut.tif", np.ones((3, 32, 32), dtype=np.uint16))
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[2].tags["StripOffsets"].overwrite(10**7)
    with pytest.raises(
        DataFormatError,
        match=rf"cut.tif: .*page 2 data ends at byte {10**7 + 2048}, but the file has "
        rf"{path.stat().st_size} bytes",
    ):
        read_header(path)


def test_compressed_tiff_larger_than_its_file_is_accepted(tmp_path):
    """Compressed data legitimately decompresses to more than the file length."""
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(
        path, np.zeros((4, 256, 256), dtype=np.uint16), photometric="minisblack", compression="zlib"
    )
    assert path.stat().st_size < 4 * 256 * 256 * 2
    assert read_header(path).shape == (4, 256, 256)


def test_corrupt_tiff_is_data_format_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(DataFormatError, match="broken.tif: not a TIFF file or corrupt"):
        read_header(path)


# --- writing and round trips -----------------------------------------------------------
def test_write_mrc_round_trip_and_no_overwrite(tmp_path):
    image = np.random.default_rng(2).normal(size=(64, 80)).astype(np.float32)
    path = write_mrc(tmp_path / "mic.mrc", image, pixel_size_A=1.06)
    header = read_header(path)
    assert header.kind == "micrograph" and header.shape == (1, 64, 80)
    assert header.pixel_size_A == pytest.approx(1.06, rel=1e-6)
    np.testing.assert_array_equal(read_image(path), image)
    with pytest.raises(ValidationError, match="exists"):
        write_mrc(path, image, 1.06)
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_stack_and_volume_kinds(tmp_path):
    data = np.zeros((3, 16, 16), dtype=np.float32)
    assert read_header(write_mrc(tmp_path / "p.mrcs", data, 2.0)).kind == "stack"
    assert read_header(write_mrc(tmp_path / "v.mrc", data, 2.0)).kind == "volume"
    assert read_header(write_mrc(tmp_path / "m.mrc", data, 2.0, kind="movie")).kind == "stack"
    np.testing.assert_array_equal(read_image(tmp_path / "p.mrcs", index=2), data[2])
    with pytest.raises(ValidationError, match="out of range"):
        read_image(tmp_path / "p.mrcs", index=3)


def test_tiff_movie_round_trip(tmp_path):
    frames = np.random.default_rng(3).poisson(1.0, size=(7, 48, 40)).astype(np.uint16)
    path = write_tiff_movie(tmp_path / "movie.tif", frames, pixel_size_A=0.83)
    header = read_header(path)
    assert header.kind == "movie" and header.shape == (7, 48, 40)
    assert header.dtype == np.uint16
    assert header.pixel_size_A == pytest.approx(0.83, rel=1e-6)
    np.testing.assert_array_equal(read_image(path), frames.astype(np.float32))
    np.testing.assert_array_equal(read_image(path, index=4), frames[4].astype(np.float32))
    # Written by the field's library, readable by it too.
    np.testing.assert_array_equal(tifffile.imread(path), frames)


def test_tiff_without_pixel_size(tmp_path):
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, np.zeros((2, 8, 8), dtype=np.uint8))
    header = read_header(path)
    assert header.pixel_size_A is None and header.kind == "movie"


def test_reading_never_modifies_inputs(shared_file, tmp_path):
    copy = tmp_path / "EMD-3197.map"
    shutil.copy(shared_file("mrcfile-1.5.4/EMD-3197.map"), copy)
    before = (_sha(copy), copy.stat().st_mtime_ns)
    read_header(copy)
    read_image(copy)
    assert (_sha(copy), copy.stat().st_mtime_ns) == before


def test_write_mrc_is_byte_identical_and_labelled_without_a_time(tmp_path):
    """Two writes of one array give the same bytes: the header label names the writer and
    its version, not the time of writing (mrcfile's default label does)."""
    import hpcem

    data = np.random.default_rng(3).normal(size=(3, 16, 16)).astype(np.float32)
    a = write_mrc(tmp_path / "a.mrcs", data, 1.5)
    time.sleep(1.1)  # mrcfile's default label would now show another second
    b = write_mrc(tmp_path / "b.mrcs", data, 1.5)
    assert a.read_bytes() == b.read_bytes()
    with mrcfile.open(a, permissive=True) as mrc:
        assert int(mrc.header.nlabl) == 1
        assert mrc.get_labels() == [f"hpcem {hpcem.__version__}"]
