"""``motion.align`` end to end and every kind of bad movie as a per-item rejection.

Movies are real files (MRC written with mrcfile, TIFF with tifffile; damage done with
numpy on the bytes) and go through the real worker step, ``align_one``; the run test uses
the real controller and workers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hpcem.protocols.motion_align import align_one

from hpcem.errors import ItemRejected
from hpcem.execution import runs as lifecycle
from hpcem.io import read_header, read_image, write_mrc
from hpcem.sim import simulate_movie

SIZE = 256
N_FRAMES = 12
PIXEL_A = 1.0
DOSE = 2.0
OPTIONS = {"first_frame": 0, "last_frame": -1}


def _movie(seed=1, n_frames=N_FRAMES):
    return simulate_movie((SIZE, SIZE), n_frames, PIXEL_A, DOSE, (0.6, -0.4), 0.2, seed=seed)


def _mrc(path, frames):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile: header stats of NaN data
        return write_mrc(path, np.asarray(frames, dtype=np.float32), PIXEL_A, kind="movie")


def _align(path, tmp_path, movie_id=7, n_frames=N_FRAMES, **options):
    return align_one(
        str(path),
        movie_id,
        n_frames,
        PIXEL_A,
        DOSE,
        300.0,
        {**OPTIONS, **options},
        str(tmp_path / "out"),
    )


def _rms(shifts_A, truth_px):
    err = np.asarray(shifts_A) / PIXEL_A - truth_px
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


# --- a good movie, with gain reference and defects ------------------------------------------
def test_step_writes_sum_plot_and_shifts_in_angstrom(tmp_path):
    frames, truth = _movie()
    row = _align(_mrc(tmp_path / "good.mrcs", frames), tmp_path, save_nodw=True)
    assert row["movie_id"] == 7 and row["backend"] in ("cython", "numpy")
    shifts = np.stack([row["shifts_x"], row["shifts_y"]], axis=1)
    assert _rms(shifts, truth["shifts_px"]) <= 0.3
    image = read_image(row["image"])
    assert image.shape == (SIZE, SIZE)
    # the plain sum keeps the counts: its mean is the total dose per pixel
    nodw = read_image(row["image_nodw"])
    assert nodw.mean() == pytest.approx(frames.sum(axis=0).mean(), rel=1e-3)
    assert Path(row["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert row["total_drift"] == pytest.approx(np.hypot(*np.diff(shifts, axis=0).T).sum(), rel=1e-6)


def test_gain_reference_and_defects_are_applied(tmp_path):
    """Raw frames = counts / gain with hot pixels: with the gain and the defect list the
    alignment is as good as on clean counts; without the defect list the hot pixels (fixed
    on the detector) pull the shifts towards zero."""
    frames, truth = _movie(seed=3)
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.8, 1.25, size=(SIZE, SIZE)).astype(np.float32)
    raw = frames / gain
    raw[:, 40:42, :] = 500.0  # two hot rows
    raw[:, :, 100] = 300.0  # one hot column
    movie = _mrc(tmp_path / "raw.mrcs", raw)
    gain_path = write_mrc(tmp_path / "gain.mrc", gain, PIXEL_A)
    defects = tmp_path / "defects.txt"
    defects.write_text(f"0 40 {SIZE} 2\n100 0 1 {SIZE}\n")
    row = _align(movie, tmp_path, gain_path=str(gain_path), defects_path=str(defects))
    shifts = np.stack([row["shifts_x"], row["shifts_y"]], axis=1)
    assert _rms(shifts, truth["shifts_px"]) <= 0.3
    hot = _align(movie, tmp_path / "hot", gain_path=str(gain_path))
    hot_shifts = np.stack([hot["shifts_x"], hot["shifts_y"]], axis=1)
    assert _rms(hot_shifts, truth["shifts_px"]) > 1.0


# --- bad movies: rejected with the reason ---------------------------------------------------
def test_truncated_movie_is_rejected(tmp_path):
    path = _mrc(tmp_path / "short.mrcs", _movie()[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - SIZE * SIZE * 4 // 2])  # half of the last frame lost
    with pytest.raises(ItemRejected, match=r"^movie 7: .*short\.mrcs.*truncated"):
        _align(path, tmp_path)


def test_frame_count_different_from_the_set_is_rejected(tmp_path):
    path = _mrc(tmp_path / "m.mrcs", _movie()[0][:10])
    with pytest.raises(ItemRejected, match=r"^movie 7: .*has 10 frames, the movie set says 12"):
        _align(path, tmp_path)


def test_tiff_frames_of_different_sizes_are_rejected(tmp_path):
    frames = _movie()[0].astype(np.uint8)
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        for i, frame in enumerate(frames):
            tif.write(frame[:, :-4] if i == 5 else frame)
    with pytest.raises(
        ItemRejected, match=rf"^movie 7: .*mixed\.tif: frame 5 is {SIZE - 4}x{SIZE}, frame 0"
    ):
        _align(path, tmp_path)


def test_tiff_movie_is_aligned(tmp_path):
    frames, truth = _movie(seed=4)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, frames.astype(np.uint8))
    row = _align(path, tmp_path)
    assert _rms(np.stack([row["shifts_x"], row["shifts_y"]], 1), truth["shifts_px"]) <= 0.3


def test_nan_pixels_are_rejected_naming_the_frame(tmp_path):
    frames = _movie()[0]
    frames[4, :3, :5] = np.nan
    frames[4, 10, 10] = np.inf
    with pytest.raises(ItemRejected, match=r"^movie 7: .*nan\.mrcs: frame 4 has 16 NaN/Inf"):
        _align(_mrc(tmp_path / "nan.mrcs", frames), tmp_path)


@pytest.mark.parametrize(
    "first, last, message",
    [
        (12, -1, "first frame 12 outside the movie"),
        (0, 12, "last frame 12 outside the movie"),
        (5, 5, "frame range 5..5 has fewer than 2 frames"),
        (0, -13, "last frame -13 outside the movie"),
    ],
)
def test_frame_range_outside_the_movie_is_rejected(tmp_path, first, last, message):
    path = _mrc(tmp_path / "m.mrcs", _movie()[0])
    with pytest.raises(ItemRejected, match=f"^movie 7: {message}"):
        _align(path, tmp_path, first_frame=first, last_frame=last)


@pytest.mark.parametrize(
    "gain, message",
    [
        (np.ones((SIZE, SIZE - 2)), f"is {SIZE - 2}x{SIZE}, frames are {SIZE}x{SIZE}"),
        (np.where(np.eye(SIZE) > 0, np.nan, 1.0), f"{SIZE} NaN/Inf pixels"),
        (np.zeros((SIZE, SIZE)), "all pixels are 0"),
        (-np.ones((SIZE, SIZE)), f"{SIZE * SIZE} negative pixels"),
    ],
)
def test_wrong_gain_reference_is_rejected(tmp_path, gain, message):
    path = _mrc(tmp_path / "m.mrcs", _movie()[0])
    gain_path = _mrc(tmp_path / "gain.mrc", gain)
    with pytest.raises(ItemRejected, match=f"^movie 7: gain reference .*{message}"):
        _align(path, tmp_path, gain_path=str(gain_path))


# --- the protocol run -----------------------------------------------------------------------
@pytest.mark.slow  # about 6 s: a controller, two workers and an import run
def test_run_aligns_good_movies_and_lists_the_rejected_one(project, tmp_path, wait_for_run):
    raw = tmp_path / "raw"
    raw.mkdir()
    truths = []
    for i in range(3):
        frames, truth = _movie(seed=10 + i)
        if i == 1:
            frames[2, 0, 0] = np.nan
        _mrc(raw / f"movie_{i}.mrcs", frames)
        truths.append(truth)
    imp = lifecycle.create_run(
        project,
        "import.movies",
        {"files": str(raw / "*.mrcs"), "pixel_size_A": PIXEL_A, "dose_per_frame_e_A2": DOSE},
    )
    lifecycle.launch(project, imp.id, workers=1)
    assert wait_for_run(project, imp.id).state == "finished"
    ids = [int(i) for i in project.open_set(imp.id, "movies").column("id")]
    run = lifecycle.create_run(
        project,
        "motion.align",
        {"save_nodw": True, "output_binning": 2.0},
        {"movies": [f"{imp.id}:movies"]},
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    assert steps["align/000001"]["state"] == "rejected"
    assert "frame 2 has 1 NaN/Inf pixels" in steps["align/000001"]["error"]
    result = steps["register"]["result"]
    assert result["count"] == 2 and result["backend"] in ("cython", "numpy")
    assert [r["movie_id"] for r in result["rejected"]] == [ids[1]]
    mics = project.open_set(run.id, "micrographs")
    assert [int(i) for i in mics.column("movie_id")] == [ids[0], ids[2]]
    assert float(mics.optics["dose_per_frame_e_A2"][0]) == DOSE
    # output_binning 2: half the pixels, twice the pixel size, in the set and the files
    assert float(mics.optics["pixel_size_A"][0]) == 2 * PIXEL_A
    for image, nodw, thumb in zip(
        mics.column("image"), mics.column("image_nodw"), mics.column("thumbnail")
    ):
        assert read_image(image).shape == (SIZE // 2, SIZE // 2)
        assert read_image(nodw).shape == (SIZE // 2, SIZE // 2)
        assert read_header(image).pixel_size_A == pytest.approx(2 * PIXEL_A)
        assert str(thumb).endswith(".png")
    alignments = project.open_set(run.id, "alignments").read_columns()
    for k, truth in enumerate((truths[0], truths[2])):
        shifts = np.stack([alignments["shifts_x"][k], alignments["shifts_y"][k]], axis=1)
        assert _rms(shifts, truth["shifts_px"]) <= 0.3
        assert alignments["last_frame"][k] == N_FRAMES - 1
    assert list(alignments["local"]) == [0, 0]


def test_defect_map_image_marks_bad_pixels(tmp_path):
    """A defect *image* (non-zero = bad, as RELION accepts) works like the text list."""
    frames, truth = _movie(seed=5)
    frames[:, :, 30] = 400.0  # a hot column
    movie = _mrc(tmp_path / "hot.mrcs", frames)
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[:, 30] = 1.0
    defects = write_mrc(tmp_path / "defects.mrc", mask, PIXEL_A)
    row = _align(movie, tmp_path, defects_path=str(defects))
    assert _rms(np.stack([row["shifts_x"], row["shifts_y"]], 1), truth["shifts_px"]) <= 0.3


def test_defect_file_outside_the_frame_is_rejected(tmp_path):
    movie = _mrc(tmp_path / "m.mrcs", _movie()[0])
    defects = tmp_path / "defects.txt"
    defects.write_text("# x y w h\n10 10 2 2\n300 10 5 5\n")
    with pytest.raises(ItemRejected, match="line 3: rectangle 300 10 5 5 is empty or outside"):
        _align(movie, tmp_path, defects_path=str(defects))


def _import_one(project, raw, wait_for_run, dose):
    frames, _ = _movie()
    _mrc(raw / "movie.mrcs", frames)
    imp = lifecycle.create_run(
        project,
        "import.movies",
        {"files": str(raw / "*.mrcs"), "pixel_size_A": PIXEL_A, "dose_per_frame_e_A2": dose},
    )
    lifecycle.launch(project, imp.id, workers=1)
    assert wait_for_run(project, imp.id).state == "finished"
    return imp


def test_validation_refuses_dose_weighting_without_dose_and_missing_files(
    project, tmp_path, wait_for_run
):
    from hpcem.errors import ValidationError

    raw = tmp_path / "raw"
    raw.mkdir()
    imp = _import_one(project, raw, wait_for_run, dose=0.0)
    movies = {"movies": [f"{imp.id}:movies"]}
    with pytest.raises(ValidationError) as info:
        lifecycle.create_run(
            project,
            "motion.align",
            {"gain_reference": str(tmp_path / "nogain.mrc"), "last_frame": 0},
            movies,
        )
    text = str(info.value)
    assert "dose_weighting needs the dose per frame" in text
    assert "nogain.mrc' is not a file" in text
    assert "last_frame 0 must be after first_frame 0" in text
    # Without dose weighting an unknown dose is fine.
    run = lifecycle.create_run(project, "motion.align", {"dose_weighting": False}, movies)
    assert run.params["dose_weighting"] is False
