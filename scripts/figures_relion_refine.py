#!/usr/bin/env python
"""Make the pictures of the relion_refine protocol pages from real hpcem runs of RELION 3.1.

    python scripts/figures_relion_refine.py [--out-dir docs] [--only class2d,autopick_ref]

One project in a temporary folder (needs relion_refine, and for refine3d
relion_refine_mpi with Open MPI's ``orterun`` and ``unshare``, on PATH: Open MPI runs only
inside a network namespace with nothing but the loopback interface, through the site's
``relion_mpi_command``, as in ``tests/relion/test_relion_refine3d.py``). The particles
are projections of the shipped model (PDB 7DDO, ~131 Å), each with its own CTF (defocus
1–2.5 µm), contrast-inverted as extraction leaves them, with gaussian noise (sd half the
signal's), made by the tests' own helpers (``tests/relion/refine_helpers.py``) with the
truth kept aside:

* ``relion.class2d`` (K 3, 10 iterations) of 300 particles of 48 px at 4 Å/px from
  three views at random in-plane angles → ``relion_class2d.png``: the three true views
  (clean projections), RELION's class averages, and which view the members of each class
  come from;
* ``relion.class3d`` (K 2, 5 iterations, reference = the true map, filtered to 30 Å by
  RELION) of 200 particles of 32 px at 6 Å/px at random orientations →
  ``relion_class3d.png``: central slices of the class maps and the histogram of the
  angle between RELION's and the true orientation;
* ``relion.refine3d`` (3 MPI ranks) of the same kind of particles (200), starting from the
  true orientations plus 3° errors → ``relion_refine3d.png``: central slices of the map
  and the truth, RELION's gold-standard FSC and the FSC of the map against the truth;
* ``sim.dataset`` (two 768-px micrographs at 1.5 Å/px, seed 1) → ``relion.autopick_ref``
  with five clean projections at 3 Å/px as class averages → ``relion_autopick_ref.png``:
  the references, RELION's picks and the true centres on one micrograph, the figures of
  merit.

Fixed seeds: the same code and RELION build give the same pictures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# The simulation helpers of the RELION tests: the pictures show what the tests check.
sys.path.insert(0, str(REPO / "tests" / "relion"))
from refine_helpers import (
    VIEWS,
    angular_error_deg,
    loopback_open_mpi_site,
    reference_volumes,
    view_particles,
)
from relion_helpers import _finish, _finished_run, fsc_curve


def run(project, name: str, params: dict, inputs: dict, workers: int = 1, site=None):
    from hpcem.execution.runs import create_run, launch

    placement = {"site": str(site)} if site else None
    record = create_run(project, name, params, inputs, placement=placement)
    done = launch(project, record.id, workers, foreground=True)
    if done.state != "finished":
        raise SystemExit(f"run {record.id} ({name}) ended {done.state}: {done.error}")
    return done


def particles(project, folder: Path, n, pixel_A, box, views=None, start_sd_deg=None, seed=0):
    """A particle set of ``n`` CTF-modulated, inverted, noisy projections (from ``views``,
    else random orientations); the truth with ``angles`` (n × 3: rot, tilt, psi)."""
    ref, truth = view_particles(
        project,
        folder,
        n=n,
        views=views or VIEWS,
        seed=seed,
        pixel_A=pixel_A,
        box=box,
        random_views=not views,
        start_pose_sd_deg=start_sd_deg,
    )
    truth["angles"] = np.stack([truth["rot"], truth["tilt"], truth["psi"]], 1)
    return ref, truth


def fig_class2d(project, work: Path, out: Path) -> str:
    import matplotlib.pyplot as plt

    from hpcem.io import read_image

    ref, truth = particles(project, work / "c2", 300, 4.0, 48, views=VIEWS)
    done = run(
        project,
        "relion.class2d",
        {
            "classes": 3,
            "iterations": 10,
            "particle_diameter_A": 160.0,
            "psi_step_deg": 10.0,
            "threads": 2,
        },
        {"particles": [ref]},
    )
    cls = project.open_set(done.id, "classes").read_columns()
    parts = project.open_set(done.id, "particles").read_columns()
    averages = read_image(Path(project.path) / str(cls["representative"][0]))
    clean = np.fft.irfft2(
        truth["volume"].projector().project_ft(np.array([[r, t, 0.0] for r, t in VIEWS])),
        s=(48, 48),
    )
    fig, axes = plt.subplots(3, 3, figsize=(8.4, 8.4))
    for k in range(3):
        axes[0, k].imshow(clean[k], cmap="gray")
        axes[0, k].set_title(f"true view {k + 1} (rot {VIEWS[k][0]:g}°, tilt {VIEWS[k][1]:g}°)")
        axes[1, k].imshow(averages[k], cmap="gray")
        axes[1, k].set_title(f"RELION class {k + 1}: {int(cls['size'][k])} particles")
        members = truth["view"][parts["class_id"] == k + 1]
        counts = np.bincount(members, minlength=3)
        axes[2, k].bar(["view 1", "view 2", "view 3"], counts, color="tab:blue")
        axes[2, k].set_title(f"class {k + 1}: members' true views")
    for ax in axes[:2].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("relion.class2d: 300 particles (3 views, random psi, CTF, noise), K = 3")
    fig.tight_layout()
    fig.savefig(out / "relion_class2d.png", dpi=80)
    plt.close(fig)
    purity = []
    for k in range(3):
        members = truth["view"][parts["class_id"] == k + 1]
        if len(members):
            purity.append(float(np.bincount(members).max() / len(members)))
    return f"class2d: sizes {cls['size'].tolist()}, purity {purity}"


def fig_class3d(project, work: Path, out: Path) -> str:
    import matplotlib.pyplot as plt

    from hpcem.io import read_image

    ref, truth = particles(project, work / "c3", 200, 6.0, 32)
    reference = reference_volumes(project, truth["map"], 6.0, 32)
    done = run(
        project,
        "relion.class3d",
        {
            "classes": 2,
            "iterations": 5,
            "particle_diameter_A": 160.0,
            "ini_high_A": 30.0,
            "offset_range_px": 3.0,
            "threads": 2,
        },
        {"particles": [ref], "reference": [reference]},
    )
    cls = project.open_set(done.id, "classes").read_columns()
    parts = project.open_set(done.id, "particles").read_columns()
    error = angular_error_deg(
        np.stack([parts["rot"], parts["tilt"], parts["psi"]], 1), truth["angles"]
    )
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    axes[0].imshow(read_image(truth["map"])[16], cmap="gray")
    axes[0].set_title("true map (z = 16)")
    for k in range(2):
        vol = read_image(Path(project.path) / str(cls["representative"][k]))
        axes[k + 1].imshow(vol[16], cmap="gray")
        axes[k + 1].set_title(
            f"class {k + 1}: {int(cls['size'][k])} particles, {cls['resolution_A'][k]:.1f} Å"
        )
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[3].hist(error, bins=np.arange(0, 61, 3), color="tab:blue")
    axes[3].set_xlabel("RELION vs true orientation (°)")
    axes[3].set_ylabel("particles")
    axes[3].set_title(f"median {np.median(error):.1f}°")
    fig.suptitle("relion.class3d: 200 particles of 32 px at random orientations, K = 2")
    fig.tight_layout()
    fig.savefig(out / "relion_class3d.png", dpi=80)
    plt.close(fig)
    return f"class3d: sizes {cls['size'].tolist()}, median angular error {np.median(error):.1f}"


def fig_refine3d(project, work: Path, out: Path) -> str:
    import matplotlib.pyplot as plt

    from hpcem.io import read_image

    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    ref, truth = particles(project, work / "r3", 200, 6.0, 32, start_sd_deg=3.0, seed=1)
    site = loopback_open_mpi_site(work / "site")
    reference = reference_volumes(project, truth["map"], 6.0, 32)
    done = run(
        project,
        "relion.refine3d",
        {
            "particle_diameter_A": 160.0,
            "ini_high_A": 30.0,
            "healpix_order": 3,
            "local_searches_from": 3,
            "offset_range_px": 3.0,
            "mpi_ranks": 3,
        },
        {"particles": [ref], "reference": [reference]},
        site=site,
    )
    vols = project.open_set(done.id, "volumes").read_columns()
    fsc = project.open_set(done.id, "fsc").read_columns()
    refined = read_image(Path(project.path) / str(vols["image"][0]))
    true_map = read_image(truth["map"])
    against_truth = fsc_curve(refined, true_map)
    freq_truth = np.arange(1, 17) / (32 * 6.0)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    axes[0].imshow(refined[16], cmap="gray")
    axes[0].set_title("RELION map (z = 16)")
    axes[1].imshow(true_map[16], cmap="gray")
    axes[1].set_title("true map (z = 16)")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[2].plot(fsc["frequency"][0], fsc["fsc"][0], label="RELION gold-standard (halves)")
    axes[2].plot(freq_truth, against_truth, label="map vs truth (numpy)")
    axes[2].axhline(0.143, color="gray", lw=0.8, ls=":")
    axes[2].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[2].set_xlabel("spatial frequency (1/Å)")
    axes[2].set_ylabel("FSC")
    axes[2].set_title(f"RELION's resolution {fsc['resolution_A'][0]:.1f} Å")
    axes[2].legend(fontsize=8)
    fig.suptitle("relion.refine3d: 200 particles of 32 px at 6 Å/px, started 3° off the truth")
    fig.tight_layout()
    fig.savefig(out / "relion_refine3d.png", dpi=80)
    plt.close(fig)
    steps = {r["name"]: r for r in project.read_steps(done.id).to_records()}
    argv = steps["refine"]["result"]["commands"][0]["argv"]
    launcher = argv[: next(i for i, a in enumerate(argv) if a.endswith("relion_refine_mpi"))]
    return f"refine3d: resolution {fsc['resolution_A'][0]:.1f} Å, launcher {launcher}"


def fig_autopick_ref(project, work: Path, out: Path) -> str:
    import json

    import matplotlib.pyplot as plt

    from hpcem.io import read_image, write_mrc
    from hpcem.picking.evaluate import match_picks, truth_xy
    from hpcem.sim.projection import random_orientations
    from hpcem.sim.volume import load_volume
    from hpcem.store.ragged import Ragged

    sim = run(
        project,
        "sim.dataset",
        {"kind": "micrographs", "n_items": 2, "size_px": 768, "pixel_size_A": 1.5, "seed": 1},
        {},
        workers=2,
    )
    steps = {r["name"]: r for r in project.read_steps(sim.id).to_records()}
    truth = json.loads(
        (Path(project.path) / steps["register"]["result"]["ground_truth"][0]).read_text()
    )
    volume = load_volume(None, 3.0, 64)
    angles = random_orientations(np.random.default_rng(3), 5)
    clean = np.fft.irfft2(volume.projector().project_ft(angles), s=(64, 64)).astype(np.float32)
    stack = write_mrc(work / "averages.mrcs", clean, 3.0, kind="stack", overwrite=True)
    run_id = _finished_run(project, "figures.sets", "class averages")
    writer = project.create_set(run_id, "classes", "hpcem.SetOfClasses2D")
    writer.append_columns(
        {
            "representative": [str(stack)] * 5,
            "representative_index": np.arange(5),
            "size": np.full(5, 10),
            "member_ids": Ragged.from_list(
                [list(range(10 * k, 10 * k + 10)) for k in range(5)], "int64"
            ),
        }
    )
    writer.close()
    project.set_output(run_id, "classes", "hpcem.SetOfClasses2D", 5)
    _finish(project, run_id)
    done = run(
        project,
        "relion.autopick_ref",
        {"particle_diameter_A": 150.0, "angular_step_deg": 10.0, "min_distance_A": 100.0},
        {"micrographs": [f"{sim.id}:micrographs"], "references": [f"{run_id}:classes"]},
        workers=2,
    )
    coords = project.open_set(done.id, "coordinates").read_columns()
    mics = project.open_set(sim.id, "micrographs")
    mid, image = int(mics.column("id")[0]), str(mics.column("image")[0])
    mine = coords["micrograph_id"] == mid
    xy = np.stack([coords["x"][mine], coords["y"][mine]], 1)
    true_xy = truth_xy(truth, Path(image).name)
    score = match_picks(xy, true_xy, 0.5 * truth["volume"]["diameter_A"] / 1.5)
    fig = plt.figure(figsize=(12, 4.6))
    for k in range(5):
        ax = fig.add_axes([0.01 + 0.075 * (k % 2), 0.62 - 0.28 * (k // 2), 0.07, 0.26])
        ax.imshow(clean[k], cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        if k == 0:
            ax.set_title("references", fontsize=9, loc="left")
    ax = fig.add_axes([0.18, 0.05, 0.4, 0.88])
    ax.imshow(read_image(Path(project.path) / image), cmap="gray")
    ax.scatter(true_xy[:, 0], true_xy[:, 1], s=260, facecolors="none", edgecolors="lime",
               label="true centre")  # fmt: skip
    ax.scatter(xy[:, 0], xy[:, 1], marker="+", s=80, color="red", label="RELION pick")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"micrograph 1: {score['tp']} of {len(true_xy)} found, {score['fp']} false picks")
    ax = fig.add_axes([0.64, 0.14, 0.34, 0.75])
    ax.hist(coords["score"], bins=20, color="tab:blue")
    ax.set_xlabel("RELION figure of merit (_rlnAutopickFigureOfMerit)")
    ax.set_ylabel("picks (both micrographs)")
    fig.savefig(out / "relion_autopick_ref.png", dpi=80)
    plt.close(fig)
    return f"autopick_ref: {score}"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from hpcem.store import Project

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    parser.add_argument("--only", default="class2d,class3d,refine3d,autopick_ref")
    args = parser.parse_args()
    out = Path(args.out_dir) / "protocols" / "img"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hpcem-fig-refine-"))
    try:
        project = Project.create(work / "proj")
        for name in args.only.split(","):
            figures = {
                "class2d": fig_class2d,
                "class3d": fig_class3d,
                "refine3d": fig_refine3d,
                "autopick_ref": fig_autopick_ref,
            }
            print(figures[name](project, work, out), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
