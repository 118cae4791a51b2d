#!/usr/bin/env python
"""Make the picture of each built-in protocol's page in docs/protocols/img/.

Every picture comes from a real hpcem run, in the foreground of this process, on small
simulated data with known ground truth (:mod:`hpcem.sim` and phantoms made here):

* ``import_micrographs.png``: binned thumbnails of six imported micrographs, with their ids;
* ``ctf_estimate.png``: the power spectrum of one micrograph with the fitted CTF² in the
  other half, its rotational average against the model, and estimated vs true defocus;
* ``import_movies.png``: first frame, frame sum, sum aligned with the true shifts, and
  the true per-frame drift of an imported movie;
* ``import_volumes.png``: three central orthogonal slices of an imported phantom map;
* ``particles_average_mpi.png``: particles of a noisy stack next to their MPI average.

Fixed seeds: the same code gives the same numbers. ``--tables`` prints instead the
Markdown tables (inputs, parameters, outputs, citations) of each declaration, from
``Protocol.to_json()``, as pasted into the pages.

Uses matplotlib (a dependency of hpcem: steps draw their own diagnostic pictures).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "docs" / "protocols" / "img"
SEED = 2026
DPI = 80

# The micrographs of import.micrographs and ctf.estimate.
N_MICROGRAPHS = 6
MIC_SIZE_PX = 2048  # 1024 px gives nine 512-px tiles: too few for rings to show in 2D
MIC_PIXEL_A = 1.2


# --- declarations as Markdown ----------------------------------------------------------------
def _cell(value) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _range(p: dict) -> str:
    lo, hi = p["min"], p["max"]
    if p["choices"]:
        return "one of " + ", ".join(f"`{c}`" for c in p["choices"])
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"≥ {lo:g}"
    if lo is None:
        return f"≤ {hi:g}"
    return f"{lo:g} – {hi:g}"


def declaration_tables(name: str) -> str:
    """Markdown tables of one protocol's inputs, parameters, outputs and citations,
    from ``Protocol.to_json()`` (the declaration ``hpcem protocols NAME --json`` shows)."""
    from hpcem.protocol.registry import get_protocol

    decl = get_protocol(name).to_json()
    lines = []
    if decl["inputs"]:
        lines += [
            "**Inputs** (`--input NAME=RUN:OUTPUT`)",
            "",
            "| name | accepted types | required | help |",
            "|---|---|---|---|",
        ]
        for i in decl["inputs"]:
            req = ("yes" if i["required"] else "no") + (", several" if i["many"] else "")
            lines.append(
                f"| `{i['name']}` | {', '.join(f'`{t}`' for t in i['types'])} | {req} | "
                f"{_cell(i['help'])} |"
            )
        lines.append("")
    lines += [
        "**Parameters**",
        "",
        "| name | option | type | default | range | units | help |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in decl["params"]:
        dashed = p["name"].replace("_", "-")
        option = f"`--{dashed}` / `--no-{dashed}`" if p["kind"] == "bool" else f"`--{dashed}`"
        default = "required" if p["required"] else f"`{p['default']}`"
        expert = " *(expert)*" if p["expert"] else ""
        lines.append(
            f"| `{p['name']}` | {option} | {p['kind']} | {default} | {_range(p)} | "
            f"{_cell(p['units'])} | {_cell(p['help'])}{expert} |"
        )
    lines += ["", "**Outputs**", "", "| name | type | help |", "|---|---|---|"]
    lines += [f"| `{o['name']}` | `{o['type']}` | {_cell(o['help'])} |" for o in decl["outputs"]]
    lines += ["", "**Citations**", ""]
    for c in decl["citations"]:
        lines += [f"BibTeX key `{c['key']}`:", "", "```bibtex", c["bibtex"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# --- running protocols -----------------------------------------------------------------------
def run_protocol(project, name: str, params: dict, inputs: dict | None = None, workers: int = 2):
    """Create and run a protocol in this process; the finished run record."""
    from hpcem.execution.runs import create_run, launch

    run = create_run(project, name, params, inputs or {})
    done = launch(project, run.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {run.id} ({name}) ended {done.state}: {done.error}")
    return done


# --- figures ---------------------------------------------------------------------------------
def _save(fig, path: Path, colors: int | None = 256) -> int:
    """Save as a palette PNG of ``colors`` colours (grey images and a few plot colours;
    a noisy grey image takes ~3x less room than in RGBA), or RGB with ``colors=None``."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    buf.seek(0)
    image = Image.open(buf).convert("RGB")
    if colors is not None:
        image = image.quantize(
            colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    image.save(path, format="PNG", optimize=True)
    return path.stat().st_size


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    ny, nx = (s // factor * factor for s in image.shape)
    return image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))


