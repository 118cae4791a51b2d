"""The simulator's conventions against outside references, not against hpcem's own
model: (a) the CTF formula of the EMX document, written here; (b) RELION 3.1's own
``relion_project`` (projection at Euler angles, origin offsets and CTF from a STAR file).

A simulator and an estimator that share one model would agree on a wrong convention;
these tests would not.
"""

import math
import shutil

import numpy as np
import pytest

from hpcem.ctf.model import ctf_2d
from hpcem.sim import simulate_micrograph
from hpcem.sim.specimen import specimen_ft

# CODATA 2018: Planck constant, electron rest mass, elementary charge, speed of light.
H_JS, M0_KG, E_C, C_MS = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def emx_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))."""
    v = voltage_kV * 1e3
    return 1e10 * H_JS / math.sqrt(2 * M0_KG * E_C * v * (1 + E_C * v / (2 * M0_KG * C_MS**2)))


def emx_ctf(
    shape, pixel_size_A, u_A, v_A, theta_deg, voltage_kV, cs_mm, a, phase_deg=0.0, half=False
):
    """The EMX CTF on an fft2 grid [y, x] (``half``: the rfft2 half plane), written
    from the EMX document:
    defocus U along the direction at angle θ from the x axis (towards y), V across;
    Δf(α) = ½[(U+V) + (U−V) cos 2(α−θ)], χ = π λ Δf k² − ½ π Cs λ³ k⁴ (+ phase shift),
    CTF = −[√(1−A²) sin χ + A cos χ]."""
    lam = emx_wavelength_A(voltage_kV)
    ny, nx = shape
    ky = np.fft.fftfreq(ny, d=pixel_size_A)[:, None]
    kx = (np.fft.rfftfreq if half else np.fft.fftfreq)(nx, d=pixel_size_A)[None, :]
    alpha = np.arctan2(ky, kx)
    k2 = kx**2 + ky**2
    df = 0.5 * ((u_A + v_A) + (u_A - v_A) * np.cos(2 * (alpha - np.radians(theta_deg))))
    chi = math.pi * lam * df * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2**2
    chi = chi + np.radians(phase_deg)
    return -(math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))


CASES = [
    # (U, V, θ, A, phase shift)
    (15000.0, 12000.0, 30.0, 0.1, 0.0),
    (8000.0, 9500.0, 125.0, 0.07, 0.0),
    (30000.0, 28000.0, -60.0, 0.1, 90.0),
]


@pytest.mark.parametrize(("u", "v", "theta", "a", "phase"), CASES)
def test_ctf_model_and_simulator_follow_the_emx_formula(u, v, theta, a, phase):
    shape, px = (96, 128), 1.1
    expected = emx_ctf(shape, px, u, v, theta, 300.0, 2.7, a, phase)
    model = ctf_2d(shape, px, u, v, theta, 300.0, 2.7, a, phase_shift_deg=phase)
    # hpcem's wavelength constants are 6e-6 (relative) off CODATA 2018, which moves χ by
    # up to ~4e-3 rad at the corners of this grid: far below any convention error (> 0.5).
    np.testing.assert_allclose(model, expected, atol=1e-2)
    # what the simulator multiplies its object by (rfft half plane, B = 0)
    _, applied, truth = specimen_ft(
        np.random.default_rng(0),
        shape,
        px,
        0,
        50.0,
        0.0,
        defocus_u_A=u,
        defocus_v_A=v,
        angle_deg=theta,
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=a,
        b_factor_A2=0.0,
        phase_shift_deg=phase,
    )
    expected_half = emx_ctf(shape, px, u, v, theta, 300.0, 2.7, a, phase, half=True)
    np.testing.assert_allclose(applied, expected_half, atol=1e-2)
    assert (truth["defocus_u"], truth["defocus_v"], truth["defocus_angle"]) == (u, v, theta)
    # a flipped angle or swapped axes is a different CTF (so the comparison can fail)
    flipped = emx_ctf(shape, px, u, v, -theta, 300.0, 2.7, a, phase)
    assert np.abs(model - flipped).max() > 0.5


# --- (b) RELION 3.1 relion_project ------------------------------------------------------

RELION_PROJECT = shutil.which("relion_project")
WRONG = (
    "flipped astigmatism angle",
    "U and V swapped (angle + 90°)",
    "rot and psi swapped",
    "tilt mirrored",
    "opposite origin sign",
)
PIXEL_A = 2.0


def _star(pixel_size_A: float, box: int, rows: list[dict]) -> str:
    """A RELION 3.1 particle STAR file (optics table + particles), written by hand."""
    cols = [
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnPhaseShift",
        "rlnOpticsGroup",
        "rlnImageName",
    ]
    lines = [
        "# version 30001",
        "",
        "data_optics",
        "",
        "loop_",
        "_rlnOpticsGroup #1",
        "_rlnOpticsGroupName #2",
        "_rlnVoltage #3",
        "_rlnSphericalAberration #4",
        "_rlnAmplitudeContrast #5",
        "_rlnImagePixelSize #6",
        "_rlnImageSize #7",
        "_rlnImageDimensionality #8",
        f"1 opticsGroup1 300.0 2.7 {rows[0]['a']} {pixel_size_A} {box} 2",
        "",
        "# version 30001",
        "",
        "data_particles",
        "",
        "loop_",
        *[f"_{c} #{i + 1}" for i, c in enumerate(cols)],
    ]
    for i, r in enumerate(rows):
        values = [*r["angles"], *r["origin_A"], r["u"], r["v"], r["theta"], r["phase"], 1]
        lines.append(" ".join(f"{x:.6f}" for x in values[:-1]) + f" 1 {i + 1}@none.mrcs")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def relion_setup(tmp_path_factory):
    pytest.importorskip("gemmi", reason="the shipped model is read with gemmi")
    from hpcem.io.mrc import write_mrc
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, PIXEL_A)
    folder = tmp_path_factory.mktemp("relion")
    write_mrc(folder / "vol.mrc", volume.data, PIXEL_A)
    return volume, folder


def _relion_projections(folder, star_text: str):
    import mrcfile

    from hpcem.command import run_command

    (folder / "in.star").write_text(star_text)
    argv = ["relion_project", "--i", "vol.mrc", "--o", "out", "--ang", "in.star", "--ctf"]
    run_command([*argv, "--angpix", str(PIXEL_A)], cwd=folder, timeout_s=120)
    with mrcfile.open(folder / "out.mrcs", permissive=True) as mrc:
        return np.array(mrc.data, dtype=np.float64)


@pytest.mark.skipif(
    RELION_PROJECT is None,
    reason="RELION's relion_project is not installed (Debian package relion, "
    "scripts/install-relion.sh)",
)
@pytest.mark.parametrize(("u", "v", "theta", "a", "phase"), CASES)
def test_simulated_particle_matches_relion_project(relion_setup, u, v, theta, a, phase):
    """One particle, noise- and ice-free, simulated by hpcem at a known orientation,
    position and CTF, against RELION's projection of the same map with the truth put
    into a STAR file by hand.

    Conventions this pins down: Euler angles (RELION ZYZ), the particle centre is at
    ``box centre − rlnOrigin`` (RELION 3.1), the astigmatism angle, and the CTF sign:
    RELION works on contrast-inverted images (white particles; its CTF is +A at k = 0),
    our micrographs have dark particles as raw data do (EMX CTF, −A at k = 0), so
    RELION's image is the negative of ours.
    """
    volume, folder = relion_setup
    box = volume.box_px
    image, truth = simulate_micrograph(
        (box, box),
        PIXEL_A,
        u,
        v,
        theta,
        amplitude_contrast=a,
        b_factor_A2=0.0,
        n_particles=1,
        ice_level=0.0,
        snr=1e12,
        phase_shift_deg=phase,
        volume=volume,
        seed=5,
    )
    (x, y), angles = truth["coordinates_px"][0], truth["angles_deg"][0]
    origin_A = (np.array([box // 2 - x, box // 2 - y])) * PIXEL_A  # centre = box/2 − origin
    base = {"angles": angles, "origin_A": origin_A, "u": u, "v": v, "theta": theta}
    base |= {"a": a, "phase": phase}
    wrong = [
        base | {"theta": -theta},
        base | {"u": v, "v": u},
        base | {"angles": angles[::-1]},
        base | {"angles": [angles[0], 180.0 - angles[1], angles[2]]},
        base | {"origin_A": -origin_A},
    ]
    relion = _relion_projections(folder, _star(PIXEL_A, box, [base, *wrong]))
    ours = -image.astype(np.float64)  # contrast-inverted, as RELION's images are

    # Same normalisation for both: the Fourier correlation in the band 1/25–1/5 Å⁻¹,
    # where Thon rings (and so the astigmatism) shape the particle image.
    ky = np.fft.fftfreq(box, d=PIXEL_A)[:, None]
    kx = np.fft.rfftfreq(box, d=PIXEL_A)[None, :]
    band = (np.hypot(ky, kx) > 1 / 25) & (np.hypot(ky, kx) < 1 / 5)

    def corr(other):
        f, g = np.fft.rfft2(ours)[band], np.fft.rfft2(other)[band]
        return float(np.real(np.vdot(g, f)) / np.sqrt(np.vdot(f, f).real * np.vdot(g, g).real))

    # measured: 0.9995-0.9996 for the truth; 0.69-0.92 for the wrong astigmatism,
    # below 0 for wrong Euler angles or origin signs
    assert corr(relion[0]) >= 0.99
    for name, projection in zip(WRONG, relion[1:]):
        assert corr(projection) < 0.95, f"{name} still matches RELION"


@pytest.mark.skipif(
    RELION_PROJECT is None,
    reason="RELION's relion_project is not installed (Debian package relion, "
    "scripts/install-relion.sh)",
)
def test_ground_truth_star_drives_relion_project(tmp_path):
    """Our ground_truth.star, given to RELION as it is, makes RELION project each particle
    as it appears in the micrograph, cut out at the STAR coordinates (noise- and ice-free
    micrograph; contrast inverted as RELION's images are)."""
    pytest.importorskip("gemmi", reason="the shipped model is read with gemmi")
    import mrcfile
    import starfile

    from hpcem.command import run_command
    from hpcem.io.images import read_image
    from hpcem.io.mrc import write_mrc
    from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset

    config = DatasetConfig(
        kind="micrographs",
        n_items=1,
        size_px=320,
        pixel_size_A=PIXEL_A,
        snr=1e12,
        ice_level=0.0,
        fill_fraction=0.1,
        b_factor_A2=0.0,
        seed=4,
    )
    simulate_dataset(tmp_path / "ds", config)
    write_mrc(tmp_path / "vol.mrc", dataset_volume(config).data, PIXEL_A)
    argv = ["relion_project", "--i", "vol.mrc", "--o", "out", "--ctf", "--angpix", str(PIXEL_A)]
    run_command([*argv, "--ang", "ds/ground_truth.star"], cwd=tmp_path, timeout_s=120)
    with mrcfile.open(tmp_path / "out.mrcs", permissive=True) as mrc:
        relion = np.array(mrc.data, dtype=np.float64)
    micrograph = -read_image(tmp_path / "ds" / "mic_000.mrc").astype(np.float64)
    particles = starfile.read(tmp_path / "ds" / "ground_truth.star")["particles"]
    n = relion.shape[1]
    checked = 0
    for i, (x, y) in enumerate(zip(particles["rlnCoordinateX"], particles["rlnCoordinateY"])):
        y0, x0 = int(y) - n // 2, int(x) - n // 2
        if min(x0, y0) < 0 or y0 + n > micrograph.shape[0] or x0 + n > micrograph.shape[1]:
            continue
        cut = micrograph[y0 : y0 + n, x0 : x0 + n].ravel()
        # measured 0.991-0.994: neighbours' CTF fringes reach into the cut-out
        assert np.corrcoef(cut, relion[i].ravel())[0, 1] > 0.98
        other = relion[(i + 1) % len(relion)].ravel()
        assert np.corrcoef(cut, other)[0, 1] < 0.8  # another orientation (0.53 measured)
        checked += 1
    assert checked >= 2
