"""2D classification (classify.class2d) against ground truth: particles simulated from the
shipped model (7DDO) in a few distinct views, random in-plane rotations and shifts, a
CTF each and noise at SNR 0.1 (variance of the CTF-modulated projections over the box /
noise variance). The checks that judge the averages are written here, independently of
hpcem's aligner (a brute-force grid of rotations and integer shifts with scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle

PIXEL_A = 4.0
BOX = 48
N_VIEWS = 5


def simulate_particles(n=200, box=BOX, pixel_A=PIXEL_A, n_views=N_VIEWS, snr=0.1, seed=0):
    """Noisy CTF-modulated projections of 7DDO from ``n_views`` views; returns a dict of
    images, ctf (per-particle arrays), view, psi, shift_px (dx, dy), clean views."""
    from hpcem.ctf.model import ctf_2d
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, pixel_A, box)
    rng = np.random.default_rng(seed)
    views = np.stack(
        [
            rng.uniform(0, 360, n_views),
            np.degrees(np.arccos(rng.uniform(-1, 1, n_views))),
            np.zeros(n_views),
        ],
        axis=1,
    )
    view = np.arange(n) % n_views
    psi = rng.uniform(0, 360, n)
    angles = views[view].copy()
    angles[:, 2] = psi
    shifts = rng.uniform(-2.0, 2.0, (n, 2))
    projector = volume.projector()
    ft = projector.project_ft(angles, shifts)
    du = rng.uniform(10000, 25000, n)
    dv = du - rng.uniform(0, 800, n)
    da = rng.uniform(0, 180, n)
    for i in range(n):
        ft[i] *= ctf_2d((box, box), pixel_A, du[i], dv[i], da[i], half=True)
    clean = scipy.fft.irfft2(ft, s=(box, box)).astype(np.float32)
    noise = rng.normal(0, clean.std() / np.sqrt(snr), clean.shape).astype(np.float32)
    ctf = {
        "defocus_u": du,
        "defocus_v": dv,
        "defocus_angle": da,
        "phase_shift": np.zeros(n),
        "voltage_kV": np.full(n, 300.0),
        "cs_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.1),
    }
    return {
        "images": clean + noise,
        "ctf": ctf,
        "view": view,
        "psi": psi,
        "shift_px": shifts,
        "views": projector.project(views),
    }


def purity(classes: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of particles in the majority true view of their class."""
    return sum(np.bincount(truth[classes == k]).max() for k in np.unique(classes)) / len(truth)


def best_correlation(average: np.ndarray, clean: np.ndarray, diameter_px: float) -> float:
    """Highest Pearson correlation inside a circle of ``diameter_px`` between ``average``
    and ``clean`` rotated by 0..359° (1° steps, scipy.ndimage.rotate) and shifted by whole
    pixels up to ±3: the comparison of the issue, independent of hpcem's aligner."""
    n = average.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    inside = np.hypot(x, y) <= diameter_px / 2
    a = average[inside] - average[inside].mean()
    best = -1.0
    for angle in range(360):
        rotated = scipy.ndimage.rotate(clean, angle, reshape=False, order=1)
        stack = np.stack(
            [
                np.roll(rotated, (dy, dx), axis=(0, 1))[inside]
                for dy in range(-3, 4)
                for dx in range(-3, 4)
            ]
        )
        stack -= stack.mean(axis=1, keepdims=True)
        corr = stack @ a / np.linalg.norm(stack, axis=1) / np.linalg.norm(a)
        best = max(best, float(corr.max()))
    return best


def circular_sd_deg(angles_deg: np.ndarray) -> float:
    """Circular standard deviation (degrees) of angles."""
    z = np.exp(1j * np.radians(angles_deg)).mean()
    return float(np.degrees(np.sqrt(-2 * np.log(abs(z)))))


# --- conventions -----------------------------------------------------------------------------


