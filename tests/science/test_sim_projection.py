"""Volumes and their projections: the Fourier-slice projector against a real-space
reference (rotate the volume, sum along z), Euler matrices, shifts, uniform orientations,
atomic models and maps, and particles placed in micrographs where the truth says."""

import bz2
import gzip

import numpy as np
import pytest
import scipy.ndimage

from hpcem.ctf.model import ctf_2d
from hpcem.errors import DataFormatError, ValidationError
from hpcem.io.mrc import write_mrc
from hpcem.sim import simulate_micrograph
from hpcem.sim.projection import euler_matrix, project, random_orientations
from hpcem.sim.volume import load_volume, shipped_model_path, volume_from_map, volume_from_model

pytest.importorskip("gemmi", reason="atomic models are read with gemmi")

PIXEL_A = 4.0  # coarse: a 40-px box keeps these tests fast


@pytest.fixture(scope="module")
def volume():
    return load_volume(None, PIXEL_A)


def _real_space_projection(data: np.ndarray, angles) -> np.ndarray:
    """Reference: sample V at Aᵀ r (cubic splines) on the output grid, sum along z."""
    n = data.shape[0]
    c = n // 2
    a = euler_matrix(*angles)
    z, y, x = (np.indices(data.shape).reshape(3, -1) - c).astype(float)
    src = a.T @ np.stack([x, y, z])  # rows: source x, y, z
    values = scipy.ndimage.map_coordinates(
        data.astype(np.float64), [src[2] + c, src[1] + c, src[0] + c], order=3, mode="constant"
    )
    return values.reshape(data.shape).sum(axis=0)


def _low_pass(image: np.ndarray, fraction_of_nyquist: float = 0.8) -> np.ndarray:
    ft = np.fft.rfft2(image)
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.rfftfreq(image.shape[1])[None, :]
    ft[np.hypot(ky, kx) > 0.5 * fraction_of_nyquist] = 0
    return np.fft.irfft2(ft, s=image.shape)


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (30.0, 60.0, 100.0), (200.0, 120.0, -40.0)])
def test_fourier_slice_matches_real_space_projection(volume, angles):
    fourier = _low_pass(project(volume, np.array([angles]))[0])
    real = _low_pass(_real_space_projection(volume.data, angles))
    assert np.corrcoef(fourier.ravel(), real.ravel())[0, 1] > 0.999
    assert np.abs(fourier - real).max() < 0.05 * np.abs(real).max()


def test_a_different_orientation_is_a_different_projection(volume):
    """The comparison above can fail: tilt 60 is not tilt 120, rot/psi are not swapped."""
    p = project(volume, np.array([(30.0, 60.0, 100.0)]))[0]
    for wrong in [(30.0, 120.0, 100.0), (100.0, 60.0, 30.0)]:
        r = _real_space_projection(volume.data, wrong)
        assert np.corrcoef(_low_pass(p).ravel(), _low_pass(r).ravel())[0, 1] < 0.9


def test_euler_matrix_is_a_rotation_with_relion_layout():
    a = euler_matrix(20.0, 50.0, -70.0)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(a) == pytest.approx(1.0)
    # tilt alone: the third row is the viewing direction (sinθ cosφ, sinθ sinφ, cosθ)
    t = np.radians(50.0)
    np.testing.assert_allclose(
        a[2], [np.sin(t) * np.cos(np.radians(20)), np.sin(t) * np.sin(np.radians(20)), np.cos(t)]
    )
    # psi is an in-plane rotation after the others: A(rot, tilt, psi) = Rz(psi) A(rot, tilt, 0)
    c, s = np.cos(np.radians(-70.0)), np.sin(np.radians(-70.0))
    np.testing.assert_allclose(
        a, np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) @ euler_matrix(20.0, 50.0, 0.0)
    )


def test_shift_moves_the_projection_content(volume):
    angles = np.array([(10.0, 80.0, 45.0)] * 3)
    shifts = np.array([(0.0, 0.0), (3.0, -2.0), (1.5, 0.25)])
    p = project(volume, angles, shifts)
    np.testing.assert_allclose(p[1], np.roll(p[0], (-2, 3), axis=(0, 1)), atol=1e-4)

    def centroid(img):
        y, x = np.indices(img.shape)
        return np.array([(img * x).sum(), (img * y).sum()]) / img.sum()

    # sub-pixel: the centroid follows (up to the ringing of a tight, periodic box)
    np.testing.assert_allclose(centroid(p[2]) - centroid(p[0]), [1.5, 0.25], atol=0.1)


def test_random_orientations_are_uniform():
    angles = random_orientations(np.random.default_rng(0), 20000)
    views = np.array([euler_matrix(*a)[2] for a in angles[:4000]])  # viewing directions
    np.testing.assert_allclose(views.mean(axis=0), 0.0, atol=0.03)
    np.testing.assert_allclose(views.T @ views / len(views), np.eye(3) / 3, atol=0.02)
    assert angles[:, 1].min() >= 0 and angles[:, 1].max() <= 180


