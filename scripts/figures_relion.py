#!/usr/bin/env python
"""Make the pictures of the RELION protocol pages from real hpcem runs of RELION 3.1.

    python scripts/figures_relion.py [--out-dir docs] [--workers 2]

One project in a temporary folder (needs the relion_* programs on PATH):

* ``sim.dataset``: four 768-px micrographs of the shipped model (PDB 7DDO, ~131 Å) at
  1.5 Å/px, seed 1; ``relion.autopick_log`` (diameters 110–150 Å) picks them →
  ``relion_autopick_log.png``: the picks and the true centres on one micrograph, and the
  figure of merit of picks that match a true particle against those that do not;
* ``relion.extract`` (96-px boxes) of the *true* coordinates with the true CTFs (written
  into sets by the tests' helpers) → ``relion_extract.png``: 16 extracted particles and the
  histogram of their background pixels against a standard normal;
* ``sim.dataset`` of two 512-px, 16-frame movies (seed 5) → ``relion.motioncorr`` →
  ``relion_motioncorr.png``: RELION's trajectory against the simulated one;
* 2,000 projections of the model at 4 Å/px (48-px boxes, random poses, ±3 px shifts,
  each with its own CTF, contrast-inverted, noise sd half the signal's; made by the
  tests' own helper, ``tests/relion/relion_helpers.py``) → ``relion.reconstruct`` with half maps →
  ``relion_reconstruct.png``: central slices of the map and of the true volume, FSC of
  the map and of the half maps against the truth;
* ``relion.postprocess`` of those half maps with a soft spherical mask →
  ``relion_postprocess.png``: RELION's FSC curves and a slice of the sharpened map.

Fixed seeds: the same code and RELION build give the same pictures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# The simulation helpers of the RELION tests: the pictures show what the tests check.
sys.path.insert(0, str(REPO / "tests" / "relion"))
from relion_helpers import _finish, _finished_run, fsc_curve, projected_particles, truth_sets


def run(project, name: str, params: dict, inputs: dict, workers: int):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def _steps(project, run_id: int) -> dict:
    return {r["name"]: r for r in project.read_steps(run_id).to_records()}


def _truth(project, sim_id: int) -> dict:
    result = _steps(project, sim_id)["register"]["result"]
    return json.loads((Path(project.path) / result["ground_truth"][0]).read_text())


# --- pictures ---------------------------------------------------------------------------
def figure_autopick(project, workers: int, out: Path) -> dict:
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    from hpcem.io import read_image
    from hpcem.picking.evaluate import match_pairs, match_picks, pooled, truth_xy

    sim = run(
        project,
        "sim.dataset",
        {"kind": "micrographs", "n_items": 4, "size_px": 768, "pixel_size_A": 1.5, "seed": 1},
        {},
        workers,
    )
    truth = _truth(project, sim.id)
    pick = run(
        project,
        "relion.autopick_log",
        {"diameter_min_A": 110.0, "diameter_max_A": 150.0},
        {"micrographs": [f"{sim.id}:micrographs"]},
        workers,
    )
    mics = project.open_set(sim.id, "micrographs")
    coords = project.open_set(pick.id, "coordinates").read_columns()
    radius = 0.5 * truth["volume"]["diameter_A"] / 1.5
    scores, matched_fom, other_fom = [], [], []
    for mid, image in zip(mics.column("id"), mics.column("image")):
        mine = coords["micrograph_id"] == mid
        xy = np.stack([coords["x"][mine], coords["y"][mine]], 1)
        true = truth_xy(truth, Path(str(image)).name)
        scores.append(match_picks(xy, true, radius))
        hit = np.zeros(len(xy), bool)
        hit[[i for i, _ in match_pairs(xy, true, radius)]] = True
        matched_fom += list(coords["score"][mine][hit])
        other_fom += list(coords["score"][mine][~hit])
    total = pooled(scores)
    first = np.asarray(mics.column("id"))[0]
    image = read_image(Path(project.path) / str(mics.column("image")[0]))
    mine = coords["micrograph_id"] == first
    fig = Figure(figsize=(11, 5.2), dpi=100)
    ax = fig.add_axes((0.01, 0.04, 0.48, 0.88))
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(np.clip(image, lo, hi), cmap="gray")
    for x, y in zip(coords["x"][mine], coords["y"][mine]):
        ax.add_patch(Circle((x, y), radius, fill=False, ec="#00d0ff", lw=1.2))
    true = truth_xy(truth, Path(str(mics.column("image")[0])).name)
    ax.plot(true[:, 0], true[:, 1], "+", color="#ff4040", ms=9, mew=1.6)
    ax.set_axis_off()
    ax.set_title(f"micrograph 1: {int(mine.sum())} LoG picks (circles), truth (+)", fontsize=10)
    ax2 = fig.add_axes((0.57, 0.12, 0.4, 0.78))
    bins = np.linspace(min(other_fom + matched_fom), max(other_fom + matched_fom), 25)
    ax2.hist(matched_fom, bins, alpha=0.7, label=f"on a true particle ({len(matched_fom)})")
    ax2.hist(other_fom, bins, alpha=0.7, label=f"not ({len(other_fom)})")
    ax2.set_xlabel("RELION's _rlnAutopickFigureOfMerit (hpcem score)")
    ax2.set_ylabel("picks")
    ax2.legend(fontsize=9)
    ax2.set_title(
        f"4 micrographs: precision {total['precision']:.2f}, recall {total['recall']:.2f}, "
        f"F1 {total['f1']:.2f}",
        fontsize=10,
    )
    fig.savefig(out / "relion_autopick_log.png")
    return {"sim": sim.id, "truth": truth, "scores": total}


def figure_extract(project, sim_id: int, truth: dict, workers: int, out: Path) -> dict:
    from matplotlib.figure import Figure

    from hpcem.io import read_image

    refs = truth_sets(project, sim_id, truth)
    inputs = {k: [v] for k, v in refs.items()} | {"micrographs": [f"{sim_id}:micrographs"]}
    ext = run(project, "relion.extract", {"box_size_px": 96}, inputs, workers)
    cols = project.open_set(ext.id, "particles").read_columns()
    stack = read_image(Path(project.path) / str(cols["image"][0]))
    yy, xx = np.mgrid[:96, :96] - 48
    outside = xx**2 + yy**2 > 36**2
    stacks = {str(p) for p in cols["image"]}
    bg = np.concatenate([read_image(Path(project.path) / s)[:, outside].ravel() for s in stacks])
    fig = Figure(figsize=(11, 5.2), dpi=100)
    for k in range(16):
        ax = fig.add_axes((0.01 + (k % 4) * 0.12, 0.7 - (k // 4) * 0.225, 0.115, 0.215))
        ax.imshow(stack[k], cmap="gray")
        ax.set_axis_off()
    fig.text(0.01, 0.96, "16 particles of micrograph 1 (96 px, inverted: white protein)")
    ax = fig.add_axes((0.57, 0.12, 0.4, 0.78))
    ax.hist(bg, bins=80, density=True, alpha=0.7, label="background pixels (r > 36 px)")
    t = np.linspace(-4, 4, 200)
    ax.plot(t, np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi), "k", label="N(0, 1)")
    ax.set_xlim(-4.5, 4.5)
    ax.set_xlabel("pixel value")
    ax.legend(fontsize=9)
    ax.set_title(
        f"{len(cols['id'])} particles: background mean {bg.mean():.3f}, sd {bg.std():.3f}",
        fontsize=10,
    )
    fig.savefig(out / "relion_extract.png")
    return {"particles": len(cols["id"]), "bg_mean": float(bg.mean()), "bg_sd": float(bg.std())}


def figure_motioncorr(project, workers: int, out: Path) -> dict:
    from matplotlib.figure import Figure

    sim = run(
        project,
        "sim.dataset",
        {
            "kind": "movies",
            "n_items": 2,
            "size_px": 512,
            "n_frames": 16,
            "pixel_size_A": 1.0,
            "dose_per_frame_e_A2": 2.0,
            "seed": 5,
        },
        {},
        workers,
    )
    truth = _truth(project, sim.id)
    mc = run(project, "relion.motioncorr", {}, {"movies": [f"{sim.id}:movies"]}, workers)
    movies = project.open_set(sim.id, "movies")
    align = project.open_set(mc.id, "alignments").read_columns()
    by_name = {item["name"]: item for item in truth["items"]}
    fig = Figure(figsize=(11, 4.8), dpi=100)
    rms_all = []
    for k, movie in enumerate(movies.column("image")):
        true = np.asarray(by_name[Path(str(movie)).name]["shifts_px"])
        got = np.stack([align["shifts_x"][k], align["shifts_y"][k]], 1)  # Å = px here
        true = true - true[0]
        got = got - got[0]
        err = got - true
        err -= err.mean(axis=0)
        rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
        rms_all.append(rms)
        ax = fig.add_axes((0.07 + 0.5 * k, 0.12, 0.4, 0.76))
        ax.plot(true[:, 0], true[:, 1], "o-", color="#999999", label="simulated", ms=4)
        ax.plot(got[:, 0], got[:, 1], "s-", color="#d62728", label="relion.motioncorr", ms=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x displacement (px)")
        ax.set_ylabel("y displacement (px)")
        ax.set_title(
            f"movie {k + 1}: RMS error {rms:.2f} px; RELION total motion "
            f"{align['total_drift'][k]:.1f} Å",
            fontsize=10,
        )
        ax.legend(fontsize=9)
    fig.savefig(out / "relion_motioncorr.png")
    return {"rms_px": rms_all}


def figure_reconstruct(project, folder: Path, workers: int, out: Path) -> dict:
    from matplotlib.figure import Figure

    from hpcem.io import read_image

    particles, truth_map = projected_particles(project, folder, n=2000)
    volume = read_image(truth_map)
    rec = run(
        project, "relion.reconstruct", {"half_maps": True}, {"particles": [particles]}, workers
    )
    volumes = project.open_set(rec.id, "volumes").read_columns()
    maps = [read_image(Path(project.path) / str(p)) for p in volumes["image"]]
    curves = [fsc_curve(m, volume) for m in maps]
    freq = np.arange(1, 25) / (48 * 4.0)
    fig = Figure(figsize=(11, 4.4), dpi=100)
    for k, (data, title) in enumerate(((maps[0], "relion.reconstruct"), (volume, "true volume"))):
        ax = fig.add_axes((0.01 + 0.25 * k, 0.08, 0.23, 0.8))
        ax.imshow(data[24], cmap="gray")
        ax.set_axis_off()
        ax.set_title(f"{title}: central section", fontsize=10)
    ax = fig.add_axes((0.57, 0.14, 0.4, 0.76))
    for curve, label in zip(curves, ("map", "half map 1", "half map 2")):
        ax.plot(freq, curve, label=f"{label} vs truth")
    ax.axhline(0.5, color="k", lw=0.6, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC with the true volume")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=9)
    ax.set_title("2,000 particles, 4 Å/px, 48 px (Nyquist 8 Å)", fontsize=10)
    fig.savefig(out / "relion_reconstruct.png")
    return {"volumes": f"{rec.id}:volumes", "fsc_map": [round(float(c), 3) for c in curves[0]]}


def figure_postprocess(project, volumes: str, folder: Path, workers: int, out: Path) -> dict:
    from matplotlib.figure import Figure

    from hpcem.io import read_image, write_mrc

    z, y, x = np.mgrid[:48, :48, :48] - 24
    edge = np.clip((22.0 - np.sqrt(x * x + y * y + z * z)) / 6.0, 0.0, 1.0)
    mask_path = write_mrc(
        folder / "mask.mrc", (0.5 - 0.5 * np.cos(np.pi * edge)).astype(np.float32), 4.0
    )
    run_id = _finished_run(project, "figures.sets", "mask")
    writer = project.create_set(run_id, "mask", "hpcem.SetOfMasks")
    writer.append_columns({"image": [str(mask_path)], "pixel_size_A": [4.0], "box_size": [48]})
    writer.close()
    project.set_output(run_id, "mask", "hpcem.SetOfMasks", 1)
    _finish(project, run_id)
    post = run(
        project,
        "relion.postprocess",
        {"auto_bfactor": False, "bfactor_A2": -200.0},
        {"volumes": [volumes], "mask": [f"{run_id}:mask"]},
        workers,
    )
    fsc = project.open_set(post.id, "fsc").read_columns()
    maps = project.open_set(post.id, "volumes").read_columns()
    fig = Figure(figsize=(11, 4.4), dpi=100)
    ax = fig.add_axes((0.01, 0.08, 0.3, 0.8))
    ax.imshow(read_image(Path(project.path) / str(maps["image"][-1]))[24], cmap="gray")
    ax.set_axis_off()
    ax.set_title("sharpened, masked map: central section", fontsize=10)
    ax = fig.add_axes((0.4, 0.14, 0.57, 0.76))
    for label, freq, curve, res in zip(
        fsc["label"], fsc["frequency"], fsc["fsc"], fsc["resolution_A"]
    ):
        ax.plot(freq[1:], curve[1:], label=f"{label} ({res:.1f} Å at 0.143)")
    ax.axhline(0.143, color="k", lw=0.6, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC between the half maps")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=9)
    fig.savefig(out / "relion_postprocess.png")
    return {"resolution_A": float(fsc["resolution_A"][0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("relion_autopick") is None:
        raise SystemExit("RELION 3.1 is not installed here (apt-get install relion)")
    from hpcem.store import Project

    out = args.out_dir / "protocols" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hpcem-relion-figures-") as tmp:
        project = Project.create(Path(tmp) / "project")
        report = {}
        pick = figure_autopick(project, args.workers, out)
        report["autopick_log"] = pick["scores"]
        report["extract"] = figure_extract(project, pick["sim"], pick["truth"], args.workers, out)
        report["motioncorr"] = figure_motioncorr(project, args.workers, out)
        rec = figure_reconstruct(project, Path(tmp) / "data", args.workers, out)
        report["reconstruct"] = rec["fsc_map"]
        report["postprocess"] = figure_postprocess(
            project, rec["volumes"], Path(tmp) / "data", args.workers, out
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
