"""picking.template: the NCC against a brute-force Pearson correlation written here, the
kernels against their numpy references, the geometry against numpy/scipy, accuracy
against the simulator's ground truth (F1 at SNR 0.1, two pixel sizes; CTF-multiplied
templates at 3 µm defocus), bad input, a real micrograph, and the protocol end to end."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from hpcem.errors import ValidationError
from hpcem.picking import template as tp
from hpcem.picking.evaluate import match_picks, pooled, truth_xy
from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset

DIAMETER_A = 150.0  # the protocol's default; the 7DDO model is ~131 Å across
OPTICS = {"voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def brute_force_ncc(image: np.ndarray, template: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson correlation of the template and the image window under ``mask`` at every
    pixel (template centre pixel b//2 on it), the image zero outside its edges."""
    ny, nx = image.shape
    b = template.shape[0]
    c = b // 2
    padded = np.zeros((ny + b, nx + b))
    padded[c : c + ny, c : c + nx] = image
    t = template[mask].astype(np.float64)
    out = np.zeros((ny, nx))
    for y in range(ny):
        for x in range(nx):
            w = padded[y : y + b, x : x + b][mask]
            if w.std() > 1e-9:
                out[y, x] = np.corrcoef(t, w)[0, 1]
    return out


@pytest.mark.parametrize("use_kernel", [True, False])
def test_ncc_is_the_pearson_correlation_under_the_mask(use_kernel):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(37, 30)).astype(np.float32)
    image[10:20, 5:15] += 2.0 * rng.normal(size=(10, 10)).astype(np.float32)  # uneven sd
    templates = rng.normal(size=(3, 12, 12)).astype(np.float32)
    mask = tp.disc_mask(12, 4.6)
    best, index, backend = tp.ncc_search(image, templates, mask, use_kernel=use_kernel)
    each = np.stack([brute_force_ncc(image, t, mask) for t in templates])
    assert backend in ("cython", "numpy") and (backend == "numpy" or use_kernel)
    np.testing.assert_allclose(best, each.max(axis=0), atol=2e-5)
    assert np.all(index == each.argmax(axis=0))
    # A template pasted into the image scores 1 where it was pasted.
    image[20:32, 10:22][mask] = 3.0 * templates[1][mask] + 0.5
    best, index, _ = tp.ncc_search(image, templates, mask, use_kernel=use_kernel)
    assert best[26, 16] == pytest.approx(1.0, abs=1e-5) and index[26, 16] == 1


def test_band_limited_search_matches_the_full_search():
    """On a micrograph and templates low-passed as pick_micrograph does, skipping the
    Fourier columns beyond the low-pass changes the NCC by < 2e-3 (the zero padding around
    the image is not band-limited; measured 8e-4 on 1024² micrographs) and no peak."""
    from hpcem.picking.peaks import find_peaks
    from hpcem.sim import simulate_micrograph

    config = DatasetConfig(kind="micrographs", pixel_size_A=1.5)
    image, _ = simulate_micrograph(
        (512, 512), 1.5, 15000.0, volume=dataset_volume(config), n_particles=8, seed=1
    )
    stack, work_A = _templates(config)
    binned, binned_A, _ = tp.bin_micrograph(image, 1.5, work_A, 20.0)
    box = stack.shape[-1]
    rotated, _ = tp.inplane_rotations(stack[:6], 30.0)
    ctf = {"defocus_u": 15000.0, "defocus_v": 15000.0, "defocus_angle": 0.0} | OPTICS
    templates = tp.filter_templates(rotated, binned_A, 20.0, ctf)
    mask = tp.disc_mask(box, 0.5 * DIAMETER_A / binned_A)
    full, _, _ = tp.ncc_search(binned, templates, mask)
    band, _, _ = tp.ncc_search(binned, templates, mask, max_frequency=1.2 * binned_A / 20.0)
    np.testing.assert_allclose(band, full, atol=2e-3)
    peaks = [find_peaks(m, 19.0, threshold=0.3, border_px=10)[0] for m in (full, band)]
    assert len(peaks[0]) >= 5
    np.testing.assert_allclose(peaks[1], peaks[0], atol=0.05)


