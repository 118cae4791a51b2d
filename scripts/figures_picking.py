#!/usr/bin/env python
"""Make the picture of the consensus-picking page from real hpcem runs on simulated data.

    python scripts/figures_picking.py [--out-dir docs] [--workers 2] [--snr 0.03]

One project in a temporary folder: three simulated 1024-px micrographs at 1 Å/px of the
shipped model (PDB 7DDO, ~131 Å) at a low SNR (default 0.03, below the pickers' comfort
zone, so that each makes mistakes) go through ``import.micrographs``, ``ctf.estimate``,
``import.volumes`` (the simulator's density as the template reference),
``picking.dog``, ``picking.template`` (with the CTFs) and ``picking.consensus`` of the
two. It writes ``protocols/img/picking_consensus.png``: the first micrograph three times,
with the picks of each picker and of the consensus, the true centres, and precision,
recall and F1 (pooled over the three micrographs) in each title, and prints the figures.

Fixed seeds: the same code gives the same picture.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(project, name: str, params: dict, inputs: dict, workers: int):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return record.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--snr", type=float, default=0.03)
    parser.add_argument("--dog-threshold", type=float, default=2.0)
    parser.add_argument("--template-threshold", type=float, default=0.3)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpcem.io import write_mrc
    from hpcem.picking.evaluate import match_picks, pooled, truth_xy
    from hpcem.picking.plot import display_image
    from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset
    from hpcem.store import Project

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = DatasetConfig(kind="micrographs", n_items=3, size_px=1024, snr=args.snr, seed=7)
        truth = simulate_dataset(tmp / "raw", config)
        volume = dataset_volume(config)
        diameter = round(volume.diameter_A)
        write_mrc(tmp / "raw" / "reference.mrc", volume.data, volume.pixel_size_A)
        project = Project.create(tmp / "proj")
        imp = run(
            project,
            "import.micrographs",
            {"files": str(tmp / "raw" / "mic_*.mrc"), "pixel_size_A": 1.0},
            {},
            args.workers,
        )
        mics = {"micrographs": [f"{imp}:micrographs"]}
        ctf = run(project, "ctf.estimate", {}, mics, args.workers)
        ref = run(
            project,
            "import.volumes",
            {"files": str(tmp / "raw" / "reference.mrc"), "pixel_size_A": 1.0},
            {},
            args.workers,
        )
        # Permissive thresholds (below the defaults): each picker makes its own mistakes.
        dog = run(
            project,
            "picking.dog",
            {"diameter_A": diameter, "threshold": args.dog_threshold},
            mics,
            args.workers,
        )
        tpl = run(
            project,
            "picking.template",
            {"diameter_A": diameter, "threshold": args.template_threshold},
            {**mics, "references": [f"{ref}:volumes"], "ctfs": [f"{ctf}:ctfs"]},
            args.workers,
        )
        con = run(
            project,
            "picking.consensus",
            {"diameter_A": diameter},
            {"coordinates": [f"{tpl}:coordinates", f"{dog}:coordinates"], **mics},
            args.workers,
        )
        micrographs = project.open_set(imp, "micrographs")
        names = {
            int(i): Path(p).name
            for i, p in zip(micrographs.column("id"), micrographs.column("image"))
        }
        first = min(names)
        radius = 0.5 * diameter
        panels, figures = [], {}
        for run_id, label in ((dog, "picking.dog"), (tpl, "picking.template"), (con, "consensus")):
            c = project.open_set(run_id, "coordinates").read_columns(["micrograph_id", "x", "y"])
            scores = []
            for mid, name in names.items():
                sel = c["micrograph_id"] == mid
                xy = np.stack([c["x"][sel], c["y"][sel]], axis=1)
                scores.append(match_picks(xy, truth_xy(truth, name), radius))
            s = pooled(scores)
            figures[label] = {k: round(v, 3) for k, v in s.items()}
            sel = c["micrograph_id"] == first
            panels.append((label, np.stack([c["x"][sel], c["y"][sel]], axis=1), s))
        image = __import__("mrcfile").read(str(micrographs.column("image")[0]))
        picture, factor = display_image(np.asarray(image, dtype=np.float32), 512)
        t = truth_xy(truth, names[first])
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.9))
        offset = (factor - 1) / 2.0
        for ax, (label, xy, s) in zip(axes, panels):
            ax.imshow(picture, cmap="gray")
            for x, y in xy:
                ax.add_patch(
                    plt.Circle(
                        ((x - offset) / factor, (y - offset) / factor),
                        radius / factor,
                        fill=False,
                        color="#00d0ff",
                        lw=1.3,
                    )
                )
            ax.plot(
                (t[:, 0] - offset) / factor,
                (t[:, 1] - offset) / factor,
                "+",
                color="#ff7000",
                ms=9,
                mew=1.5,
                linestyle="none",
            )
            ax.set_title(
                f"{label}: P {s['precision']:.2f}  R {s['recall']:.2f}  F1 {s['f1']:.2f}",
                fontsize=10,
            )
            ax.set_axis_off()
        fig.suptitle(
            f"3 simulated micrographs (7DDO, SNR {args.snr}, 1 Å/px, diameter {diameter} Å), "
            f"permissive thresholds (DoG {args.dog_threshold}, NCC {args.template_threshold}); "
            "first shown; circles: picks, crosses: true centres",
            fontsize=10,
        )
        fig.tight_layout()
        out = Path(args.out_dir) / "protocols" / "img" / "picking_consensus.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        print(json.dumps({"picture": str(out), "snr": args.snr, "scores": figures}))


if __name__ == "__main__":
    main()