def test_rotation_is_the_psi_of_the_zyz_projection():
    """rotate_images(projection at psi 0, a) is the projection at psi a (RELION's ZYZ as
    the simulator has it, checked against RELION in test_conventions_outside)."""
    from hpcem.classify.align2d import rotate_images
    from hpcem.sim.volume import load_volume

    projector = load_volume(None, PIXEL_A, BOX).projector()
    base, turned = projector.project(np.array([[40.0, 70.0, 0.0], [40.0, 70.0, 33.0]]))
    mine = rotate_images(base, 33.0, order=3)
    assert np.corrcoef(mine.ravel(), turned.ravel())[0, 1] > 0.99
    other = rotate_images(base, -33.0, order=3)
    assert np.corrcoef(other.ravel(), turned.ravel())[0, 1] < 0.95


def test_alignment_recovers_psi_and_shift_of_a_projection():
    """One clean particle = the reference at psi 37° shifted by (1.5, -2.25) px (centre at
    box centre + shift, the simulator's convention): found to 1° and 0.3 px."""
    from hpcem.classify import align2d
    from hpcem.sim.volume import load_volume

    projector = load_volume(None, PIXEL_A, BOX).projector()
    reference = projector.project(np.array([[10.0, 80.0, 0.0]]))
    particle_ft = projector.project_ft(np.array([[10.0, 80.0, 37.0]]), np.array([[1.5, -2.25]]))
    mask = align2d.soft_mask(BOX, 44)
    angles = align2d.angle_grid(5.0)
    bank, power = align2d.reference_bank(reference, angles, mask, BOX)
    particle = scipy.fft.irfft2(particle_ft, s=(BOX, BOX))
    ft = scipy.fft.rfft2(particle * mask)
    ctf2 = np.ones((1, ft[0].size))
    found = align2d.align_particles(ft, ctf2, bank, power, 4)
    cls, psi = align2d.refine_angle(found["scores"], found["index"], len(angles), 5.0)
    assert cls[0] == 0
    assert abs((psi[0] - 37.0 + 180) % 360 - 180) < 1.0
    np.testing.assert_allclose(found["shift"][0], [1.5, -2.25], atol=0.3)


def test_windowed_correlation_equals_the_inverse_fft():
    """The correlation at the searched shifts (two small DFTs) equals the full inverse FFT
    of the cross-power spectrum at those shifts (the numpy reference of the search)."""
    from hpcem.classify.align2d import shift_dft

    rng = np.random.default_rng(3)
    n, r = 32, 3
    product = scipy.fft.rfft2(rng.normal(size=(4, n, n))) * np.conj(
        scipy.fft.rfft2(rng.normal(size=(4, n, n)))
    )
    ex, ey = shift_dft(n, r)
    mine = (ey.T @ (product @ ex)).real  # [dy, dx]
    full = scipy.fft.irfft2(product, s=(n, n)) * n * n
    window = np.arange(-r, r + 1) % n
    np.testing.assert_allclose(
        mine, full[:, window[:, None], window[None, :]], rtol=1e-4, atol=1e-2
    )


def test_compiled_rotate_add_matches_the_numpy_reference():
    """Equal inside the inscribed circle (outside it, in the corners, the two treat the
    border pixel differently; averages are masked and cut at Nyquist there)."""
    from hpcem.classify.align2d import rotate_images
    from hpcem.kernels import load

    kernel = load("align2d")
    if kernel is None:
        pytest.skip("hpcem.kernels.align2d is not built")
    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 40)).astype(np.float32)
    y, x = np.mgrid[0:40, 0:40] - 20
    inside = np.hypot(x, y) < 19
    for angle in (0.0, 33.3, -117.0, 271.5):
        out = np.full((40, 40), 2.0)
        kernel.rotate_add(out, image, angle)
        mine = (out - 2.0)[inside]
        np.testing.assert_allclose(mine, rotate_images(image, angle)[inside], atol=1e-5)


