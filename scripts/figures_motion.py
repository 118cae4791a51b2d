#!/usr/bin/env python
"""Make docs/protocols/img/motion_align.png from a real ``motion.align`` run.

Four simulated 1024² movies (24 frames, 1.2 e⁻/Å² per frame, 1 Å/px, fixed seeds): three
from ``hpcem.sim.simulate_movie`` (whole-frame drift) and one deformed here with a
smooth local displacement field that grows with time (as tests/science/test_motion.py
does). They are imported by ``import.movies`` and aligned by one ``motion.align`` run with
4x4 patches, in this process (real controller, local workers). Panels: estimated and
true trajectories; per-frame error; rotational power spectra of the unaligned sum and
of the aligned sums (Thon rings come back); local model against the true local motion
of the deformed movie; the trajectory PNG the step drew for it; RMS errors. Prints the
numbers as JSON.

    python scripts/figures_motion.py [--out docs/protocols/img] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

SEED = 2026
SIZE = 1024
N_FRAMES = 24
DOSE = 1.2
PIXEL_A = 1.0
PATCHES = 4
LOCAL_AMPLITUDE_PX = 3.0


def deformed_movie(seed: int):
    """Frames with drift + smooth local motion; truth(x, y, i) -> (dx, dy) px."""
    import scipy.ndimage

    from hpcem.sim import simulate_micrograph

    rng = np.random.default_rng(seed)
    clean, _ = simulate_micrograph((SIZE, SIZE), PIXEL_A, 15000.0, snr=1e6, seed=seed)
    clean = clean.astype(np.float64)
    scale = 10.0 * clean.std()
    steps = np.array([0.5, -0.3]) + 0.3 * rng.standard_normal((N_FRAMES, 2))
    steps[0] = 0.0
    drift = np.cumsum(steps, axis=0)

    def truth(x, y, i):
        xn, yn = (x - SIZE / 2) / (SIZE / 2), (y - SIZE / 2) / (SIZE / 2)
        tau = i / (N_FRAMES - 1)
        lx = LOCAL_AMPLITUDE_PX * tau**1.5 * yn * (1 - 0.3 * xn)
        ly = -0.8 * LOCAL_AMPLITUDE_PX * tau * xn**2
        return drift[i, 0] + lx, drift[i, 1] + ly

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    frames = np.empty((N_FRAMES, SIZE, SIZE), dtype=np.float32)
    for i in range(N_FRAMES):
        dx, dy = truth(xx, yy, i)
        image = scipy.ndimage.map_coordinates(clean, [yy - dy, xx - dx], order=3, mode="grid-wrap")
        frames[i] = rng.poisson(np.clip(DOSE * PIXEL_A**2 * (1 + image / scale), 0, None))
    return frames, truth


def rms(err: np.ndarray) -> float:
    err = err - err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=-1))))


def radial_power(image: np.ndarray, n_bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    k = np.hypot(np.fft.fftfreq(image.shape[0])[:, None], np.fft.rfftfreq(image.shape[1]))
    idx = np.minimum((k / 0.5 * n_bins).astype(int), n_bins)
    total = np.bincount(idx.ravel(), spectrum.ravel(), n_bins + 1)[:n_bins]
    count = np.bincount(idx.ravel(), None, n_bins + 1)[:n_bins]
    return (np.arange(n_bins) + 0.5) / n_bins * 0.5, total / np.maximum(count, 1)


def make(work: Path, out_dir: Path, workers: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from make_protocol_figures import _save, run_protocol

    from hpcem.io import read_image, write_mrc
    from hpcem.motion import local
    from hpcem.sim import simulate_movie
    from hpcem.store import Project

    raw = work / "raw"
    raw.mkdir(parents=True)
    truths, raw_sums = {}, {}
    for i in range(3):
        frames, t = simulate_movie(
            (SIZE, SIZE), N_FRAMES, PIXEL_A, DOSE, (0.5, -0.3), 0.3, seed=SEED + i
        )
        write_mrc(raw / f"movie_{i}.mrcs", frames, PIXEL_A, kind="movie")
        truths[i] = t["shifts_px"]
        raw_sums[i] = frames.sum(axis=0)
    frames, deformed_truth = deformed_movie(SEED + 3)
    write_mrc(raw / "movie_3.mrcs", frames, PIXEL_A, kind="movie")
    del frames

    project = Project.create(work / "proj")
    imp = run_protocol(
        project,
        "import.movies",
        {"files": str(raw / "*.mrcs"), "pixel_size_A": PIXEL_A, "dose_per_frame_e_A2": DOSE},
    )
    run = run_protocol(
        project,
        "motion.align",
        {"patches": PATCHES, "save_nodw": True},
        {"movies": [f"{imp.id}:movies"]},
        workers=workers,
    )
    ali = project.open_set(run.id, "alignments").read_columns()
    mics = project.open_set(run.id, "micrographs")
    images, nodw = list(mics.column("image")), list(mics.column("image_nodw"))
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    results = [steps[f"align/{i:06d}"]["result"] for i in range(4)]

    numbers = {"run": run.id, "movies": []}
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 7.2), layout="constrained")
    ax = axes[0, 0]
    est0 = np.stack([ali["shifts_x"][0], ali["shifts_y"][0]], 1) / PIXEL_A
    ax.plot(truths[0][:, 0], truths[0][:, 1], "o-", color="0.6", ms=6, label="simulated")
    ax.plot(est0[:, 0], est0[:, 1], ".-", color="C3", ms=5, label="motion.align")
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title("movie 0: trajectory (frame 0 at 0)", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for i in range(3):
        est = np.stack([ali["shifts_x"][i], ali["shifts_y"][i]], 1) / PIXEL_A
        err = est - truths[i]
        err -= err.mean(axis=0)
        ax.plot(np.hypot(err[:, 0], err[:, 1]), ".-", label=f"movie {i}: RMS {rms(err):.3f} px")
        numbers["movies"].append(
            {
                "movie": i,
                "rms_error_px": rms(est - truths[i]),
                "local_kept": bool(ali["local"][i]),
                "local_f": results[i]["local_f"],
                "local_cv_gain": results[i]["local_cv_gain"],
                "total_drift_A": float(ali["total_drift"][i]),
                "seconds": results[i]["seconds"]["total"],
            }
        )
    ax.set_xlabel("frame")
    ax.set_ylabel("|error| (px)")
    ax.set_title("global shifts: error per frame", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    for label, image, style in (
        ("sum without alignment", raw_sums[0], "0.6"),
        ("aligned, not weighted", read_image(nodw[0]), "C0"),
        ("aligned, dose-weighted", read_image(images[0]), "C3"),
    ):
        k, p = radial_power(image)
        ax.semilogy(k, p / p[k > 0.45].mean(), color=style, lw=1, label=label)
    ax.set_xlabel("spatial frequency (1/px)")
    ax.set_ylabel("power / power near Nyquist")
    ax.set_xlim(0.02, 0.5)
    ax.set_title("movie 0: rotational power spectrum", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    model = local.LocalModel(
        coefficients=np.array(ali["local_coefficients"][3]).reshape(2, local.N_SPATIAL, 3)
        if ali["local"][3]
        else np.zeros((2, local.N_SPATIAL, 3)),
        shape=(SIZE, SIZE),
        n_frames=N_FRAMES,
        accepted=bool(ali["local"][3]),
        f_statistic=results[3]["local_f"] or 0.0,
        cv_gain=0.0,
        ridge=0.0,
        fit_rms_px=0.0,
        n_outliers=0,
        centres_px=np.zeros((0, 2)),
        patch_residuals_px=np.zeros((0, N_FRAMES, 2)),
    )
    grid = np.linspace(0.1 * SIZE, 0.9 * SIZE, 6)
    gx, gy = np.meshgrid(grid, grid)
    last = N_FRAMES - 1
    est3 = np.stack([ali["shifts_x"][3], ali["shifts_y"][3]], 1) / PIXEL_A
    tx, ty = deformed_truth(gx, gy, last)
    true_local = (tx - tx.mean(), ty - ty.mean())
    lx, ly = model.displacement(gx, gy, last)
    fitted_local = (lx - lx.mean(), ly - ly.mean())
    ax.quiver(gx, gy, *true_local, color="0.6", angles="xy", scale_units="xy", scale=0.02)
    ax.quiver(gx, gy, *fitted_local, color="C3", angles="xy", scale_units="xy", scale=0.02)
    ax.set_xlim(0, SIZE)
    ax.set_ylim(SIZE, 0)
    ax.set_aspect("equal")
    ax.set_title("movie 3, last frame: local motion (grey true, red fitted; x50)", fontsize=9)

    errs_g, errs_l = [], []
    for i in range(N_FRAMES):
        tx, ty = deformed_truth(gx, gy, i)
        lx, ly = model.displacement(gx, gy, i)
        errs_g.append(np.stack([est3[i, 0] - tx, est3[i, 1] - ty], -1).reshape(-1, 2))
        errs_l.append(np.stack([est3[i, 0] + lx - tx, est3[i, 1] + ly - ty], -1).reshape(-1, 2))
    numbers["deformed_movie"] = {
        "global_only_rms_px": rms(np.concatenate(errs_g)),
        "with_local_model_rms_px": rms(np.concatenate(errs_l)),
        "local_kept": bool(ali["local"][3]),
        "local_f": results[3]["local_f"],
        "local_cv_gain": results[3]["local_cv_gain"],
        "seconds": results[3]["seconds"],
    }

    ax = axes[1, 1]
    ax.imshow(plt.imread(ali_plot_path(project, run.id, ali["plot"][3])))
    ax.set_axis_off()
    ax.set_title("the step's own trajectory picture (movie 3)", fontsize=9)

    ax = axes[1, 2]
    labels = [f"movie {m['movie']}" for m in numbers["movies"]] + [
        "movie 3\nglobal",
        "movie 3\nlocal",
    ]
    values = [m["rms_error_px"] for m in numbers["movies"]] + [
        numbers["deformed_movie"]["global_only_rms_px"],
        numbers["deformed_movie"]["with_local_model_rms_px"],
    ]
    ax.bar(range(len(values)), values, color=["C0"] * 3 + ["0.6", "C3"])
    ax.axhline(0.3, color="k", lw=0.8, ls="--")
    ax.text(0, 0.31, "0.3 px target", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("RMS shift error (px)")
    ax.set_title("error against the simulated truth", fontsize=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers["png_bytes"] = _save(fig, out_dir / "motion_align.png")
    return numbers


def ali_plot_path(project, run_id: int, stored) -> str:
    """A plot path from the set: absolute, or relative to the project folder."""
    path = Path(str(stored))
    return str(path if path.is_absolute() else Path(project.path) / path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "protocols" / "img")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="hpcem-motion-fig-") as tmp:
            numbers = make(Path(tmp), args.out, args.workers)
    else:
        numbers = make(args.work, args.out, args.workers)
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
