"""``relion.autopick_ref`` with the real relion_autopick on simulated micrographs.

References: projections of the simulator's volume from a few directions (white
particles, as RELION's class averages of contrast-inverted particles are), given as 2D
class averages at twice the micrographs' pixel size (RELION rescales them with
``--angpix_ref``), or the volume itself as a 3D reference that RELION projects. Picks
are matched to the simulator's true particle centres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from relion_helpers import PIXEL_A, _finish, _finished_run, need_relion, simulate_micrographs

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.io import read_header, read_image, write_mrc
from hpcem.picking.evaluate import match_picks, pooled, truth_xy
from hpcem.store.ragged import Ragged

REF_PIXEL_A, REF_BOX = 3.0, 64
PARAMS = {
    "particle_diameter_A": 150.0,
    "angular_step_deg": 10.0,
    "lowpass_A": 20.0,
    "min_distance_A": 100.0,
}


def class_averages(project, folder: Path, sizes=(10, 10, 10, 10, 10, 0)) -> tuple[str, Path]:
    """A finished run whose ``classes`` are projections of the volume from six directions
    (white particles); the last class is empty (it must not be used)."""
    from hpcem.sim.projection import random_orientations
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, REF_PIXEL_A, REF_BOX)
    angles = random_orientations(np.random.default_rng(3), len(sizes))
    clean = np.fft.irfft2(volume.projector().project_ft(angles), s=(REF_BOX, REF_BOX))
    clean[-1] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_mrc(folder / "averages.mrcs", clean.astype(np.float32), REF_PIXEL_A,
                      kind="stack", overwrite=True)  # fmt: skip
    run = _finished_run(project, "test.classes", "class averages")
    writer = project.create_set(run, "classes", "hpcem.SetOfClasses2D")
    k = len(sizes)
    members, start = [], 0
    for size in sizes:
        members.append(list(range(start, start + size)))
        start += size
    writer.append_columns(
        {
            "representative": [str(stack)] * k,
            "representative_index": np.arange(k),
            "size": np.asarray(sizes),
            "member_ids": Ragged.from_list(members, "int64"),
        }
    )
    writer.close()
    project.set_output(run, "classes", "hpcem.SetOfClasses2D", k)
    _finish(project, run)
    return f"{run}:classes", stack


def _scores(project, run_id, sim, truth):
    coords = project.open_set(run_id, "coordinates").read_columns()
    mics = project.open_set(sim, "micrographs")
    radius_px = 0.5 * truth["volume"]["diameter_A"] / PIXEL_A
    scores = []
    for mid, image in zip(mics.column("id"), mics.column("image")):
        mine = coords["micrograph_id"] == mid
        xy = np.stack([coords["x"][mine], coords["y"][mine]], 1)
        scores.append(match_picks(xy, truth_xy(truth, Path(str(image)).name), radius_px))
    return pooled(scores)


@pytest.mark.slow  # about 20 s: two micrographs, five references at 10° in-plane steps
def test_class_averages_pick_the_true_particles(project, tmp_path, wait_for_run):
    need_relion("relion_autopick")
    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    refs, stack = class_averages(project, tmp_path / "refs")
    inputs = {"micrographs": [f"{sim}:micrographs"], "references": [refs]}
    with pytest.raises(ValidationError, match="symmetry 'X3'"):
        lifecycle.create_run(project, "relion.autopick_ref", PARAMS | {"symmetry": "X3"}, inputs)
    run = lifecycle.create_run(project, "relion.autopick_ref", PARAMS, inputs)
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=300)
    assert done.state == "finished", done.error
    score = _scores(project, run.id, sim, truth)
    # Measured: 47 of 48 true particles found, no false pick (precision 1.0, recall 0.98).
    assert score["precision"] >= 0.9 and score["recall"] >= 0.9, score
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    written = steps["references"]["result"]
    assert written["count"] == 5 and written["classes"] == [0, 1, 2, 3, 4]
    ref_stack = Path(project.path) / written["reference"]
    np.testing.assert_array_equal(read_image(ref_stack), read_image(stack)[:5])
    assert read_header(ref_stack).pixel_size_A == pytest.approx(REF_PIXEL_A)
    argv = steps["pick/000000"]["result"]["commands"][0]["argv"]
    assert argv[argv.index("--angpix_ref") + 1] == "3"
    assert argv[argv.index("--angpix") + 1] == f"{PIXEL_A:g}" and "--invert" in argv


@pytest.mark.slow  # about 30 s: a 3D reference projected at healpix order 0 (12 directions)
def test_a_3d_reference_picks_the_true_particles(project, tmp_path, wait_for_run):
    need_relion("relion_autopick")
    from refine_helpers import reference_volumes

    from hpcem.sim.volume import load_volume

    sim, truth = simulate_micrographs(project, wait_for_run, n_items=2)
    volume = load_volume(None, REF_PIXEL_A, REF_BOX)
    path = write_mrc(tmp_path / "map.mrc", volume.data.astype(np.float32), REF_PIXEL_A)
    refs = reference_volumes(project, path, REF_PIXEL_A, REF_BOX)
    params = PARAMS | {"healpix_order": 0, "angular_step_deg": 20.0}
    run = lifecycle.create_run(
        project,
        "relion.autopick_ref",
        params,
        {"micrographs": [f"{sim}:micrographs"], "references": [refs]},
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=300)
    assert done.state == "finished", done.error
    score = _scores(project, run.id, sim, truth)
    # Measured: precision 1.0, recall 0.98 (47 of 48).
    assert score["precision"] >= 0.9 and score["recall"] >= 0.9, score
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    argv = steps["pick/000001"]["result"]["commands"][0]["argv"]
    assert argv[argv.index("--ref") + 1] == "reference.mrc"
    assert argv[argv.index("--healpix_order") + 1] == "0"
