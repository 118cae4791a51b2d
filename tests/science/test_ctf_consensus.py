"""ctf.consensus: the closed-form 90° resolution against a brute-force search written
here, and the protocol on real runs (matching, thresholds, missing partners, optics)."""

import math

import numpy as np
import pytest

from hpcem.ctf.consensus import check_same_optics, consensus_resolution_A
from hpcem.execution import runs as lifecycle
from hpcem.io import write_mrc
from hpcem.sim import simulate_micrograph

LAMBDA_300KV_A = 0.0196875  # relativistic electron wavelength at 300 kV
CS_A = 2.7e7


def brute_force_resolution(a: dict, b: dict, amp_a: float, amp_b: float) -> float:
    """First k (fine polar grid) where max over azimuth |γ_a − γ_b| >= 90°, as 1/k (Å);
    γ = π λ Δf(α) k² − π Cs λ³ k⁴ / 2 + φ + arcsin A, Δf(α) = U cos²(α−θ) + V sin²(α−θ)."""
    alpha = np.linspace(0.0, np.pi, 3601)[:, None]

    def gamma(c, amp, kk):
        t = math.radians(c["defocus_angle"])
        df = c["defocus_u"] * np.cos(alpha - t) ** 2 + c["defocus_v"] * np.sin(alpha - t) ** 2
        return (
            math.pi * LAMBDA_300KV_A * df * kk**2
            - 0.5 * math.pi * CS_A * LAMBDA_300KV_A**3 * kk**4
            + math.radians(c.get("phase_shift", 0.0))
            + math.asin(amp)
        )

    def first_hit(k):
        diff = np.abs(gamma(a, amp_a, k[None, :]) - gamma(b, amp_b, k[None, :]))
        hit = np.flatnonzero(diff.max(axis=0) >= 0.5 * math.pi)
        return int(hit[0]) if hit.size else None

    # A 1e-2 1/Å grid brackets the first crossing; each bracket is searched again with
    # 100 times finer steps, down to 1e-8 1/Å.
    grid = np.arange(1e-4, 2.0, 1e-2)
    i = first_hit(grid)
    if i is None:
        return 0.0
    if i == 0:
        return 1.0 / grid[0]
    for _ in range(3):
        grid = np.linspace(grid[i - 1], grid[i], 101)
        i = max(first_hit(grid), 1)
    return 1.0 / grid[i]


def random_ctf(rng, mean):
    u, v = mean + rng.uniform(0, 800), mean - rng.uniform(0, 800)
    return {"defocus_u": u, "defocus_v": v, "defocus_angle": rng.uniform(0, 180)}


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_matches_brute_force_on_random_pairs(seed):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(8000, 35000)
    a = random_ctf(rng, mean)
    b = random_ctf(rng, mean + rng.uniform(-600, 600))
    if seed >= 4:  # a phase plate on one side and different amplitude contrasts
        a["phase_shift"] = rng.uniform(0, 40)
    amp_a, amp_b = (0.1, 0.07) if seed == 5 else (0.1, 0.1)
    exact = float(consensus_resolution_A(a, b, 300.0, amp_a, amp_b))
    # The brute-force k grid ends with a 1e-8 1/Å step (and 0.05° in azimuth).
    expected = brute_force_resolution(a, b, amp_a, amp_b)
    assert exact == pytest.approx(expected, rel=1e-5)


def test_identical_ctfs_never_differ_and_vectorised_call():
    a = {"defocus_u": np.array([15000.0, 9000.0]), "defocus_v": np.array([14000.0, 9000.0])}
    a["defocus_angle"] = np.array([10.0, 0.0])
    assert list(consensus_resolution_A(a, a, 300.0)) == [0.0, 0.0]
    b = {**a, "phase_shift": np.array([95.0, 0.0])}
    out = consensus_resolution_A(a, b, 300.0)
    assert out[0] == np.inf and out[1] == 0.0