def test_compiled_pair_and_stack_rotations_match_the_numpy_reference():
    """``rotate_add_pairs`` (the M-step: two images per particle into their class) and
    ``rotate_stack`` (the rotated references) against :func:`rotate_images` inside the
    inscribed circle."""
    from hpcem.classify.align2d import rotate_images
    from hpcem.kernels import load

    kernel = load("align2d")
    if kernel is None:
        pytest.skip("hpcem.kernels.align2d is not built")
    rng = np.random.default_rng(6)
    images = rng.normal(size=(5, 40, 40)).astype(np.float32)
    weights = rng.uniform(0, 1, size=(5, 40, 40)).astype(np.float32)
    classes = np.array([0, 2, 0, 1, 2], dtype=np.intp)
    angles = np.array([0.0, 33.3, -117.0, 271.5, 359.9])
    y, x = np.mgrid[0:40, 0:40] - 20
    inside = np.hypot(x, y) < 19
    sums = np.full((2, 3, 40, 40), 1.5)
    kernel.rotate_add_pairs(sums, images, weights, classes, angles)
    expected = np.full((2, 3, 40, 40), 1.5)
    for j, k in enumerate(classes):
        expected[0, k] += rotate_images(images[j], angles[j])
        expected[1, k] += rotate_images(weights[j], angles[j])
    np.testing.assert_allclose(sums[..., inside], expected[..., inside], atol=1e-5)
    stack = np.empty((5, 40, 40), np.float32)
    kernel.rotate_stack(stack, images[0], angles)
    reference = rotate_images(np.repeat(images[:1], 5, axis=0), angles)
    np.testing.assert_allclose(stack[:, inside], reference[:, inside], atol=1e-5)
    with pytest.raises(ValueError, match="class 3 outside 0..2"):
        kernel.rotate_add_pairs(sums, images, weights, classes + 1, angles)


def test_two_stage_search_finds_what_the_exhaustive_search_finds():
    """Clean projections of 3 views at known psi and shift: the coarse-to-fine search
    (10° on a 32 px crop, then 5° at 48 px) finds the class, psi (to 1.5°: a parabola
    through 5° steps) and shift (to 0.3 px) of the truth, and what the exhaustive search
    finds."""
    from hpcem.classify import align2d
    from hpcem.sim.volume import load_volume

    projector = load_volume(None, PIXEL_A, BOX).projector()
    views = np.array([[10.0, 80.0, 0.0], [100.0, 30.0, 0.0], [200.0, 120.0, 0.0]])
    references = projector.project(views)
    rng = np.random.default_rng(8)
    truth = np.arange(12) % 3
    psi = rng.uniform(0, 360, 12)
    shifts = rng.uniform(-2.5, 2.5, (12, 2))
    poses = views[truth].copy()
    poses[:, 2] = psi
    particles = scipy.fft.irfft2(projector.project_ft(poses, shifts), s=(BOX, BOX))
    mask = align2d.soft_mask(BOX, 44)
    angles = align2d.angle_grid(5.0)
    rotated = align2d.rotated_references_ft(references, angles, mask)
    bank, power = align2d.bank_from_ft(rotated, BOX)
    coarse_bank, coarse_power = align2d.bank_from_ft(
        rotated.reshape(3, 72, BOX, -1)[:, ::2].reshape(108, BOX, -1), 32
    )
    ft = scipy.fft.rfft2(particles * mask)
    ctf2 = np.ones((12, ft[0].size))
    coarse_ft = align2d.crop_rfft(ft, 32)
    found = align2d.search_two_stage(
        (coarse_ft, np.ones((12, coarse_ft[0].size)), coarse_bank, coarse_power, 3),
        (ft, ctf2, bank, power, 4),
        72,
        5.0,
        2,
    )
    full = align2d.align_particles(ft, ctf2, bank, power, 4)
    cls, full_psi = align2d.refine_angle(full["scores"], full["index"], 72, 5.0)
    np.testing.assert_array_equal(found["class"], truth)
    np.testing.assert_array_equal(cls, truth)
    assert np.abs((found["psi_deg"] - psi + 180) % 360 - 180).max() < 1.5  # parabola at 5°
    assert np.abs((found["psi_deg"] - full_psi + 180) % 360 - 180).max() < 0.05
    np.testing.assert_allclose(found["shift"], shifts, atol=0.3)
    np.testing.assert_allclose(found["shift"], full["shift"], atol=0.05)


