"""``hpcem demo --full``: movies → pre-processing → refine.projmatch → a map, checked
against the simulation's truth (smaller settings than the command's defaults)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

MOVIES, SIZE, FRAMES, ITERATIONS = 3, 1536, 4, 4


@pytest.mark.slow  # ~60-90 s on 2 cores: a whole demo
def test_demo_full_makes_a_map_close_to_the_truth(tmp_path, capsys):
    from hpcem.cli.main import main
    from hpcem.io import read_image
    from hpcem.sim.volume import volume_from_map
    from hpcem.store import Project
    from hpcem.validate.fsc import fsc_curve, resolution_at

    demo = tmp_path / "demo"
    args = ["--movies", str(MOVIES), "--size", str(SIZE), "--frames", str(FRAMES)]
    args += ["--iterations", str(ITERATIONS), "--workers", "2", "--full"]
    assert main(["demo", str(demo), *args]) == 0
    out = capsys.readouterr().out
    used = int(re.search(r"particles used: (\d+)", out).group(1))
    assert used > 150
    error = float(re.search(r"median angular error vs the true poses: ([\d.]+)°", out).group(1))
    assert error < 12.0, out
    plot = Path(re.search(r"FSC plot: (\S+)", out).group(1))
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The map against the true map, computed here from the files.
    project = Project(demo)
    refine = [r for r in project.runs if r.protocol == "refine.projmatch"][-1]
    vols = project.open_set(refine.id, "volume").read_columns(["image", "half", "pixel_size_A"])
    full = read_image(demo / str(vols["image"][list(vols["half"]).index(0)]))
    pixel = float(vols["pixel_size_A"][0])
    truth = volume_from_map(demo / "raw" / "reference.mrc", pixel, full.shape[0], 1.0).data
    freq, curve = fsc_curve(full, truth, pixel)
    truth_res = resolution_at(freq, curve, 0.5)
    printed = float(re.search(r"against the true map \(FSC 0.5\): ([\d.]+) Å", out).group(1))
    assert abs(truth_res - printed) < 0.1
    initial = float(re.search(r"the initial model: ([\d.]+) Å", out).group(1))
    assert truth_res < 0.75 * initial, (truth_res, initial)
    gold = float(re.search(r"FSC 0.143 of the half maps\): ([\d.]+) Å", out).group(1))
    assert abs(gold - truth_res) < 0.25 * truth_res, (gold, truth_res)
    assert np.isfinite(full).all()
