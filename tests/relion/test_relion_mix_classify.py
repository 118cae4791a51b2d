"""Mix and match (issue 11, part 3): RELION classifies particles that hpcem extracted.

Simulated micrographs → hpcem's ``ctf.estimate`` → hpcem's ``picking.dog`` → hpcem's
``particles.extract`` (rescaled to 48 px) → RELION's ``relion.class2d``. Checked: every
particle extracted by hpcem is in exactly one RELION class, with its id, image, pick
position and hpcem's CTF unchanged (the CTF read back from RELION's own data STAR, so it
went through RELION), the class averages are the images RELION wrote and not empty,
and the classes' lineage leads back through every run to the simulation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from relion_helpers import need_relion, simulate_micrographs

from hpcem.convert.relion import read_particles
from hpcem.execution import runs as lifecycle
from hpcem.io import read_image


def _run(project, wait_for_run, name, params, inputs):
    run = lifecycle.create_run(project, name, params, inputs)
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=300)
    assert done.state == "finished", (name, done.error)
    return run.id


@pytest.mark.slow  # about 75 s on the shared machine: five runs; relion_refine on 42 particles
def test_relion_classifies_particles_extracted_by_hpcem(project, wait_for_run):
    need_relion("relion_refine")
    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    mics = {"micrographs": [f"{sim}:micrographs"]}
    diameter_A = truth["volume"]["diameter_A"]
    ctf = _run(project, wait_for_run, "ctf.estimate", {}, mics)
    dog = _run(project, wait_for_run, "picking.dog", {"diameter_A": diameter_A}, mics)
    ext = _run(
        project,
        wait_for_run,
        "particles.extract",
        {"box_size_px": 128, "rescaled_box_px": 48},
        {"coordinates": [f"{dog}:coordinates"], "ctfs": [f"{ctf}:ctfs"], **mics},
    )
    cls = _run(
        project,
        wait_for_run,
        "relion.class2d",
        {
            "classes": 2,
            "iterations": 3,
            "particle_diameter_A": 160.0,
            "psi_step_deg": 10.0,
            "offset_step_px": 2.0,
            "threads": 2,
        },
        {"particles": [f"{ext}:particles"]},
    )
    extracted = project.open_set(ext, "particles").read_columns()
    out = project.open_set(cls, "particles").read_columns()
    classes = project.open_set(cls, "classes")
    ccols = classes.read_columns()
    n = len(extracted["id"])
    picks = project.open_set(dog, "coordinates").column("id")
    # The DoG picks became particles, but for boxes crossing the micrograph edge
    # (measured: 42 of 48 picks; 48 true particles).
    assert set(extracted["id"].tolist()) <= set(picks.tolist()) and n >= 0.75 * len(picks)
    # Every hpcem particle is in exactly one class; ids, images, positions unchanged.
    assert out["id"].tolist() == extracted["id"].tolist()
    assert np.isin(out["class_id"], ccols["id"]).all()
    members = np.concatenate([np.asarray(m) for m in ccols["member_ids"]])
    assert sorted(members.tolist()) == sorted(extracted["id"].tolist())
    for key in ("image_index", "micrograph_id", "coord_x", "coord_y"):
        np.testing.assert_array_equal(out[key], extracted[key])
    # hpcem's CTFs went through RELION unchanged: in RELION's own data STAR and back.
    steps = {r["name"]: r for r in project.read_steps(cls).to_records()}
    data = read_particles(Path(project.path) / steps["register"]["result"]["data_star"])
    ctfs = project.open_set(ctf, "ctfs").read_columns()
    row = {int(m): k for k, m in enumerate(ctfs["micrograph_id"])}
    for key in ("defocus_u", "defocus_v", "defocus_angle"):
        expected = np.asarray([ctfs[key][row[int(m)]] for m in extracted["micrograph_id"]])
        np.testing.assert_allclose(data.columns[key], expected, rtol=1e-6, atol=1e-3)
        np.testing.assert_array_equal(out[key], extracted[key])
    # The class averages: RELION's last stack, one non-empty image per populated class.
    stack = Path(project.path) / str(ccols["representative"][0])
    assert stack.name == "run_it003_classes.mrcs"
    averages = read_image(stack)
    assert averages.shape == (2, 48, 48)
    for k, size in enumerate(ccols["size"]):
        if size:
            assert averages[k].std() > 0
    # Lineage: classes <- hpcem's particles <- the DoG picks, the micrographs, the CTFs.
    assert classes.lineage["inputs"] == [f"{ext}:particles"]
    assert set(project.open_set(ext, "particles").lineage["inputs"]) == {
        f"{dog}:coordinates",
        f"{sim}:micrographs",
        f"{ctf}:ctfs",
    }