def _grey(ax, image: np.ndarray, title: str, clip_sd: float = 3.0) -> None:
    mean, sd = float(image.mean()), float(image.std()) or 1.0
    ax.imshow(
        image,
        cmap="gray",
        vmin=mean - clip_sd * sd,
        vmax=mean + clip_sd * sd,
        origin="lower",
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def simulate_micrographs(raw: Path) -> dict[str, dict]:
    """Six micrographs with known defocus (as ``hpcem demo`` makes them); truth by file name."""
    from hpcem.io.mrc import write_mrc
    from hpcem.sim import simulate_micrograph

    rng = np.random.default_rng(SEED)
    truth = {}
    for i in range(N_MICROGRAPHS):
        u = float(rng.uniform(9000, 30000))
        v = u - float(rng.uniform(0, 1500))
        angle = float(rng.uniform(0, 180))
        image, t = simulate_micrograph(
            (MIC_SIZE_PX, MIC_SIZE_PX),
            pixel_size_A=MIC_PIXEL_A,
            defocus_u_A=u,
            defocus_v_A=v,
            angle_deg=angle,
            n_particles=120,
            seed=SEED + i,
        )
        name = f"mic_{i:03d}.mrc"
        write_mrc(raw / name, image, MIC_PIXEL_A)
        truth[name] = t
    return truth


def figure_import_micrographs(run, out: Path) -> int:
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    from hpcem.io.images import read_image

    mics = run.outputs["micrographs"]
    ids, paths = mics.column("id"), mics.column("image")
    pixel = float(mics.optics["pixel_size_A"][0])
    fig, axes = plt.subplots(2, 3, figsize=(7.2, 5.4), layout="constrained")
    for ax, mid, path in zip(axes.flat, ids, paths):
        image = read_image(path)
        shape = image.shape
        # Binned 4x and smoothed a little: the particles show, and the PNG stays small.
        _grey(ax, gaussian_filter(_bin(image, 8), 0.7), f"id {int(mid)}: {Path(path).name}")
    fig.suptitle(
        f"import.micrographs (run {run.id}): the {len(ids)} micrographs of its set "
        f"'micrographs'\nsimulated, {shape[1]}×{shape[0]} px, {pixel:.3g} Å/px; "
        f"shown binned 8×",
        fontsize=10,
    )
    return _save(fig, out, colors=48)


def _full_spectrum(half: np.ndarray) -> np.ndarray:
    """The centred full power spectrum from the rfft half plane of tiled_power_spectrum."""
    tile = half.shape[0]
    c = tile // 2
    full = np.empty((tile, tile))
    full[:, c:] = half[:, : tile - c]
    # Point symmetry: P(ky, -kx) = P(-ky, kx); row index iy of ky maps to 2c - iy.
    rows = (2 * c - np.arange(tile)) % tile
    full[:, :c] = half[rows][:, c:0:-1]
    return full


def _per_radius(image: np.ndarray) -> np.ndarray:
    """Divide a centred spectrum by its root-mean-square at each radius (1-px rings)."""
    from scipy.ndimage import gaussian_filter1d

    n = image.shape[0]
    y, x = np.indices(image.shape) - n // 2
    ring = np.hypot(y, x).astype(np.intp)
    counts = np.bincount(ring.ravel())
    rms = np.sqrt(np.bincount(ring.ravel(), (image * image).ravel()) / np.maximum(counts, 1))
    rms = gaussian_filter1d(rms, 3.0) + 1e-30
    return image / rms[ring]


def _flatten(profile: np.ndarray, sigma: float) -> np.ndarray:
    """Subtract a smooth background and divide by the local spread (for display)."""
    from scipy.ndimage import gaussian_filter, gaussian_filter1d

    smooth = gaussian_filter1d if profile.ndim == 1 else gaussian_filter
    detail = profile - smooth(profile, sigma, mode="nearest")
    return detail / np.sqrt(smooth(detail * detail, sigma, mode="nearest") + 1e-30)


def figure_ctf_estimate(imp_run, ctf_run, truth: dict, out: Path) -> int:
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    from hpcem.ctf.estimate import radial_profile, tiled_power_spectrum
    from hpcem.ctf.model import ctf_1d, ctf_2d
    from hpcem.io.images import read_image

    tile = 512
    mics = imp_run.outputs["micrographs"]
    names = {int(i): Path(p).name for i, p in zip(mics.column("id"), mics.column("image"))}
    paths = {int(i): p for i, p in zip(mics.column("id"), mics.column("image"))}
    optics = mics.optics
    pixel, kv = float(optics["pixel_size_A"][0]), float(optics["voltage_kV"][0])
    cs, ac = float(optics["spherical_aberration_mm"][0]), float(optics["amplitude_contrast"][0])
    ctfs = ctf_run.outputs["ctfs"].read_columns()

    first = 0  # the first micrograph's fit is shown in 2D and 1D
    mid = int(ctfs["micrograph_id"][first])
    u, v = float(ctfs["defocus_u"][first]), float(ctfs["defocus_v"][first])
    angle = float(ctfs["defocus_angle"][first])
    spectrum = tiled_power_spectrum(read_image(paths[mid]), tile)
    k_max = 1 / max(4.0, 2.5 * pixel)  # the high end of the default fit band

    # Background removed by a 6-px gaussian on both halves; the data are smoothed by 1 px
    # (the rings are wider than that); each half is divided by its spread at each radius.
    data_2d = np.log(_full_spectrum(spectrum))
    data_2d = gaussian_filter(data_2d - gaussian_filter(data_2d, 6.0), 1.0)
    model_2d = ctf_2d((tile, tile), pixel, u, v, angle, kv, cs, ac, centered=True) ** 2
    model_2d = model_2d - gaussian_filter(model_2d, 6.0)
    c = tile // 2
    picture = np.where(np.arange(tile)[None, :] < c, _per_radius(data_2d), _per_radius(model_2d))
    picture[c - 2 : c + 3, c - 2 : c + 3] = 0.0  # the origin carries no ring

    mean = 0.5 * (u + v)
    scale = (math.sqrt(u / mean), math.sqrt(v / mean), math.radians(angle))
    profile = radial_profile(spectrum, *scale)
    k = np.arange(len(profile)) / (tile * pixel)
    band = (k >= 1 / 30.0) & (k <= k_max)
    data_1d = _flatten(np.log(profile + 1e-30), 6.0)
    model_1d = _flatten(ctf_1d(k, mean, kv, cs, ac) ** 2, 6.0)

    fig = plt.figure(figsize=(13, 4.4), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=(1.0, 1.45, 1.0))
    ax = fig.add_subplot(grid[0])
    crop = round(k_max * tile * pixel)
    extent = [-crop / (tile * pixel), crop / (tile * pixel)] * 2
    ax.imshow(
        picture[c - crop : c + crop, c - crop : c + crop],
        cmap="gray",
        vmin=-2.0,
        vmax=2.0,
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )
    ax.axvline(0, color="tab:orange", lw=0.8)
    ax.set_title(
        f"{names[mid]}: power spectrum | fitted CTF² (to 4 Å)\n"
        f"U {u:.0f} Å, V {v:.0f} Å, angle {angle:.0f}°",
        fontsize=9,
    )
    ax.set_xlabel("kx (1/Å)", fontsize=8)
    ax.set_ylabel("ky (1/Å)", fontsize=8)
    ax.tick_params(labelsize=7)

    ax = fig.add_subplot(grid[1])
    ax.plot(k[band], data_1d[band], color="k", lw=1.0, label="data (elliptical average)")
    ax.plot(
        k[band],
        model_1d[band],
        color="tab:red",
        lw=1.0,
        alpha=0.8,
        label=f"model CTF² at {mean:.0f} Å",
    )
    ax.set_xlabel("spatial frequency (1/Å); fit band 30 Å – 4 Å", fontsize=8)
    ax.set_ylabel("background-subtracted, normalised", fontsize=8)
    ax.set_title(
        f"rotational average vs model (fit score {float(ctfs['fit_score'][first]):.2f})", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower left")
    ax.tick_params(labelsize=7)

    ax = fig.add_subplot(grid[2])
    true_u = np.array([truth[names[int(m)]]["defocus_u"] for m in ctfs["micrograph_id"]])
    true_v = np.array([truth[names[int(m)]]["defocus_v"] for m in ctfs["micrograph_id"]])
    lo, hi = (
        0.9 * min(true_v.min(), ctfs["defocus_v"].min()),
        1.05 * max(true_u.max(), ctfs["defocus_u"].max()),
    )
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, label="estimate = truth")
    ax.scatter(true_u, ctfs["defocus_u"], s=22, color="tab:blue", label="defocus U")
    ax.scatter(true_v, ctfs["defocus_v"], s=22, marker="x", color="tab:red", label="defocus V")
    err = np.abs(0.5 * (ctfs["defocus_u"] + ctfs["defocus_v"]) - 0.5 * (true_u + true_v)) / (
        0.5 * (true_u + true_v)
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true defocus (Å)", fontsize=8)
    ax.set_ylabel("estimated defocus (Å)", fontsize=8)
    ax.set_title(f"{len(err)} micrographs: mean defocus error {100 * err.mean():.2f}%", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    fig.suptitle(
        f"ctf.estimate (run {ctf_run.id}) on simulated micrographs "
        f"({MIC_SIZE_PX} px, {pixel:.3g} Å/px, 512-px tiles, default parameters)",
        fontsize=10,
    )
    return _save(fig, out)


def figure_import_movies(run, truth: dict, out: Path) -> int:
    import matplotlib.pyplot as plt

    from hpcem.io.images import read_image

    movies = run.outputs["movies"]
    path = movies.column("image")[0]
    frames = read_image(path).astype(np.float64)
    n = len(frames)
    shifts = truth["shifts_px"]
    # Align with the truth: frame i moved by +shift_i, so shift it back by -shift_i.
    ky = np.fft.fftfreq(frames.shape[1])[:, None]
    kx = np.fft.rfftfreq(frames.shape[2])[None, :]
    aligned = np.zeros(frames.shape[1:])
    for frame, (dx, dy) in zip(frames, shifts):
        ramp = np.exp(2j * np.pi * (kx * dx + ky * dy))
        aligned += np.fft.irfft2(np.fft.rfft2(frame) * ramp, s=frame.shape)
    frame_sum = frames.sum(axis=0)

    fig, axes = plt.subplots(
        1,
        4,
        figsize=(12.5, 3.5),
        layout="constrained",
        gridspec_kw={"width_ratios": (1, 1, 1, 1.05)},
    )
    _grey(axes[0], _bin(frames[0], 2), f"frame 0 ({frames[0].mean():.1f} e⁻/px)")
    _grey(axes[1], _bin(frame_sum, 2), f"sum of {n} frames (blurred by drift)")
    _grey(axes[2], _bin(aligned, 2), "sum aligned with the true shifts")
    ax = axes[3]
    # One colour per frame (a discrete map also keeps the palette PNG free of banding).
    sc = ax.scatter(
        shifts[:, 0],
        shifts[:, 1],
        c=np.arange(n),
        cmap=plt.get_cmap("viridis", n),
        vmin=-0.5,
        vmax=n - 0.5,
        s=18,
        zorder=3,
    )
    ax.plot(shifts[:, 0], shifts[:, 1], color="0.6", lw=0.8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("dx (px)", fontsize=8)
    ax.set_ylabel("dy (px)", fontsize=8)
    ax.set_title("true drift of each frame vs frame 0", fontsize=9)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(sc, ax=ax, fraction=0.05)
    cb.set_label("frame", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(
        f"import.movies (run {run.id}): {Path(path).name}, {n} frames of "
        f"{frames.shape[2]}×{frames.shape[1]} px, "
        f"{float(movies.optics['pixel_size_A'][0]):.3g} Å/px, "
        f"{float(movies.optics['dose_per_frame_e_A2'][0]):.3g} e⁻/Å² per frame "
        f"(simulated; images binned 2×)",
        fontsize=10,
    )
    return _save(fig, out, colors=256)


def phantom_volume(size: int, pixel_A: float, seed: int) -> np.ndarray:
    """An asymmetric phantom: gaussian blobs of a few widths inside a sphere."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size) - size / 2) * pixel_A
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    radius = 0.3 * size * pixel_A
    vol = np.zeros((size, size, size))
    centres = rng.normal(scale=0.4 * radius, size=(60, 3))
    centres = centres[np.linalg.norm(centres, axis=1) < radius][:30]
    centres[0] = (0.6 * radius, 0.0, 0.0)  # one lobe off-centre along z (the slices differ)
    for (cz, cy, cx), width in zip(centres, rng.uniform(3.5, 7.0, size=len(centres))):
        vol += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    vol += 0.3 * np.exp(-(z**2 + y**2 + x**2) / (2 * (0.45 * radius) ** 2))  # a faint envelope
    return vol.astype(np.float32)


def figure_import_volumes(run, out: Path) -> int:
    import matplotlib.pyplot as plt

    from hpcem.io.images import read_image

    volumes = run.outputs["volumes"]
    path = volumes.column("image")[0]
    vol = read_image(path)
    pixel = float(volumes.column("pixel_size_A")[0])
    nz, ny, nx = vol.shape
    slices = [
        (vol[nz // 2], f"XY (z = {nz // 2})", "x", "y"),
        (vol[:, ny // 2, :], f"XZ (y = {ny // 2})", "x", "z"),
        (vol[:, :, nx // 2], f"YZ (x = {nx // 2})", "y", "z"),
    ]
    lo, hi = float(vol.min()), float(vol.max())
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), layout="constrained")
    for ax, (img, title, xl, yl) in zip(axes, slices):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{xl} (voxels)", fontsize=8)
        ax.set_ylabel(f"{yl} (voxels)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"import.volumes (run {run.id}): central slices of {Path(path).name}, "
        f"{nx}×{ny}×{nz} voxels of {pixel:.3g} Å (simulated phantom)",
        fontsize=10,
    )
    return _save(fig, out)


def phantom_particle(size: int) -> np.ndarray:
    """A 2D particle: a ring of seven blobs with a tail, so that its orientation shows."""
    y, x = np.mgrid[:size, :size] - size / 2
    image = np.zeros((size, size))
    for phi in np.linspace(0, 2 * np.pi, 7, endpoint=False):
        r = 0.22 * size
        image += np.exp(
            -((x - r * np.cos(phi)) ** 2 + (y - r * np.sin(phi)) ** 2) / (2 * (0.05 * size) ** 2)
        )
    for t in np.linspace(0.25, 0.42, 4):
        image += 0.8 * np.exp(
            -((x - t * size) ** 2 + (y + t * size * 0.5) ** 2) / (2 * (0.035 * size) ** 2)
        )
    return image


def figure_particles_average(run, stack_path: Path, clean: np.ndarray, out: Path) -> int:
    import matplotlib.pyplot as plt

    from hpcem.io.images import read_image

    classes = run.outputs["average"]
    average = read_image(classes.column("representative")[0])
    size = int(classes.column("size")[0])
    shown = [read_image(stack_path, i) for i in range(4)]
    fig, axes = plt.subplots(1, 6, figsize=(13, 3.0), layout="constrained")
    for i, (ax, particle) in enumerate(zip(axes, shown)):
        _grey(ax, particle, f"particle {i}")
    _grey(axes[4], average, f"MPI average of {size}\n(run {run.id}, 2 ranks)")
    _grey(axes[5], clean, "noise-free particle\n(ground truth)")
    fig.suptitle(
        "particles.average_mpi: a simulated stack (one particle, gaussian noise, "
        "SNR 0.05) and its average",
        fontsize=10,
    )
    return _save(fig, out)


# --- main ------------------------------------------------------------------------------------
def make_figures(work: Path, out_dir: Path, workers: int) -> dict[str, int]:
    """Run every built-in protocol on simulated data in ``work``; PNG sizes by file name."""
    from hpcem.io.mrc import write_mrc
    from hpcem.io.tiff import write_tiff_movie
    from hpcem.sim import simulate_movie
    from hpcem.store import Project

    out_dir.mkdir(parents=True, exist_ok=True)
    project = Project.create(work / "proj")
    raw = work / "raw"
    raw.mkdir()
    sizes = {}

    truth = simulate_micrographs(raw)
    imp = run_protocol(
        project,
        "import.micrographs",
        {"files": str(raw / "*.mrc"), "pixel_size_A": MIC_PIXEL_A},
        workers=workers,
    )
    sizes["import_micrographs.png"] = figure_import_micrographs(
        imp, out_dir / "import_micrographs.png"
    )
    ctf = run_protocol(
        project, "ctf.estimate", {}, {"micrographs": [f"{imp.id}:micrographs"]}, workers=workers
    )
    sizes["ctf_estimate.png"] = figure_ctf_estimate(imp, ctf, truth, out_dir / "ctf_estimate.png")

    frames, movie_truth = simulate_movie(
        (512, 512),
        n_frames=20,
        pixel_size_A=2.0,
        dose_per_frame_e_per_A2=1.0,
        drift_px_per_frame=(1.2, -0.8),
        jitter_px=0.4,
        n_particles=25,
        particle_diameter_A=160.0,
        seed=SEED,
    )
    (work / "frames").mkdir()
    write_tiff_movie(work / "frames" / "movie_000.tif", frames.astype(np.uint16), 2.0)
    movies = run_protocol(
        project,
        "import.movies",
        {"files": str(work / "frames" / "*.tif"), "pixel_size_A": 2.0, "dose_per_frame_e_A2": 1.0},
        workers=workers,
    )
    sizes["import_movies.png"] = figure_import_movies(
        movies, movie_truth, out_dir / "import_movies.png"
    )

    (work / "maps").mkdir()
    write_mrc(work / "maps" / "phantom.mrc", phantom_volume(96, 2.0, SEED), 2.0, kind="volume")
    vols = run_protocol(
        project,
        "import.volumes",
        {"files": str(work / "maps" / "*.mrc"), "pixel_size_A": 2.0},
        workers=workers,
    )
    sizes["import_volumes.png"] = figure_import_volumes(vols, out_dir / "import_volumes.png")

    rng = np.random.default_rng(SEED)
    clean = phantom_particle(128)
    noise_sd = math.sqrt(float(np.var(clean)) / 0.05)
    stack = (clean + noise_sd * rng.standard_normal((400, *clean.shape))).astype(np.float32)
    stack_path = work / "particles.mrcs"
    write_mrc(stack_path, stack, 2.0)
    avg = run_protocol(
        project, "particles.average_mpi", {"stack": str(stack_path), "ranks": 2}, workers=workers
    )
    sizes["particles_average_mpi.png"] = figure_particles_average(
        avg, stack_path, clean, out_dir / "particles_average_mpi.png"
    )
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the PNGs")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="empty folder for the project and data (default: a temporary one)",
    )
    ap.add_argument("--workers", type=int, default=2, help="local worker processes")
    ap.add_argument(
        "--tables",
        nargs="*",
        metavar="PROTOCOL",
        help="print the declaration tables of these protocols (all built-in: none "
        "given) instead of making figures",
    )
    args = ap.parse_args(argv)

    if args.tables is not None:
        from hpcem.protocol.registry import registry

        names = args.tables or [
            n
            for n in registry().names()
            if registry().protocols[n].__module__.startswith("hpcem.protocols.")
        ]
        for name in names:
            print(f"<!-- {name} -->\n{declaration_tables(name)}")
        return 0

    import matplotlib

    matplotlib.use("Agg")
    start = time.monotonic()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="hpcem-figures-") as tmp:
            sizes = make_figures(Path(tmp), args.out, args.workers)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        sizes = make_figures(args.work, args.out, args.workers)
    print(json.dumps({"wall_s": round(time.monotonic() - start, 1), "png_bytes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