def test_running_max_kernel_matches_its_numpy_reference():
    from hpcem.kernels import load

    kernel = load("ncc")
    if kernel is None:
        pytest.skip("hpcem.kernels.ncc is not built")
    rng = np.random.default_rng(0)
    corr = rng.normal(size=(5, 22, 26)).astype(np.float32)  # planes larger than best
    corr[3] = corr[1]  # a tie: the earlier template keeps it
    inv = rng.uniform(0.5, 2, size=(20, 24)).astype(np.float32)
    out = []
    for f in (kernel.running_max, tp._running_max_numpy):
        best = np.full((20, 24), -np.inf, dtype=np.float32)
        best[0, 0] = 100.0  # already better than any template
        index = np.full((20, 24), -1, dtype=np.int32)
        f(corr, inv, best, index, 7)
        out.append((best, index))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    assert out[0][1][0, 0] == -1 and not np.any(out[0][1] == 10)
    expected = (corr[:, :20, :24] * inv).max(axis=0)
    np.testing.assert_array_equal(out[0][0][1:, 1:], expected[1:, 1:])


def test_fourier_binning_matches_scipy_resample():
    """scipy.signal.resample (Fourier method) on each axis; odd sizes keep Nyquist out."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(99, 75)).astype(np.float32)
    ours = tp.fourier_resize(image, (33, 25))
    theirs = scipy.signal.resample(scipy.signal.resample(image, 33, axis=0), 25, axis=1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_inplane_rotation_by_90_degrees_is_numpy_rot90():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(2, 31, 31)).astype(np.float32)
    rotated, psi = tp.inplane_rotations(stack, 90.0)
    assert list(psi) == [0, 90, 180, 270]
    for i in range(2):
        for k in range(4):
            # Inside the outermost ring (the box edge itself may fall outside by rounding).
            expected = np.rot90(stack[i], k)[1:-1, 1:-1]
            np.testing.assert_allclose(rotated[4 * i + k][1:-1, 1:-1], expected, atol=1e-4)


def test_sphere_directions_cover_the_whole_sphere():
    """Every direction of a dense random set is within ~one step of a template's."""
    angles = tp.sphere_directions(30.0)
    assert len(angles) == round(4 * np.pi / np.radians(30.0) ** 2) == 46
    rot, tilt = np.radians(angles[:, 0]), np.radians(angles[:, 1])
    d = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], 1)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    gap = np.degrees(np.arccos(np.clip((v @ d.T).max(axis=1), -1, 1)))
    assert gap.max() < 30.0 and np.median(gap) < 15.0
    assert (d[:, 2] < -0.5).sum() > 5 and (d[:, 2] > 0.5).sum() > 5  # both hemispheres


# --- accuracy on simulated micrographs -------------------------------------------------------


def _dataset(folder, **kw):
    config = DatasetConfig(**({"kind": "micrographs", "n_items": 3, "snr": 0.1} | kw))
    truth = simulate_dataset(folder, config)
    return config, truth


