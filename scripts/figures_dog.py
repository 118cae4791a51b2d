#!/usr/bin/env python
"""Make the pictures of the ``picking.dog`` page from real hpcem runs on simulated data.

    python scripts/figures_dog.py [--out-dir docs] [--workers 2]

One project in a temporary folder: three simulated 2048² micrographs at 1 Å/px (PDB 7DDO,
131 Å across, SNR 0.1, hpcem.sim, seed 41) go through ``import.micrographs`` and a
``picking.dog`` run with ``diameter_A`` 131 (else the defaults). It writes

* ``protocols/img/picking_dog.png``: the first micrograph (binned, low-passed) with the
  run's picks (circles, from its ``coordinates`` output) and the true centres (crosses),
  precision / recall / F1 of the run in the title;
* ``protocols/img/picking_dog_measured.png``: precision and recall against the
  threshold, and recall against the diameter given (relative to the true one), on
  simulated micrographs of 1024-2048 px at 0.8-1.5 Å/px (seeds 51-54), with the number
  of picks per empty micrograph (ice and noise only);
* ``protocols/img/picking_dog_carbon.png``: a simulated micrograph with a planted bright
  carbon area (x >= 1400 px, +0.5 pixel SD) and a dark band (x 500-640, -0.5 SD), the
  area left out by the exclusion test shaded, picks with and without the test;
* ``protocols/img/picking_dog_krios.png``: picks on the real Krios micrograph
  ``../shared/data/mrcfile-1.5.4/fei-extended.mrc`` (diameter 120 Å; skipped if absent).

Fixed seeds: the same code gives the same pictures.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KRIOS = REPO.parent / "shared" / "data" / "mrcfile-1.5.4" / "fei-extended.mrc"
DIAMETER_A = 131.3  # PDB 7DDO as simulated (hpcem.sim: the model's largest extent)
#: Palette size of the PNGs: noisy grey micrographs barely compress, 32 grey levels keep
#: the pictures near the docs' ~150 KB guideline.
COLOURS = 32


def run(project, name: str, params: dict, inputs: dict, workers: int):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def save(fig, path: Path) -> None:
    """Save as a palette PNG of COLOURS colours (small files for grey pictures)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


