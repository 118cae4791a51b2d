"""Pictures of the foreign-import protocols (docs/protocols/import_*.md), from real hpcem
runs on simulated micrographs (fixed seeds):

- ``import_coordinates.png``: EMAN ``.box`` files written here from the simulator's true
  centres (lower corner = centre - box / 2, EMAN's rule) imported by
  ``import.coordinates``; circles = imported picks, crosses = truth.
- ``import_ctfs.png``: CTFFIND 4.1 summary files (CTFFIND is not installed here: they hold
  the simulator's true defocus in CTFFIND's format) imported by ``import.ctfs``, against
  hpcem's own ``ctf.estimate`` of the same micrographs, paired by micrograph id.
- ``import_relion_job.png`` and ``import_particles.png`` (needs RELION 3.1 programs): a
  RELION project made by ``relion_pipeliner`` (Import -> LoG AutoPick -> Extract) on
  simulated micrographs, imported by ``hpcem import-relion`` (job graph with the hpcem
  runs and set sizes, LoG picks on a micrograph), and its ``particles.star`` imported by
  ``import.particles`` (the first particles with their defocus).

Prints the numbers the pages quote as JSON. Usage: ``python scripts/figures_import.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BOX_PX = 64


def run(project, name: str, params: dict, inputs: dict):
    from hpcem.execution.runs import create_run, launch

    record = create_run(project, name, params, inputs)
    done = launch(project, record.id, 1, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return record.id


def result(project, run_id: int) -> dict:
    steps = {r["name"]: r for r in project.read_steps(run_id).to_records()}
    return steps["register"]["result"]


def coordinates_figure(tmp: Path, img: Path) -> dict:
    from hpcem.io import read_image
    from hpcem.picking.evaluate import match_picks, truth_xy
    from hpcem.picking.plot import write_picks_png
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.store import Project

    cfg = DatasetConfig(kind="micrographs", n_items=2, size_px=1024, snr=0.1, seed=11)
    truth = simulate_dataset(tmp / "raw", cfg)
    (tmp / "box").mkdir()
    for item in truth["items"]:
        t = truth_xy(truth, item["name"])
        stem = item["name"].removesuffix(".mrc")
        lines = [f"{x - BOX_PX / 2:.0f}\t{y - BOX_PX / 2:.0f}\t{BOX_PX}\t{BOX_PX}" for x, y in t]
        (tmp / "box" / f"{stem}.box").write_text("\n".join(lines) + "\n")
    (tmp / "box" / "mic_999.box").write_text("10 10 64 64\n")  # a micrograph not in the set
    project = Project.create(tmp / "proj")
    mics = run(
        project,
        "import.micrographs",
        {"files": str(tmp / "raw/mic_*.mrc"), "pixel_size_A": 1.0},
        {},
    )
    coords = run(
        project,
        "import.coordinates",
        {"files": str(tmp / "box/*.box")},
        {"micrographs": [f"{mics}:micrographs"]},
    )
    res = result(project, coords)
    c = project.open_set(coords, "coordinates")
    m = project.open_set(mics, "micrographs")
    first = int(m.column("id")[0])
    sel = c.column("micrograph_id") == first
    xy = np.stack([c.column("x")[sel], c.column("y")[sel]], axis=1)
    name = Path(str(m.column("image")[0])).name
    score = match_picks(xy, truth_xy(truth, name), 3.0)
    write_picks_png(
        img / "import_coordinates.png",
        read_image(str(m.column("image")[0])),
        xy,
        BOX_PX,
        title=f"{name}: {int(sel.sum())} picks from .box; +: truth",
        truth_xy=truth_xy(truth, name),
        max_edge_px=512,
    )
    return {
        "picks": res["count"],
        "rejected": [r["file"] for r in res["rejected"]],
        "within_3px_of_truth": score,
    }


CTFFIND_TXT = """# Output from CTFFind version 4.1.14, run on 2026-12-04 10:00:00
# Input file: {name} ; Number of micrographs: 1
# Pixel size: 1.000 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.10
# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. def.: 5000.0 um; max. def. 50000.0 um
# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully
1.000000 {u:.6f} {v:.6f} {a:.6f} 0.000000 0.500000 4.000000
"""  # noqa: E501 (CTFFIND's own header lines)


def ctfs_figure(tmp: Path, img: Path) -> dict:
    import matplotlib.pyplot as plt

    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.store import Project

    cfg = DatasetConfig(kind="micrographs", n_items=6, size_px=1024, snr=0.1, seed=5)
    truth = simulate_dataset(tmp / "raw2", cfg)
    (tmp / "ctffind").mkdir()
    for item in truth["items"]:
        text = CTFFIND_TXT.format(
            name=item["name"], u=item["defocus_u"], v=item["defocus_v"], a=item["defocus_angle"]
        )
        (tmp / "ctffind" / item["name"].replace(".mrc", ".txt")).write_text(text)
    project = Project.create(tmp / "proj2")
    mics = run(
        project,
        "import.micrographs",
        {"files": str(tmp / "raw2/mic_*.mrc"), "pixel_size_A": 1.0},
        {},
    )
    inp = {"micrographs": [f"{mics}:micrographs"]}
    imported = run(project, "import.ctfs", {"files": str(tmp / "ctffind/*.txt")}, inp)
    ours = run(project, "ctf.estimate", {}, inp)
    a = project.open_set(imported, "ctfs").read_columns(["micrograph_id", "defocus_u", "defocus_v"])
    b = project.open_set(ours, "ctfs").read_columns(["micrograph_id", "defocus_u", "defocus_v"])
    common, ia, ib = np.intersect1d(a["micrograph_id"], b["micrograph_id"], return_indices=True)
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    for key, mark in (("defocus_u", "o"), ("defocus_v", "s")):
        ax.plot(a[key][ia] / 1e4, b[key][ib] / 1e4, mark, ms=7, mfc="none", label=key)
    lo = min(a["defocus_v"].min(), b["defocus_v"].min()) / 1e4 - 0.1
    hi = max(a["defocus_u"].max(), b["defocus_u"].max()) / 1e4 + 0.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("imported from CTFFIND .txt (µm)")
    ax.set_ylabel("hpcem ctf.estimate (µm)")
    ax.set_title(f"import.ctfs: {len(common)} micrographs paired by id", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "import_ctfs.png", dpi=110)
    plt.close(fig)
    diff = np.abs(a["defocus_u"][ia] - b["defocus_u"][ib])
    return {"paired": len(common), "max_abs_defocus_u_difference_A": round(float(diff.max()), 1)}


def _job(folder: Path, job_type: int, options: dict, name: str) -> None:
    from hpcem.command import run_command

    rows = "\n".join(f"{k} {v}" for k, v in options.items())
    star = folder / f"{name.split('/')[0]}.job.star"
    star.write_text(
        f"data_job\n\n_rlnJobType {job_type}\n_rlnJobIsContinue 0\n\n"
        f"data_joboptions_values\n\nloop_\n_rlnJobOptionVariable #1\n_rlnJobOptionValue #2\n"
        f"{rows}\n"
    )
    run_command(["relion_pipeliner", "--addJobFromStar", str(star)], cwd=folder, timeout_s=300)
    run_command(
        ["relion_pipeliner", "--RunJobs", name, "--sec_wait_after", "0"], cwd=folder, timeout_s=600
    )


def relion_figures(tmp: Path, img: Path) -> dict:
    import matplotlib.pyplot as plt
    from hpcem.protocols.import_relion_project import import_relion_project

    from hpcem.io import read_image
    from hpcem.picking.plot import display_image
    from hpcem.sim.dataset import DatasetConfig, dataset_volume, simulate_dataset
    from hpcem.store import Project

    if shutil.which("relion_pipeliner") is None:
        return {"skipped": "RELION is not installed"}
    folder = tmp / "relion"
    cfg = DatasetConfig(kind="micrographs", n_items=2, size_px=1024, snr=0.3, seed=3)
    simulate_dataset(folder / "mics", cfg)
    diameter = dataset_volume(cfg).diameter_A
    (folder / "default_pipeline.star").write_text(
        "data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n"
    )
    _job(
        folder,
        0,
        {"do_raw": "Yes", "fn_in_raw": "mics/mic_*.mrc", "is_multiframe": "No", "angpix": 1.0}
        | {"kV": 300, "Cs": 2.7, "Q0": 0.1, "do_queue": "No"},
        "Import/job001/",
    )
    _job(
        folder,
        4,
        {"fn_input_autopick": "Import/job001/micrographs.star", "do_log": "Yes"}
        | {"log_diam_min": round(0.8 * diameter), "log_diam_max": round(1.2 * diameter)}
        | {"angpix": -1, "use_gpu": "No", "do_queue": "No"},
        "AutoPick/job002/",
    )
    _job(
        folder,
        5,
        {"star_mics": "Import/job001/micrographs.star"}
        | {"coords_suffix": "AutoPick/job002/coords_suffix_autopick.star"}
        | {"extract_size": 96, "do_rescale": "No", "do_norm": "Yes", "bg_diameter": -1}
        | {"do_invert": "Yes", "do_queue": "No", "nr_mpi": 1},
        "Extract/job003/",
    )
    project = Project.create(tmp / "proj3")
    rows = import_relion_project(project, str(folder))
    runs = {r["job"]: project.run(r["run"]) for r in rows}
    # the job graph with the hpcem runs
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.1]})
    pos = {
        "Import/job001/": (0.5, 0.85),
        "AutoPick/job002/": (0.25, 0.5),
        "Extract/job003/": (0.5, 0.15),
    }
    for job, rec in runs.items():
        for ref in rec.inputs.get("upstream", []):
            parent = next(j for j, r in runs.items() if r.id == int(ref.split(":")[0]))
            (x0, y0), (x1, y1) = pos[parent], pos[job]
            ax.annotate(
                "", (x1, y1 + 0.08), (x0, y0 - 0.08), arrowprops={"arrowstyle": "->", "lw": 1.2}
            )
            ax.text(
                (x0 + x1) / 2 + 0.02, (y0 + y1) / 2, ref.split(":")[1], fontsize=8, color="#555"
            )
        sizes = ", ".join(f"{k} {v}" for k, v in rec.output_sizes.items())
        ax.text(
            *pos[job],
            f"RELION {job.rstrip('/')}\nhpcem run {rec.id}: {sizes}",
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "#e8f1ff", "ec": "#3060a0"},
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ax.set_title("hpcem import-relion: one run per RELION job, inputs = lineage", fontsize=10)
    mics = project.open_set(runs["Import/job001/"].id, "micrographs")
    coords = project.open_set(runs["AutoPick/job002/"].id, "coordinates")
    mid = int(mics.column("id")[0])
    sel = coords.column("micrograph_id") == mid
    picture, factor = display_image(read_image(str(mics.column("image")[0])), 512)
    ax2.imshow(picture, cmap="gray")
    off = (factor - 1) / 2
    for x, y in zip(coords.column("x")[sel], coords.column("y")[sel], strict=True):
        ax2.add_patch(
            plt.Circle(
                ((x - off) / factor, (y - off) / factor),
                diameter / 2 / factor,
                fill=False,
                ec="#00d0ff",
            )
        )
    ax2.set_axis_off()
    ax2.set_title(
        f"RELION LoG picks imported on {Path(str(mics.column('image')[0])).name}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(img / "import_relion_job.png", dpi=100)
    plt.close(fig)
    # import.particles of the Extract job's STAR
    parts_run = run(
        project, "import.particles", {"file": str(folder / "Extract/job003/particles.star")}, {}
    )
    parts = project.open_set(parts_run, "particles")
    n = min(12, len(parts))
    fig, axes = plt.subplots(2, 6, figsize=(11, 4.2))
    images = parts.column("image")
    index = parts.column("image_index")
    for k, axk in enumerate(axes.ravel()):
        axk.set_axis_off()
        if k < n:
            axk.imshow(read_image(str(images[k]), int(index[k])), cmap="gray")
            axk.set_title(f"#{int(index[k]) + 1} {Path(str(images[k])).name}", fontsize=7)
    fig.suptitle(
        f"import.particles: {len(parts)} particles of RELION's Extract/job003/particles.star "
        f"(RELION {result(project, parts_run)['relion_version']}, 96 px, "
        f"{float(parts.optics['pixel_size_A'][0]):g} Å/px, contrast inverted by RELION)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(img / "import_particles.png", dpi=100)
    plt.close(fig)
    return {
        "jobs": [(r["job"], r["run"], r["state"]) for r in rows],
        "sizes": {j: r.output_sizes for j, r in runs.items()},
        "particles": len(parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "protocols" / "img"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    img = Path(args.out_dir)
    img.mkdir(parents=True, exist_ok=True)
    numbers = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        numbers["coordinates"] = coordinates_figure(tmp, img)
        numbers["ctfs"] = ctfs_figure(tmp, img)
        numbers["relion"] = relion_figures(tmp, img)
    print(json.dumps(numbers, indent=1, default=str))


if __name__ == "__main__":
    main()