def test_different_voltage_is_a_validation_problem():
    one = {"voltage_kV": [300.0], "spherical_aberration_mm": [2.7]}
    other = {"voltage_kV": [200.0], "spherical_aberration_mm": [2.7]}
    problems = check_same_optics(one, other, ("ctfs", "other_ctfs"))
    expected = (
        "different optics: voltage 300 kV (ctfs) vs 200 kV (other_ctfs); the CTFs of "
        "different microscopes cannot be compared"
    )
    assert problems == [expected]
    assert check_same_optics(one, dict(one)) == []


def _import(project, raw, wait_for_run, voltage=300.0):
    run = lifecycle.create_run(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": 1.5, "voltage_kV": voltage},
    )
    lifecycle.launch(project, run.id, workers=1)
    assert wait_for_run(project, run.id).state == "finished"
    return run


def _run(project, name, params, inputs, wait_for_run):
    run = lifecycle.create_run(project, name, params, inputs)
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=180)
    return run, done


@pytest.mark.slow
def test_consensus_protocol_end_to_end(project, tmp_path, wait_for_run, capsys):
    """ctf.estimate and ctf.fit2d on three micrographs (one only fitted by ctf.estimate,
    because ctf.fit2d's search range excludes it), then ctf.consensus."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, defocus in enumerate((12000.0, 16000.0, 30000.0)):
        image, _ = simulate_micrograph((768, 768), 1.5, defocus, defocus - 400, 30.0, seed=i)
        write_mrc(raw / f"m{i}.mrc", image, 1.5)
    imp = _import(project, raw, wait_for_run)
    mics = {"micrographs": [f"{imp.id}:micrographs"]}
    est, done = _run(project, "ctf.estimate", {}, mics, wait_for_run)
    assert done.state == "finished", done.error
    fit, done = _run(project, "ctf.fit2d", {"defocus_max_A": 22000.0}, mics, wait_for_run)
    assert done.state == "finished", done.error
    ids = [int(i) for i in imp.outputs["micrographs"].column("id")] if imp.outputs else None
    inputs = {"ctfs": [f"{est.id}:ctfs"], "other_ctfs": [f"{fit.id}:ctfs"]}
    con, done = _run(project, "ctf.consensus", {"resolution_A": 15.0}, inputs, wait_for_run)
    assert done.state == "finished", done.error
    result = {r["name"]: r for r in project.read_steps(con.id).to_records()}["compare"]["result"]
    accepted = project.open_set(con.id, "accepted").read_columns()
    rejected = project.open_set(con.id, "rejected").read_columns()
    assert result["accepted"] == len(accepted["id"]) == 2
    mid = int(rejected["micrograph_id"][0])
    assert result["rejected"] == [
        {"micrograph_id": mid, "reason": f"micrograph {mid} has no CTF in other_ctfs"}
    ]
    assert np.all(accepted["consensus_resolution"] < 15.0)
    assert list(accepted["estimator"]) == ["ctf.estimate"] * 2
    assert ids is None or mid == ids[2]
    # `hpcem status PROJECT RUN` shows the reason (it is in a step's result, not a step).
    from hpcem.cli.main import main

    capsys.readouterr()
    assert main(["status", str(project.path), str(con.id)]) == 0
    shown = capsys.readouterr().out
    assert "rejected items (1, reported by a step of the run)" in shown
    assert f"micrograph {mid} has no CTF in other_ctfs" in shown

    # A strict threshold rejects the pairs too, saying at which resolution they differ.
    con2, done = _run(project, "ctf.consensus", {"resolution_A": 0.5}, inputs, wait_for_run)
    steps = {r["name"]: r for r in project.read_steps(con2.id).to_records()}
    reasons = [r["reason"] for r in steps["compare"]["result"]["rejected"]]
    assert sum("coarser than resolution_A 0.5 Å" in r for r in reasons) == 2


@pytest.mark.slow
def test_consensus_refuses_sets_of_different_voltages(project, tmp_path, wait_for_run):
    from hpcem.errors import ValidationError

    runs = []
    for voltage in (300.0, 200.0):
        raw = tmp_path / f"raw{int(voltage)}"
        raw.mkdir()
        image, _ = simulate_micrograph((512, 512), 1.5, 15000.0, voltage_kV=voltage, seed=1)
        write_mrc(raw / "m.mrc", image, 1.5)
        imp = _import(project, raw, wait_for_run, voltage)
        est, done = _run(
            project, "ctf.estimate", {}, {"micrographs": [f"{imp.id}:micrographs"]}, wait_for_run
        )
        assert done.state == "finished", done.error
        runs.append(est)
    inputs = {"ctfs": [f"{runs[0].id}:ctfs"], "other_ctfs": [f"{runs[1].id}:ctfs"]}
    with pytest.raises(ValidationError, match="different optics: voltage 300 kV"):
        lifecycle.create_run(project, "ctf.consensus", {}, inputs)


def test_filters_give_their_reasons():
    from hpcem.protocols.ctf_consensus import _filter_reasons

    p = {
        "resolution_A": 15.0,
        "defocus_min_A": 10000.0,
        "defocus_max_A": 30000.0,
        "max_astigmatism_A": 500.0,
        "max_fit_resolution_A": 6.0,
    }
    good = {"defocus_u": 15300.0, "defocus_v": 14900.0, "fit_resolution": 4.2}
    assert _filter_reasons(p, good, 3.0) == []
    assert _filter_reasons(p, good, 15.0) == []  # at the threshold: accepted
    bad = {"defocus_u": 31000.0, "defocus_v": 9000.0, "fit_resolution": 8.0}
    assert _filter_reasons(p, bad, 27.34) == [
        "CTFs differ by 90° in phase at 27.3 Å, coarser than resolution_A 15 Å",
        "defocus 9000 Å below defocus_min_A 10000",
        "defocus 31000 Å above defocus_max_A 30000",
        "astigmatism 22000 Å above max_astigmatism_A 500",
        "fit resolution 8.0 Å coarser than max_fit_resolution_A 6",
    ]
    off = dict.fromkeys(p, 0.0) | {"resolution_A": 15.0}
    assert _filter_reasons(off, bad, float("inf")) == [
        "CTFs differ by 90° in phase at inf Å, coarser than resolution_A 15 Å"
    ]


@pytest.mark.slow
def test_real_krios_micrograph_through_both_protocols_and_consensus(
    project, tmp_path, wait_for_run, shared_file
):
    """The real Krios micrograph (MRC mode 6, 3710x3838 px) through import, both CTF
    protocols and the consensus: both fits agree (to better than 2 Å), each with its
    diagnostic PNG and its estimator's name."""
    import shutil as sh

    raw = tmp_path / "raw"
    raw.mkdir()
    sh.copyfile(shared_file("mrcfile-1.5.4/fei-extended.mrc"), raw / "krios.mrc")
    run = lifecycle.create_run(
        project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": 0.8538}
    )
    lifecycle.launch(project, run.id, workers=1)
    assert wait_for_run(project, run.id).state == "finished"
    mics = {"micrographs": [f"{run.id}:micrographs"]}
    fits = {}
    for name in ("ctf.estimate", "ctf.fit2d"):
        fit, done = _run(project, name, {}, mics, wait_for_run)
        assert done.state == "finished", done.error
        cols = project.open_set(fit.id, "ctfs").read_columns()
        assert list(cols["estimator"]) == [name]
        with open(cols["thumbnail"][0], "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"
        fits[name] = fit
    inputs = {"ctfs": [f"{fits['ctf.estimate'].id}:ctfs"]}
    inputs["other_ctfs"] = [f"{fits['ctf.fit2d'].id}:ctfs"]
    con, done = _run(project, "ctf.consensus", {}, inputs, wait_for_run)
    assert done.state == "finished", done.error
    accepted = project.open_set(con.id, "accepted").read_columns()
    assert len(accepted["id"]) == 1
    assert 0.0 < float(accepted["consensus_resolution"][0]) < 2.0
