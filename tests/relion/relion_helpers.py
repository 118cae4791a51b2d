"""Shared set-up of the RELION protocol tests: simulated micrographs in a project, fake
RELION programs and site configs that point at them. The figure scripts
(``scripts/figures_relion*.py``) import the simulation helpers from here too, so the
pictures show what the tests check; nothing here needs pytest but :func:`need_relion`."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np

from hpcem.execution import runs as lifecycle

PIXEL_A = 1.5
SIZE_PX = 768


def need_relion(*programs: str) -> None:
    """Skip the calling test when a RELION program is not installed here."""
    import pytest

    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (Debian/Ubuntu: apt-get install relion)")


def simulate_micrographs(project, wait_for_run, n_items=2, seed=1, **params) -> tuple[int, dict]:
    """A finished ``sim.dataset`` run of micrographs; returns (run id, its ground truth)."""
    run = lifecycle.create_run(
        project,
        "sim.dataset",
        {
            "kind": "micrographs",
            "n_items": n_items,
            "size_px": SIZE_PX,
            "pixel_size_A": PIXEL_A,
            "seed": seed,
            **params,
        },
    )
    lifecycle.launch(project, run.id, workers=2)
    done = wait_for_run(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    truth_json = steps["register"]["result"]["ground_truth"][0]
    truth = json.loads((Path(project.path) / truth_json).read_text())
    return run.id, truth


def fake_program(folder: Path, name: str, version: str = "3.1.3", body: str = "") -> Path:
    """An executable script ``folder/name`` that answers ``--version`` like RELION and
    otherwise runs the shell ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "RELION version: {version} "; '
        'echo "Precision: BASE=double"; exit 0; fi\n' + body + "\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def site_file(folder: Path, programs: dict[str, str]) -> Path:
    """A local site config (a copy of localhost's) whose ``[programs]`` is ``programs``;
    its path works as a site name."""
    from hpcem.cluster.site import find_site_file

    text = find_site_file("localhost").read_text()
    text = text.replace('name = "localhost"', 'name = "relion-test"')
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in programs.items())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "relion-test.toml"
    path.write_text(text + f"\n[programs]\n{table}\n")
    return path


def _finished_run(project, protocol: str, label: str) -> int:
    rec = project.create_run(protocol, label)
    project.begin_attempt(rec.id, ("saved",))
    project.transition(rec.id, ("launched",), "running", attempt=1)
    return rec.id


def _finish(project, run_id: int) -> None:
    project.controller_commit(run_id, 1, state="finished")


def truth_sets(project, sim_run: int, truth: dict, with_ctfs: bool = True) -> dict:
    """Finished runs holding the simulator's true particle centres as ``coordinates``
    (score = 1 - index/100, ids from the store) and its true CTFs as ``ctfs``, with the
    micrographs of ``sim_run`` as their lineage. Returns ``{"coordinates": ref, "ctfs":
    ref}`` input references."""

    mics = project.open_set(sim_run, "micrographs")
    by_name = {Path(str(p)).name: int(i) for p, i in zip(mics.column("image"), mics.column("id"))}
    lineage = [f"{sim_run}:micrographs"]
    cols = {"micrograph_id": [], "x": [], "y": [], "score": []}
    ctfs = {k: [] for k in ("micrograph_id", "defocus_u", "defocus_v", "defocus_angle")}
    for item in truth["items"]:
        mid = by_name[item["name"]]
        x, y = item["particles"]["x"], item["particles"]["y"]
        cols["micrograph_id"] += [mid] * len(x)
        cols["x"] += list(x)
        cols["y"] += list(y)
        cols["score"] += [1.0 - k / 100 for k in range(len(x))]
        ctfs["micrograph_id"].append(mid)
        for key in ("defocus_u", "defocus_v", "defocus_angle"):
            ctfs[key].append(item[key])
    refs = {}
    run = _finished_run(project, "test.picks", "true coordinates")
    writer = project.create_set(run, "coordinates", "hpcem.SetOfCoordinates", inputs=lineage)
    writer.set_optics(mics.optics)
    writer.append_columns({k: np.asarray(v) for k, v in cols.items()})
    writer.close()
    project.set_output(run, "coordinates", "hpcem.SetOfCoordinates", len(cols["x"]))
    _finish(project, run)
    refs["coordinates"] = f"{run}:coordinates"
    if with_ctfs:
        run = _finished_run(project, "test.ctfs", "true CTFs")
        writer = project.create_set(run, "ctfs", "hpcem.SetOfCTFs", inputs=lineage)
        writer.set_optics(mics.optics)
        n = len(ctfs["micrograph_id"])
        writer.append_columns(
            {k: np.asarray(v) for k, v in ctfs.items()}
            | {"fit_resolution": np.full(n, 4.5), "fit_score": np.linspace(0.8, 0.9, n)}
        )
        writer.close()
        project.set_output(run, "ctfs", "hpcem.SetOfCTFs", n)
        _finish(project, run)
        refs["ctfs"] = f"{run}:ctfs"
    return refs