# --- accuracy against ground truth -------------------------------------------------------------


@pytest.fixture(scope="module")
def classified():
    from hpcem.classify import em2d

    data = simulate_particles()
    result = em2d.classify(
        data["images"],
        data["ctf"],
        PIXEL_A,
        len(data["images"]),
        0,
        N_VIEWS,
        20,
        mask_diameter_px=40,
        angle_step_deg=5.0,
        max_shift_px=4.0,
        seed=1,
    )
    return data, result


@pytest.mark.slow
def test_classes_are_pure_and_averages_match_the_projections(classified):
    data, result = classified
    classes = result["class"]
    assert result["converged"]
    assert purity(classes, data["view"]) >= 0.9
    for k in range(N_VIEWS):
        members = classes == k
        view = np.bincount(data["view"][members]).argmax()
        corr = best_correlation(result["averages"][k], data["views"][view], 40)
        assert corr >= 0.9, f"class {k} (view {view}): correlation {corr:.3f}"


@pytest.mark.slow
def test_poses_agree_with_the_truth_up_to_one_frame_per_class(classified):
    """psi − true psi is one constant per class (the average's own frame) to a few
    degrees; the centre found (shift) agrees with the true one to under a pixel (RMS)
    after removing the class's mean difference (an average off-centre by c adds
    R(psi) c, so this also says the averages stay centred)."""
    data, result = classified
    for k in range(N_VIEWS):
        m = result["class"] == k
        dpsi = result["psi_deg"][m] - data["psi"][m]
        assert circular_sd_deg(dpsi) < 5.0
        residual = data["shift_px"][m] - result["shift_px"][m]
        residual -= residual.mean(axis=0)
        assert np.sqrt((residual**2).sum(axis=1).mean()) < 1.0


# --- protocol ---------------------------------------------------------------------------------


def particles_run(project, tmp_path, n=60, box=32, pixel_A=6.0, optics=None, ctf=True, seed=2):
    """A finished run whose output ``particles`` holds ``n`` simulated particles."""
    from hpcem.io import write_mrc

    data = simulate_particles(n=n, box=box, pixel_A=pixel_A, n_views=3, snr=0.5, seed=seed)
    stack = write_mrc(tmp_path / "parts.mrcs", data["images"], pixel_A, kind="stack")
    run = project.create_run("test.particles", "simulated particles")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(
        optics
        or {
            "optics_group": [1],
            "voltage_kV": [300.0],
            "spherical_aberration_mm": [2.7],
            "amplitude_contrast": [0.1],
            "pixel_size_A": [pixel_A],
            "image_size_px": [box],
        }
    )
    columns = {
        "image": [str(stack)] * n,
        "image_index": np.arange(n),
        "optics_group": 1 + (np.arange(n) % len((optics or {"optics_group": [1]})["optics_group"])),
    }
    if ctf:
        columns |= {k: data["ctf"][k] for k in ("defocus_u", "defocus_v", "defocus_angle")}
    writer.append_columns(columns)
    writer.close()
    project.set_output(run.id, "particles", "hpcem.SetOfParticles", n)
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:particles", data


