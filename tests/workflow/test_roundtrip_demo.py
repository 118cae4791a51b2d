"""The issue's test: export the demo workflow, import it into a fresh project with a
different simulated dataset, run it, and check the outputs against that dataset's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

SIZE, MOVIES, FRAMES = 512, 2, 8


def _workflow(args: list[str]) -> tuple[int, str]:
    """Run ``hpcem workflow ...`` (the module's commands, as the CLI registers them)."""
    import click
    from click.testing import CliRunner

    from hpcem.cli.commands_workflow import COMMANDS

    group = click.Group("hpcem", commands={c.name: c for c in COMMANDS})
    result = CliRunner().invoke(group, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.slow
def test_demo_roundtrip_on_another_dataset(tmp_path, capsys):
    from hpcem.cli.main import main
    from hpcem.io import write_mrc
    from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset
    from hpcem.store import Project

    demo = tmp_path / "demo"
    args = ["--movies", str(MOVIES), "--size", str(SIZE), "--frames", str(FRAMES)]
    assert main(["demo", str(demo), *args, "--workers", "2"]) == 0
    wf = tmp_path / "wf.json"
    assert _workflow(["workflow", "export", str(demo), "-o", str(wf)])[0] == 0
    doc = json.loads(wf.read_text())
    assert [r["protocol"] for r in doc["runs"]][:2] == ["import.movies", "motion.align"]

    # Another dataset: other seed, pixel size and dose, in another folder.
    data = tmp_path / "other_data"
    config = DatasetConfig(
        kind="movies",
        n_items=MOVIES,
        size_px=SIZE,
        pixel_size_A=1.1,
        n_frames=FRAMES,
        dose_per_frame_e_A2=2.0,
        seed=99,
    )
    truth = simulate_dataset(data, config)
    volume = dataset_volume(config)
    write_mrc(data / "reference.mrc", volume.data, volume.pixel_size_A, overwrite=True)
    target = Project.create(tmp_path / "target")
    capsys.readouterr()
    code, output = _workflow(
        [
            "workflow",
            "import",
            str(target.path),
            str(wf),
            "--run",
            "--workers",
            "2",
            "--set",
            f"files_1={data}/movie_*.mrc",
            "--set",
            "pixel_size_A_1=1.1",
            "--set",
            "dose_per_frame_e_A2=2.0",
            "--set",
            f"files_6={data}/reference.mrc",
            "--set",
            f"pixel_size_A_6={volume.pixel_size_A}",
        ]
    )
    assert code == 0, output
    old, new = Project(demo).runs, target.runs
    assert [r.protocol for r in new] == [r.protocol for r in old]
    assert all(r.state == "finished" for r in new)
    # Same graph: every input points at the run in the same position.
    pos_old = {r.id: i for i, r in enumerate(old)}
    pos_new = {r.id: i for i, r in enumerate(new)}
    for a, b in zip(old, new):
        shape = {
            k: [(pos_old[int(x.split(":")[0])], x.split(":")[1]) for x in v]
            for k, v in a.inputs.items()
        }
        assert shape == {
            k: [(pos_new[int(x.split(":")[0])], x.split(":")[1]) for x in v]
            for k, v in b.inputs.items()
        }
        assert set(a.output_types) == set(b.output_types)
    by = {r.protocol: r for r in new}
    assert by["import.movies"].params["pixel_size_A"] == pytest.approx(1.1)
    # Figures against the NEW dataset's truth.
    true_u = sorted(item["defocus_u"] for item in truth["items"])
    ctfs = target.open_set(by["ctf.estimate"].id, "ctfs").read_columns()
    assert np.allclose(sorted(ctfs["defocus_u"]), true_u, rtol=0.03)
    parts = target.open_set(by["particles.extract"].id, "particles")
    assert len(parts) >= 2
    assert parts.optics["pixel_size_A"][0] == pytest.approx(2.2, rel=0.05)  # 1.1 Å binned 2x
