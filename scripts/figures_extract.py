#!/usr/bin/env python
"""Make the picture of the ``particles.extract`` page from a real hpcem run on simulated data.

    python scripts/figures_extract.py [--out-dir docs] [--workers 2]

One project in a temporary folder: two simulated 1024-px micrographs at 1.5 Å/px
(projections of the shipped PDB 7DDO model at random orientations, 300 kV, Cs 2.7 mm,
defocus 1.5 and 2.0 µm with astigmatism, SNR 0.1) are imported with
``import.micrographs``; the simulator's true particle positions (plus one made-up
coordinate near an edge, to show padding) and its true CTFs are stored as a coordinate
and a CTF set (standing in for a picker and a CTF estimator); ``particles.extract`` runs
with a 128-px box binned to 64 px, phase flipping, the default normalisation and
inversion, and ``edge = pad``. It writes ``protocols/img/particles_extract.png``: the
first micrograph with the boxes (padded one in orange), the first 24 particles of the
output set read back through their ``image`` / ``image_index``, and the histogram of all
background pixels against a standard normal.

Fixed seeds: the same code gives the same picture.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PIXEL_A = 1.5
# (defocus U Å, defocus V Å, angle deg)
CTFS = [(15500.0, 14500.0, 30.0), (20500.0, 19500.0, 120.0)]
OPTICS = {
    "optics_group": [1],
    "voltage_kV": [300.0],
    "spherical_aberration_mm": [2.7],
    "amplitude_contrast": [0.1],
    "pixel_size_A": [PIXEL_A],
}
PARAMS = {
    "box_size_px": 128,
    "rescaled_box_px": 64,
    "phase_flip": True,
    "edge": "pad",
}


def run(project, name: str, params: dict, inputs: dict, workers: int):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def stored_set(project, label: str, output: str, set_type: str, columns: dict) -> str:
    """A finished run holding one set (the simulator's truth as a picker's or an
    estimator's output); returns its ``RUN:OUTPUT`` pointer."""
    rec = project.create_run(label)
    project.begin_attempt(rec.id, ("saved",))
    project.transition(rec.id, ("launched",), "running", attempt=1)
    with project.create_set(rec.id, output, set_type) as writer:
        writer.set_optics(OPTICS)
        writer.append_columns(columns)
    project.set_output(rec.id, output, set_type, len(next(iter(columns.values()))))
    project.transition(rec.id, ("running",), "finished", attempt=1)
    return f"{rec.id}:{output}"


def simulate(raw: Path) -> tuple[list, list]:
    from hpcem.io import write_mrc
    from hpcem.sim import load_volume, simulate_micrograph

    volume = load_volume(None, PIXEL_A)
    images, coords = [], []
    for i, (u, v, angle) in enumerate(CTFS):
        image, truth = simulate_micrograph(
            (1024, 1024), PIXEL_A, u, v, angle, n_particles=40, volume=volume, seed=700 + i
        )
        write_mrc(raw / f"mic_{i}.mrc", image, PIXEL_A)
        images.append(image)
        coords.append(truth["coordinates_px"])
    coords[0] = np.vstack([coords[0], [[30.0, 500.0]]])  # a box crossing the left edge
    return images, coords


def figure(image, coords, particles, result, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from hpcem.io import read_image
    from hpcem.particles.extract import background_mask, default_bg_radius

    cols = particles.read_columns(["image", "image_index", "micrograph_id", "edge_padded", "id"])
    stacks = {p: read_image(p) for p in sorted(set(cols["image"]))}
    boxes = np.stack([stacks[p][k] for p, k in zip(cols["image"], cols["image_index"])])
    fig = plt.figure(figsize=(12, 5.4))
    grid = fig.add_gridspec(4, 11, width_ratios=[1] * 4 + [0.1] + [0.7] * 6, wspace=0.08)
    ax = fig.add_subplot(grid[:3, :4])
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    first = cols["micrograph_id"] == cols["micrograph_id"][0]
    half = PARAMS["box_size_px"] / 2
    for (x, y), padded in zip(coords[0], cols["edge_padded"][first]):
        colour = "orange" if padded else "lime"
        ax.add_patch(
            Rectangle((x - half, y - half), 2 * half, 2 * half, fill=False, ec=colour, lw=0.8)
        )
    ax.set_title(f"micrograph 1: {int(first.sum())} boxes of 128 px (orange: padded)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(grid[3, :4])
    mask = background_mask(boxes.shape[-1], default_bg_radius(boxes.shape[-1]))
    values = boxes[:, mask].ravel()
    ax.hist(values, bins=120, range=(-5, 5), density=True, color="0.5", label="background")
    t = np.linspace(-5, 5, 200)
    ax.plot(t, np.exp(-t * t / 2) / np.sqrt(2 * np.pi), "k", lw=1, label="N(0, 1)")
    ax.set_yticks([])
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(
        f"background of all {len(boxes)} particles: mean {values.mean():.3f}, "
        f"sd {values.std():.3f}",
        fontsize=8,
    )
    for k in range(min(24, len(boxes))):
        a = fig.add_subplot(grid[k // 6, 5 + k % 6])
        a.imshow(boxes[k], cmap="gray")
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(f"id {int(cols['id'][k])}", fontsize=7, pad=2)
    fig.suptitle(
        "particles.extract: 128-px boxes binned to 64 px (3 Å/px), phase-flipped, "
        f"normalised, inverted; {result['count']} particles, {result['padded']} padded",
        fontsize=10,
    )
    save(fig, out)


def save(fig, path: Path) -> None:
    """Save as a 256-colour palette PNG (a third of the RGB size for grey pictures)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from hpcem.store import Project

    img = args.out_dir / "protocols" / "img"
    img.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        images, coords = simulate(raw)
        project = Project.create(Path(tmp) / "proj")
        imp = run(
            project,
            "import.micrographs",
            {"files": str(raw / "*.mrc"), "pixel_size_A": PIXEL_A},
            {},
            args.workers,
        )
        mic_ids = [int(i) for i in imp.outputs["micrographs"].column("id")]
        xy = np.vstack(coords)
        mic = np.concatenate([[m] * len(c) for m, c in zip(mic_ids, coords)])
        picks = stored_set(
            project,
            "truth.coordinates",
            "coordinates",
            "hpcem.SetOfCoordinates",
            {"micrograph_id": mic, "x": xy[:, 0], "y": xy[:, 1]},
        )
        ctfs = stored_set(
            project,
            "truth.ctfs",
            "ctfs",
            "hpcem.SetOfCTFs",
            {
                "micrograph_id": mic_ids,
                "defocus_u": [c[0] for c in CTFS],
                "defocus_v": [c[1] for c in CTFS],
                "defocus_angle": [c[2] for c in CTFS],
            },
        )
        inputs = {"coordinates": [picks], "micrographs": [f"{imp.id}:micrographs"], "ctfs": [ctfs]}
        ext = run(project, "particles.extract", PARAMS, inputs, args.workers)
        steps = {r["name"]: r for r in project.read_steps(ext.id).to_records()}
        result = steps["register"]["result"]
        figure(images[0], coords, ext.outputs["particles"], result, img / "particles_extract.png")
        print(json.dumps({k: result[k] for k in ("count", "padded", "rejected", "backend")}))


if __name__ == "__main__":
    main()