def test_protocol_writes_classes_and_particles_with_poses(project, tmp_path):
    ref, data = particles_run(project, tmp_path)
    params = {"n_classes": 3, "iterations": 6, "angle_step_deg": 10.0, "seed": 4}
    run = lifecycle.create_run(project, "classify.class2d", params, {"particles": [ref]})
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    classes = project.open_set(run.id, "classes")
    particles = project.open_set(run.id, "particles")
    assert len(classes) == 3 and len(particles) == 60
    sizes = classes.column("size")
    assert sizes.sum() == 60
    class_id = particles.column("class_id")
    assert set(class_id.tolist()) <= {1, 2, 3}
    for item in classes:
        assert sorted(item.member_ids) == sorted(
            particles.column("id")[class_id == item.id].tolist()
        )
    assert purity(class_id, data["view"]) >= 0.9
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    pngs = steps["classify"]["result"]["pngs"]
    assert len(pngs) == steps["classify"]["result"]["iterations_run"]
    assert (project.path / pngs[-1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # RELION 3.1 origin sign: the particle centre is at box centre - shift / pixel size;
    # the found centres follow the true ones up to one offset per class
    for k in (1, 2, 3):
        m = class_id == k
        found = -np.stack([particles.column("shift_x"), particles.column("shift_y")], 1)[m] / 6.0
        residual = data["shift_px"][m] - found
        residual -= residual.mean(axis=0)
        assert np.sqrt((residual**2).sum(axis=1).mean()) < 1.0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_ctf", r"60 of 60 particles have no CTF"),
        ("too_many_classes", r"n_classes 61 is larger than the number of particles \(60\)"),
        ("pixel_sizes", r"different pixel sizes \(6\.0, 6\.5 Å\)"),
        ("box", r"images are 32x32 px but the set's box .* is 40 px"),
    ],
)
def test_bad_input_is_one_clear_message(project, tmp_path, case, message):
    optics = {
        "optics_group": [1],
        "voltage_kV": [300.0],
        "spherical_aberration_mm": [2.7],
        "amplitude_contrast": [0.1],
        "pixel_size_A": [6.0],
        "image_size_px": [32],
    }
    if case == "pixel_sizes":
        optics = {k: v * 2 for k, v in optics.items()}
        optics["optics_group"] = [1, 2]
        optics["pixel_size_A"] = [6.0, 6.5]
    if case == "box":
        optics["image_size_px"] = [40]
    ref, _ = particles_run(project, tmp_path, optics=optics, ctf=case != "no_ctf")
    k = 61 if case == "too_many_classes" else 3
    with pytest.raises(ValidationError, match=message):
        lifecycle.create_run(project, "classify.class2d", {"n_classes": k}, {"particles": [ref]})


# --- outside reference: RELION 3.1 relion_refine 2D -------------------------------------------


