"""Simulated movies: drift, local motion, radiation damage and gain are what the truth
says (checked by measuring them on the frames), and movie files are what a detector
writes."""

import numpy as np
import pytest

from hpcem.ctf.model import frequency_grid
from hpcem.errors import ValidationError
from hpcem.io.images import read_header, read_image
from hpcem.sim import displacement_px, simulate_movie
from hpcem.sim.detector import write_gain_reference, write_movie
from hpcem.sim.movie import critical_exposure_e_A2, dose_attenuation

SMALL = {"n_particles": 4, "particle_diameter_A": 60.0}


def _shift_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(dx, dy) that moves a onto b: phase correlation with a parabolic sub-pixel peak."""
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    cross = fb * np.conj(fa)
    cc = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    n_y, n_x = cc.shape
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)

    def vertex(m, c, p):
        return 0.5 * (m - p) / (m - 2 * c + p)

    dy = iy + vertex(cc[iy - 1, ix], cc[iy, ix], cc[(iy + 1) % n_y, ix])
    dx = ix + vertex(cc[iy, ix - 1], cc[iy, ix], cc[iy, (ix + 1) % n_x])
    return np.array([(dx + n_x / 2) % n_x - n_x / 2, (dy + n_y / 2) % n_y - n_y / 2])


def test_smooth_drift_is_measured_on_the_frames():
    frames, truth = simulate_movie(
        (256, 256),
        n_frames=10,
        dose_per_frame_e_per_A2=200.0,
        drift_model="smooth",
        drift_px_per_frame=(0.25, -0.15),
        early_drift_px=(4.3, 2.1),
        early_decay_frames=2.5,
        ice_level=1.0,
        seed=4,
        **SMALL,
    )
    shifts = truth["shifts_px"]
    np.testing.assert_array_equal(shifts[0], [0.0, 0.0])
    steps = np.hypot(*np.diff(shifts, axis=0).T)
    assert steps[0] > 2 * steps[-1]  # early motion is the larger one
    for i in (1, 4, 9):
        measured = _shift_between(frames[0], frames[i])
        np.testing.assert_allclose(measured, shifts[i], atol=0.1)


def test_local_motion_matches_the_displacement_function():
    frames, truth = simulate_movie(
        (512, 512),
        n_frames=6,
        dose_per_frame_e_per_A2=300.0,
        drift_model="smooth",
        drift_px_per_frame=(0.2, 0.1),
        early_drift_px=(3.0, -2.0),
        local_motion_px=3.0,
        ice_level=1.0,
        seed=6,
        **SMALL,
    )
    last = len(frames) - 1
    centres = [(96, 96), (256, 256), (416, 96), (96, 416), (416, 416)]
    local_parts = []
    for x, y in centres:
        patch0 = frames[0, y - 64 : y + 64, x - 64 : x + 64]
        patch1 = frames[last, y - 64 : y + 64, x - 64 : x + 64]
        expected = displacement_px(truth, x, y, last)
        np.testing.assert_allclose(_shift_between(patch0, patch1), expected, atol=0.2)
        local_parts.append(expected - truth["shifts_px"][last])
    # the motion really is local: patches move differently by more than a pixel
    assert np.ptp(np.array(local_parts), axis=0).max() > 1.0
    np.testing.assert_allclose(displacement_px(truth, 10.0, 20.0, 0), [0.0, 0.0])


def test_gain_reference_times_raw_is_flat():
    """raw × gain = corrected (RELION/MotionCor2 --gainref): the corrected mean image no
    longer shows the detector's per-pixel sensitivity, the raw one does."""
    frames, truth = simulate_movie(
        (256, 256),
        n_frames=8,
        dose_per_frame_e_per_A2=200.0,
        gain_sd=0.1,
        n_particles=0,
        ice_level=0.0,
        seed=2,
    )
    gain = truth["gain_reference"]
    raw_mean = frames.mean(axis=0)
    corrected_mean = (frames * gain).mean(axis=0)
    # 1600 counts per pixel: shot noise 2.5 %, sensitivity 10 %, so corr ~ 0.97
    assert np.corrcoef(raw_mean.ravel(), 1.0 / gain.ravel())[0, 1] > 0.95
    assert abs(np.corrcoef(corrected_mean.ravel(), gain.ravel())[0, 1]) < 0.05