def requantise(path: Path, max_edge_px: int = 0) -> None:
    """Rewrite a PNG written by hpcem.picking.plot as a palette PNG of COLOURS colours
    (shrunk to ``max_edge_px`` when given)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if max_edge_px and max(image.size) > max_edge_px:
        scale = max_edge_px / max(image.size)
        size = (round(image.size[0] * scale), round(image.size[1] * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    image = image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


def figure_run(project, workers: int, tmp: Path, img: Path) -> None:
    from hpcem.io import read_image
    from hpcem.picking.evaluate import match_picks, pooled, truth_xy
    from hpcem.picking.plot import write_picks_png
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    raw = tmp / "raw"
    cfg = DatasetConfig(kind="micrographs", n_items=3, size_px=2048, pixel_size_A=1.0, seed=41)
    truth = simulate_dataset(raw, cfg)
    imp = run(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": 1.0},
        {},
        workers,
    )
    pick = run(
        project,
        "picking.dog",
        {"diameter_A": DIAMETER_A},
        {"micrographs": [f"{imp.id}:micrographs"]},
        workers,
    )
    mics = imp.outputs["micrographs"]
    names = {int(i): Path(p).name for i, p in zip(mics.column("id"), mics.column("image"))}
    coords = pick.outputs["coordinates"].read_columns()
    scores = []
    for mic_id, name in names.items():
        sel = np.asarray(coords["micrograph_id"]) == mic_id
        xy = np.stack([np.asarray(coords["x"])[sel], np.asarray(coords["y"])[sel]], axis=1)
        scores.append(match_picks(xy, truth_xy(truth, name), 0.5 * DIAMETER_A))
    s = pooled(scores)
    first_id = min(names)
    sel = np.asarray(coords["micrograph_id"]) == first_id
    xy = np.stack([np.asarray(coords["x"])[sel], np.asarray(coords["y"])[sel]], axis=1)
    image = read_image(raw / names[first_id])
    path = img / "picking_dog.png"
    write_picks_png(
        path,
        image,
        xy,
        DIAMETER_A,
        title=f"{len(xy)} picks (o), truth (+); F1 of 3 micrographs {s['f1']:.2f}",
        truth_xy=truth_xy(truth, names[first_id]),
        max_edge_px=480,
    )
    requantise(path)
    steps = {r["name"]: r for r in project.read_steps(pick.id).to_records()}
    picture = tmp / "proj" / steps["pick/000000"]["result"]["picture"]
    if not picture.is_file():
        raise SystemExit(f"the step wrote no picture {picture}")
    print(f"run {pick.id}: {s}")


def measured(tmp: Path) -> dict:
    """Precision/recall against threshold and diameter factor, picks on empty ones."""
    from hpcem.io import read_image
    from hpcem.picking import dog
    from hpcem.picking.evaluate import match_picks, pooled, truth_xy
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    configs = [
        DatasetConfig(kind="micrographs", n_items=6, size_px=1024, pixel_size_A=1.0, seed=51),
        DatasetConfig(kind="micrographs", n_items=6, size_px=1024, pixel_size_A=1.5, seed=52),
        DatasetConfig(kind="micrographs", n_items=2, size_px=2048, pixel_size_A=1.0, seed=53),
        DatasetConfig(kind="micrographs", n_items=2, size_px=1536, pixel_size_A=0.8, seed=54),
    ]
    empty_cfg = DatasetConfig(
        kind="micrographs", n_items=8, size_px=1024, pixel_size_A=1.0, fill_fraction=0.0, seed=55
    )
    data = []
    for k, cfg in enumerate(configs):
        folder = tmp / f"m{k}"
        truth = simulate_dataset(folder, cfg)
        for item in truth["items"]:
            data.append(
                (read_image(folder / item["name"]), cfg.pixel_size_A, truth_xy(truth, item["name"]))
            )
    empty_truth = simulate_dataset(tmp / "empty", empty_cfg)
    empty = [read_image(tmp / "empty" / item["name"]) for item in empty_truth["items"]]
    thresholds = np.arange(1.0, 8.01, 0.5)
    by_threshold = []
    for t in thresholds:
        s = pooled(
            [
                match_picks(
                    dog.pick_dog(im, ps, DIAMETER_A, threshold=t)["xy"], tr, 0.5 * DIAMETER_A / ps
                )
                for im, ps, tr in data
            ]
        )
        n_empty = [len(dog.pick_dog(im, 1.0, DIAMETER_A, threshold=t)["xy"]) for im in empty]
        by_threshold.append((s["precision"], s["recall"], float(np.mean(n_empty))))
    factors = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    by_factor = []
    for f in factors:
        s = pooled(
            [
                match_picks(dog.pick_dog(im, ps, f * DIAMETER_A)["xy"], tr, 0.5 * DIAMETER_A / ps)
                for im, ps, tr in data
            ]
        )
        by_factor.append((s["precision"], s["recall"], s["f1"]))
    n_true = sum(len(tr) for _, _, tr in data)
    return {
        "thresholds": thresholds,
        "by_threshold": np.array(by_threshold),
        "factors": factors,
        "by_factor": np.array(by_factor),
        "micrographs": len(data),
        "particles": n_true,
    }


def figure_measured(m: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from hpcem.picking import dog

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), layout="constrained")
    ax = axes[0]
    t, bt = m["thresholds"], m["by_threshold"]
    ax.plot(t, bt[:, 0], "o-", label="precision")
    ax.plot(t, bt[:, 1], "s-", label="recall")
    ax.axvline(dog.DEFAULT_THRESHOLD, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("threshold (robust SDs of the DoG response)")
    ax.set_ylim(0.5, 1.02)
    ax.set_ylabel("precision, recall")
    ax2 = ax.twinx()
    ax2.plot(t, bt[:, 2], "^:", color="tab:red", label="picks per empty micrograph")
    ax2.set_ylabel("picks per empty micrograph", color="tab:red")
    lines = ax.get_lines()[:2] + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax.set_title(
        f"{m['micrographs']} simulated micrographs ({m['particles']} particles) and 8 empty "
        "ones;\ndashed: the default threshold",
        fontsize=9,
    )
    ax = axes[1]
    f, bf = m["factors"], m["by_factor"]
    ax.plot(f, bf[:, 0], "o-", label="precision")
    ax.plot(f, bf[:, 1], "s-", label="recall")
    ax.plot(f, bf[:, 2], "d-", label="F1")
    ax.axhline(0.9, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("diameter_A given / true diameter (131 Å)")
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("at the default threshold, against the diameter given", fontsize=9)
    save(fig, path)


def figure_carbon(tmp: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    from hpcem.io import read_image
    from hpcem.picking import dog
    from hpcem.picking.evaluate import truth_xy
    from hpcem.picking.plot import display_image
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    cfg = DatasetConfig(kind="micrographs", n_items=1, size_px=2048, pixel_size_A=1.0, seed=61)
    truth = simulate_dataset(tmp / "carbon", cfg)
    image = read_image(tmp / "carbon" / "mic_000.mrc").copy()
    sd = float(image.std())
    image[:, 1400:] += np.float32(0.5 * sd)
    image[:, 500:640] -= np.float32(0.5 * sd)
    with_test = dog.pick_dog(image, 1.0, DIAMETER_A)
    without = dog.pick_dog(image, 1.0, DIAMETER_A, exclusion_sd=0)
    maps = dog.dog_maps(image, 1.0, DIAMETER_A)
    mask, info = dog.exclusion_mask(
        maps["lowpass"],
        round(dog.EXCLUSION_WINDOW_DIAMETERS * maps["diameter_px"]),
        dog.DEFAULT_EXCLUSION_SD,
    )
    picture, factor = display_image(image, 400)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), layout="constrained")
    true = truth_xy(truth, "mic_000.mrc")
    for ax, picks, title in (
        (axes[0], without, f"exclusion_sd = 0 (off): {len(without['xy'])} picks"),
        (
            axes[1],
            with_test,
            (
                f"default exclusion_sd = {dog.DEFAULT_EXCLUSION_SD}: {len(with_test['xy'])} "
                f"picks, {100 * info['excluded_fraction']:.0f} % of the area left out (red)"
            ),
        ),
    ):
        ax.imshow(picture, cmap="gray")
        if picks is with_test:
            by, bx = maps["bin_yx"]
            extent = (
                -0.5 * bx / factor - 0.5,
                (mask.shape[1] - 0.5) * bx / factor - 0.5,
                (mask.shape[0] - 0.5) * by / factor - 0.5,
                -0.5 * by / factor - 0.5,
            )
            overlay = np.zeros((*mask.shape, 4))
            overlay[~mask] = (1.0, 0.1, 0.1, 0.3)
            ax.imshow(overlay, extent=extent, interpolation="nearest")
        off = (factor - 1) / 2
        for x, y in picks["xy"]:
            ax.add_patch(
                plt.Circle(
                    ((x - off) / factor, (y - off) / factor),
                    0.5 * DIAMETER_A / factor,
                    fill=False,
                    ec="#00d0ff",
                    lw=1.2,
                )
            )
        ax.plot((true[:, 0] - off) / factor, (true[:, 1] - off) / factor, "+", color="#ff7000")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        "planted bright carbon (x >= 1400 px, +0.5 pixel SD) and dark band (x 500-640, "
        "-0.5 SD) on a simulated 2048² micrograph; crosses: true centres",
        fontsize=9,
    )
    save(fig, path)


def figure_krios(path: Path) -> None:
    from hpcem.io import read_image
    from hpcem.picking import dog
    from hpcem.picking.plot import write_picks_png

    image = read_image(KRIOS)
    ps, d_A = 0.8538, 120.0
    picks = dog.pick_dog(image, ps, d_A)
    write_picks_png(
        path,
        image,
        picks["xy"],
        d_A / ps,
        title=f"fei-extended.mrc (Krios, {ps} Å/px): {len(picks['xy'])} picks, d {d_A:.0f} Å",
        max_edge_px=480,
    )
    requantise(path)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from hpcem.store import Project

    img = args.out_dir / "protocols" / "img"
    img.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        project = Project.create(tmp / "proj")
        figure_run(project, args.workers, tmp, img)
        m = measured(tmp)
        for t, (p, r, n) in zip(m["thresholds"], m["by_threshold"]):
            print(f"threshold {t:.1f}: precision {p:.3f} recall {r:.3f} empty {n:.2f}")
        for f, (p, r, f1) in zip(m["factors"], m["by_factor"]):
            print(f"diameter x {f:.1f}: precision {p:.3f} recall {r:.3f} F1 {f1:.3f}")
        figure_measured(m, img / "picking_dog_measured.png")
        figure_carbon(tmp, img / "picking_dog_carbon.png")
    if KRIOS.is_file():
        figure_krios(img / "picking_dog_krios.png")


if __name__ == "__main__":
    main()
