"""The per-movie diagnostic picture: the shift trajectory (and the local model)."""

from __future__ import annotations

import os

import numpy as np


def trajectory_png(
    path: str | os.PathLike,
    shifts_A: np.ndarray,
    title: str,
    local_arrows: tuple[np.ndarray, np.ndarray] | None = None,
    frame_shape_A: tuple[float, float] | None = None,
) -> None:
    """Write a PNG of the per-frame displacements (Å, first frame at the origin).

    ``local_arrows`` = (centres (k, 2) Å, displacement of the last frame (k, 2) Å from
    the local model) adds a second panel with those arrows over the frame of
    ``frame_shape_A`` = (height, width) Å.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts_A = np.asarray(shifts_A, dtype=float)
    panels = 2 if local_arrows is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4), dpi=80, squeeze=False)
    ax = axes[0, 0]
    ax.plot(shifts_A[:, 0], shifts_A[:, 1], "-", color="0.6", lw=1)
    points = ax.scatter(
        shifts_A[:, 0], shifts_A[:, 1], c=np.arange(len(shifts_A)), cmap="viridis", s=14
    )
    ax.plot(shifts_A[0, 0], shifts_A[0, 1], "o", mfc="none", mec="red", ms=8)
    ax.set_xlabel("x shift (Å)")
    ax.set_ylabel("y shift (Å)")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()  # image convention: y grows downwards
    fig.colorbar(points, ax=ax, label="frame", shrink=0.8)
    if local_arrows is not None:
        centres, vectors = (np.asarray(a, dtype=float) for a in local_arrows)
        ax2 = axes[0, 1]
        ax2.quiver(
            centres[:, 0],
            centres[:, 1],
            vectors[:, 0],
            vectors[:, 1],
            angles="xy",
            color="C3",
        )
        if frame_shape_A is not None:
            ax2.set_xlim(0, frame_shape_A[1])
            ax2.set_ylim(frame_shape_A[0], 0)
        ax2.set_aspect("equal")
        longest = float(np.max(np.hypot(vectors[:, 0], vectors[:, 1]))) if len(vectors) else 0
        ax2.set_title(f"local motion, last frame (max {longest:.1f} Å)", fontsize=9)
        ax2.set_xlabel("x (Å)")
        ax2.set_ylabel("y (Å)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
