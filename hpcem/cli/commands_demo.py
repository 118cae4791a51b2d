"""``hpcem demo``: a whole small workflow on simulated data, on this machine.

Creates a project, simulates micrographs with known defocus, imports them, estimates
their CTF on the local executor (one step per micrograph, in parallel, with a progress
display), compares the estimates with the ground truth and prints ``hpcem status``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

DEMO_MARKER = ".hpcem-demo"


@click.command("demo")
@click.argument("path", default="hpcem-demo", required=False)
@click.option("--micrographs", "n", default=6, show_default=True, help="Micrographs to simulate.")
@click.option("--size", default=1024, show_default=True, help="Micrograph edge in pixels.")
@click.option(
    "--pixel-size-A", "pixel_size_A", default=1.2, show_default=True, help="Pixel size in Å."
)
@click.option("--workers", type=int, default=None, help="Local worker processes (default: cores).")
@click.option("--seed", default=2026, show_default=True, help="Random seed of the simulation.")
def demo_cmd(path, n, size, pixel_size_A, workers, seed):
    """Run the demo workflow in PATH (default ./hpcem-demo): simulate, import, estimate CTF.

    A folder left by an earlier demo is replaced; any other existing folder is refused.
    """
    import numpy as np

    from hpcem.cli.commands_runs import _print_table, _wait
    from hpcem.errors import HpcemError
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.runs import summarize
    from hpcem.io.mrc import write_mrc
    from hpcem.sim.micrograph import simulate_micrograph
    from hpcem.store import Project

    root = Path(path).resolve()
    if root.exists():
        if not (root / DEMO_MARKER).exists():
            raise HpcemError(f"{root} exists and is not an earlier demo; give another PATH")
        shutil.rmtree(root)
    project = Project.create(root)
    (root / DEMO_MARKER).write_text("made by 'hpcem demo'; safe to delete\n")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(seed)
    truth = {}
    click.echo(f"simulating {n} micrographs of {size}x{size} px at {pixel_size_A} Å/px ...")
    for i in range(n):
        defocus_u = float(rng.uniform(9000, 30000))
        defocus_v = defocus_u - float(rng.uniform(0, 1500))
        angle = float(rng.uniform(0, 180))
        image, _truth = simulate_micrograph(
            (size, size),
            pixel_size_A=pixel_size_A,
            defocus_u_A=defocus_u,
            defocus_v_A=defocus_v,
            angle_deg=angle,
            seed=seed + i,
        )
        name = f"mic_{i:03d}.mrc"
        write_mrc(raw / name, image, pixel_size_A)
        truth[name] = {"defocus_u": defocus_u, "defocus_v": defocus_v, "defocus_angle": angle}
    (raw / "ground_truth.json").write_text(json.dumps(truth, indent=1))

    imp = lifecycle.create_run(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": pixel_size_A},
        label="import simulated micrographs",
    )
    lifecycle.launch(project, imp.id, workers)
    click.echo(f"run {imp.id}: import.micrographs")
    _wait(project, imp.id)
    ctf = lifecycle.create_run(
        project,
        "ctf.estimate",
        {},
        {"micrographs": [f"{imp.id}:micrographs"]},
        label="estimate CTF",
    )
    lifecycle.launch(project, ctf.id, workers)
    click.echo(f"run {ctf.id}: ctf.estimate (one step per micrograph)")
    _wait(project, ctf.id)

    mics = project.open_set(imp.id, "micrographs")
    names = {int(i): Path(p).name for i, p in zip(mics.column("id"), mics.column("image"))}
    ctfs = project.open_set(ctf.id, "ctfs").read_columns()
    click.echo("\nestimated vs true defocus (Å):")
    click.echo(
        f"  {'micrograph':14s} {'true U':>8s} {'est. U':>8s} {'true V':>8s} {'est. V':>8s}"
        f" {'error':>6s}"
    )
    errors = []
    for mid, u, v in zip(ctfs["micrograph_id"], ctfs["defocus_u"], ctfs["defocus_v"]):
        t = truth[names[int(mid)]]
        err = abs((u + v) / 2 - (t["defocus_u"] + t["defocus_v"]) / 2) / (
            (t["defocus_u"] + t["defocus_v"]) / 2
        )
        errors.append(err)
        click.echo(
            f"  {names[int(mid)]:14s} {t['defocus_u']:8.0f} {u:8.0f} {t['defocus_v']:8.0f}"
            f" {v:8.0f} {100 * err:5.1f}%"
        )
    click.echo(f"  mean defocus error {100 * float(np.mean(errors)):.2f}%\n")
    _print_table(project, [summarize(r) for r in project.runs])


COMMANDS = [demo_cmd]
