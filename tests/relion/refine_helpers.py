"""Particles for the relion_refine protocol tests (and ``scripts/figures_relion_refine.py``):
projections of the simulator's volume from a few known views, with known in-plane angles,
shifts and CTFs, in a finished run; a reference map as a finished run's volumes; a site
that runs Open MPI only in a loopback-only network namespace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from relion_helpers import _finish, _finished_run, site_file

PIXEL_A = 4.0
BOX_PX = 48
#: ``[programs] relion_mpi_command`` that starts Open MPI's launcher by its own name
#: (``orterun``; an MPICH ``mpirun`` may come first on PATH) in its own network namespace
#: with only the loopback interface: Open MPI's launcher listens on every interface.
LOOPBACK_OPEN_MPI = 'unshare -n sh -c \'ip link set lo up && exec "$0" "$@"\' orterun -n {ranks}'
#: Three views (rot, tilt) of the simulator's particle that look different in 2D.
VIEWS = ((0.0, 0.0), (0.0, 90.0), (90.0, 90.0))


def view_particles(
    project,
    folder: Path,
    n: int = 150,
    views=VIEWS,
    noise: float = 0.5,
    seed: int = 0,
    pixel_A: float = PIXEL_A,
    box: int = BOX_PX,
    random_views: bool = False,
    start_pose_sd_deg: float | None = None,
):
    """A finished run whose ``particles`` are ``n`` projections: view ``i % len(views)``
    (or random orientations with ``random_views``), a random in-plane angle psi, shifts
    up to ±2 px, each with its own CTF, contrast-inverted as extraction leaves them, plus
    gaussian noise (sd ``noise`` × the signal's). The truth (``view``, ``rot``, ``tilt``,
    ``psi``, ``shift_px``, the volume path) is returned with the input reference.
    The particle set carries no poses (rot/tilt/psi/shift 0), as extraction leaves it;
    with ``start_pose_sd_deg`` it carries the true angles plus gaussian errors of that
    size, the true shifts and half sets 1, 2, 1, 2 ... (a refinement to continue)."""
    import scipy.fft

    from hpcem.ctf.model import ctf_2d
    from hpcem.io import write_mrc
    from hpcem.sim.projection import random_orientations
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, pixel_A, box)
    rng = np.random.default_rng(seed)
    view = np.arange(n) % len(views)
    if random_views:
        angles = random_orientations(rng, n)
    else:
        angles = np.zeros((n, 3))
        angles[:, :2] = np.asarray(views, dtype=float)[view]
        angles[:, 2] = rng.uniform(0.0, 360.0, n)
    shifts_px = rng.uniform(-2.0, 2.0, size=(n, 2))
    ft = volume.projector().project_ft(angles, shifts_px)
    du = rng.uniform(10000.0, 25000.0, n)
    dv = du - rng.uniform(0.0, 800.0, n)
    da = rng.uniform(0.0, 180.0, n)
    for i in range(n):
        ft[i] *= ctf_2d((box, box), pixel_A, du[i], dv[i], da[i], half=True)
    images = -scipy.fft.irfft2(ft, s=(box, box)).astype(np.float32)
    images += rng.normal(0.0, noise * images.std(), images.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_mrc(folder / "views.mrcs", images, pixel_A, kind="stack", overwrite=True)
    truth_map = write_mrc(
        folder / "truth.mrc", volume.data.astype(np.float32), pixel_A, overwrite=True
    )
    run = _finished_run(project, "test.particles", "projections")
    writer = project.create_set(run, "particles", "hpcem.SetOfParticles")
    writer.set_optics(
        {
            "optics_group": [1],
            "voltage_kV": [300.0],
            "spherical_aberration_mm": [2.7],
            "amplitude_contrast": [0.1],
            "pixel_size_A": [pixel_A],
            "image_size_px": [box],
        }
    )
    cols = {
        "image": [str(stack)] * n,
        "image_index": np.arange(n),
        "defocus_u": du,
        "defocus_v": dv,
        "defocus_angle": da,
    }
    if start_pose_sd_deg is not None:
        noisy = angles + rng.normal(0.0, start_pose_sd_deg, angles.shape)
        cols |= {"rot": noisy[:, 0], "tilt": noisy[:, 1], "psi": noisy[:, 2]}
        # RELION 3.1's origin: the particle's centre is at box centre - shift.
        cols |= {"shift_x": -shifts_px[:, 0] * pixel_A, "shift_y": -shifts_px[:, 1] * pixel_A}
        cols["half_set"] = 1 + np.arange(n) % 2
    writer.append_columns(cols)
    writer.close()
    project.set_output(run, "particles", "hpcem.SetOfParticles", n)
    _finish(project, run)
    truth = {
        "view": view,
        "rot": angles[:, 0],
        "tilt": angles[:, 1],
        "psi": angles[:, 2],
        "shift_px": shifts_px,
        "defocus_u": du,
        "map": truth_map,
        "volume": volume,
    }
    return f"{run}:particles", truth


def circular_spread_deg(angles_deg) -> float:
    """Circular standard deviation (degrees) of angles: 0 when all are equal."""
    a = np.radians(np.asarray(angles_deg, dtype=float))
    r = np.hypot(np.cos(a).mean(), np.sin(a).mean())
    return float(np.degrees(np.sqrt(-2.0 * np.log(max(r, 1e-12)))))


def angular_error_deg(a_deg, b_deg) -> np.ndarray:
    """Angle (degrees) of the rotation between each pair of ZYZ Euler triples: 0 when
    the orientations are the same, whatever the triples (they are not unique)."""
    from hpcem.sim.projection import euler_matrices

    ra, rb = euler_matrices(np.asarray(a_deg)), euler_matrices(np.asarray(b_deg))
    trace = np.einsum("nij,nij->n", ra, rb)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def loopback_open_mpi_site(folder: Path) -> Path:
    """A local site whose ``relion_mpi_command`` is :data:`LOOPBACK_OPEN_MPI` (its path
    works as a site name). Open MPI refuses to run as root unless told: set
    ``OMPI_ALLOW_RUN_AS_ROOT`` and ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM`` to 1 there."""
    return site_file(folder, {"relion_mpi_command": LOOPBACK_OPEN_MPI})


def reference_volumes(project, path: Path, pixel_A: float, box: int) -> str:
    """A finished run whose output ``volumes`` is the map at ``path``."""
    run = _finished_run(project, "test.volumes", "reference")
    writer = project.create_set(run, "volumes", "hpcem.SetOfVolumes")
    writer.append_columns(
        {"image": [str(path)], "pixel_size_A": [pixel_A], "box_size": [box], "half": [0]}
    )
    writer.close()
    project.set_output(run, "volumes", "hpcem.SetOfVolumes", 1)
    _finish(project, run)
    return f"{run}:volumes"
