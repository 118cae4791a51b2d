"""Branches: a run and its downstream runs copied with a changed parameter, rewired, run;
and the diff of the two branches' heads."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_branch_rewires_and_diff(tmp_path, project):
    from hpcem.execution import runs as lifecycle
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.workflow.branch import branch, diff
    from hpcem.workflow.load import wait_for

    truth = simulate_dataset(
        project.path / "raw", DatasetConfig(kind="micrographs", n_items=2, size_px=512, seed=3)
    )

    def run(protocol, params, inputs=None):
        rec = lifecycle.create_run(project, protocol, params, inputs or {})
        lifecycle.launch(project, rec.id, 2)
        assert wait_for(project, rec.id) == "finished", project.run(rec.id).error
        return rec

    imp = run(
        "import.micrographs", {"files": str(project.path / "raw" / "*.mrc"), "pixel_size_A": 1.0}
    )
    mics = {"micrographs": [f"{imp.id}:micrographs"]}
    est = run("ctf.estimate", {}, mics)
    fit = run("ctf.fit2d", {}, mics)
    con = run("ctf.consensus", {}, {"ctfs": [f"{est.id}:ctfs"], "other_ctfs": [f"{fit.id}:ctfs"]})

    new = branch(project, est.id, {"astigmatism": False}, run=True, workers=2)
    assert sorted(new) == [est.id, con.id]
    est2, con2 = project.run(new[est.id]), project.run(new[con.id])
    assert est2.params["astigmatism"] is False and est2.inputs == est.inputs
    # the copy of the consensus reads the new estimate and the old (unchanged) 2D fit
    assert con2.inputs == {"ctfs": [f"{est2.id}:ctfs"], "other_ctfs": [f"{fit.id}:ctfs"]}
    assert est2.state == con2.state == "finished"

    d = diff(project, est.id, est2.id)
    assert d["params"] == {"astigmatism": [True, False]}
    assert d["inputs"] == {}
    counts = d["outputs"]["ctfs"]["count"]
    assert counts == [2.0, 2.0]
    true_mean = sum((i["defocus_u"] + i["defocus_v"]) / 2 for i in truth["items"]) / 2
    for mean in d["outputs"]["ctfs"]["mean_defocus_A"]:
        assert mean == pytest.approx(true_mean, rel=0.03)
    d2 = diff(project, con.id, con2.id)
    assert d2["inputs"] == {"ctfs": [[f"{est.id}:ctfs"], [f"{est2.id}:ctfs"]]}
