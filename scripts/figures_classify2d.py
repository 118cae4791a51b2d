"""Pictures of docs/protocols/classify_class2d.md, from a real classify.class2d run.

200 simulated particles of 7DDO (48 px, 4 Å/px, 5 views, SNR 0.1, CTF; the science
tests' simulator), classified with K = 5 in a temporary project. Writes
``docs/protocols/img/classify_class2d.png`` (noisy particles, the class averages, the true
projections aligned to them) and ``docs/protocols/img/classify_class2d_iterations.png``
(the run's own per-iteration PNGs of the averages, first and last).

    python scripts/figures_classify2d.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "protocols" / "img"
sys.path.insert(0, str(ROOT / "tests" / "science"))

from test_classify2d import purity, simulate_particles


def aligned_truth(average: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, float]:
    """``clean`` rotated (1° grid) to best match ``average``, and the correlation."""
    import scipy.ndimage

    best, best_c = clean, -1.0
    a = average.ravel() - average.mean()
    for angle in range(360):
        r = scipy.ndimage.rotate(clean, angle, reshape=False, order=1)
        c = float(np.dot(a, r.ravel() - r.mean()) / np.linalg.norm(a) / np.linalg.norm(r))
        if c > best_c:
            best, best_c = r, c
    return best, best_c


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mrcfile

    from hpcem.execution import runs as lifecycle
    from hpcem.io import write_mrc
    from hpcem.store import Project

    data = simulate_particles(n=200, seed=0)
    n, box, _ = data["images"].shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        project = Project.create(folder / "proj")
        stack = write_mrc(folder / "parts.mrcs", data["images"], 4.0, kind="stack")
        run = project.create_run("test.particles", "simulated particles")
        project.begin_attempt(run.id, ("saved",))
        project.transition(run.id, ("launched",), "running", attempt=1)
        writer = project.create_set(run.id, "particles", "hpcem.SetOfParticles")
        writer.set_optics(
            {
                "optics_group": [1],
                "voltage_kV": [300.0],
                "spherical_aberration_mm": [2.7],
                "amplitude_contrast": [0.1],
                "pixel_size_A": [4.0],
                "image_size_px": [box],
            }
        )
        writer.append_columns(
            {
                "image": [str(stack)] * n,
                "image_index": np.arange(n),
                **{k: data["ctf"][k] for k in ("defocus_u", "defocus_v", "defocus_angle")},
            }
        )
        writer.close()
        project.set_output(run.id, "particles", "hpcem.SetOfParticles", n)
        project.controller_commit(run.id, 1, state="finished")
        params = {"n_classes": 5, "iterations": 20, "mask_diameter_A": 160.0, "seed": 1}
        ref = f"{run.id}:particles"
        c2d = lifecycle.create_run(project, "classify.class2d", params, {"particles": [ref]})
        lifecycle.launch(project, c2d.id, foreground=True)
        rec = project.run(c2d.id)
        if rec.state != "finished":
            raise SystemExit(f"classify.class2d failed: {rec.error}")
        classes = project.open_set(c2d.id, "classes")
        particles = project.open_set(c2d.id, "particles")
        averages = mrcfile.read(classes.column("representative")[0])
        class_id = particles.column("class_id") - 1
        steps = {s["name"]: s for s in project.read_steps(c2d.id).to_records()}
        pngs = steps["classify"]["result"]["pngs"]
        first = project.path / pngs[0]
        last = project.path / pngs[-1]
        iteration_images = [plt.imread(first), plt.imread(last)]

    k = len(averages)
    fig, axes = plt.subplots(3, k, figsize=(1.6 * k, 5.2))
    pure = purity(class_id, data["view"])
    for i in range(k):
        members = np.flatnonzero(class_id == i)
        view = np.bincount(data["view"][members]).argmax()
        truth, corr = aligned_truth(averages[i], data["views"][view])
        panels = [
            (data["images"][members[0]], f"particle {members[0]}"),
            (averages[i], f"class {i + 1}: {len(members)}"),
            (truth, f"true view, r={corr:.2f}"),
        ]
        for row, (image, title) in enumerate(panels):
            ax = axes[row, i]
            ax.imshow(image, cmap="gray")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"classify.class2d: 200 particles, SNR 0.1, K = 5, purity {pure:.3f}", fontsize=9)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "classify_class2d.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(2, 1, figsize=(7, 3.6))
    for ax, image in zip(axes, iteration_images):
        ax.imshow(image)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(IMG / "classify_class2d_iterations.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