def test_model_density_is_centred_and_sized(volume):
    data = np.clip(volume.data.astype(np.float64), 0, None)
    centre = np.array([(data * i).sum() / data.sum() for i in np.indices(data.shape)])
    np.testing.assert_allclose(centre, volume.box_px // 2, atol=0.5)
    assert 125.0 < volume.diameter_A < 140.0  # 7DDO: ACE2 with a bound RBD
    assert volume.box_px * PIXEL_A >= volume.diameter_A
    assert np.max(volume.data.sum(axis=0)) == pytest.approx(1.0, rel=1e-5)


def test_compressed_pdb_and_mmcif_give_the_same_density(tmp_path, volume):
    import gemmi

    text = bz2.decompress(shipped_model_path().read_bytes())
    (tmp_path / "m.pdb.gz").write_bytes(gzip.compress(text))
    structure = gemmi.read_pdb_string(text.decode())
    structure.setup_entities()
    structure.make_mmcif_document().write_file(str(tmp_path / "m.cif"))
    for name in ("m.pdb.gz", "m.cif"):
        other = volume_from_model(tmp_path / name, PIXEL_A, box_px=volume.box_px)
        np.testing.assert_allclose(other.data, volume.data, atol=1e-4)


def test_map_resampled_to_another_pixel_size(tmp_path):
    fine = volume_from_model(shipped_model_path(), 2.0)
    write_mrc(tmp_path / "fine.mrc", fine.data, 2.0)
    coarse_from_map = volume_from_map(tmp_path / "fine.mrc", PIXEL_A)
    coarse_from_model = volume_from_model(shipped_model_path(), PIXEL_A, coarse_from_map.box_px)
    a, b = coarse_from_map.data.ravel(), coarse_from_model.data.ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.97
    assert coarse_from_map.diameter_A == pytest.approx(coarse_from_model.diameter_A, rel=0.1)


def test_bad_volume_inputs(tmp_path):
    (tmp_path / "x.txt").write_text("not a volume")
    with pytest.raises(DataFormatError):
        load_volume(tmp_path / "x.txt", 1.0)
    (tmp_path / "empty.pdb").write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(DataFormatError):
        load_volume(tmp_path / "empty.pdb", 1.0)
    with pytest.raises(ValidationError):
        volume_from_model(shipped_model_path(), PIXEL_A, box_px=10)


def test_particles_are_projections_at_the_true_positions_and_angles(volume):
    """Cut each particle out of a noise-free micrograph and compare it with the
    CTF-filtered projection at its true orientation, centred where the truth says."""
    shape = (256, 256)
    ctf_kw = {"defocus_u_A": 12000.0, "defocus_v_A": 12000.0, "angle_deg": 0.0}
    image, truth = simulate_micrograph(
        shape, PIXEL_A, **ctf_kw, n_particles=5, ice_level=0.0, snr=1e9, volume=volume, seed=3
    )
    n = volume.box_px
    ctf = ctf_2d((n, n), PIXEL_A, **ctf_kw, b_factor_A2=60.0, half=True)
    assert len(truth["coordinates_px"]) >= 3
    for (x, y), angles in zip(truth["coordinates_px"], truth["angles_deg"]):
        ix, iy = int(np.floor(x)), int(np.floor(y))
        if not (n // 2 <= ix < shape[1] - n // 2 and n // 2 <= iy < shape[0] - n // 2):
            continue
        box = image[iy - n // 2 : iy + n - n // 2, ix - n // 2 : ix + n - n // 2]
        expected = project(volume, angles[None], np.array([[x - ix, y - iy]]))[0]
        expected = np.fft.irfft2(np.fft.rfft2(expected) * ctf, s=(n, n))
        assert np.corrcoef(box.ravel(), expected.ravel())[0, 1] > 0.9
        wrong = project(volume, (angles + [0.0, 40.0, 0.0])[None])[0]
        wrong = np.fft.irfft2(np.fft.rfft2(wrong) * ctf, s=(n, n))
        assert np.corrcoef(box.ravel(), wrong.ravel())[0, 1] < 0.8


def test_particles_fill_the_area_without_overlap(volume):
    from hpcem.sim.specimen import n_particles_for_fill

    shape = (512, 512)
    n = n_particles_for_fill(shape, volume.diameter_A / PIXEL_A, 0.3)
    image, truth = simulate_micrograph(shape, PIXEL_A, n_particles=n, volume=volume, seed=8)
    xy = truth["coordinates_px"]
    covered = len(xy) * np.pi * (0.5 * volume.diameter_A / PIXEL_A) ** 2 / (512 * 512)
    assert len(xy) == n and covered == pytest.approx(0.3, abs=0.02)
    distances = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    assert distances[~np.eye(len(xy), dtype=bool)].min() >= volume.diameter_A / PIXEL_A
    radius = 0.5 * volume.diameter_A / PIXEL_A
    assert xy.min() >= radius and xy.max() <= 512 - radius
    assert truth["angles_deg"].shape == (n, 3) and image.dtype == np.float32
    again, _ = simulate_micrograph(shape, PIXEL_A, n_particles=n, volume=volume, seed=8)
    np.testing.assert_array_equal(image, again)
