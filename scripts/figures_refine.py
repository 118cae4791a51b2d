#!/usr/bin/env python
"""Make the picture of the ``refine.projmatch`` page from a real hpcem run on simulated
data.

    python scripts/figures_refine.py [--out-dir docs]

One project in a temporary folder: 1,000 particles of 64 px at 2.8 Å/px, projections of
the shipped PDB 7DDO model at uniformly random orientations and shifts (±2 px), each with
its own CTF (300 kV, Cs 2.7 mm, defocus 1.0-2.5 µm, astigmatism), SNR 0.1
(:mod:`hpcem.reconstruct.simulate`), stored as a particle set without poses or half
sets; the initial model, imported as a volume set, is the true map low-passed to 30 Å.
``refine.projmatch`` runs with its defaults. Writes ``protocols/img/refine_projmatch.png``:
central sections of the truth, the initial model and the refined map, the gold-standard
FSC of every iteration and the final map's FSC against the truth, and the histogram of
the angular errors against the true poses. Prints the numbers the page quotes. Fixed
seeds: the same picture.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PIXEL_A = 2.8
BOX = 64
N_PARTICLES = 1000
SNR = 0.1
INITIAL_LOWPASS_A = 30.0


def finished_run(project, name: str, output: str, set_type: str, columns, optics=None) -> str:
    rec = project.create_run(name, name)
    project.begin_attempt(rec.id, ("saved",))
    project.transition(rec.id, ("launched",), "running", attempt=1)
    writer = project.create_set(rec.id, output, set_type)
    if optics is not None:
        writer.set_optics(optics)
    writer.append_columns(columns)
    writer.close()
    project.set_output(rec.id, output, set_type, len(next(iter(columns.values()))))
    project.controller_commit(rec.id, 1, state="finished")
    return f"{rec.id}:{output}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpcem.execution.runs import create_run, launch
    from hpcem.io import read_image, write_mrc
    from hpcem.reconstruct.simulate import particle_columns, simulate_particles
    from hpcem.refine.orientations import rotation_angles_deg
    from hpcem.refine.projmatch import lowpass_map
    from hpcem.sim.projection import euler_matrices
    from hpcem.sim.volume import load_volume
    from hpcem.store import Project
    from hpcem.validate.fsc import fsc_curve, resolution_at

    volume = load_volume(None, PIXEL_A, BOX)
    sim = simulate_particles(volume, N_PARTICLES, snr=SNR, seed=21, max_shift_px=2.0)
    initial = lowpass_map(volume.data, PIXEL_A, INITIAL_LOWPASS_A)
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "proj")
        stack = write_mrc(Path(tmp) / "particles.mrcs", sim["images"], PIXEL_A, kind="stack")
        columns, optics = particle_columns(sim, str(stack))
        for key in ("rot", "tilt", "psi", "shift_x", "shift_y"):
            columns[key] = np.zeros(N_PARTICLES)
        columns["half_set"] = np.zeros(N_PARTICLES, dtype=np.int8)
        particles = finished_run(
            project, "figures.particles", "particles", "hpcem.SetOfParticles", columns, optics
        )
        path = write_mrc(Path(tmp) / "initial.mrc", initial, PIXEL_A, kind="volume")
        reference = finished_run(
            project,
            "figures.volumes",
            "volumes",
            "hpcem.SetOfVolumes",
            {"image": [str(path)], "pixel_size_A": [PIXEL_A], "box_size": [BOX], "half": [0]},
        )
        record = create_run(
            project, "refine.projmatch", {}, {"particles": [particles], "reference": [reference]}
        )
        started = time.perf_counter()
        done = launch(project, record.id, 2, foreground=True)
        wall = time.perf_counter() - started
        if done.state != "finished":
            raise SystemExit(f"refine.projmatch ended {done.state}: {done.error}")
        steps = {s["name"]: s for s in project.read_steps(record.id).to_records()}
        result = steps["refine"]["result"]
        cols = project.open_set(record.id, "particles").read_columns()
        vols = project.open_set(record.id, "volume").read_columns()
        full = read_image(Path(project.path) / str(vols["image"][0]))

    found = euler_matrices(np.stack([cols["rot"], cols["tilt"], cols["psi"]], axis=1))
    errors = rotation_angles_deg(found, euler_matrices(sim["angles"]))
    freq, truth_fsc = fsc_curve(full, volume.data, PIXEL_A)
    truth_res = resolution_at(freq, truth_fsc, 0.5)
    _, start_fsc = fsc_curve(initial, volume.data, PIXEL_A)
    start_res = resolution_at(freq, start_fsc, 0.5)

    fig = plt.figure(figsize=(12, 6.4), dpi=100)
    grid = fig.add_gridspec(2, 4)
    c = BOX // 2
    for i, (title, data) in enumerate(
        (
            ("true map", volume.data),
            (f"initial model ({INITIAL_LOWPASS_A:g} Å)", initial),
            ("refined map (unfiltered)", full),
        )
    ):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(data[c], cmap="gray")
        ax.set_title(f"{title}, central z section", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 3])
    ax.hist(np.clip(errors, 0, 60), bins=30, color="tab:blue")
    ax.set_xlabel("angular error vs truth (°; ≥ 60 at 60)")
    ax.set_ylabel("particles")
    ax.set_title(f"median {np.median(errors):.1f}°", fontsize=9)
    ax = fig.add_subplot(grid[1, :])
    for h in result["history"]:
        ax.plot(
            freq,
            h["fsc"],
            lw=1.2,
            label=f"it {h['iteration']} {h['search']} {h['step_deg']:g}°: "
            f"{h['resolution_A']:.1f} Å (0.143)",
        )
    ax.plot(freq, truth_fsc, "k--", lw=1.6, label=f"final map vs truth: {truth_res:.1f} Å (0.5)")
    ax.plot(
        freq,
        start_fsc,
        ":",
        color="grey",
        lw=1.4,
        label=f"initial model vs truth: {start_res:.1f} Å (0.5)",
    )
    for t in (0.143, 0.5):
        ax.axhline(t, color="grey", lw=0.6)
    ax.set_xlim(0, freq[-1])
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"refine.projmatch: {N_PARTICLES} simulated particles, {BOX} px at {PIXEL_A} Å/px, "
        f"SNR {SNR}",
        fontsize=11,
    )
    fig.tight_layout()
    out = Path(args.out_dir) / "protocols" / "img" / "refine_projmatch.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    print(
        f"particles {N_PARTICLES}; median angular error {np.median(errors):.2f}°, "
        f"90th percentile {np.percentile(errors, 90):.1f}°; gold-standard "
        f"{result['resolution_A']:.2f} Å; vs truth {truth_res:.2f} Å (initial "
        f"{start_res:.2f} Å); iterations {result['iterations_run']} "
        f"(converged {result['converged']}); refine step {result['refine_s']:.1f} s, "
        f"run {wall:.1f} s"
    )
    for h in result["history"]:
        print({k: v for k, v in h.items() if k != "fsc"})


if __name__ == "__main__":
    main()