@pytest.fixture(scope="module")
def sim_1A(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tpl1")
    config, truth = _dataset(folder, size_px=1024, pixel_size_A=1.0)
    return folder, config, truth


def _templates(config, diameter_A=DIAMETER_A, step=30.0):
    work_A = tp.working_pixel_size_A(diameter_A, config.pixel_size_A, 20.0)
    box = tp.template_box_px(diameter_A / work_A)
    stack, _ = tp.volume_templates(dataset_volume(config), step, work_A, box)
    return stack, work_A


def _pick_all(folder, config, truth, use_ctf=True, **kw):
    from hpcem.io import read_image

    stack, work_A = _templates(config)
    results = []
    for item in truth["items"]:
        image = read_image(folder / item["name"])
        ctf = None
        if use_ctf:
            ctf = {k: item[k] for k in ("defocus_u", "defocus_v", "defocus_angle")} | OPTICS
            ctf["phase_shift"] = item["phase_shift"]
        kw.setdefault("threshold", _default_threshold())
        picks = tp.pick_micrograph(image, config.pixel_size_A, stack, work_A, DIAMETER_A, ctf, **kw)
        radius = 0.5 * DIAMETER_A / config.pixel_size_A
        results.append(match_picks(picks["xy"], truth_xy(truth, item["name"]), radius))
    return pooled(results), results


def _default_threshold():
    from hpcem.protocols.picking_template import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD


def test_f1_at_snr_0_1_at_1_A_per_px(sim_1A):
    folder, config, truth = sim_1A
    score, each = _pick_all(folder, config, truth)
    assert score["tp"] >= 50  # 3 micrographs of ~19 particles
    assert score["precision"] >= 0.95 and score["recall"] >= 0.95 and score["f1"] >= 0.95
    assert min(r["f1"] for r in each) >= 0.90


def test_f1_at_another_pixel_size_and_size(tmp_path):
    config, truth = _dataset(tmp_path, size_px=768, pixel_size_A=1.7, seed=5)
    score, each = _pick_all(tmp_path, config, truth)
    assert score["tp"] >= 50
    assert score["precision"] >= 0.93 and score["recall"] >= 0.93 and score["f1"] >= 0.93
    assert min(r["f1"] for r in each) >= 0.90


@pytest.mark.slow
def test_ctf_multiplied_templates_help_at_3_um_defocus(tmp_path):
    """At 3 µm the CTF flips contrast beyond ~1/24 Å: inverted templates alone match
    only the lowest frequencies. Harder data (SNR 0.03) makes the difference show."""
    config, truth = _dataset(
        tmp_path,
        size_px=1024,
        pixel_size_A=1.5,
        snr=0.03,
        defocus_min_A=30000.0,
        defocus_max_A=30000.0,
        astigmatism_max_A=500.0,
        seed=11,
    )
    with_ctf, _ = _pick_all(tmp_path, config, truth, use_ctf=True)
    without, _ = _pick_all(tmp_path, config, truth, use_ctf=False)
    assert with_ctf["f1"] >= 0.90
    assert with_ctf["f1"] >= without["f1"] + 0.05, (with_ctf, without)


def test_class_averages_as_templates(tmp_path):
    """Averages of another pixel size (12 projections at 2 Å/px in a 96-px stack, as a 2D
    classification would give) are resampled to the search grid and pick at F1 >= 0.9."""
    from hpcem.io import read_image, write_mrc
    from hpcem.picking.templates import reference_templates

    _, truth = _dataset(tmp_path / "mics", n_items=2, size_px=768, pixel_size_A=1.5, seed=8)
    coarse = dataset_volume(DatasetConfig(kind="micrographs", pixel_size_A=2.0))
    averages = coarse.projector().project(tp.sphere_directions(60.0))
    assert len(averages) == 11
    path = write_mrc(tmp_path / "classes.mrcs", tp._recentre(averages, 96), 2.0)
    work_A = tp.working_pixel_size_A(DIAMETER_A, 1.5, 20.0)
    stack, angles = reference_templates(
        "averages", [str(path)] * 11, list(range(11)), 2.0, DIAMETER_A, work_A, 30.0
    )
    assert angles is None and stack.shape == (11, 36, 36)
    results = []
    for item in truth["items"]:
        ctf = {k: item[k] for k in ("defocus_u", "defocus_v", "defocus_angle")} | OPTICS
        image = read_image(tmp_path / "mics" / item["name"])
        picks = tp.pick_micrograph(
            image, 1.5, stack, work_A, DIAMETER_A, ctf, threshold=_default_threshold()
        )
        true = truth_xy(truth, item["name"])
        results.append(match_picks(picks["xy"], true, 0.5 * DIAMETER_A / 1.5))
    assert pooled(results)["f1"] >= 0.9, results


# --- bad input -------------------------------------------------------------------------------


def test_references_of_a_wrong_pixel_size_are_refused(tmp_path):
    from hpcem.io import write_mrc
    from hpcem.picking.templates import check_reference_pixel_size, reference_templates

    stack = np.zeros((2, 64, 64), dtype=np.float32)
    stack[:, 24:40, 24:40] = 1.0
    path = write_mrc(tmp_path / "averages.mrcs", stack, 2.0)
    with pytest.raises(ValidationError, match="has 2 Å/px in its header but its set says 1 Å/px"):
        check_reference_pixel_size(str(path), 1.0, DIAMETER_A)
    coarse = write_mrc(tmp_path / "coarse.mrcs", stack, 25.0)
    with pytest.raises(ValidationError, match=r"150 Å particle is only 6\.0 px across"):
        reference_templates("averages", [str(coarse)], [0], 25.0, DIAMETER_A, 6.25, 30.0)
    check_reference_pixel_size(str(path), 2.0, DIAMETER_A)  # consistent: no complaint


def test_an_empty_micrograph_gives_no_picks():
    from hpcem.sim import simulate_micrograph

    config = DatasetConfig(kind="micrographs", pixel_size_A=1.0)
    stack, work_A = _templates(config)
    counts = []
    for seed in range(2):
        image, _ = simulate_micrograph(
            (1024, 1024), 1.0, 20000.0, 19500.0, 30.0, n_particles=0, seed=seed
        )
        ctf = {"defocus_u": 20000.0, "defocus_v": 19500.0, "defocus_angle": 30.0} | OPTICS
        for c in (ctf, None) if seed == 0 else (ctf,):
            picks = tp.pick_micrograph(
                image, 1.0, stack, work_A, DIAMETER_A, c, threshold=_default_threshold()
            )
            counts.append(len(picks["xy"]))
    assert counts == [0, 0, 0]


def test_a_micrograph_too_coarse_for_the_particle_is_refused():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(200, 200)).astype(np.float32)
    stack = np.ones((1, 36, 36), dtype=np.float32)
    with pytest.raises(ValidationError, match="only 7.5 px across"):
        tp.pick_micrograph(image, 20.0, stack, 6.25, DIAMETER_A)