def relion_class2d(images, ctf, pixel_A, n_classes, folder: Path, iterations=25, threads=2):
    """Run RELION 3.1 ``relion_refine`` 2D classification (CPU, ``--j threads``) on these
    images; returns ``(class 0-based per particle, averages (K, N, N), seconds)``."""
    import time

    import mrcfile

    from hpcem.command import run_command
    from hpcem.io import write_mrc

    (folder / "out").mkdir(parents=True, exist_ok=True)
    n, box, _ = images.shape
    write_mrc(folder / "parts.mrcs", images, pixel_A, kind="stack", overwrite=True)
    lines = [
        "data_optics",
        "loop_",
        "_rlnOpticsGroup #1",
        "_rlnOpticsGroupName #2",
        "_rlnAmplitudeContrast #3",
        "_rlnSphericalAberration #4",
        "_rlnVoltage #5",
        "_rlnImagePixelSize #6",
        "_rlnImageSize #7",
        "_rlnImageDimensionality #8",
        (
            f"1 opticsGroup1 {ctf['amplitude_contrast'][0]} {ctf['cs_mm'][0]} "
            f"{ctf['voltage_kV'][0]} {pixel_A} {box} 2"
        ),
        "",
        "data_particles",
        "loop_",
        "_rlnImageName #1",
        "_rlnDefocusU #2",
        "_rlnDefocusV #3",
        "_rlnDefocusAngle #4",
        "_rlnOpticsGroup #5",
    ]
    for i in range(n):
        lines.append(
            f"{i + 1:06d}@parts.mrcs {ctf['defocus_u'][i]:.2f} {ctf['defocus_v'][i]:.2f} "
            f"{ctf['defocus_angle'][i]:.2f} 1"
        )
    (folder / "parts.star").write_text("\n".join(lines) + "\n")
    argv = [
        "relion_refine",
        "--i",
        "parts.star",
        "--o",
        "out/run",
        "--K",
        str(n_classes),
        "--iter",
        str(iterations),
        "--tau2_fudge",
        "2",
        "--particle_diameter",
        str(0.8 * box * pixel_A),
        "--ctf",
        "--flatten_solvent",
        "--zero_mask",
        "--oversampling",
        "1",
        "--psi_step",
        "10",
        "--offset_range",
        "5",
        "--offset_step",
        "2",
        "--norm",
        "--scale",
        "--dont_combine_weights_via_disc",
        "--pool",
        "30",
        "--pad",
        "2",
        "--random_seed",
        "1",
        "--j",
        str(threads),
    ]
    start = time.perf_counter()
    run_command(argv, cwd=folder, timeout_s=3600)
    seconds = time.perf_counter() - start
    star = (folder / "out" / f"run_it{iterations:03d}_data.star").read_text().splitlines()
    star = star[star.index("data_particles") :]
    header = [s.split()[0] for s in star if s.startswith("_rln")]
    column = header.index("_rlnClassNumber")
    name_col = header.index("_rlnImageName")
    classes = np.zeros(n, dtype=np.int64)
    for row in star:
        parts = row.split()
        if len(parts) == len(header) and parts[name_col].endswith("@parts.mrcs"):
            classes[int(parts[name_col].split("@")[0]) - 1] = int(parts[column]) - 1
    averages = mrcfile.read(folder / "out" / f"run_it{iterations:03d}_classes.mrcs")
    return classes, averages, seconds


def class_quality(classes, averages, data, diameter_px) -> tuple[float, float]:
    """(purity, mean over the non-empty classes of the best correlation of the average
    with the clean projection of the class's majority view)."""
    corr = []
    for k in np.unique(classes):
        view = np.bincount(data["view"][classes == k]).argmax()
        corr.append(best_correlation(averages[k], data["views"][view], diameter_px))
    return purity(classes, data["view"]), float(np.mean(corr))


@pytest.mark.slow
def test_against_relion_refine_2d(classified, tmp_path, capsys):
    """Same 200 particles through RELION 3.1 ``relion_refine`` (K = 5, --j 2): purity and
    class-average correlation of both, side by side; hpcem's are no worse (purity within
    0.02 of RELION's, correlation within 0.03)."""
    import shutil

    if shutil.which("relion_refine") is None:
        pytest.skip("relion_refine is not installed (Debian/Ubuntu: apt-get install relion)")
    data, result = classified
    ours = class_quality(result["class"], result["averages"], data, 40)
    classes, averages, seconds = relion_class2d(
        data["images"], data["ctf"], PIXEL_A, N_VIEWS, tmp_path / "relion"
    )
    # RELION 3.1's CTF is -1 x hpcem's (hpcem.ctf.model, measured in test_ctf_relion), so
    # its averages of these images come out contrast-inverted: compare -average.
    theirs = class_quality(classes, -averages, data, 40)
    with capsys.disabled():
        print(
            f"\nclassify 2D, 200 particles 48 px SNR 0.1, K=5: purity hpcem {ours[0]:.3f} "
            f"RELION {theirs[0]:.3f}; class-average correlation hpcem {ours[1]:.3f} "
            f"RELION {theirs[1]:.3f} (relion_refine {seconds:.0f} s)"
        )
    assert ours[0] >= theirs[0] - 0.02
    assert ours[1] >= theirs[1] - 0.03
