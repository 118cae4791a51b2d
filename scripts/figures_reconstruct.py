#!/usr/bin/env python
"""Make the pictures of the ``reconstruct.fourier`` and ``validate.fsc`` pages from real
hpcem runs on simulated data.

    python scripts/figures_reconstruct.py [--out-dir docs] [--ranks 2]

One project in a temporary folder: 2,000 particles of 64 px at 2.4 Å/px, projections of
the shipped PDB 7DDO model at uniformly random orientations and shifts (±3 px), each with
its own CTF (300 kV, Cs 2.7 mm, defocus 1.0-2.5 µm, astigmatism), SNR 0.05, half sets
alternating (:mod:`hpcem.reconstruct.simulate`), stored as a particle set (standing in for
a refinement's output). ``reconstruct.fourier`` runs on ``--ranks`` MPI ranks; then
``validate.fsc`` on its half maps with a 70 Å soft sphere as the mask. Writes
``protocols/img/reconstruct_fourier.png`` (central sections of the true volume and of the
map, the gold-standard FSC of the run's ``fsc`` output and the FSC of the map against
the truth) and ``protocols/img/validate_fsc.png`` (the curves of ``validate.fsc``'s
``fsc`` output and a section of the sharpened map). Fixed seeds: the same pictures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PIXEL_A = 2.4
BOX = 64
N_PARTICLES = 2000
SNR = 0.05


def run(project, name: str, params: dict, inputs: dict):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, 2, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def particle_run(project, folder: Path, sim: dict) -> str:
    from hpcem.io import write_mrc
    from hpcem.reconstruct.simulate import particle_columns

    stack = write_mrc(folder / "particles.mrcs", sim["images"], PIXEL_A, kind="stack")
    columns, optics = particle_columns(sim, str(stack))
    rec = project.create_run("figures.particles", "simulated particles with known poses")
    project.begin_attempt(rec.id, ("saved",))
    project.transition(rec.id, ("launched",), "running", attempt=1)
    writer = project.create_set(rec.id, "particles", "hpcem.SetOfParticles")
    writer.set_optics(optics)
    writer.append_columns(columns)
    writer.close()
    project.set_output(rec.id, "particles", "hpcem.SetOfParticles", len(sim["images"]))
    project.controller_commit(rec.id, 1, state="finished")
    return f"{rec.id}:particles"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", default=str(REPO / "docs"))
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpcem.io import read_image
    from hpcem.reconstruct.simulate import simulate_particles
    from hpcem.sim.volume import load_volume
    from hpcem.store import Project
    from hpcem.validate.fsc import fsc_curve, resolution_at

    img = Path(args.out_dir) / "protocols" / "img"
    img.mkdir(parents=True, exist_ok=True)
    truth = load_volume(None, PIXEL_A, BOX)
    sim = simulate_particles(truth, N_PARTICLES, snr=SNR, seed=5)
    with tempfile.TemporaryDirectory(prefix="figures-recon-") as tmp:
        project = Project.create(Path(tmp) / "proj")
        particles = particle_run(project, Path(tmp), sim)
        recon = run(
            project, "reconstruct.fourier", {"ranks": args.ranks}, {"particles": [particles]}
        )
        vols = project.open_set(recon.id, "volumes").read_columns()
        maps = [read_image(Path(project.path) / str(p)) for p in vols["image"]]
        fsc = project.open_set(recon.id, "fsc").read_columns()
        freq = np.asarray(fsc["frequency"][0])
        gold = np.asarray(fsc["fsc"][0])
        _, vs_truth = fsc_curve(maps[0], truth.data, PIXEL_A)
        res_truth = resolution_at(freq, vs_truth, 0.5)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=100)
        c = BOX // 2
        for ax, data, title in (
            (axes[0], truth.data, "true volume (central z section)"),
            (axes[1], maps[0], f"reconstruct.fourier, {N_PARTICLES} particles, SNR {SNR}"),
        ):
            ax.imshow(data[c], cmap="gray")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        axes[2].plot(
            freq,
            gold,
            label=f"half maps (fsc output): {float(fsc['resolution_A'][0]):.1f} Å at 0.143",
        )
        axes[2].plot(freq, vs_truth, label=f"map vs truth: {res_truth:.1f} Å at 0.5")
        for t in (0.143, 0.5):
            axes[2].axhline(t, color="grey", ls="--", lw=0.8)
        axes[2].set_xlabel("spatial frequency (1/Å)")
        axes[2].set_ylabel("FSC")
        axes[2].set_ylim(-0.1, 1.05)
        axes[2].legend(fontsize=8, loc="lower left")
        axes[2].set_title(
            f"{args.ranks} MPI ranks, {PIXEL_A} Å/px (Nyquist {2 * PIXEL_A} Å)", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(img / "reconstruct_fourier.png")
        plt.close(fig)

        val = run(
            project,
            "validate.fsc",
            {"mask_radius_A": 70.0},
            {"volumes": [f"{recon.id}:volumes"]},
        )
        curves = project.open_set(val.id, "fsc").read_columns()
        sharp_path = project.open_set(val.id, "volumes").column("image")[0]
        sharp = read_image(Path(project.path) / str(sharp_path))
        steps = {s["name"]: s for s in project.read_steps(val.id).to_records()}
        bfac = steps["validate"]["result"]["bfactor_A2"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, width_ratios=(1.6, 1))
        for label, values, res in zip(curves["label"], curves["fsc"], curves["resolution_A"]):
            axes[0].plot(curves["frequency"][0], values, label=f"{label} ({res:.1f} Å)")
        axes[0].axhline(0.143, color="grey", ls="--", lw=0.8)
        axes[0].set_xlabel("spatial frequency (1/Å)")
        axes[0].set_ylabel("FSC")
        axes[0].set_ylim(-0.1, 1.05)
        axes[0].legend(fontsize=8, loc="lower left")
        axes[0].set_title("validate.fsc: half maps, 70 Å soft sphere mask", fontsize=9)
        axes[1].imshow(sharp[c], cmap="gray")
        axes[1].set_title(f"sharpened map (B = {bfac:.0f} Å²), central section", fontsize=9)
        axes[1].axis("off")
        fig.tight_layout()
        fig.savefig(img / "validate_fsc.png")
        plt.close(fig)
        print(
            f"gold-standard {float(fsc['resolution_A'][0]):.2f} Å, vs truth {res_truth:.2f} Å; "
            f"validate.fsc {dict(zip(curves['label'], np.round(curves['resolution_A'], 2)))}, "
            f"B {bfac:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