def test_pick_step_caps_warns_and_rejects(tmp_path):
    """The micrograph step on files: more maxima than max_picks keeps the best and warns;
    a ctfs input without this micrograph's CTF rejects it."""
    from hpcem.protocols.picking_template import pick_one

    from hpcem.errors import ItemRejected
    from hpcem.io import write_mrc

    _, truth = _dataset(tmp_path, n_items=1, size_px=768, pixel_size_A=1.5, seed=2)
    stack, work_A = _templates(DatasetConfig(kind="micrographs", pixel_size_A=1.5))
    write_mrc(tmp_path / "templates.mrcs", stack, work_A)
    item = truth["items"][0]
    options = {
        "templates": str(tmp_path / "templates.mrcs"),
        "template_pixel_A": work_A,
        "diameter_A": DIAMETER_A,
        "lowpass_A": 20.0,
        "inplane_step_deg": 10.0,
        "threshold": _default_threshold(),
        "min_distance_A": 0.0,
        "max_picks": 5,
    }
    ctf = {k: item[k] for k in ("defocus_u", "defocus_v", "defocus_angle")} | OPTICS
    path, picture = str(tmp_path / item["name"]), str(tmp_path / "pictures" / "m.png")
    result = pick_one(path, 7, 1.5, ctf, options, picture)
    n_true = len(truth_xy(truth, item["name"]))
    assert result["count"] == 5 and n_true > 5
    assert result["warning"] == (
        f"micrograph 7: {n_true} picks above the threshold, kept the best 5 (max_picks; "
        "ice contamination or a threshold too low?)"
    )
    assert result["score"] == sorted(result["score"], reverse=True)
    assert (tmp_path / "pictures" / "m.png").stat().st_size > 1000
    with pytest.raises(ItemRejected, match="micrograph 7: no CTF for it in input ctfs"):
        pick_one(path, 7, 1.5, {}, options, None)
    small = write_mrc(tmp_path / "small.mrc", np.random.default_rng(0).normal(size=(150, 400)), 1.5)
    with pytest.raises(ItemRejected, match="400x150 px is smaller than two particle diameters"):
        pick_one(str(small), 8, 1.5, ctf, options, None)


# --- the protocol ----------------------------------------------------------------------------


def _finished(project, rec_id):
    project.begin_attempt(rec_id, ("saved",))
    project.transition(rec_id, ("launched",), "running", attempt=1)
    project.controller_commit(rec_id, 1, state="finished")


def _import(project, name, params, wait_for_run):
    from hpcem.execution import runs as lifecycle

    run = lifecycle.create_run(project, name, params)
    lifecycle.launch(project, run.id, workers=1)
    assert wait_for_run(project, run.id).state == "finished"
    return run.id


