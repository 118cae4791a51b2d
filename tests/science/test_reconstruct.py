"""Direct Fourier reconstruction (``reconstruct.fourier``) against the true volume.

Particles are CTF-modulated projections of the shipped 7DDO model at known poses
(hpcem.reconstruct.simulate); maps are compared with the true volume by an FSC written
here from its definition (numpy shells over the full FFT), independent of
hpcem.validate. Symmetry operators are compared with RELION's own
(``relion_refine --print_symmetry_ops``) and the reconstruction with relion_reconstruct's
on the same particles (both skip when RELION is absent).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_image, write_mrc
from hpcem.reconstruct import fourier
from hpcem.reconstruct.simulate import particle_columns, simulate_particles
from hpcem.reconstruct.symmetry import symmetrise_map, symmetry_matrices
from hpcem.sim.projection import euler_matrices, random_orientations
from hpcem.sim.volume import load_volume

PIXEL_A = 4.0
BOX = 48


def fsc_by_definition(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC of shells 1 .. N/2 (rounded radius) over the full 3D FFT: the definition."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    n = a.shape[0]
    k = np.fft.fftfreq(n, 1 / n)
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    r = r.astype(int).ravel()
    num = np.bincount(r, (fa * fb.conj()).real.ravel())
    den = np.sqrt(np.bincount(r, (abs(fa) ** 2).ravel()) * np.bincount(r, (abs(fb) ** 2).ravel()))
    return (num / den)[1 : n // 2 + 1]


def resolution_at_half(curve: np.ndarray, box: int, pixel: float, level: float = 0.5) -> float:
    """Resolution (Å) where ``curve`` (shells 1..N/2) first falls below ``level``,
    linear in frequency between shells; Nyquist if it never does."""
    below = np.flatnonzero(curve < level)
    if len(below) == 0:
        return 2 * pixel
    i = int(below[0])
    if i == 0:
        return box * pixel
    t = (curve[i - 1] - level) / (curve[i - 1] - curve[i])
    return box * pixel / (i + t)


@pytest.fixture(scope="module")
def volume():
    return load_volume(None, PIXEL_A, BOX)


# --- kernel ---------------------------------------------------------------------------


def test_cython_kernel_equals_its_numpy_reference():
    pytest.importorskip("hpcem.kernels.backproject", reason="backproject kernel not built")
    rng = np.random.default_rng(1)
    n, size = 12, 16
    ft = (rng.normal(size=(n, size, 9)) + 1j * rng.normal(size=(n, size, 9))).astype(np.complex64)
    ctf = rng.uniform(-1, 1, (n, size, 9)).astype(np.float32)
    rot = euler_matrices(random_orientations(rng, n))
    a, b = fourier.FourierAccumulator(size, 2), fourier.FourierAccumulator(size, 2)
    assert a.insert(ft, ctf, rot) == b.insert(ft, ctf, rot, use_kernel=False) > 0
    np.testing.assert_allclose(a.data, b.data, atol=1e-12)
    np.testing.assert_allclose(a.weight, b.weight, atol=1e-12)


def _plane_normals(rot: np.ndarray) -> np.ndarray:
    """Unit normals of the slice planes, from the slice geometry the kernel uses
    (f = Aᵀ k, k in the (k_x, k_y) plane): Aᵀ e_x × Aᵀ e_y."""
    rt = np.transpose(rot, (0, 2, 1))
    return np.cross(rt[:, :, 0], rt[:, :, 1])


def test_direction_order_puts_neighbouring_slice_planes_together():
    rng = np.random.default_rng(3)
    rot = euler_matrices(random_orientations(rng, 2000))
    order = fourier.direction_order(rot)
    assert np.array_equal(np.sort(order), np.arange(2000))
    normals = _plane_normals(rot)

    def mean_step_deg(o):
        # A plane's normal has no sign: the angle between two planes is arccos |n1 · n2|.
        cos = np.abs(np.einsum("ij,ij->i", normals[o[1:]], normals[o[:-1]]))
        return float(np.degrees(np.arccos(np.clip(cos, 0, 1))).mean())

    # Random planes are 1 rad (57.3°) apart on average; in order, a few degrees.
    assert mean_step_deg(np.arange(2000)) == pytest.approx(57.3, abs=3)
    assert mean_step_deg(order) < 8


def test_accumulate_in_direction_order_equals_insertion_in_table_order():
    """accumulate() inserts in viewing-direction order, in batches: each image must keep
    its own pose, shift and CTF, and the sums change by rounding only."""
    rng = np.random.default_rng(4)
    n, size, pixel = 40, 16, 2.0
    images = rng.normal(size=(n, size, size)).astype(np.float32)
    angles = random_orientations(rng, n)
    shifts = rng.uniform(-3, 3, (n, 2))
    ctfs = rng.uniform(-1, 1, (n, size, size // 2 + 1)).astype(np.float32)
    sorted_acc = fourier.FourierAccumulator(size, 2)
    fourier.accumulate(sorted_acc, images, angles, shifts, ctfs, pixel, batch=7)
    plain = fourier.FourierAccumulator(size, 2)
    centres = fourier.particle_centres_px(shifts, size, pixel)
    plain.insert(fourier.centred_transforms(images, centres), ctfs, euler_matrices(angles))
    assert sorted_acc.n_particles == plain.n_particles == n
    scale = float(np.abs(plain.grid).max())
    np.testing.assert_allclose(sorted_acc.grid, plain.grid, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("max_open", [256, 2])
def test_step_insertion_in_direction_order_equals_table_order(
    tmp_path, volume, monkeypatch, max_open
):
    """The step's insertion (whole share sorted, or sorted by groups of ``max_open``
    stacks, read batch by batch with the stacks open) equals inserting each half's
    particles in table order: every image keeps its pose, shift, CTF and half."""
    from hpcem.reconstruct import mpi

    monkeypatch.setattr(mpi, "MAX_OPEN_STACKS", max_open)
    monkeypatch.setattr(mpi, "BATCH", 16)
    sim = simulate_particles(volume, 90, snr=1.0, seed=5)
    n = len(sim["images"])
    which = np.arange(n) % 5  # particles spread over 5 stacks, interleaved in the table
    index = np.arange(n) // 5
    paths = [
        str(write_mrc(tmp_path / f"s{k}.mrcs", sim["images"][which == k], PIXEL_A))
        for k in range(5)
    ]
    columns, _ = particle_columns(sim, "")
    table = {
        "stack": np.asarray([paths[k] for k in which]),
        "image_index": index,
        **{k: np.asarray(columns[k]) for k in ("rot", "tilt", "psi", "shift_x", "shift_y")},
        **{k: np.asarray(columns[k]) for k in ("defocus_u", "defocus_v", "defocus_angle")},
        "phase_shift": np.zeros(n),
        "half": np.asarray(columns["half_set"]),
        "voltage_kV": np.full(n, sim["voltage_kV"]),
        "spherical_aberration_mm": np.full(n, sim["cs_mm"]),
        "amplitude_contrast": np.full(n, sim["amplitude_contrast"]),
        "optics_pixel_size_A": np.asarray(PIXEL_A),
        "optics_image_size_px": np.asarray(float(BOX)),
    }
    options = {"symmetry": "C1", "pad": 2, "wiener": 0.001, "max_res_A": 0.0, "ctf": True}
    accs = {h: fourier.FourierAccumulator(BOX, 2) for h in (1, 2)}
    assert mpi._insert_rows(accs, table, np.arange(n), options) == n
    centres = fourier.particle_centres_px(
        np.stack([table["shift_x"], table["shift_y"]], axis=1), BOX, PIXEL_A
    )
    ft = fourier.centred_transforms(sim["images"], centres)
    ctf = fourier.relion_ctfs(
        BOX,
        PIXEL_A,
        table["defocus_u"],
        table["defocus_v"],
        table["defocus_angle"],
        sim["voltage_kV"],
        sim["cs_mm"],
        sim["amplitude_contrast"],
    )
    rot = euler_matrices(sim["angles"])
    for h in (1, 2):
        plain = fourier.FourierAccumulator(BOX, 2)
        sel = table["half"] == h
        plain.insert(ft[sel], ctf[sel], rot[sel])
        assert accs[h].n_particles == plain.n_particles == int(sel.sum())
        scale = float(np.abs(plain.grid).max())
        np.testing.assert_allclose(accs[h].grid, plain.grid, rtol=0, atol=1e-12 * scale)


# --- accuracy against the truth -------------------------------------------------------


def test_noiseless_reconstruction_holds_to_nyquist(volume):
    """FSC against the truth >= 0.5 out to <= 1.3 x Nyquist resolution (measured: never
    below 0.5 to Nyquist, 0.999 at shell 20 of 24, scale of the map within 2 %)."""
    sim = simulate_particles(volume, 600, snr=0.0, seed=2)
    ctfs = fourier.relion_ctfs(
        BOX, PIXEL_A, sim["defocus_u"], sim["defocus_v"], sim["defocus_angle"], 300, 2.7, 0.1
    )
    shifts = np.stack([sim["shift_x"], sim["shift_y"]], axis=1)
    vol = fourier.reconstruct(sim["images"], sim["angles"], shifts, ctfs, PIXEL_A)
    curve = fsc_by_definition(vol, volume.data)
    assert resolution_at_half(curve, BOX, PIXEL_A) <= 1.3 * 2 * PIXEL_A, curve
    assert curve[:20].min() > 0.98
    scale = float((vol * volume.data).sum() / (volume.data**2).sum())
    assert 0.95 < scale < 1.05
    # The shift sign matters: with the opposite sign the map falls apart early.
    wrong = fourier.reconstruct(sim["images"], sim["angles"], -shifts, ctfs, PIXEL_A)
    assert fsc_by_definition(wrong, volume.data)[8] < 0.5


def test_low_snr_half_map_resolution_predicts_the_truth_fsc(volume):
    """At SNR 0.05 the 0.143 half-map FSC resolution agrees with the resolution where the
    full map's FSC against the truth is 0.5 within 10 % (measured: 9.6 vs 9.7 Å)."""
    from hpcem.validate.fsc import fsc_curve, resolution_at

    sim = simulate_particles(volume, 1000, snr=0.05, seed=3)
    ctfs = fourier.relion_ctfs(
        BOX, PIXEL_A, sim["defocus_u"], sim["defocus_v"], sim["defocus_angle"], 300, 2.7, 0.1
    )
    shifts = np.stack([sim["shift_x"], sim["shift_y"]], axis=1)
    maps = {}
    for h in (1, 2):
        sel = sim["half_set"] == h
        acc = fourier.FourierAccumulator(BOX, 2)
        fourier.accumulate(
            acc, sim["images"][sel], sim["angles"][sel], shifts[sel], ctfs[sel], PIXEL_A
        )
        maps[h] = acc
    half1, half2 = fourier.finish(maps[1]), fourier.finish(maps[2])
    maps[1].add(maps[2])
    full = fourier.finish(maps[1])
    freq, gold = fsc_curve(half1, half2, PIXEL_A)
    gold_res = resolution_at(freq, gold, 0.143)
    truth_res = resolution_at_half(fsc_by_definition(full, volume.data), BOX, PIXEL_A)
    assert 2 * PIXEL_A < truth_res < 20.0  # a resolution inside the band, not a limit
    assert abs(gold_res - truth_res) <= 0.1 * truth_res, (gold_res, truth_res)