def test_critical_exposure_is_grant_grigorieff_2015():
    """Eq. 3 of Grant & Grigorieff (eLife 2015), N_e = a k^b + c with a = 0.245,
    b = -1.665, c = 2.81 (300 kV), written here from the paper."""
    k = np.array([0.05, 0.1, 0.25, 0.5])
    np.testing.assert_allclose(critical_exposure_e_A2(k), 0.245 * k**-1.665 + 2.81)
    np.testing.assert_allclose(critical_exposure_e_A2(k, 200.0), 0.8 * (0.245 * k**-1.665 + 2.81))
    assert critical_exposure_e_A2(np.array([0.0]))[0] == np.inf


def test_dose_decay_attenuates_late_frames_as_predicted():
    """Frames share the signal but not the shot noise, so the cross-spectrum of frame
    j with frame 0 measures the attenuation of frame j."""
    shape = (512, 512)
    common = {
        "n_frames": 8,
        "dose_per_frame_e_per_A2": 3.0,
        "drift_px_per_frame": (0.0, 0.0),
        "jitter_px": 0.0,
        "n_particles": 0,
        "ice_level": 1.0,
        "contrast": 0.3,
        "b_factor_A2": 0.0,
        "seed": 3,
    }
    ky, kx = frequency_grid(shape, 1.0, half=True)
    band = (np.hypot(ky, kx) > 0.1) & (np.hypot(ky, kx) < 0.2)

    def late_over_early(frames):
        spectra = [np.fft.rfft2(f - f.mean()) for f in frames]
        cross = [np.real(spectra[j] * np.conj(spectra[0]))[band].sum() for j in (2, 7)]
        return cross[1] / cross[0]

    damaged, _ = simulate_movie(shape, dose_decay=True, **common)
    pristine, _ = simulate_movie(shape, dose_decay=False, **common)
    attenuation = [dose_attenuation(shape, 1.0, 3.0 * (j + 0.5)) for j in (2, 7)]
    predicted = attenuation[1][band].sum() / attenuation[0][band].sum()
    assert predicted < 0.6
    assert late_over_early(damaged) == pytest.approx(predicted, rel=0.1)
    assert late_over_early(pristine) == pytest.approx(1.0, rel=0.1)


def test_movie_is_deterministic():
    kwargs = {"n_frames": 3, "local_motion_px": 1.0, "gain_sd": 0.05, "dose_decay": True}
    a, ta = simulate_movie((128, 128), seed=9, **kwargs, **SMALL)
    b, tb = simulate_movie((128, 128), seed=9, **kwargs, **SMALL)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta["gain_reference"], tb["gain_reference"])
    assert ta["local_motion"] == tb["local_motion"]


@pytest.mark.parametrize(("name", "dtype"), [("m.mrc", np.int8), ("m.tif", np.uint8)])
def test_movie_files_hold_integer_counts(tmp_path, name, dtype):
    frames, truth = simulate_movie((64, 64), n_frames=3, gain_sd=0.1, seed=1, **SMALL)
    path = write_movie(tmp_path / name, frames, 1.1)
    header = read_header(path)
    assert header.shape == (3, 64, 64) and header.kind in ("movie", "stack")
    np.testing.assert_array_equal(read_image(path), frames)
    if name.endswith(".mrc"):
        import mrcfile

        with mrcfile.open(path) as mrc:
            assert mrc.data.dtype == dtype and mrc.header.mode == 0
    else:
        import tifffile

        assert tifffile.imread(path).dtype == dtype
    gain = write_gain_reference(tmp_path / "gain.mrc", truth["gain_reference"], 1.1)
    np.testing.assert_allclose(read_image(gain), truth["gain_reference"])


def test_bad_movie_arguments():
    with pytest.raises(ValidationError):
        simulate_movie((64, 64), n_frames=2, drift_model="wobbly", **SMALL)
    with pytest.raises(ValidationError):
        simulate_movie((64, 64), n_frames=2, gain_sd=0.7, **SMALL)
    with pytest.raises(ValidationError):
        write_movie("/tmp/not-counts.tif", np.full((2, 8, 8), 0.5), 1.0)