def _ctf_run(project, mic_run, truth, rows):
    """A finished run whose output ``ctfs`` holds the true CTFs of micrograph ``rows``."""
    mics = project.open_set(mic_run, "micrographs")
    ids, paths = mics.column("id"), [str(p) for p in mics.column("image")]
    items = {item["name"]: item for item in truth["items"]}
    rec = project.create_run("test.ctfs", "true CTFs")
    cols = {k: [] for k in ("micrograph_id", "defocus_u", "defocus_v", "defocus_angle")}
    for row in rows:
        item = items[paths[row].rsplit("/", 1)[-1]]
        cols["micrograph_id"].append(int(ids[row]))
        for k in ("defocus_u", "defocus_v", "defocus_angle"):
            cols[k].append(item[k])
    writer = project.create_set(
        rec.id, "ctfs", "hpcem.SetOfCTFs", inputs=[f"{mic_run}:micrographs"]
    )
    writer.set_optics(mics.optics)
    writer.append_columns({k: np.asarray(v) for k, v in cols.items()})
    writer.close()
    project.set_output(rec.id, "ctfs", "hpcem.SetOfCTFs", len(rows))
    _finished(project, rec.id)
    return rec.id


@pytest.mark.slow
def test_protocol_end_to_end_with_a_map_and_ctfs(project, tmp_path, wait_for_run):
    """import.micrographs + import.volumes (the simulator's own map) + CTFs for one of
    the two micrographs: the other is rejected, the first picked with F1 >= 0.9."""
    from hpcem.execution import runs as lifecycle
    from hpcem.io import write_mrc

    raw = tmp_path / "raw"
    config, truth = _dataset(raw, n_items=2, size_px=768, pixel_size_A=1.5, seed=3)
    volume = dataset_volume(config)
    (tmp_path / "maps").mkdir()
    write_mrc(tmp_path / "maps" / "ref.mrc", volume.data, 1.5)
    optics = {"voltage_kV": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}
    mic_run = _import(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": 1.5, **optics},
        wait_for_run,
    )
    vol_run = _import(
        project,
        "import.volumes",
        {"files": str(tmp_path / "maps" / "*.mrc"), "pixel_size_A": 1.5},
        wait_for_run,
    )
    ctf_run = _ctf_run(project, mic_run, truth, rows=[0])
    run = lifecycle.create_run(
        project,
        "picking.template",
        {},
        {
            "micrographs": [f"{mic_run}:micrographs"],
            "references": [f"{vol_run}:volumes"],
            "ctfs": [f"{ctf_run}:ctfs"],
        },
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=240)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    made = steps["templates"]["result"]
    assert made["count"] == 46 and (project.path / made["picture"]).stat().st_size > 1000
    result = steps["register"]["result"]
    mics = project.open_set(mic_run, "micrographs")
    first, second = (int(i) for i in mics.column("id"))
    assert result["rejected"] == [
        {"micrograph_id": second, "reason": f"micrograph {second}: no CTF for it in input ctfs"}
    ]
    out = project.open_set(run.id, "coordinates").read_columns()
    assert set(out["micrograph_id"].tolist()) == {first}
    assert result["count"] == len(out["x"]) == result["per_micrograph"][str(first)]
    name = str(mics.column("image")[0]).rsplit("/", 1)[-1]
    xy = np.stack([out["x"], out["y"]], axis=1)
    score = match_picks(xy, truth_xy(truth, name), 0.5 * DIAMETER_A / 1.5)
    assert score["f1"] >= 0.9 and score["precision"] >= 0.9, score
    assert np.all(out["score"] >= _default_threshold())
    pick_step = steps["pick/000000"]["result"]
    assert pick_step["backend"]["ncc"] in ("cython", "numpy")
    assert (project.path / pick_step["picture"]).stat().st_size > 1000


