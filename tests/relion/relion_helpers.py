"""Shared set-up of the RELION protocol tests: simulated micrographs in a project, fake
RELION programs and site configs that point at them."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from hpcem.execution import runs as lifecycle

PIXEL_A = 1.5
SIZE_PX = 768


def need_relion(*programs: str) -> None:
    """Skip the calling test when a RELION program is not installed here."""
    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (Debian/Ubuntu: apt-get install relion)")


def simulate_micrographs(project, wait_for_run, n_items=2, seed=1, **params) -> tuple[int, dict]:
    """A finished ``sim.dataset`` run of micrographs; returns (run id, its ground truth)."""
    run = lifecycle.create_run(
        project,
        "sim.dataset",
        {
            "kind": "micrographs",
            "n_items": n_items,
            "size_px": SIZE_PX,
            "pixel_size_A": PIXEL_A,
            "seed": seed,
            **params,
        },
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    truth_json = steps["register"]["result"]["ground_truth"][0]
    truth = json.loads((Path(project.path) / truth_json).read_text())
    return run.id, truth


def fake_program(folder: Path, name: str, version: str = "3.1.3", body: str = "") -> Path:
    """An executable script ``folder/name`` that answers ``--version`` like RELION and
    otherwise runs the shell ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "RELION version: {version} "; '
        'echo "Precision: BASE=double"; exit 0; fi\n' + body + "\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def site_file(folder: Path, programs: dict[str, str]) -> Path:
    """A local site config (a copy of localhost's) whose ``[programs]`` is ``programs``;
    its path works as a site name."""
    from hpcem.cluster.site import find_site_file

    text = find_site_file("localhost").read_text()
    text = text.replace('name = "localhost"', 'name = "relion-test"')
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in programs.items())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "relion-test.toml"
    path.write_text(text + f"\n[programs]\n{table}\n")
    return path
