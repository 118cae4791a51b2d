#!/usr/bin/env python
"""Make the picture of the ``sim.dataset`` page: docs/protocols/img/sim_dataset.png.

Two real ``sim.dataset`` runs in a temporary project, in the foreground of this process
(fixed seeds: same picture every time), on the model shipped with hpcem (PDB 7DDO):

* a micrograph run (1024 px, 1.2 Å/px, SNR 0.1): (a) the first micrograph, low-passed to
  20 Å for the eye, with the true particle centres from ground_truth.json circled;
  (b) six of its particles cut out at the true centres (top) above the projections of
  the model at their true Euler angles, filtered by the true CTF (bottom); (c) the
  rotational average of its power spectrum against the true CTF², zeros marked;
* a movie run (24 frames, 1.5 e⁻/Å² per frame, local motion): (d) the true global drift
  and the true local displacement at 3×3 positions of the image, scaled ×40.

    python scripts/figures_sim.py [--out docs/protocols/img/sim_dataset.png]

Uses matplotlib (Agg backend).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "protocols" / "img" / "sim_dataset.png"
DPI = 80
SEED = 2026


def run_protocol(project, name: str, params: dict):
    from hpcem.execution.runs import create_run, launch

    run = create_run(project, name, params, {})
    done = launch(project, run.id, 2, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {run.id} ({name}) ended {done.state}: {done.error}")
    return done


def _low_pass(image: np.ndarray, pixel_size_A: float, resolution_A: float) -> np.ndarray:
    ft = np.fft.rfft2(image - image.mean())
    ky = np.fft.fftfreq(image.shape[0], pixel_size_A)[:, None]
    kx = np.fft.rfftfreq(image.shape[1], pixel_size_A)[None, :]
    ft *= np.exp(-0.5 * (np.hypot(ky, kx) * resolution_A) ** 2)
    return np.fft.irfft2(ft, s=image.shape)


def make_figure(work: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from hpcem.ctf.estimate import radial_profile, tiled_power_spectrum
    from hpcem.ctf.model import ctf_1d, ctf_2d, ctf_zeros_1d
    from hpcem.io.images import read_image
    from hpcem.sim.movie import displacement_px
    from hpcem.sim.projection import project
    from hpcem.sim.truth import read_truth
    from hpcem.sim.volume import load_volume
    from hpcem.store import Project

    px = 1.2
    project_ = Project.create(work / "proj")
    mic_run = run_protocol(
        project_,
        "sim.dataset",
        {"kind": "micrographs", "n_items": 2, "size_px": 1024, "pixel_size_A": px, "seed": SEED},
    )
    movie_run = run_protocol(
        project_,
        "sim.dataset",
        {
            "kind": "movies",
            "n_items": 1,
            "size_px": 512,
            "pixel_size_A": px,
            "n_frames": 24,
            "local_motion_px": 2.0,
            "seed": SEED,
        },
    )
    mic_truth = read_truth(project_.run_dir(mic_run.id) / "data")
    movie_truth = read_truth(project_.run_dir(movie_run.id) / "data")
    mics = project_.open_set(mic_run.id, "micrographs")
    image = read_image(mics.column("image")[0])
    item = mic_truth["items"][0]
    xs, ys = np.array(item["particles"]["x"]), np.array(item["particles"]["y"])

    fig = plt.figure(figsize=(17, 8.5))
    grid = fig.add_gridspec(
        2, 4, width_ratios=[1.6, 1.0, 1.0, 1.0], hspace=0.3, wspace=0.3, left=0.02, right=0.98
    )
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(_low_pass(image, px, 20.0), cmap="gray")
    for x, y in zip(xs, ys):
        ax.add_patch(Circle((x, y), 0.5 * 131 / px, fill=False, color="tab:orange", lw=1))
    ax.set_title(
        f"(a) {item['name']}: U {item['defocus_u']:.0f} Å, V {item['defocus_v']:.0f} Å, "
        f"{item['defocus_angle']:.0f}°\nSNR 0.1, low-passed to 20 Å; circles: true centres",
        fontsize=10,
    )
    ax.set_xticks([])
    ax.set_yticks([])

    # (b) particles at their true centres vs the CTF-filtered projections at their true angles
    volume = load_volume(None, px)
    n = volume.box_px
    ctf = ctf_2d(
        (n, n),
        px,
        item["defocus_u"],
        item["defocus_v"],
        item["defocus_angle"],
        b_factor_A2=60.0,
        half=True,
    )
    inner = [
        i
        for i, (x, y) in enumerate(zip(xs, ys))
        if n // 2 <= x < image.shape[1] - n // 2 and n // 2 <= y < image.shape[0] - n // 2
    ][:6]
    sub = grid[0, 1:].subgridspec(2, len(inner), hspace=0.05, wspace=0.05)
    smooth = _low_pass(image, px, 8.0)
    for col, i in enumerate(inner):
        ix, iy = int(np.floor(xs[i])), int(np.floor(ys[i]))
        cut = smooth[iy - n // 2 : iy + n - n // 2, ix - n // 2 : ix + n - n // 2]
        angles = np.array(
            [[item["particles"][k][i] for k in ("rot", "tilt", "psi")]], dtype=np.float64
        )
        proj = project(volume, angles, np.array([[xs[i] - ix, ys[i] - iy]]))[0]
        model = np.fft.irfft2(np.fft.rfft2(proj) * ctf, s=(n, n))
        for row, img in enumerate((cut, _low_pass(model, px, 8.0))):
            a = fig.add_subplot(sub[row, col])
            a.imshow(img, cmap="gray")
            a.set_xticks([])
            a.set_yticks([])
            if row == 1:
                a.set_xlabel(
                    f"{angles[0, 0]:.0f}/{angles[0, 1]:.0f}/{angles[0, 2]:.0f}", fontsize=8
                )
    fig.text(
        0.66,
        0.95,
        "(b) top: particles cut at the true centres (8 Å low-pass); bottom: model projected "
        "at the true\nEuler angles (rot/tilt/psi) through the true CTF — from ground_truth.json",
        ha="center",
        fontsize=10,
    )

    # (c) power spectrum vs true CTF²
    ax = fig.add_subplot(grid[1, 1])
    tile = 512
    profile = radial_profile(tiled_power_spectrum(image, tile))
    k = np.arange(len(profile)) / (tile * px)
    band = (k > 1 / 40) & (k < 1 / 4)
    mean_defocus = 0.5 * (item["defocus_u"] + item["defocus_v"])
    model = ctf_1d(k, mean_defocus, b_factor_A2=0.0) ** 2
    data = profile[band] - np.convolve(profile[band], np.ones(15) / 15, mode="same")
    ax.plot(k[band], data / np.abs(data).max(), lw=1, label="spectrum (background removed)")
    ax.plot(k[band], model[band] - 0.5 - 1.2, lw=1, label="true CTF² (offset)")
    for z in ctf_zeros_1d(12, mean_defocus):
        if k[band][0] < z < k[band][-1]:
            ax.axvline(z, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_yticks([])
    ax.set_title("(c) rotational average vs true CTF² (zeros dotted)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")

    # (d) true drift and (e) local motion of the movie
    ax = fig.add_subplot(grid[1, 2])
    movie = movie_truth["items"][0]
    shifts = np.array(movie["shifts_px"])
    ax.plot(shifts[:, 0], shifts[:, 1], "o-", ms=3)
    ax.plot(*shifts[0], "ks", ms=5, label="frame 0")
    ax.set_xlabel("dx (px)")
    ax.set_ylabel("dy (px)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("(d) movie: true global drift, 24 frames", fontsize=10)
    ax.legend(fontsize=8, loc="best")

    ax = fig.add_subplot(grid[1, 3])
    size = 512
    gx, gy = np.meshgrid(np.linspace(32, size - 32, 6), np.linspace(32, size - 32, 6))
    last = len(shifts) - 1
    local = displacement_px(movie, gx, gy, last) - shifts[last][:, None, None]
    ax.quiver(gx, gy, local[0], local[1], angles="xy", scale_units="xy", scale=1 / 25, width=0.006)
    peak = float(np.hypot(local[0], local[1]).max())
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(
        f"(e) true local motion at the last frame\n(arrows ×25; largest shown {peak:.1f} px)",
        fontsize=10,
    )

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    from PIL import Image

    Image.open(buf).convert("RGB").quantize(256).save(out, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        make_figure(Path(work), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
