"""FSC, resolution, mask correction and sharpening (hpcem.validate.fsc, ``validate.fsc``).

Outside references: the FSC is written here from its definition (full 3D FFT, shells of
rounded radius); a B-factor is applied with the Guinier formula written here
(amplitudes × exp(−B s²/4)) and must be found again by the fit; the mask correction is
checked against what Chen et al. (2013) define it to remove (the correlation a mask adds
to independent noise); RELION's relion_postprocess on the same half maps gives the
masked, corrected resolution to compare (skipped without RELION).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hpcem.execution import runs as lifecycle
from hpcem.io import read_image, write_mrc
from hpcem.sim.volume import load_volume
from hpcem.validate import fsc as F

PIXEL_A = 4.0
BOX = 48


def fsc_by_definition(a, b):
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    n = a.shape[0]
    k = np.fft.fftfreq(n, 1 / n)
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    r = r.astype(int).ravel()
    num = np.bincount(r, (fa * fb.conj()).real.ravel())
    den = np.sqrt(np.bincount(r, (abs(fa) ** 2).ravel()) * np.bincount(r, (abs(fb) ** 2).ravel()))
    return (num / den)[: n // 2 + 1]


def apply_b(volume, pixel, b_A2):
    """Amplitudes times exp(−B s² / 4), written here from the Guinier formula."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n, pixel)
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    return np.fft.ifftn(np.fft.fftn(volume) * np.exp(-0.25 * b_A2 * s2)).real


@pytest.fixture(scope="module")
def truth():
    return load_volume(None, PIXEL_A, BOX).data


@pytest.fixture(scope="module")
def halves(truth):
    """Two half maps: the truth plus independent noise that grows with frequency."""
    rng = np.random.default_rng(0)
    noise = [apply_b(rng.normal(0, 1, truth.shape), PIXEL_A, -400.0) for _ in (1, 2)]
    scale = truth.std() * 0.05
    return [(truth + scale * n).astype(np.float32) for n in noise]


def test_fsc_equals_the_definition(halves):
    freq, ours = F.fsc_curve(*halves, PIXEL_A)
    np.testing.assert_allclose(ours, fsc_by_definition(*halves), atol=1e-6)
    assert freq[1] == pytest.approx(1 / (BOX * PIXEL_A)) and len(freq) == BOX // 2 + 1


def test_resolution_is_interpolated_between_shells():
    freq = np.arange(6) / 60.0  # shells of 1/60 Å⁻¹
    curve = np.array([1.0, 0.9, 0.6, 0.2, 0.1, 0.0])
    # 0.5 is crossed between shell 2 (0.6) and 3 (0.2) a quarter of the way: f = 2.25/60
    assert F.resolution_at(freq, curve, 0.5) == pytest.approx(60 / 2.25)
    assert F.resolution_at(freq, curve, 0.143) == pytest.approx(60 / (3 + 0.57))
    assert F.resolution_at(freq, np.ones(6), 0.143) == pytest.approx(12.0)  # Nyquist


def test_mask_correction_removes_what_the_mask_adds_to_noise(truth):
    """Signal only below 16 Å, independent noise everywhere: beyond 14 Å the unmasked FSC
    is ~0, a tight sharp mask raises it (measured 0.55-0.9), and the phase-randomised
    correction brings it back to ~0 (measured |mean| 0.01, each shell within ±0.15)."""
    rng = np.random.default_rng(1)
    k = np.fft.fftfreq(BOX, PIXEL_A)
    s = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    low = np.fft.ifftn(np.fft.fftn(truth) * (s < 1 / 16)).real
    halves = [low + 0.2 * truth.std() * rng.normal(size=truth.shape) for _ in (1, 2)]
    mask = F.soft_sphere_mask(BOX, 12, edge_px=0)
    res = F.masked_fsc_corrected(*halves, mask, PIXEL_A)
    high = res["frequency"] > 1 / 14
    assert np.abs(res["unmasked"][high]).max() < 0.05
    assert res["masked"][high].min() > 0.4  # the mask's own correlation
    assert abs(res["corrected"][high].mean()) < 0.05
    assert np.abs(res["corrected"][high]).max() < 0.25
    low_shells = res["frequency"] <= 1 / res["randomise_from_A"]
    np.testing.assert_array_equal(res["corrected"][low_shells], res["masked"][low_shells])


def test_guinier_fit_finds_an_applied_b_factor(truth):
    """Blurring by B = 150 Å² (the formula above) changes the fitted B by −150 ± 10."""
    before = F.guinier_bfactor(truth, PIXEL_A, 20.0, 9.0)["bfactor_A2"]
    after = F.guinier_bfactor(apply_b(truth, PIXEL_A, 150.0), PIXEL_A, 20.0, 9.0)["bfactor_A2"]
    assert after - before == pytest.approx(-150.0, abs=10.0)


def test_sharpening_undoes_a_blur(truth):
    blurred = apply_b(truth, PIXEL_A, 200.0)
    back = F.sharpen(blurred, PIXEL_A, -200.0)
    np.testing.assert_allclose(back, truth, atol=1e-3 * np.abs(truth).max())


