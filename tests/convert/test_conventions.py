"""One test per convention of docs/conventions.md, each against someone else.

References used: RELION 3.1 source (formulas written here from ``src/euler.cpp``,
``src/ctf.cpp``/``ctf.h``, ``src/preprocessing.cpp``), scipy's rotations, pyem's
``csparc2star`` conversion (its ``expmap`` written out here), Scipion's RELION plugin
(``matrixFromGeometry``), napari-boxmanager's ``.cbox`` reader, and the real files of
``../shared/data`` (the same 7 EMPIAR-10076 particles as RELION STAR and cryoSPARC .cs).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hpcem.convert import conventions as cv

RNG = np.random.default_rng(11)
N = 500
ROT = RNG.uniform(-180, 180, N)
TILT = RNG.uniform(0, 180, N)
PSI = RNG.uniform(-180, 180, N)


def test_euler_matrix_is_relions_zyz():
    """A(rot, tilt, psi) = (Rz(rot) Ry(tilt) Rz(psi))^T (scipy, intrinsic ZYZ); its third
    row is RELION's projection direction (Euler_angles2direction: cos rot sin tilt,
    sin rot sin tilt, cos tilt)."""
    a = cv.euler_zyz_to_matrix(ROT, TILT, PSI)
    ref = Rotation.from_euler("ZYZ", np.c_[ROT, TILT, PSI], degrees=True).as_matrix()
    np.testing.assert_allclose(a, np.swapaxes(ref, 1, 2), atol=1e-12)
    r, t = np.deg2rad(ROT), np.deg2rad(TILT)
    direction = np.c_[np.cos(r) * np.sin(t), np.sin(r) * np.sin(t), np.cos(t)]
    np.testing.assert_allclose(a[:, 2, :], direction, atol=1e-12)
    # psi is the last, in-plane rotation: psi = 90 turns the image x axis onto -y ... of
    # RELION's passive matrix (row 0 of A at rot = tilt = 0 is (cos psi, sin psi, 0))
    a0 = cv.euler_zyz_to_matrix(0.0, 0.0, 30.0)
    np.testing.assert_allclose(a0[0], [np.cos(np.pi / 6), np.sin(np.pi / 6), 0], atol=1e-12)


def test_matrix_to_euler_is_relions_decomposition():
    """Euler_matrix2angles: tilt in [0, 180], the same matrix back; at tilt 0 RELION puts
    the whole in-plane angle into psi with rot = 0."""
    rot, tilt, psi = cv.matrix_to_euler_zyz(cv.euler_zyz_to_matrix(ROT, TILT, PSI))
    np.testing.assert_allclose(rot, ROT, atol=1e-9)
    np.testing.assert_allclose(tilt, TILT, atol=1e-9)
    np.testing.assert_allclose(psi, PSI, atol=1e-9)
    rot0, tilt0, psi0 = cv.matrix_to_euler_zyz(cv.euler_zyz_to_matrix(40.0, 0.0, 25.0))
    assert (float(rot0), float(tilt0)) == (0.0, 0.0)
    assert float(psi0) == pytest.approx(65.0, abs=1e-9)
    rot1, tilt1, psi1 = cv.matrix_to_euler_zyz(cv.euler_zyz_to_matrix(40.0, 180.0, 25.0))
    assert (float(rot1), float(tilt1)) == (0.0, 180.0)
    np.testing.assert_allclose(
        cv.euler_zyz_to_matrix(rot1, tilt1, psi1), cv.euler_zyz_to_matrix(40, 180, 25), atol=1e-12
    )


def _pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem.geom.convert.expmap as written there (the matrix csparc2star decomposes)."""
    theta = np.linalg.norm(e)
    if theta < 1e-16:
        return np.identity(3)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.identity(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def test_cryosparc_pose_is_pyem_csparc2star(shared_data):
    """Real poses of cryosparc_P12_J24_001_particles.cs: our matrix is pyem's expmap, and
    the Euler angles rebuild it with RELION's formula (scipy here)."""
    poses = np.load(shared_data / "cryodrgn-4.3.1/cryosparc_P12_J24_001_particles.cs")[
        "alignments3D/pose"
    ].astype(np.float64)
    ours = cv.cryosparc_pose_to_matrix(poses)
    pyem = np.stack([_pyem_expmap(p) for p in poses])
    np.testing.assert_allclose(ours, pyem, atol=1e-12)
    rot, tilt, psi = cv.cryosparc_pose_to_euler(poses)
    rebuilt = Rotation.from_euler("ZYZ", np.c_[rot, tilt, psi], degrees=True).as_matrix()
    np.testing.assert_allclose(np.swapaxes(rebuilt, 1, 2), pyem, atol=1e-9)
    # and the pose is scipy's rotation vector of the transpose
    np.testing.assert_allclose(
        Rotation.from_rotvec(poses).as_matrix(), np.swapaxes(ours, 1, 2), atol=1e-12
    )


def test_cryosparc_pose_inverse_and_fast_path():
    """Euler -> pose -> Euler gives the same rotation; the quaternion paths equal the
    matrix paths (including gimbal lock and angles near 180°)."""
    rot, tilt, psi = ROT.copy(), TILT.copy(), PSI.copy()
    tilt[:5], tilt[5:10] = 0.0, 180.0
    pose = cv.euler_to_cryosparc_pose(rot, tilt, psi)
    assert np.all(np.linalg.norm(pose, axis=1) <= np.pi + 1e-12)
    np.testing.assert_allclose(
        cv.cryosparc_pose_to_matrix(pose), cv.euler_zyz_to_matrix(rot, tilt, psi), atol=1e-12
    )
    fast = np.array(cv.cryosparc_pose_to_euler(pose))
    slow = np.array(cv.matrix_to_euler_zyz(cv.cryosparc_pose_to_matrix(pose)))
    np.testing.assert_allclose(fast, slow, atol=1e-7)
    near_pi = np.array([[np.pi, 0, 0], [0, 0.6 * np.pi, -0.8 * np.pi]]) * (1 - 1e-9)
    back = cv.matrix_to_cryosparc_pose(cv.cryosparc_pose_to_matrix(near_pi))
    np.testing.assert_allclose(
        cv.cryosparc_pose_to_matrix(back), cv.cryosparc_pose_to_matrix(near_pi), atol=1e-7
    )


def test_scipion_matrix_is_inverse_of_forward():
    """Scipion's RELION plugin: matrixFromGeometry(shifts, angles, inverseTransform=True)
    = inv(euler_matrix(-angles, 'szyz') with translation -shifts); written with scipy."""
    ox, oy = RNG.normal(0, 5, N), RNG.normal(0, 5, N)
    forward = cv.forward_transform(ROT, TILT, PSI, ox, oy)
    ours = cv.scipion_matrix_from_forward(forward)
    m = np.zeros((N, 4, 4))
    # transformations.euler_matrix(ai, aj, ak, 'szyz') = Rz(ak) Ry(aj) Rz(ai) (static axes)
    m[:, :3, :3] = Rotation.from_euler("zyz", -np.deg2rad(np.c_[ROT, TILT, PSI])).as_matrix()
    m[:, 0, 3], m[:, 1, 3], m[:, 3, 3] = -ox, -oy, 1.0
    np.testing.assert_allclose(ours, np.linalg.inv(m), atol=1e-10)
    np.testing.assert_allclose(cv.forward_from_scipion_matrix(ours), forward, atol=1e-10)
    rot, tilt, psi, bx, by = cv.euler_origin_from_forward(forward)
    np.testing.assert_allclose(
        np.c_[rot, tilt, psi, bx, by], np.c_[ROT, TILT, PSI, ox, oy], atol=1e-9
    )


def test_relion30_origin_px_to_31_angstrom():
    """RELION's 3.0 -> 3.1 rule (star_handler.cpp: ``xoff * angpix``): same sign, times
    the pixel size; and back."""
    px = np.array([-3.5, 0.0, 2.25])
    assert cv.origin_px_to_A(px, 1.31).tolist() == (px * 1.31).tolist()
    np.testing.assert_allclose(cv.origin_A_to_px(cv.origin_px_to_A(px, 2.95), 2.95), px)


def test_cryosparc_shift_is_origin_in_pixels(shared_data):
    """pyem maps ``alignments3D/shift`` to ``_rlnOriginX/Y`` unchanged (px); hpcem keeps
    RELION 3.1's Å: shift × alignments3D/psize_A (real P12 file)."""
    cs = np.load(shared_data / "cryodrgn-4.3.1/cryosparc_P12_J24_001_particles.cs")
    shift, apix = cs["alignments3D/shift"].astype(np.float64), cs["alignments3D/psize_A"]
    origin_a = cv.cryosparc_shift_to_origin_A(shift[:, 0], apix)
    np.testing.assert_array_equal(origin_a, shift[:, 0] * apix.astype(np.float64))
    np.testing.assert_allclose(cv.origin_A_to_cryosparc_shift(origin_a, apix), shift[:, 0])


def test_box_corner_to_centre_as_relion_and_napari():
    """RELION's .box reader (preprocessing.cpp: ``xpos = num1 + num3 / 2`` in integers)
    and napari-boxmanager's cbox reader (``_CoordinateX + _Width / 2``)."""
    corner = np.array([0, 17, 3700, -10])
    even, odd = np.array([220, 220, 64, 100]), np.array([221, 221, 65, 101])
    assert cv.box_corner_to_centre(corner, even).tolist() == (corner + even // 2).tolist()
    # odd boxes: RELION truncates the half pixel that hpcem keeps
    np.testing.assert_array_equal(cv.box_corner_to_centre(corner, odd) - 0.5, corner + odd // 2)
    np.testing.assert_array_equal(cv.box_centre_to_corner(corner + even / 2, even), corner)


def test_cryosparc_location_fractions_as_pyem():
    """pyem: coordinates = frac × micrograph_shape[:, ::-1] for (x, y) (shape is (ny, nx));
    its default --inverty uses 1 − y_frac, our flip_y."""
    shape = np.array([[3838, 3710], [4096, 5760]])  # (ny, nx)
    frac = np.array([[0.25, 0.75], [0.5, 0.1]])  # (x_frac, y_frac)
    pyem_xy = frac * shape[:, ::-1]
    assert cv.cryosparc_frac_to_px(frac[:, 0], shape[:, 1]).tolist() == pyem_xy[:, 0].tolist()
    assert cv.cryosparc_frac_to_px(frac[:, 1], shape[:, 0]).tolist() == pyem_xy[:, 1].tolist()
    flipped = (1 - frac[:, 1]) * shape[:, 0]
    np.testing.assert_array_equal(
        cv.cryosparc_frac_to_px(cv.flip_y_frac(frac[:, 1]), shape[:, 0]), flipped
    )
    np.testing.assert_allclose(cv.px_to_cryosparc_frac(pyem_xy[:, 0], shape[:, 1]), frac[:, 0])


def test_zero_and_one_based_image_index(shared_data):
    """The same particles: RELION's ``N@empiar_10076_7.mrc`` (1-based) and cryoSPARC's
    ``blob/idx`` (0-based, = hpcem's image_index)."""
    import starfile

    star = starfile.read(shared_data / "cryodrgn-4.3.1/empiar_10076_7.star")
    one_based = star["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()
    cs = np.load(shared_data / "cryodrgn-4.3.1/empiar_10076_7.cs")
    np.testing.assert_array_equal(cv.one_based_to_zero_based(one_based), cs["blob/idx"])
    np.testing.assert_array_equal(cv.zero_based_to_one_based(cs["blob/idx"]), one_based)


def test_defocus_angle_cryosparc_radians_is_relion_degrees(shared_data):
    """empiar_10076_7: ``_rlnDefocusAngle`` 5.28° and ``ctf/df_angle_rad`` of the same
    particles; U and V are df1 and df2 without swapping."""
    import starfile

    star = starfile.read(shared_data / "cryodrgn-4.3.1/empiar_10076_7.star")
    cs = np.load(shared_data / "cryodrgn-4.3.1/empiar_10076_7.cs")
    np.testing.assert_allclose(
        cv.cryosparc_df_angle_to_deg(cs["ctf/df_angle_rad"]), star["rlnDefocusAngle"], atol=1e-4
    )
    np.testing.assert_allclose(cs["ctf/df1_A"], star["rlnDefocusU"], atol=0.01)
    np.testing.assert_allclose(cs["ctf/df2_A"], star["rlnDefocusV"], atol=0.01)
    np.testing.assert_allclose(
        cv.deg_to_cryosparc_df_angle(star["rlnDefocusAngle"]), cs["ctf/df_angle_rad"], rtol=1e-6
    )


def test_ctffind_azimuth_and_phase_as_relion_reads_them():
    """CTFFIND4 (Rohou & Grigorieff 2015, eq. 2): Δf(α) = ½[Δf1 + Δf2 + (Δf1 − Δf2)
    cos 2(α − α_ast)], α from the x axis; RELION's getCtffind4Results copies α_ast to
    DefocusAngle and RAD2DEG(column 5) to PhaseShift. hpcem's defocus at azimuth with
    the converted angle is CTFFIND's."""
    from hpcem.ctf.model import defocus_at_azimuth

    df1, df2, azimuth, phase_rad = 9982.5, 9100.0, 37.5, 0.035256
    alpha = np.linspace(-np.pi, np.pi, 73)
    ctffind = 0.5 * (df1 + df2 + (df1 - df2) * np.cos(2 * (alpha - np.deg2rad(azimuth))))
    angle = cv.ctffind_azimuth_to_defocus_angle(azimuth)
    np.testing.assert_allclose(defocus_at_azimuth(alpha, df1, df2, float(angle)), ctffind)
    assert float(cv.ctffind_phase_shift_to_deg(phase_rad)) == pytest.approx(
        phase_rad * 180.0 / np.pi, rel=1e-15
    )


def test_ctf_sign_and_astigmatism_against_relion_formula():
    """RELION's CTF (ctf.cpp/ctf.h): gamma = K1 (x^T A x) + K2 u^4 − K5 − K3 with
    A = Qt diag(−U, −V) Q, K3 = atan(Q0/sqrt(1−Q0²)); CTF = −sin(gamma). hpcem's ctf_2d,
    turned into RELION's sign, equals it (defocus angle reference included)."""
    from hpcem.ctf.model import ctf_2d, electron_wavelength_A, frequency_grid

    shape, apix, u, v, ang, kv, cs_mm, q0, phase = (
        (64, 64),
        1.5,
        15000.0,
        12000.0,
        32.0,
        300.0,
        2.7,
        0.1,
        20.0,
    )
    ky, kx = frequency_grid(shape, apix, centered=True)
    lam = electron_wavelength_A(kv)
    k1, k2 = np.pi * lam, np.pi / 2 * cs_mm * 1e7 * lam**3
    k3, k5 = np.arctan(q0 / np.sqrt(1 - q0 * q0)), np.deg2rad(phase)
    c, s = np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))
    q = np.array([[c, s], [-s, c]])
    a = q.T @ np.diag([-u, -v]) @ q
    quad = a[0, 0] * kx * kx + 2 * a[0, 1] * kx * ky + a[1, 1] * ky * ky
    u4 = (kx * kx + ky * ky) ** 2
    relion = -np.sin(k1 * quad + k2 * u4 - k5 - k3)
    ours = ctf_2d(shape, apix, u, v, ang, kv, cs_mm, q0, phase, centered=True)
    np.testing.assert_allclose(cv.relion_ctf_from_hpcem(ours), relion, atol=1e-9)
    # RELION is positive at zero frequency (+A without a phase plate)
    assert relion[32, 32] == pytest.approx(np.sin(np.arcsin(q0) + k5)) and relion[32, 32] > 0


def test_flip_y_is_the_array_flip():
    """Flipping an image along its slow axis (numpy.flipud, as RELION does with TIFF)
    moves the pixel at (x, y) to (x, height − 1 − y)."""
    img = np.zeros((7, 5))
    img[2, 3] = 1.0
    flipped = np.flipud(img)
    y_new, x_new = np.argwhere(flipped == 1.0)[0]
    assert (x_new, y_new) == (3, int(cv.flip_y_px(2, 7)))


_OPTICS_STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 0.1 2.7 300 {apix} {size} 2

# version 30001

data_particles

loop_
_rlnAngleRot #1
_rlnAngleTilt #2
_rlnAnglePsi #3
_rlnOriginXAngst #4
_rlnOriginYAngst #5
_rlnOpticsGroup #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
"""


@pytest.mark.skipif(shutil.which("relion_project") is None, reason="relion_project not on PATH")
def test_euler_matrix_and_origin_sign_against_relion_project(tmp_path):
    """RELION's own projector: a blob at map position r (px from the box centre) lands at
    ``A(rot, tilt, psi) r − origin_A / pixel_size`` in the projection, x along columns and
    y along rows from the centre pixel (size // 2). This checks the Euler matrix, the
    origin's sign and unit (RELION 3.1 ``_rlnOriginXAngst``), and the image axes at once."""
    import mrcfile

    from hpcem.command import run_command

    size, apix, blob = 48, 2.0, np.array([8.0, -5.0, 3.0])
    z, y, x = np.mgrid[:size, :size, :size] - size // 2
    vol = np.exp(-((x - blob[0]) ** 2 + (y - blob[1]) ** 2 + (z - blob[2]) ** 2) / 4.5)
    with mrcfile.new(tmp_path / "blob.mrc") as mrc:
        mrc.set_data(vol.astype(np.float32))
        mrc.voxel_size = apix
    rng = np.random.default_rng(5)
    n = 6
    rot, tilt, psi = rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)
    shift_a = rng.uniform(-8, 8, (n, 2))  # hpcem shift_x/y = _rlnOriginX/YAngst
    rows = "".join(
        f"{rot[i]:.6f} {tilt[i]:.6f} {psi[i]:.6f} {shift_a[i, 0]:.6f} {shift_a[i, 1]:.6f} "
        "1 10000 10000 0\n"
        for i in range(n)
    )
    (tmp_path / "angles.star").write_text(_OPTICS_STAR.format(apix=apix, size=size) + rows)
    run_command(
        [
            "relion_project",
            "--i",
            "blob.mrc",
            "--o",
            "proj",
            "--ang",
            "angles.star",
            "--angpix",
            str(apix),
        ],
        cwd=tmp_path,
        timeout_s=120,
    )
    images = mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64)
    yy, xx = np.mgrid[:size, :size] - size // 2
    expected = np.einsum("nij,j->ni", cv.euler_zyz_to_matrix(rot, tilt, psi), blob)[:, :2]
    expected -= cv.origin_A_to_px(shift_a, apix)
    for img, want in zip(images, expected, strict=True):
        w = np.where(img > 0.2 * img.max(), img, 0.0)
        got = np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
        np.testing.assert_allclose(got, want, atol=0.1)
    # the opposite sign or the transposed matrix would be off by pixels
    wrong = np.einsum("nji,j->ni", cv.euler_zyz_to_matrix(rot, tilt, psi), blob)[:, :2]
    assert np.abs(wrong - expected).max() > 2.0


def test_docs_name_every_rule_and_existing_tests():
    """docs/conventions.md names every public function of the conventions module, and
    every test it cites exists."""
    import inspect
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "conventions.md").read_text()
    public = [
        name
        for name, fn in inspect.getmembers(cv, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == cv.__name__
    ]
    assert [name for name in public if not re.search(rf"`{name}[`(]", doc)] == []
    sources = "".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    files = {p.stem for p in (root / "tests").rglob("test_*.py")}
    cited = set(re.findall(r"\b(test_[a-z0-9_]+)\b", doc)) - files  # file names are not tests
    assert sorted(t for t in cited if f"def {t}(" not in sources) == []


def test_normalised_astigmatism_is_the_same_ctf():
    """EMX/CTFFIND defocus at azimuth α, written here: the same at every α after the
    normalisation, with U >= V and the angle in [0, 180)."""
    u = np.array([15000.0, 12000.0, 9000.0, 20000.0])
    v = np.array([14000.0, 13000.0, 9500.0, 20000.0])
    ang = np.array([-30.0, 170.0, 400.0, 12.0])
    nu, nv, na = cv.normalise_astigmatism(u, v, ang)
    assert np.all(nu >= nv) and np.all((na >= 0) & (na < 180))
    alpha = np.linspace(0, 2 * np.pi, 91)[:, None]

    def emx(uu, vv, aa):
        return 0.5 * (uu + vv + (uu - vv) * np.cos(2 * (alpha - np.deg2rad(aa))))

    np.testing.assert_allclose(emx(nu, nv, na), emx(u, v, ang), atol=1e-8)
    assert nu.tolist() == [15000.0, 13000.0, 9500.0, 20000.0]


@pytest.mark.skipif(
    shutil.which("relion_image_handler") is None, reason="relion_image_handler not on PATH"
)
def test_relion_reads_tiff_flipped_along_y(tmp_path):
    """RELION flips TIFF along the slow axis on reading (its Conventions page), hpcem does
    not: a marked pixel at row y of a TIFF frame is at row height − 1 − y of the MRC that
    ``relion_image_handler`` converts it to (``flip_y_px``); x is unchanged."""
    import mrcfile
    import tifffile

    from hpcem.command import run_command
    from hpcem.io.images import read_image

    frame = np.zeros((1, 20, 30), dtype=np.uint8)
    frame[0, 2, 7] = 9
    tifffile.imwrite(tmp_path / "movie.tif", frame)
    run_command(
        ["relion_image_handler", "--i", "movie.tif", "--o", "frame.mrcs"],
        cwd=tmp_path,
        timeout_s=60,
    )
    relion = mrcfile.read(tmp_path / "frame.mrcs")
    (y_relion, x_relion), *_ = np.argwhere(relion == relion.max())
    ours = np.asarray(read_image(tmp_path / "movie.tif")).reshape(20, 30)
    (y_ours, x_ours), *_ = np.argwhere(ours == ours.max())
    assert (x_relion, x_ours) == (7, 7) and y_ours == 2
    assert y_relion == cv.flip_y_px(y_ours, 20) == 17