def projected_particles(project, folder: Path, n: int = 600, pixel_A: float = 4.0, box: int = 48):
    """A finished run whose output ``particles`` holds ``n`` projections of the shipped
    model at random orientations and shifts (up to ±3 px), each multiplied by its own
    CTF and contrast-inverted as extraction with ``invert_contrast`` leaves them, with
    gaussian noise (sd half the signal's); poses, shifts (Å, RELION 3.1 sign: the centre
    is at box centre − shift) and CTFs recorded, half sets 1, 2, 1, 2 ... Returns
    ``(input reference, path of the true volume as MRC)``."""
    import scipy.fft

    from hpcem.ctf.model import ctf_2d
    from hpcem.io import write_mrc
    from hpcem.sim.projection import random_orientations
    from hpcem.sim.volume import load_volume

    volume = load_volume(None, pixel_A, box)
    rng = np.random.default_rng(0)
    angles = random_orientations(rng, n)
    shifts_px = rng.uniform(-3.0, 3.0, size=(n, 2))
    ft = volume.projector().project_ft(angles, shifts_px)
    du = rng.uniform(10000.0, 25000.0, n)
    dv = du - rng.uniform(0.0, 800.0, n)
    da = rng.uniform(0.0, 180.0, n)
    for i in range(n):
        ft[i] *= ctf_2d((box, box), pixel_A, du[i], dv[i], da[i], half=True)
    images = -scipy.fft.irfft2(ft, s=(box, box)).astype(np.float32)
    images += rng.normal(0.0, 0.5 * images.std(), images.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_mrc(folder / "projections.mrcs", images, pixel_A, kind="stack", overwrite=True)
    truth = write_mrc(folder / "truth.mrc", volume.data.astype(np.float32), pixel_A, overwrite=True)
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
    writer.append_columns(
        {
            "image": [str(stack)] * n,
            "image_index": np.arange(n),
            "rot": angles[:, 0],
            "tilt": angles[:, 1],
            "psi": angles[:, 2],
            "shift_x": -shifts_px[:, 0] * pixel_A,
            "shift_y": -shifts_px[:, 1] * pixel_A,
            "defocus_u": du,
            "defocus_v": dv,
            "defocus_angle": da,
            "half_set": 1 + np.arange(n) % 2,
        }
    )
    writer.close()
    project.set_output(run, "particles", "hpcem.SetOfParticles", n)
    _finish(project, run)
    return f"{run}:particles", truth


def fsc_curve(a, b):
    """FSC of two cubic maps by shells of integer radius 1 .. N/2 (numpy, written here
    from the definition as the test's outside reference)."""

    fa, fb = np.fft.fftn(np.asarray(a, float)), np.fft.fftn(np.asarray(b, float))
    n = fa.shape[0]
    k = np.fft.fftfreq(n) * n
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k**2)).astype(int)
    num = np.bincount(shell.ravel(), (fa * np.conj(fb)).real.ravel())
    den_a = np.bincount(shell.ravel(), (np.abs(fa) ** 2).ravel())
    den_b = np.bincount(shell.ravel(), (np.abs(fb) ** 2).ravel())
    return (num / np.sqrt(den_a * den_b))[1 : n // 2 + 1]