def _classes_run(project, mic_run, stack_path, n):
    """A finished run whose output ``classes`` has ``n`` classes, the averages being
    images 0..n-1 of ``stack_path``, with the micrographs' optics (their pixel size)."""
    mics = project.open_set(mic_run, "micrographs")
    rec = project.create_run("test.classes", "classes")
    writer = project.create_set(rec.id, "classes", "hpcem.SetOfClasses2D")
    writer.set_optics(mics.optics)
    writer.append_columns(
        {
            "representative": [str(stack_path)] * n,
            "representative_index": np.arange(n),
            "size": np.full(n, 10),
        }
    )
    writer.close()
    project.set_output(rec.id, "classes", "hpcem.SetOfClasses2D", n)
    _finished(project, rec.id)
    return rec.id


@pytest.mark.slow
def test_protocol_with_class_averages(project, tmp_path, wait_for_run):
    """Class averages as references: refused when their header disagrees with their set's
    pixel size; picked with (no CTF) when they agree."""
    from hpcem.execution import runs as lifecycle
    from hpcem.io import write_mrc

    raw = tmp_path / "raw"
    config, truth = _dataset(raw, n_items=1, size_px=640, pixel_size_A=2.0, seed=4)
    mic_run = _import(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": 2.0, "voltage_kV": 300.0},
        wait_for_run,
    )
    averages = dataset_volume(config).projector().project(tp.sphere_directions(60.0))
    wrong = write_mrc(project.path / "wrong.mrcs", averages, 4.0)  # the set says 2.0
    inputs = {
        "micrographs": [f"{mic_run}:micrographs"],
        "references": [f"{_classes_run(project, mic_run, wrong, 11)}:classes"],
    }
    with pytest.raises(ValidationError, match="has 4 Å/px in its header but its set says 2 Å/px"):
        lifecycle.create_run(project, "picking.template", {}, inputs)
    right = write_mrc(project.path / "classes.mrcs", averages, 2.0)
    inputs["references"] = [f"{_classes_run(project, mic_run, right, 11)}:classes"]
    run = lifecycle.create_run(project, "picking.template", {}, inputs)
    lifecycle.launch(project, run.id, workers=1)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    assert steps["templates"]["result"]["count"] == 11
    assert steps["templates"]["result"]["angles_deg"] is None
    out = project.open_set(run.id, "coordinates").read_columns()
    xy = np.stack([out["x"], out["y"]], axis=1)
    score = match_picks(xy, truth_xy(truth, "mic_000.mrc"), 0.5 * DIAMETER_A / 2.0)
    assert score["f1"] >= 0.9, score


@pytest.mark.slow
def test_real_micrograph_picks_are_darker_than_random_places(shared_file):
    """The real EPU micrograph (no ground truth): with the 7DDO map as templates (130 Å,
    no CTF, threshold 0.35 as docs/protocols/picking_template.md advises for real data),
    the low-passed micrograph is darker (protein) at the picks than at random places."""
    from hpcem.io import read_header, read_image

    path = shared_file("mrcfile-1.5.4/fei-extended.mrc")
    pixel_A = read_header(path).pixel_size_A
    image = read_image(path).astype(np.float32)
    config = DatasetConfig(kind="micrographs", pixel_size_A=2.0)
    work_A = tp.working_pixel_size_A(130.0, pixel_A, 20.0)
    stack, _ = tp.volume_templates(
        dataset_volume(config), 30.0, work_A, tp.template_box_px(130.0 / work_A)
    )
    picks = tp.pick_micrograph(image, pixel_A, stack, work_A, 130.0, None, threshold=0.35)
    binned = picks["binned"]
    radius = 0.3 * 130.0 / picks["binned_pixel_A"]
    yy, xx = np.mgrid[: binned.shape[0], : binned.shape[1]]

    def disc_means(points):
        return np.array(
            [binned[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2].mean() for x, y in points]
        )

    at_picks = disc_means(picks["xy"] / np.array(picks["scale"]))
    margin = 130.0 / picks["binned_pixel_A"]
    rng = np.random.default_rng(0)
    hi = [binned.shape[1] - margin, binned.shape[0] - margin]
    at_random = disc_means(rng.uniform([margin, margin], hi, (400, 2)))
    assert 100 <= len(at_picks) <= 400  # ~170 particles are visible in the picture
    assert at_picks.mean() < at_random.mean() - 0.5 * at_random.std()
    assert np.mean(at_picks < np.median(at_random)) > 0.7