def test_soft_masks(truth):
    sphere = F.soft_sphere_mask(BOX, 10, edge_px=4)
    c = BOX // 2
    assert sphere[c, c, c] == 1 and sphere[c, c, c + 10] == 1 and sphere[c, c, c + 14] == 0
    assert 0 < sphere[c, c, c + 12] < 1
    mask = F.soft_mask_from_map(truth, 0.1 * truth.max())
    assert mask.max() == 1 and mask.min() == 0
    assert (mask * np.abs(truth)).sum() > 0.99 * np.abs(truth).sum()


def _volume_run(project, folder: Path, maps: list, halves: list[int]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_mrc(folder / f"map{i}.mrc", m, PIXEL_A) for i, m in enumerate(maps)]
    run = project.create_run("test.volumes", "maps")
    project.begin_attempt(run.id, ("saved",))
    project.transition(run.id, ("launched",), "running", attempt=1)
    writer = project.create_set(run.id, "volumes", "hpcem.SetOfVolumes")
    writer.append_columns(
        {
            "image": [str(p) for p in paths],
            "pixel_size_A": [PIXEL_A] * len(maps),
            "box_size": [BOX] * len(maps),
            "half": halves,
        }
    )
    writer.close()
    project.set_output(run.id, "volumes", "hpcem.SetOfVolumes", len(maps))
    project.controller_commit(run.id, 1, state="finished")
    return f"{run.id}:volumes"


@pytest.mark.slow  # ~11 s: two runs
def test_protocol_half_maps_masked_and_against_a_reference(project, tmp_path, halves, truth):
    vols = _volume_run(project, tmp_path / "h", [0.5 * (halves[0] + halves[1]), *halves], [0, 1, 2])
    run = lifecycle.create_run(
        project, "validate.fsc", {"mask_radius_A": 70.0, "seed": 5}, {"volumes": [vols]}
    )
    lifecycle.launch(project, run.id, foreground=True)
    rec = project.run(run.id)
    assert rec.state == "finished", rec.error
    fsc = project.open_set(run.id, "fsc").read_columns()
    assert fsc["label"].tolist()[:2] == ["corrected", "unmasked"]
    # the run's seed drives the phase randomisation: the same curve as the library's
    mask = F.soft_sphere_mask(BOX, 70.0 / PIXEL_A, 12.0 / PIXEL_A)
    seeded = F.masked_fsc_corrected(*halves, mask, PIXEL_A, seed=5)["corrected"]
    np.testing.assert_allclose(fsc["fsc"][0], seeded, atol=1e-5)
    _, unmasked = F.fsc_curve(*halves, PIXEL_A)
    np.testing.assert_allclose(fsc["fsc"][1], unmasked, atol=1e-5)
    steps = {s["name"]: s for s in project.read_steps(run.id).to_records()}
    result = steps["validate"]["result"]
    assert result["resolution_A"] == pytest.approx(float(fsc["resolution_A"][0]), rel=1e-5)
    sharpened = read_image(
        Path(project.path) / str(project.open_set(run.id, "volumes").column("image")[0])
    )
    assert sharpened.shape == (BOX,) * 3
    # Against a reference: the map vs the truth, read at 0.5.
    ref = _volume_run(project, tmp_path / "t", [truth], [0])
    run = lifecycle.create_run(project, "validate.fsc", {}, {"volumes": [vols], "reference": [ref]})
    lifecycle.launch(project, run.id, foreground=True)
    assert project.run(run.id).state == "finished", project.run(run.id).error
    fsc = project.open_set(run.id, "fsc").read_columns()
    assert fsc["label"].tolist() == ["reference"]
    expected = fsc_by_definition(0.5 * (halves[0] + halves[1]), truth)
    np.testing.assert_allclose(fsc["fsc"][0], expected, atol=1e-5)


def test_protocol_refuses_volumes_without_half_maps(project, tmp_path, truth):
    from hpcem.errors import ValidationError

    vols = _volume_run(project, tmp_path / "one", [truth], [0])
    with pytest.raises(ValidationError, match="no half maps 1 and 2"):
        lifecycle.create_run(project, "validate.fsc", {}, {"volumes": [vols]})


def test_corrected_resolution_agrees_with_relion_postprocess(tmp_path, halves):
    """RELION's relion_postprocess with the same soft mask: its final (corrected)
    resolution and ours within one shell (measured: identical to 0.1 Å)."""
    if shutil.which("relion_postprocess") is None:
        pytest.skip("relion_postprocess is not installed (apt-get install relion)")
    import subprocess

    import starfile

    mask = F.soft_sphere_mask(BOX, 15, edge_px=3)
    for name, data in (("h1.mrc", halves[0]), ("h2.mrc", halves[1]), ("mask.mrc", mask)):
        write_mrc(tmp_path / name, data, PIXEL_A)
    subprocess.run(
        [
            "relion_postprocess",
            "--i",
            "h1.mrc",
            "--i2",
            "h2.mrc",
            "--mask",
            "mask.mrc",
            "--angpix",
            str(PIXEL_A),
            "--o",
            "pp",
            "--adhoc_bfac",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    star = starfile.read(tmp_path / "pp.star")
    theirs = float(star["general"]["rlnFinalResolution"])
    ours = F.resolution_at(*_corrected(halves, mask), F.HALF_MAP_THRESHOLD)
    shell = BOX * PIXEL_A
    assert abs(shell / ours - shell / theirs) <= 1.0, (ours, theirs)


def _corrected(halves, mask):
    res = F.masked_fsc_corrected(*halves, mask, PIXEL_A)
    return res["frequency"], res["corrected"]
