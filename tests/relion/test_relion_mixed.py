"""Mix and match (issue 11, part 3): hpcem and RELION steps in one traceable workflow.

Simulated micrographs → hpcem's ``ctf.estimate``; hpcem's ``picking.dog`` **and**
RELION's ``relion.autopick_log`` → hpcem's ``picking.consensus`` → ``relion.extract``
with hpcem's CTFs. The final particles are checked against the simulator's truth
(picking precision, recall and F1 after the consensus) and the CTFs against
``ctf.estimate``'s output (carried through RELION unchanged), and the lineage of the
particle set leads back through every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from relion_helpers import PIXEL_A, need_relion, simulate_micrographs

from hpcem.execution import runs as lifecycle
from hpcem.picking.evaluate import match_picks, pooled, truth_xy


def _run(project, wait_for_run, name, params, inputs):
    run = lifecycle.create_run(project, name, params, inputs)
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=240)
    assert done.state == "finished", (name, done.error)
    return run.id


@pytest.mark.slow  # about 40 s: six runs, each with its controller and workers
def test_hpcem_and_relion_picks_consensus_then_relion_extraction(project, wait_for_run):
    need_relion("relion_autopick", "relion_preprocess")
    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    mics = {"micrographs": [f"{sim}:micrographs"]}
    diameter_A = truth["volume"]["diameter_A"]
    ctf = _run(project, wait_for_run, "ctf.estimate", {}, mics)
    dog = _run(project, wait_for_run, "picking.dog", {"diameter_A": diameter_A}, mics)
    log = _run(
        project,
        wait_for_run,
        "relion.autopick_log",
        {"diameter_min_A": 110.0, "diameter_max_A": 150.0},
        mics,
    )
    both = _run(
        project,
        wait_for_run,
        "picking.consensus",
        {"diameter_A": diameter_A},
        {"coordinates": [f"{dog}:coordinates", f"{log}:coordinates"], **mics},
    )
    ext = _run(
        project,
        wait_for_run,
        "relion.extract",
        {"box_size_px": 96},
        {"coordinates": [f"{both}:coordinates"], "ctfs": [f"{ctf}:ctfs"], **mics},
    )
    particles = project.open_set(ext, "particles")
    cols = particles.read_columns()
    micrographs = project.open_set(sim, "micrographs")
    radius_px = 0.5 * diameter_A / PIXEL_A
    per_picker = {}
    for name, run in (("dog", dog), ("log", log), ("consensus", both)):
        coords = project.open_set(run, "coordinates").read_columns()
        scores = []
        for mid, image in zip(micrographs.column("id"), micrographs.column("image")):
            mine = coords["micrograph_id"] == mid
            xy = np.stack([coords["x"][mine], coords["y"][mine]], 1)
            scores.append(match_picks(xy, truth_xy(truth, Path(str(image)).name), radius_px))
        per_picker[name] = pooled(scores)
    # Measured (seed 1, 48 true particles): picking.dog precision 1.0, recall 1.0;
    # RELION's LoG precision 0.58 (35 blobs of noise), recall 1.0; their consensus
    # precision 1.0, recall 1.0. The consensus must keep what both found and drop what
    # only LoG saw.
    consensus, relion_log = per_picker["consensus"], per_picker["log"]
    assert consensus["precision"] > relion_log["precision"], per_picker
    assert consensus["recall"] >= 0.95 and consensus["f1"] >= 0.9, per_picker
    # Every consensus pick became a particle, with its coordinate's id and position.
    coords = project.open_set(both, "coordinates").read_columns()
    assert sorted(cols["id"].tolist()) == sorted(coords["id"].tolist())
    # hpcem's CTFs reach the particles unchanged through RELION.
    ctfs = project.open_set(ctf, "ctfs").read_columns()
    row = {int(m): k for k, m in enumerate(ctfs["micrograph_id"])}
    for key, src in (("defocus_u", "defocus_u"), ("defocus_v", "defocus_v")):
        np.testing.assert_array_equal(
            cols[key], [ctfs[src][row[int(m)]] for m in cols["micrograph_id"]]
        )
    np.testing.assert_array_equal(
        cols["defocus_angle"], [ctfs["defocus_angle"][row[int(m)]] for m in cols["micrograph_id"]]
    )
    # Lineage: the particles come from the consensus, the micrographs and the CTFs.
    assert set(particles.lineage["inputs"]) == {
        f"{both}:coordinates",
        f"{sim}:micrographs",
        f"{ctf}:ctfs",
    }
