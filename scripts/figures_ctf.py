#!/usr/bin/env python
"""Make the pictures of the CTF pages from real hpcem runs on simulated data.

    python scripts/figures_ctf.py [--out-dir docs] [--workers 2]

One project in a temporary folder: seven simulated 2048-px micrographs at 1.2 Å/px
(300 kV, Cs 2.7 mm, amplitude contrast 0.1, SNR 0.1, known defocus 0.9–3.3 µm and
astigmatism; the seventh at SNR 0.006 with a B-factor of 150 Å², too noisy for a
trustworthy fit) go through
``import.micrographs``, ``ctf.estimate`` and ``ctf.fit2d`` (each with
``min_fit_score = -1`` so that every fit is kept) and ``ctf.consensus`` of the two. It
writes

* ``protocols/img/ctf_fit2d.png``: the diagnostic PNG of ``ctf.fit2d`` on the first
  micrograph (as written by the step), estimated against true defocus U and V for both
  strategies, and the astigmatism angle error;
* ``protocols/img/ctf_estimate_diagnostic.png``: the diagnostic PNG of ``ctf.estimate``
  on the same micrograph (the step's own file);
* ``protocols/img/ctf_consensus.png``: the consensus resolution of each micrograph with
  the threshold (``ctf.consensus`` of ``ctf.fit2d`` against ``ctf.estimate``), and the
  largest phase difference over the azimuth against frequency for the best- and
  worst-agreeing pairs;
* ``img/ctf_krios_diagnostic.png``: the diagnostic PNG of ``ctf.estimate`` on the real
  Krios micrograph ``../shared/data/mrcfile-1.5.4/fei-extended.mrc`` (skipped if absent).

Fixed seeds: the same code gives the same pictures.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KRIOS = REPO.parent / "shared" / "data" / "mrcfile-1.5.4" / "fei-extended.mrc"
PIXEL_A = 1.2
# (mean defocus Å, U − V Å, angle deg, SNR, B-factor Å²)
CASES = [
    (9000.0, 400.0, 20.0, 0.1, 60.0),
    (13000.0, 800.0, 110.0, 0.1, 60.0),
    (17000.0, 300.0, 160.0, 0.1, 60.0),
    (21000.0, 1200.0, 75.0, 0.1, 60.0),
    (26000.0, 600.0, 45.0, 0.1, 60.0),
    (33000.0, 900.0, 135.0, 0.1, 60.0),
    (15000.0, 500.0, 60.0, 0.006, 150.0),  # too noisy for a trustworthy fit
]


def run(project, name: str, params: dict, inputs: dict, workers: int):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def simulate(raw: Path) -> dict:
    from hpcem.io import write_mrc
    from hpcem.sim import simulate_micrograph

    truth = {}
    for i, (mean, astig, angle, snr, b_factor) in enumerate(CASES):
        u, v = mean + 0.5 * astig, mean - 0.5 * astig
        image, _ = simulate_micrograph(
            (2048, 2048), PIXEL_A, u, v, angle, snr=snr, b_factor_A2=b_factor, seed=300 + i
        )
        name = f"mic_{i}.mrc"
        write_mrc(raw / name, image, PIXEL_A)
        truth[name] = {"u": u, "v": v, "angle": angle, "snr": snr}
    return truth


def read_png(path: str) -> np.ndarray:
    import matplotlib.pyplot as plt

    return plt.imread(path)


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


def figure_fit2d(est, fit, names, truth, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), layout="constrained")
    ctfs = {k: r.outputs["ctfs"].read_columns() for k, r in (("estimate", est), ("fit2d", fit))}
    first = ctfs["fit2d"]
    axes[0].imshow(read_png(first["thumbnail"][0]))
    axes[0].set_axis_off()
    mid = int(first["micrograph_id"][0])
    axes[0].set_title(
        f"ctf.fit2d diagnostic, {names[mid]}\nspectrum (left, red: fitted CTF zeros) | model",
        fontsize=9,
    )
    ax = axes[1]
    markers = {"estimate": ("o", "tab:blue"), "fit2d": ("x", "tab:red")}
    for key, cols in ctfs.items():
        true_u = [truth[names[int(m)]]["u"] for m in cols["micrograph_id"]]
        true_v = [truth[names[int(m)]]["v"] for m in cols["micrograph_id"]]
        marker, colour = markers[key]
        ax.scatter(true_u, cols["defocus_u"], marker=marker, color=colour, label=f"ctf.{key} U")
        ax.scatter(
            true_v, cols["defocus_v"], marker=marker, color=colour, alpha=0.45, label=f"ctf.{key} V"
        )
    lim = [7000, 36000]
    ax.plot(lim, lim, color="gray", lw=0.8)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("true defocus (Å)")
    ax.set_ylabel("estimated defocus (Å)")
    ax.legend(fontsize=8)
    ax.set_title("estimated vs true defocus U and V (7 micrographs)", fontsize=9)
    ax = axes[2]
    for key, cols in ctfs.items():
        rows = []
        for m, u, v, a in zip(
            cols["micrograph_id"], cols["defocus_u"], cols["defocus_v"], cols["defocus_angle"]
        ):
            t = truth[names[int(m)]]
            rows.append(
                (
                    100 * (u - t["u"]) / t["u"],
                    100 * (v - t["v"]) / t["v"],
                    (a - t["angle"] + 90) % 180 - 90,
                )
            )
        rows = np.array(rows)
        marker, colour = markers[key]
        x = np.arange(len(rows)) + (0.15 if key == "fit2d" else -0.15)
        ax.scatter(x, rows[:, 1], marker=marker, color=colour, label=f"ctf.{key} V error (%)")
        ax.scatter(
            x,
            rows[:, 2] / 10,
            marker="s",
            facecolor="none",
            edgecolor=colour,
            label=f"ctf.{key} angle error (°/10)",
        )
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylim(-7, 7)
    ax.set_xlabel("micrograph (the last one at SNR 0.006: ctf.fit2d only)")
    ax.set_title("defocus V error (%) and angle error (tenths of a degree)", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out)


def figure_consensus(con, est, fit, names, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpcem.ctf.model import electron_wavelength_A

    acc = con.outputs["accepted"].read_columns()
    rej = con.outputs["rejected"].read_columns()
    threshold = 15.0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    ax = axes[0]
    for cols, colour, label in ((acc, "tab:green", "accepted"), (rej, "tab:red", "rejected")):
        values = np.asarray(cols["consensus_resolution"], dtype=float)
        ids = np.array([int(m) for m in cols["micrograph_id"]])
        finite = np.isfinite(values)
        if finite.any():
            ax.scatter(ids[finite], values[finite], color=colour, label=label, s=40)
        for mid in ids[~finite]:  # no partner: no consensus resolution
            ax.scatter([mid], [2 * threshold], color=colour, marker="x", s=60)
            ax.annotate(
                "no partner\n(ctf.estimate\nrejected it)",
                (mid, 2 * threshold),
                textcoords="offset points",
                xytext=(-60, -38),
                fontsize=8,
            )
    ax.axhline(threshold, color="gray", ls="--", lw=1, label="resolution_A = 15 Å")
    ax.set_yscale("log")
    ax.set_xlabel("micrograph id")
    ax.set_ylabel("consensus resolution (Å, 90° phase difference)")
    ax.set_title(f"ctf.consensus (run {con.id}) of ctf.fit2d vs ctf.estimate", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[1]
    a = fit.outputs["ctfs"].read_columns()
    b = est.outputs["ctfs"].read_columns()
    row_b = {int(m): i for i, m in enumerate(b["micrograph_id"])}
    lam = electron_wavelength_A(300.0)
    k = np.linspace(0.0, 1 / 3.0, 400)
    alpha = np.linspace(0, np.pi, 361)[:, None]
    cons = {int(m): r for m, r in zip(acc["micrograph_id"], acc["consensus_resolution"])}
    cons |= {int(m): r for m, r in zip(rej["micrograph_id"], rej["consensus_resolution"])}
    cons = {m: float(r) for m, r in cons.items() if np.isfinite(r)}
    order = sorted(cons, key=lambda m: cons[m])
    for mid, style in ((order[0], "-"), (order[-1], "--")):
        i, j = list(a["micrograph_id"]).index(mid), row_b[mid]

        def dfoc(c, n):
            t = math.radians(float(c["defocus_angle"][n]))
            u, v = float(c["defocus_u"][n]), float(c["defocus_v"][n])
            return u * np.cos(alpha - t) ** 2 + v * np.sin(alpha - t) ** 2

        diff = np.abs(math.pi * lam * (dfoc(a, i) - dfoc(b, j)) * k[None, :] ** 2).max(axis=0)
        ax.plot(k, np.degrees(diff), style, label=f"{names[mid]}: {cons[mid]:.2f} Å")
    ax.set_ylim(0, 10)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("max over azimuth |Δγ| (degrees)")
    ax.set_title(
        "phase difference of the two estimates to 3 Å: best and worst pair (90° is far beyond)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    save(fig, out)


def krios_diagnostic(out: Path) -> dict | None:
    from hpcem.ctf.diagnostic import diagnostic_image, write_diagnostic_png
    from hpcem.ctf.estimate import estimate_ctf, load_micrograph

    if not KRIOS.is_file():
        return None
    image, px = load_micrograph(KRIOS)
    fit = estimate_ctf(image, px, return_spectrum=True)
    rgb = diagnostic_image(
        fit.pop("spectrum"),
        px,
        fit["tile_size_px"],
        fit,
        300.0,
        2.7,
        0.1,
        30.0,
        fit["res_high_A"],
    )
    write_diagnostic_png(out, rgb)
    return {k: fit[k] for k in ("defocus_u", "defocus_v", "defocus_angle", "fit_resolution_A")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from hpcem.store import Project

    img = args.out_dir / "protocols" / "img"
    img.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "img").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        truth = simulate(raw)
        project = Project.create(Path(tmp) / "proj")
        imp = run(
            project,
            "import.micrographs",
            {"files": str(raw / "*.mrc"), "pixel_size_A": PIXEL_A},
            {},
            args.workers,
        )
        mics = imp.outputs["micrographs"]
        names = {int(i): Path(p).name for i, p in zip(mics.column("id"), mics.column("image"))}
        inputs = {"micrographs": [f"{imp.id}:micrographs"]}
        est = run(project, "ctf.estimate", {"min_fit_score": -1.0}, inputs, args.workers)
        fit = run(project, "ctf.fit2d", {"min_fit_score": -1.0}, inputs, args.workers)
        # ctf.fit2d keeps the noisy micrograph (min_fit_score -1); ctf.estimate rejects it
        # (its sectors disagree), so it has no partner in the consensus.
        con = run(
            project,
            "ctf.consensus",
            {},
            {"ctfs": [f"{fit.id}:ctfs"], "other_ctfs": [f"{est.id}:ctfs"]},
            args.workers,
        )
        figure_fit2d(est, fit, names, truth, img / "ctf_fit2d.png")
        figure_consensus(con, est, fit, names, img / "ctf_consensus.png")
        shutil.copyfile(
            est.outputs["ctfs"].column("thumbnail")[0], img / "ctf_estimate_diagnostic.png"
        )
        summary = {
            key: {
                names[int(m)]: [round(float(x), 1) for x in (u, v, a, s, r)]
                for m, u, v, a, s, r in zip(
                    *(
                        run_.outputs["ctfs"].column(c)
                        for c in (
                            "micrograph_id",
                            "defocus_u",
                            "defocus_v",
                            "defocus_angle",
                            "fit_score",
                            "fit_resolution",
                        )
                    )
                )
            }
            for key, run_ in (("ctf.estimate", est), ("ctf.fit2d", fit))
        }
        summary["consensus"] = {
            names[int(m)]: round(float(r), 2)
            for out in ("accepted", "rejected")
            for m, r in zip(
                con.outputs[out].column("micrograph_id"),
                con.outputs[out].column("consensus_resolution"),
            )
        }
    summary["krios"] = krios_diagnostic(args.out_dir / "img" / "ctf_krios_diagnostic.png")
    summary["truth"] = truth
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
