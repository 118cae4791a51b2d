"""The mean of a stack of particle images, summed across MPI ranks (mpi4py Reduce)."""

from __future__ import annotations

import numpy as np


def mean_particle_image(stack_path: str, out_path: str) -> dict:
    """Average all images of an MRC stack; each rank sums its share of the images.

    Rank 0 writes the mean image (float32 MRC, the stack's voxel size) to ``out_path`` and
    returns ``{"n_images", "ranks", "shape", "mean", "std", "min", "max", "out_path"}``;
    other ranks return None. Works on one rank without an MPI launcher too.
    """
    import mrcfile
    from mpi4py import MPI

    from hpcem.io.mrc import mmap_mrc

    comm = MPI.COMM_WORLD
    # The checked header and a read-only map; RELION/EMAN stacks without the MAP id are
    # read with a warning, as everywhere else in hpcem.
    with mmap_mrc(stack_path) as (header, data):
        n = data.shape[0]  # (n, ny, nx), also for a single image
        bounds = np.linspace(0, n, comm.size + 1).astype(int)
        lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
        local = np.zeros(data.shape[1:], dtype=np.float64)
        for start in range(lo, hi, 256):  # bounded memory per rank
            local += data[start : min(hi, start + 256)].sum(axis=0, dtype=np.float64)
    voxel_size = header.voxel_size_A[::-1]  # (x, y, z) for mrcfile
    total = np.zeros_like(local) if comm.rank == 0 else None
    comm.Reduce(local, total, op=MPI.SUM, root=0)
    if comm.rank != 0:
        return None
    mean = (total / n).astype(np.float32)
    with mrcfile.new(out_path, overwrite=True) as out:
        out.set_data(mean)
        out.voxel_size = voxel_size
    return {
        "n_images": int(n),
        "ranks": int(comm.size),
        "shape": list(mean.shape),
        "mean": float(mean.mean()),
        "std": float(mean.std()),
        "min": float(mean.min()),
        "max": float(mean.max()),
        "out_path": str(out_path),
    }
