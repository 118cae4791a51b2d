#!/usr/bin/env python
"""Make docs/protocols/img/picking_template*.png from real runs, and measure the
template picker's accuracy and threshold (printed as JSON).

Simulated micrographs of the shipped model (PDB 7DDO, 1024², 1 Å/px, SNR 0.1, fixed
seed) are imported, their CTFs estimated by ``ctf.estimate``, the simulator's own map
imported by ``import.volumes``, and ``picking.template`` runs at its defaults with the
estimated CTFs (real controller, local workers). Figures:

* ``picking_template.png``: micrograph 0 with the run's picks (circles) and the true
  centres (crosses); its best-NCC map; the NCC of true and false picks and of the highest
  maxima of empty micrographs, with the default threshold.
* ``picking_template_gallery.png``: the templates the run made (its ``templates`` step).
* ``picking_template_real.png``: the real EPU micrograph
  ``../shared/data/mrcfile-1.5.4/fei-extended.mrc`` (0.854 Å/px) picked with the same map
  as templates (diameter 130 Å, no CTF), threshold 0.35.

Measurements: F1 of the run; F1 against the threshold at SNR 0.1 and 0.05 (true CTFs);
NCC maxima of empty micrographs (1024² and 4096²); CTF-multiplied against plain
templates at 3 µm defocus (SNR 0.03); picks and contrast on the real micrograph.

    python scripts/figures_template.py [--out docs/protocols/img] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

SEED = 2026
DIAMETER_A = 150.0
OPTICS = {"voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}
REAL = REPO.parent / "shared" / "data" / "mrcfile-1.5.4" / "fei-extended.mrc"
REAL_DIAMETER_A = 130.0
REAL_THRESHOLD = 0.35


def _true_ctf(item: dict) -> dict:
    keys = ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")
    return {k: item[k] for k in keys} | OPTICS


def _templates(pixel_size_A: float, diameter_A: float = DIAMETER_A, step: float = 30.0):
    from hpcem.picking import template as tp
    from hpcem.sim.dataset import DatasetConfig, dataset_volume

    config = DatasetConfig(kind="micrographs", pixel_size_A=pixel_size_A)
    work_A = tp.working_pixel_size_A(diameter_A, pixel_size_A, 20.0)
    box = tp.template_box_px(diameter_A / work_A)
    return tp.volume_templates(dataset_volume(config), step, work_A, box)[0], work_A


def _sweep(folder: Path, truth: dict, pixel_size_A: float, thresholds, use_ctf=True) -> dict:
    """Pooled precision/recall/F1 per threshold (picks once at the lowest threshold)."""
    from hpcem.io import read_image
    from hpcem.picking import template as tp
    from hpcem.picking.evaluate import match_picks, pooled, truth_xy

    stack, work_A = _templates(pixel_size_A)
    picks = []
    for item in truth["items"]:
        image = read_image(folder / item["name"])
        ctf = _true_ctf(item) if use_ctf else None
        r = tp.pick_micrograph(
            image, pixel_size_A, stack, work_A, DIAMETER_A, ctf, threshold=min(thresholds)
        )
        picks.append((r, truth_xy(truth, item["name"])))
    out = {}
    for t in thresholds:
        each = [
            match_picks(r["xy"][r["scores"] > t], true, 0.5 * DIAMETER_A / pixel_size_A)
            for r, true in picks
        ]
        out[f"{t:.2f}"] = {k: round(v, 3) for k, v in pooled(each).items()}
    return out


def _empty_maxima(size: int, seeds) -> list[float]:
    """Highest NCC of empty (ice-only) simulated micrographs, with their true CTF."""
    from hpcem.picking import template as tp
    from hpcem.sim import simulate_micrograph

    stack, work_A = _templates(1.0)
    ctf = {"defocus_u": 20000.0, "defocus_v": 19500.0, "defocus_angle": 30.0} | OPTICS
    top = []
    for seed in seeds:
        image, _ = simulate_micrograph(
            (size, size), 1.0, 20000.0, 19500.0, 30.0, n_particles=0, seed=seed
        )
        r = tp.pick_micrograph(image, 1.0, stack, work_A, DIAMETER_A, ctf, threshold=-1.0)
        top.append(round(float(r["scores"].max()), 3))
    return top


def _real(out: Path, numbers: dict) -> None:
    import matplotlib.pyplot as plt
    from make_protocol_figures import _save

    from hpcem.io import read_header, read_image
    from hpcem.picking import template as tp
    from hpcem.picking.plot import display_image

    pixel_A = read_header(REAL).pixel_size_A
    image = read_image(REAL).astype(np.float32)
    stack, work_A = _templates(2.0, REAL_DIAMETER_A)
    r = tp.pick_micrograph(image, pixel_A, stack, work_A, REAL_DIAMETER_A, None, threshold=0.2)
    binned = r["binned"]
    radius = 0.3 * REAL_DIAMETER_A / r["binned_pixel_A"]
    yy, xx = np.mgrid[: binned.shape[0], : binned.shape[1]]

    def disc_means(points):
        return np.array(
            [binned[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2].mean() for x, y in points]
        )

    margin = REAL_DIAMETER_A / r["binned_pixel_A"]
    rng = np.random.default_rng(0)
    random_xy = rng.uniform(
        [margin, margin], [binned.shape[1] - margin, binned.shape[0] - margin], (400, 2)
    )
    random_means = disc_means(random_xy)
    real = {
        "pixel_size_A": round(pixel_A, 4),
        "diameter_A": REAL_DIAMETER_A,
        "random_mean": round(float(random_means.mean()), 3),
        "random_sd": round(float(random_means.std()), 3),
    }
    for t in (0.3, REAL_THRESHOLD, 0.4, 0.45, 0.5):
        keep = r["scores"] > t
        means = disc_means(r["xy"][keep] / np.array(r["scale"]))
        real[f"{t:.2f}"] = {
            "picks": int(keep.sum()),
            "mean_at_picks": round(float(means.mean()), 3),
        }
    numbers["real"] = real
    keep = r["scores"] > REAL_THRESHOLD
    picture, factor = display_image(image, 1200)
    fig, ax = plt.subplots(
        figsize=(9, 9 * picture.shape[0] / picture.shape[1]), layout="constrained"
    )
    ax.imshow(picture, cmap="gray")
    offset = (factor - 1) / 2
    for x, y in r["xy"][keep]:
        ax.add_patch(
            plt.Circle(
                ((x - offset) / factor, (y - offset) / factor),
                0.5 * REAL_DIAMETER_A / pixel_A / factor,
                fill=False,
                ec="#00d0ff",
                lw=1,
            )
        )
    ax.set_axis_off()
    ax.set_title(
        f"fei-extended.mrc (EPU, {pixel_A:.3f} Å/px): {keep.sum()} picks, NCC > {REAL_THRESHOLD} "
        f"(7DDO map, 130 Å, no CTF)",
        fontsize=9,
    )
    _save(fig, out / "picking_template_real.png", colors=64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "protocols" / "img"))
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcem.protocols.picking_template import DEFAULT_THRESHOLD
    from make_protocol_figures import _save, run_protocol

    from hpcem.io import read_image, write_mrc
    from hpcem.picking import template as tp
    from hpcem.picking.evaluate import match_pairs, match_picks, pooled, truth_xy
    from hpcem.picking.plot import display_image
    from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset
    from hpcem.store import Project

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="hpcem-template-"))
    config = DatasetConfig(kind="micrographs", n_items=3, size_px=1024, snr=0.1, seed=SEED)
    raw = work / "raw"
    truth = simulate_dataset(raw, config)
    (work / "maps").mkdir(exist_ok=True)
    write_mrc(work / "maps" / "7ddo.mrc", dataset_volume(config).data, 1.0, overwrite=True)

    project = Project.create(work / "proj")
    imp = run_protocol(
        project,
        "import.micrographs",
        {
            "files": str(raw / "*.mrc"),
            "pixel_size_A": 1.0,
            "voltage_kV": 300.0,
            "spherical_aberration_mm": 2.7,
            "amplitude_contrast": 0.1,
        },
    )
    vol = run_protocol(
        project, "import.volumes", {"files": str(work / "maps" / "*.mrc"), "pixel_size_A": 1.0}
    )
    ctf = run_protocol(
        project, "ctf.estimate", {}, {"micrographs": [f"{imp.id}:micrographs"]}, args.workers
    )
    run = run_protocol(
        project,
        "picking.template",
        {},
        {
            "micrographs": [f"{imp.id}:micrographs"],
            "references": [f"{vol.id}:volumes"],
            "ctfs": [f"{ctf.id}:ctfs"],
        },
        args.workers,
    )
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    coords = project.open_set(run.id, "coordinates").read_columns()
    mics = project.open_set(imp.id, "micrographs")
    ctfs = project.open_set(ctf.id, "ctfs").read_columns()
    numbers = {"run": run.id, "threshold": DEFAULT_THRESHOLD, "micrographs": []}
    per = []
    scores_tp, scores_fp = [], []
    for mic_id, path in zip(mics.column("id"), mics.column("image")):
        name = Path(str(path)).name
        sel = coords["micrograph_id"] == mic_id
        xy = np.stack([coords["x"][sel], coords["y"][sel]], 1)
        true = truth_xy(truth, name)
        m = match_picks(xy, true, 0.5 * DIAMETER_A)
        per.append(m)
        good = np.zeros(len(xy), bool)
        good[[i for i, _ in match_pairs(xy, true, 0.5 * DIAMETER_A)]] = True
        scores_tp += coords["score"][sel][good].tolist()
        scores_fp += coords["score"][sel][~good].tolist()
        numbers["micrographs"].append({"name": name, **{k: round(v, 3) for k, v in m.items()}})
    numbers["pooled"] = {k: round(v, 3) for k, v in pooled(per).items()}
    numbers["ncc_true_picks"] = [round(min(scores_tp), 3), round(max(scores_tp), 3)]
    numbers["step_seconds"] = [
        round(s["ended"] - s["started"], 2)
        for n, s in sorted(steps.items())
        if n.startswith("pick/") and s.get("ended") and s.get("started")
    ]

    # Threshold: F1 against it, and the maxima of empty micrographs.
    thresholds = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
    numbers["f1_vs_threshold_snr_0.1"] = _sweep(raw, truth, 1.0, thresholds)
    raw05 = work / "raw05"
    truth05 = simulate_dataset(raw05, DatasetConfig(**(config.to_json() | {"snr": 0.05})))
    numbers["f1_vs_threshold_snr_0.05"] = _sweep(raw05, truth05, 1.0, thresholds)
    empty_1k = _empty_maxima(1024, range(4))
    empty_4k = _empty_maxima(4096, [7])
    numbers["empty_maxima_1024"] = empty_1k
    numbers["empty_maxima_4096"] = empty_4k
    # CTF-awareness at 3 µm (as the test does).
    raw3 = work / "raw3um"
    c3 = DatasetConfig(
        kind="micrographs",
        n_items=3,
        size_px=1024,
        pixel_size_A=1.5,
        snr=0.03,
        defocus_min_A=30000.0,
        defocus_max_A=30000.0,
        astigmatism_max_A=500.0,
        seed=11,
    )
    truth3 = simulate_dataset(raw3, c3)
    numbers["ctf_3um_snr_0.03"] = {
        "with_ctf": _sweep(raw3, truth3, 1.5, [DEFAULT_THRESHOLD])[f"{DEFAULT_THRESHOLD:.2f}"],
        "without_ctf": _sweep(raw3, truth3, 1.5, [DEFAULT_THRESHOLD], use_ctf=False)[
            f"{DEFAULT_THRESHOLD:.2f}"
        ],
    }

    # Figure 1: picks with truth, the NCC map, the score histogram.
    first = truth["items"][0]
    image = read_image(raw / first["name"])
    row0 = int(np.flatnonzero(ctfs["micrograph_id"] == mics.column("id")[0])[0])
    est_ctf = {
        k: float(ctfs[k][row0]) for k in ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")
    } | OPTICS
    stack = read_image(project.path / steps["templates"]["result"]["path"])
    r = tp.pick_micrograph(
        image,
        1.0,
        stack,
        steps["templates"]["result"]["pixel_size_A"],
        DIAMETER_A,
        est_ctf,
        threshold=DEFAULT_THRESHOLD,
    )
    sel = coords["micrograph_id"] == mics.column("id")[0]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.8), layout="constrained")
    picture, factor = display_image(image, 512)
    ax = axes[0]
    ax.imshow(picture, cmap="gray")
    offset = (factor - 1) / 2
    for x, y in zip(coords["x"][sel], coords["y"][sel]):
        ax.add_patch(
            plt.Circle(
                ((x - offset) / factor, (y - offset) / factor),
                0.5 * DIAMETER_A / factor,
                fill=False,
                ec="#00d0ff",
                lw=1.2,
            )
        )
    true = truth_xy(truth, first["name"])
    ax.plot(
        (true[:, 0] - offset) / factor,
        (true[:, 1] - offset) / factor,
        "+",
        color="#ff7000",
        ms=9,
        mew=1.5,
        ls="none",
    )
    ax.set_axis_off()
    m0 = numbers["micrographs"][0]
    ax.set_title(
        f"{first['name']} (SNR 0.1): picks (circles), truth (+); F1 {m0['f1']:.2f}", fontsize=9
    )
    ax = axes[1]
    im = ax.imshow(r["score_map"], cmap="magma", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="best NCC")
    ax.set_axis_off()
    ax.set_title(
        f"best NCC over {len(stack)} templates x 36 angles ({r['binned_pixel_A']:.2f} Å/px)",
        fontsize=9,
    )
    ax = axes[2]
    bins = np.linspace(0, 1, 41)
    ax.hist(scores_tp, bins, color="C2", alpha=0.8, label=f"true picks ({len(scores_tp)})")
    if scores_fp:
        ax.hist(scores_fp, bins, color="C3", alpha=0.8, label=f"false picks ({len(scores_fp)})")
    ax.hist(
        empty_1k + empty_4k,
        bins,
        color="0.4",
        alpha=0.8,
        label="highest maximum, empty micrographs",
    )
    ax.axvline(
        DEFAULT_THRESHOLD, color="k", ls="--", lw=1, label=f"default threshold {DEFAULT_THRESHOLD}"
    )
    ax.set_xlabel("NCC")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(f"run {run.id}: pooled F1 {numbers['pooled']['f1']:.3f}", fontsize=9)
    _save(fig, out / "picking_template.png", colors=128)
    shutil.copyfile(
        project.path / steps["templates"]["result"]["picture"], out / "picking_template_gallery.png"
    )
    if REAL.is_file():
        _real(out, numbers)
    print(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