# --- symmetry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group, order", [("C1", 1), ("C7", 7), ("D2", 4), ("D5", 10), ("T", 12), ("O", 24), ("I", 60)]
)
def test_group_orders_and_closure(group, order):
    mats = symmetry_matrices(group)
    assert len(mats) == order
    np.testing.assert_allclose(mats[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", mats, mats), np.eye(3)[None].repeat(order, 0), atol=1e-9
    )
    for a in mats[: min(order, 12)]:
        for b in mats:
            prod = a @ b
            assert np.abs(mats - prod).max(axis=(1, 2)).min() < 1e-6


def _relion_ops(group: str) -> np.ndarray:
    out = subprocess.run(
        ["relion_refine", "--sym", group, "--print_symmetry_ops"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = out.splitlines()
    return np.array(
        [
            [[float(v) for v in lines[i + j].split()] for j in (1, 2, 3)]
            for i, line in enumerate(lines)
            if re.match(r"\s*R\(\d+\)=", line)
        ]
    )


@pytest.mark.parametrize("group", ["C4", "D3", "T", "O", "I", "I1", "I3", "I4"])
def test_symmetry_operators_equal_relions(group):
    if shutil.which("relion_refine") is None:
        pytest.skip("relion_refine is not installed (Debian/Ubuntu: apt-get install relion)")
    theirs = _relion_ops(group)
    ours = symmetry_matrices(group)
    assert len(theirs) == len(ours)
    for m in theirs:  # same set: each of RELION's matrices is one of ours
        assert np.abs(ours - m).max(axis=(1, 2)).min() < 1e-3


def test_unsupported_symmetry_is_one_clear_message():
    with pytest.raises(ValidationError, match="'X3' is not a supported point group"):
        symmetry_matrices("X3")


def test_a_symmetrised_map_equals_itself_rotated(volume):
    import scipy.ndimage

    sym = symmetrise_map(volume.data, "D2")
    c = np.full(3, BOX // 2, float)
    for r in symmetry_matrices("D2")[1:]:
        m = r[::-1, ::-1]
        rotated = scipy.ndimage.affine_transform(sym, m, offset=c - m @ c, order=3)
        inner = (slice(8, -8),) * 3
        corr = np.corrcoef(rotated[inner].ravel(), sym[inner].ravel())[0, 1]
        assert corr > 0.995
    assert np.corrcoef(sym.ravel(), volume.data.ravel())[0, 1] < 0.9  # 7DDO is not D2


def test_reconstruction_with_symmetry_is_symmetric(volume):
    """Particles of a D2-symmetrised map, reconstructed with D2, give that map back."""
    from hpcem.sim.volume import Volume

    sym = Volume(symmetrise_map(volume.data, "D2"), PIXEL_A, volume.diameter_A, "D2")
    sim = simulate_particles(sym, 150, snr=0.0, seed=5)
    ctfs = fourier.relion_ctfs(
        BOX, PIXEL_A, sim["defocus_u"], sim["defocus_v"], sim["defocus_angle"], 300, 2.7, 0.1
    )
    shifts = np.stack([sim["shift_x"], sim["shift_y"]], axis=1)
    c1 = fourier.reconstruct(sim["images"], sim["angles"], shifts, ctfs, PIXEL_A)
    d2 = fourier.reconstruct(sim["images"], sim["angles"], shifts, ctfs, PIXEL_A, symmetry="D2")
    # Four times the views: the symmetric reconstruction is better than C1's from 150.
    fc1, fd2 = fsc_by_definition(c1, sym.data), fsc_by_definition(d2, sym.data)
    assert fd2[10:22].mean() > fc1[10:22].mean()
    assert fd2[:20].min() > 0.95


# --- the protocol ---------------------------------------------------------------------


def _particle_run(project, folder: Path, sim: dict, optics_overrides: dict | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_mrc(folder / "particles.mrcs", sim["images"], PIXEL_A, kind="stack")
    columns, optics = particle_columns(sim, str(stack))
    optics.update(optics_overrides or {})
    run = project.create_run("test.particles", "simulated particles")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(optics)
    writer.append_columns(columns)
    writer.close()
    project.set_output(run.id, "particles", "hpcem.SetOfParticles", len(sim["images"]))
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:particles"


@pytest.mark.slow  # ~10 s on the busy 2-core machine: a whole run
def test_protocol_writes_maps_and_gold_standard_fsc(project, tmp_path, volume):
    sim = simulate_particles(volume, 400, snr=0.5, seed=4)
    particles = _particle_run(project, tmp_path / "data", sim)
    run = lifecycle.create_run(project, "reconstruct.fourier", {}, {"particles": [particles]})
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    vols = project.open_set(run.id, "volumes").read_columns()
    assert vols["half"].tolist() == [0, 1, 2] and vols["box_size"].tolist() == [BOX] * 3
    maps = [read_image(Path(project.path) / str(p)) for p in vols["image"]]
    truth = fsc_by_definition(maps[0], volume.data)
    assert truth[:8].min() > 0.9  # measured: 0.93 at shell 8, 0.76 at 12 (SNR 0.5)
    fsc = project.open_set(run.id, "fsc").read_columns()
    ours = np.asarray(fsc["fsc"][0])
    np.testing.assert_allclose(ours[1:], fsc_by_definition(maps[1], maps[2]), atol=0.02)
    assert 2 * PIXEL_A <= float(fsc["resolution_A"][0]) < 20
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    assert steps["reconstruct"]["result"]["backend"] in ("cython", "numpy")
    assert (Path(project.path) / steps["reconstruct"]["result"]["plot"]).is_file()


def test_bad_particles_are_refused_with_one_clear_message(project, tmp_path, volume):
    sim = simulate_particles(volume, 6, seed=6)
    good = _particle_run(project, tmp_path / "good", sim)
    with pytest.raises(ValidationError, match="'Q2' is not a supported point group"):
        lifecycle.create_run(
            project, "reconstruct.fourier", {"symmetry": "Q2"}, {"particles": [good]}
        )
    unposed = dict(sim, angles=np.zeros_like(sim["angles"]))
    ref = _particle_run(project, tmp_path / "unposed", unposed)
    with pytest.raises(ValidationError, match="have no orientations"):
        lifecycle.create_run(project, "reconstruct.fourier", {}, {"particles": [ref]})
    no_ctf = dict(sim, defocus_u=np.zeros(6))
    ref = _particle_run(project, tmp_path / "noctf", no_ctf)
    with pytest.raises(ValidationError, match="6 of 6 particles have no CTF"):
        lifecycle.create_run(project, "reconstruct.fourier", {}, {"particles": [ref]})
    wrong_box = _particle_run(project, tmp_path / "box", sim, {"image_size_px": [64]})
    with pytest.raises(ValidationError, match="holds 48x48 px images, but .* image_size_px 64"):
        lifecycle.create_run(project, "reconstruct.fourier", {}, {"particles": [wrong_box]})
    two = _particle_run(
        project,
        tmp_path / "two",
        dict(sim, half_set=sim["half_set"]),
        {
            "optics_group": [1, 2],
            "voltage_kV": [300.0, 300.0],
            "spherical_aberration_mm": [2.7, 2.7],
            "amplitude_contrast": [0.1, 0.1],
            "pixel_size_A": [4.0, 3.0],
            "image_size_px": [BOX, BOX],
        },
    )
    with pytest.raises(ValidationError, match=r"different pixel sizes \[3.0, 4.0\]"):
        lifecycle.create_run(project, "reconstruct.fourier", {}, {"particles": [two]})


@pytest.mark.slow  # ~6 s: relion_reconstruct
def test_at_least_as_good_as_relion_reconstruct(tmp_path, volume):
    """relion_reconstruct --ctf on the same particles (SNR 0.05): our map's resolution at
    FSC = 0.5 against the truth is at least as good as RELION's (measured at 4 Å/px,
    48 px, 800 particles: hpcem 14.2 Å, relion_reconstruct 15.1 Å)."""
    if shutil.which("relion_reconstruct") is None:
        pytest.skip("relion_reconstruct is not installed (apt-get install relion)")
    from hpcem.convert.relion import write_particles

    sim = simulate_particles(volume, 800, snr=0.05, seed=8)
    stack = write_mrc(tmp_path / "particles.mrcs", sim["images"], PIXEL_A, kind="stack")
    columns, optics = particle_columns(sim, str(stack))
    write_particles(tmp_path / "particles.star", columns, optics, root=tmp_path)
    subprocess.run(
        ["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    theirs = read_image(tmp_path / "relion.mrc")
    ctfs = fourier.relion_ctfs(
        BOX, PIXEL_A, sim["defocus_u"], sim["defocus_v"], sim["defocus_angle"], 300, 2.7, 0.1
    )
    shifts = np.stack([sim["shift_x"], sim["shift_y"]], axis=1)
    ours = fourier.reconstruct(sim["images"], sim["angles"], shifts, ctfs, PIXEL_A)
    res_ours = resolution_at_half(fsc_by_definition(ours, volume.data), BOX, PIXEL_A)
    res_theirs = resolution_at_half(fsc_by_definition(theirs, volume.data), BOX, PIXEL_A)
    assert fsc_by_definition(theirs, volume.data)[0] > 0.9  # RELION read the same poses
    assert res_ours <= res_theirs, (res_ours, res_theirs)


def test_max_resolution_and_no_ctf(volume):
    """Without CTF (images are plain projections) the map holds to Nyquist; with
    ``max_res_A`` 16 Å nothing beyond 16 Å is left in the map."""
    from hpcem.sim.projection import project

    rng = np.random.default_rng(9)
    angles = random_orientations(rng, 300)
    images = project(volume, angles)
    shifts = np.zeros((300, 2))
    plain = fourier.reconstruct(images, angles, shifts, None, PIXEL_A)
    assert fsc_by_definition(plain, volume.data)[:22].min() > 0.98
    limited = fourier.reconstruct(images, angles, shifts, None, PIXEL_A, max_res_A=16.0)
    spectrum = np.abs(np.fft.fftn(limited))
    k = np.fft.fftfreq(BOX, PIXEL_A)
    s = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    # The box sphere's soft edge leaks a little; beyond 14 Å (2 shells on) nothing is left.
    assert spectrum[s > 1 / 14].max() < 0.02 * spectrum.max()
    assert fsc_by_definition(limited, volume.data)[:10].min() > 0.95
