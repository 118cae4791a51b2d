"""``hpcem demo``: the pre-processing workflow on simulated movies, on this machine.

Creates a project, simulates movies of a real particle (the PDB model shipped with
hpcem) with known drift, CTF and particle positions, then runs, one after the other on
the local executor (one step per item, in parallel): ``import.movies`` → ``motion.align``
(global) → ``ctf.estimate`` and ``ctf.fit2d`` → ``ctf.consensus`` → ``picking.dog`` and
``picking.template`` (templates from a reference map, CTF-aware) → ``picking.consensus``
→ ``particles.extract``. It prints, per micrograph, the alignment error and both
strategies' defocus U and V errors and astigmatism angle errors against the ground
truth, then precision, recall and F1 of each picker and of the consensus, the extracted
particles' centre error, and ends with ``hpcem status``.

``--full`` goes on to a map: more particles (larger micrographs, denser, fewer frames),
extraction binned to :data:`FULL_BOX_PX`, ``import.volumes`` of an initial model (the
simulation's map low-passed to :data:`INITIAL_LOWPASS_A`) → ``refine.projmatch``, and
prints the particles used, their median angular error against the simulation's true
poses (extracted particles are matched to true particles by position, as for picking),
the gold-standard resolution (FSC 0.143), the resolution against the true map (FSC 0.5)
and the path of the FSC plot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

DEMO_MARKER = ".hpcem-demo"
#: (movies, frames, edge px, fill fraction) of the plain demo and of ``--full``.
PLAIN_DEFAULTS = (6, 24, 1024, 0.25)
FULL_DEFAULTS = (10, 10, 1536, 0.45)
#: ``--full``: particles binned to this box for refinement, and the initial model's low-pass.
FULL_BOX_PX = 64
INITIAL_LOWPASS_A = 35.0
#: Below this astigmatism (Å) the angle is not defined well enough to be compared.
MIN_ASTIGMATISM_FOR_ANGLE_A = 300.0


def _angle_error(a: float, b: float) -> float:
    """Difference of two astigmatism angles (deg), modulo 180, in [-90, 90)."""
    return (a - b + 90.0) % 180.0 - 90.0


@click.command("demo")
@click.argument("path", default="hpcem-demo", required=False)
@click.option("--movies", "n", type=int, default=None, help="Movies to simulate [6; --full: 10].")
@click.option("--frames", type=int, default=None, help="Frames per movie [24; --full: 10].")
@click.option("--size", type=int, default=None, help="Movie edge in pixels [1024; --full: 1536].")
@click.option(
    "--pixel-size-A", "pixel_size_A", default=1.0, show_default=True, help="Pixel size in Å."
)
@click.option("--workers", type=int, default=None, help="Local worker processes (default: cores).")
@click.option("--seed", default=2026, show_default=True, help="Random seed of the simulation.")
@click.option(
    "--full",
    is_flag=True,
    help="Go on to a 3D map: initial model, refine.projmatch, FSC (about 3 min on 2 cores).",
)
@click.option(
    "--iterations",
    type=int,
    default=5,
    show_default=True,
    help="--full: iterations of refine.projmatch.",
)
def demo_cmd(path, n, frames, size, pixel_size_A, workers, seed, full, iterations):
    """Run the demo workflow in PATH (default ./hpcem-demo): simulate movies, import,
    align, estimate the CTF two ways and put them to a consensus, pick particles two ways
    and put them to a consensus, extract the particles; compare each step with the truth.
    With --full, go on to a gold-standard 3D refinement and compare the map with the truth.

    A folder left by an earlier demo is replaced; any other existing folder is refused.
    """
    import time

    import numpy as np

    from hpcem.cli.commands_runs import _print_table, _wait
    from hpcem.errors import HpcemError
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.runs import summarize
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.store import Project

    started = time.perf_counter()
    defaults = FULL_DEFAULTS if full else PLAIN_DEFAULTS
    n = defaults[0] if n is None else n
    frames = defaults[1] if frames is None else frames
    size = defaults[2] if size is None else size
    root = Path(path).resolve()
    if root.exists():
        if not (root / DEMO_MARKER).exists():
            raise HpcemError(f"{root} exists and is not an earlier demo; give another PATH")
        shutil.rmtree(root)
    project = Project.create(root)
    (root / DEMO_MARKER).write_text("made by 'hpcem demo'; safe to delete\n")
    config = DatasetConfig(
        kind="movies",
        n_items=n,
        size_px=size,
        pixel_size_A=pixel_size_A,
        n_frames=frames,
        fill_fraction=defaults[3],
        seed=seed,
    )
    click.echo(
        f"simulating {n} movies of {frames} frames, {size}x{size} px at {pixel_size_A} Å/px, "
        "of PDB 7DDO (ground truth in raw/ground_truth.json and .star) ..."
    )
    truth = simulate_dataset(root / "raw", config)
    by_name = {item["name"]: item for item in truth["items"]}

    def run(protocol, params, inputs=None, label=""):
        rec = lifecycle.create_run(project, protocol, params, inputs or {}, label=label)
        lifecycle.launch(project, rec.id, workers)
        click.echo(f"run {rec.id}: {protocol}")
        _wait(project, rec.id)
        if project.run(rec.id).state != "finished":
            raise HpcemError(f"demo run {rec.id} ({protocol}) did not finish; see hpcem status")
        return rec

    imp = run(
        "import.movies",
        {
            "files": str(root / "raw" / "movie_*.mrc"),
            "pixel_size_A": pixel_size_A,
            "dose_per_frame_e_A2": config.dose_per_frame_e_A2,
        },
        label="import simulated movies",
    )
    ali = run("motion.align", {}, {"movies": [f"{imp.id}:movies"]}, label="align movies")
    mics = {"micrographs": [f"{ali.id}:micrographs"]}
    est = run("ctf.estimate", {}, mics, label="CTF, 1D + astigmatism")
    fit = run("ctf.fit2d", {}, mics, label="CTF, 2D fit")
    con = run(
        "ctf.consensus",
        {},
        {"ctfs": [f"{est.id}:ctfs"], "other_ctfs": [f"{fit.id}:ctfs"]},
        label="CTF consensus",
    )

    movies = project.open_set(imp.id, "movies")
    movie_name = {int(i): Path(p).name for i, p in zip(movies.column("id"), movies.column("image"))}
    micrographs = project.open_set(ali.id, "micrographs")
    mic_name = {
        int(i): movie_name[int(m)]
        for i, m in zip(micrographs.column("id"), micrographs.column("movie_id"))
    }
    alignments = project.open_set(ali.id, "alignments").read_columns()
    click.echo("\nalignment: RMS error of the per-frame shifts against the truth (px)")
    for mid, sx, sy in zip(alignments["movie_id"], alignments["shifts_x"], alignments["shifts_y"]):
        t = np.asarray(by_name[movie_name[int(mid)]]["shifts_px"], dtype=np.float64)
        est_px = np.stack([np.asarray(sx), np.asarray(sy)], axis=1) / pixel_size_A
        first = int(config.n_frames) - len(est_px)
        err = (est_px - est_px[0]) - (t[first:] - t[first])
        click.echo(f"  {movie_name[int(mid)]:14s} {float(np.sqrt((err**2).sum(1).mean())):.3f}")

    accepted = project.open_set(con.id, "accepted").read_columns()
    consensus = dict(zip(accepted["micrograph_id"].tolist(), accepted["consensus_resolution"]))
    click.echo(
        "\nCTF against the truth (errors of U and V in %, of the astigmatism angle in degrees"
        f" where U - V >= {MIN_ASTIGMATISM_FOR_ANGLE_A:.0f} Å):"
    )
    click.echo(
        f"  {'micrograph':14s} {'strategy':13s} {'true U':>7s} {'est U':>7s} {'U err':>6s}"
        f" {'true V':>7s} {'est V':>7s} {'V err':>6s} {'angle':>6s} {'consensus':>9s}"
    )
    errors: dict[str, list] = {}
    for rec, label in ((est, "ctf.estimate"), (fit, "ctf.fit2d")):
        c = project.open_set(rec.id, "ctfs").read_columns()
        for mid, u, v, a in zip(
            c["micrograph_id"], c["defocus_u"], c["defocus_v"], c["defocus_angle"]
        ):
            t = by_name[mic_name[int(mid)]]
            du = 100 * (float(u) - t["defocus_u"]) / t["defocus_u"]
            dv = 100 * (float(v) - t["defocus_v"]) / t["defocus_v"]
            astig = t["defocus_u"] - t["defocus_v"]
            da = (
                _angle_error(float(a), t["defocus_angle"])
                if astig >= MIN_ASTIGMATISM_FOR_ANGLE_A
                else None
            )
            errors.setdefault(label, []).append((abs(du), abs(dv), da))
            res = consensus.get(int(mid))
            click.echo(
                f"  {mic_name[int(mid)]:14s} {label:13s} {t['defocus_u']:7.0f} {float(u):7.0f}"
                f" {du:+5.2f}% {t['defocus_v']:7.0f} {float(v):7.0f} {dv:+5.2f}%"
                f" {'   -  ' if da is None else f'{da:+5.1f}°'}"
                f" {'rejected' if res is None else f'{res:6.1f} Å':>9s}"
            )
    for label, rows in errors.items():
        arr = np.array([(r[0], r[1]) for r in rows])
        angles = [abs(r[2]) for r in rows if r[2] is not None]
        click.echo(
            f"  {label}: median |U error| {np.median(arr[:, 0]):.2f}%, median |V error|"
            f" {np.median(arr[:, 1]):.2f}%, largest angle error "
            + (f"{max(angles):.1f}°" if angles else "n/a")
        )
    click.echo(
        f"  consensus: {len(consensus)} of {len(micrographs)} micrographs accepted (the column:"
        " resolution at which the two CTFs' phases differ by 90°)\n"
    )
    ext, true_xy = _particles(project, run, root, config, truth, ali, con, mic_name, full)
    if full:
        _refine(project, run, root, config, truth, ali, ext, mic_name, true_xy, iterations)
    _print_table(project, [summarize(r) for r in project.runs])
    if full:
        click.echo(f"\ndemo --full took {time.perf_counter() - started:.0f} s")


def _particles(project, run, root, config, truth, ali, con, mic_name, full=False):
    """Picking (DoG, templates from a map, their consensus) and extraction, with
    precision, recall and F1 of each picker against the simulator's particle centres."""
    import numpy as np

    from hpcem.io import write_mrc
    from hpcem.picking.evaluate import match_pairs, match_picks, pooled
    from hpcem.sim.dataset import dataset_volume

    volume = dataset_volume(config)
    diameter_A = round(volume.diameter_A)
    write_mrc(root / "raw" / "reference.mrc", volume.data, volume.pixel_size_A, overwrite=True)
    click.echo(
        f"\npicking: particle diameter {diameter_A} Å; template reference: the 7DDO density "
        "(raw/reference.mrc, as a map from EMDB would be)"
    )
    ref = run(
        "import.volumes",
        {"files": str(root / "raw" / "reference.mrc"), "pixel_size_A": volume.pixel_size_A},
        label="reference map",
    )
    mics = {"micrographs": [f"{ali.id}:micrographs"]}
    accepted_ctfs = [f"{con.id}:accepted"]
    dog = run("picking.dog", {"diameter_A": diameter_A}, mics, label="DoG picking")
    tpl = run(
        "picking.template",
        {"diameter_A": diameter_A},
        {**mics, "references": [f"{ref.id}:volumes"], "ctfs": accepted_ctfs},
        label="template picking",
    )
    both = run(
        "picking.consensus",
        {"diameter_A": diameter_A},
        {"coordinates": [f"{tpl.id}:coordinates", f"{dog.id}:coordinates"], **mics},
        label="consensus of both pickers",
    )
    box = 2 * round(0.75 * diameter_A / config.pixel_size_A)
    binned = min(FULL_BOX_PX, box) if full else box // 2
    ext = run(
        "particles.extract",
        {"box_size_px": box, "rescaled_box_px": binned},
        {
            "coordinates": [f"{both.id}:coordinates"],
            "micrographs": [f"{ali.id}:micrographs"],
            "ctfs": accepted_ctfs,
        },
        label="extract particles",
    )

    true_xy = _true_centres(project, truth, ali, mic_name)
    radius = 0.5 * diameter_A / config.pixel_size_A
    click.echo(
        f"\npicking against the truth (a pick matches a particle within {radius:.0f} px, half a "
        "diameter; micrographs each picker kept):"
    )
    click.echo(f"  {'picker':18s} {'picks':>6s} {'precision':>9s} {'recall':>7s} {'F1':>6s}")
    for rec, label in ((dog, "picking.dog"), (tpl, "picking.template"), (both, "consensus")):
        c = project.open_set(rec.id, "coordinates").read_columns(["micrograph_id", "x", "y"])
        picked_on = set(c["micrograph_id"].tolist()) | _zero_pick_micrographs(project, rec.id)
        scores = []
        for mid in sorted(picked_on):
            sel = c["micrograph_id"] == mid
            xy = np.stack([c["x"][sel], c["y"][sel]], axis=1)
            scores.append(match_picks(xy, true_xy[mid], radius))
        s = pooled(scores)
        click.echo(
            f"  {label:18s} {s['tp'] + s['fp']:6d} {s['precision']:9.3f} {s['recall']:7.3f}"
            f" {s['f1']:6.3f}"
        )
    parts = project.open_set(ext.id, "particles").read_columns(
        ["micrograph_id", "coord_x", "coord_y", "shift_x", "shift_y"]
    )
    errors = []
    for mid in sorted(set(parts["micrograph_id"].tolist())):
        sel = parts["micrograph_id"] == mid
        # Particle centre = coordinate − shift (RELION 3.1 origin sign), shifts in Å.
        centre = np.stack(
            [
                parts["coord_x"][sel] - parts["shift_x"][sel] / config.pixel_size_A,
                parts["coord_y"][sel] - parts["shift_y"][sel] / config.pixel_size_A,
            ],
            axis=1,
        )
        for i, j in match_pairs(centre, true_xy[int(mid)], radius):
            errors.append(float(np.hypot(*(centre[i] - true_xy[int(mid)][j]))))
    particles = project.open_set(ext.id, "particles")
    click.echo(
        f"\nextraction: {len(particles)} particles, box {box} px binned to {binned} px "
        f"({particles.optics['pixel_size_A'][0]:.2f} Å/px); {len(errors)} on a true particle, "
        f"median centre error {np.median(errors) if errors else float('nan'):.1f} px "
        f"(stacks in runs/{ext.id:06d}/particles/, a gallery in runs/{ext.id:06d}/gallery.png)\n"
    )
    return ext, true_xy


def _true_centres(project, truth, ali, mic_name) -> dict:
    """True particle centres (k, 2) (x, y) px in each aligned micrograph, by id: the sum
    is in the first used frame's coordinates, where a particle sits at its frame-0
    position plus that frame's shift."""
    import numpy as np

    by_name = {item["name"]: item for item in truth["items"]}
    first = project.open_set(ali.id, "alignments").read_columns(["movie_id", "first_frame"])
    first_of_movie = dict(zip(first["movie_id"].tolist(), first["first_frame"].tolist()))
    micrographs = project.open_set(ali.id, "micrographs")
    true_xy = {}
    for mid, movie_id in zip(micrographs.column("id"), micrographs.column("movie_id")):
        item = by_name[mic_name[int(mid)]]
        shift = np.asarray(item["shifts_px"][first_of_movie.get(int(movie_id), 0)])
        p = item["particles"]
        true_xy[int(mid)] = np.stack([p["x"], p["y"]], axis=1) + shift
    return true_xy


def _true_poses(truth, mic_name) -> dict:
    """True orientations (k, 3) (rot, tilt, psi) of each micrograph's particles, by id, in
    the order of :func:`_true_centres`."""
    import numpy as np

    by_name = {item["name"]: item for item in truth["items"]}
    poses = {}
    for mid, name in mic_name.items():
        p = by_name[name]["particles"]
        poses[int(mid)] = np.stack([p["rot"], p["tilt"], p["psi"]], axis=1)
    return poses


def _refine(project, run, root, config, truth, ali, ext, mic_name, true_xy, iterations):
    """``--full``: initial model, ``refine.projmatch``, and the map and poses against the
    truth."""
    import numpy as np

    from hpcem.io import read_image, write_mrc
    from hpcem.picking.evaluate import match_pairs
    from hpcem.refine.orientations import rotation_angles_deg
    from hpcem.refine.projmatch import lowpass_map
    from hpcem.sim.projection import euler_matrices
    from hpcem.sim.volume import volume_from_map
    from hpcem.validate.fsc import REFERENCE_THRESHOLD, fsc_curve, resolution_at

    particles = project.open_set(ext.id, "particles")
    box = int(particles.optics["image_size_px"][0])
    pixel = float(particles.optics["pixel_size_A"][0])
    # The true map at the particles' box and pixel size; the initial model is it blurred.
    true_map = volume_from_map(
        root / "raw" / "reference.mrc", pixel, box, map_pixel_size_A=config.pixel_size_A
    )
    initial = lowpass_map(true_map.data, pixel, INITIAL_LOWPASS_A)
    write_mrc(root / "raw" / "initial_model.mrc", initial, pixel, overwrite=True)
    click.echo(
        f"3D refinement: initial model = the true map low-passed to {INITIAL_LOWPASS_A:g} Å "
        f"(raw/initial_model.mrc, {box} px at {pixel:.3f} Å/px)"
    )
    imp = run(
        "import.volumes",
        {"files": str(root / "raw" / "initial_model.mrc"), "pixel_size_A": pixel},
        label="initial model",
    )
    diameter_A = true_map.diameter_A
    ref = run(
        "refine.projmatch",
        {
            "iterations": iterations,
            "angular_step_deg": 15.0,
            "max_shift_px": 4.0,
            "initial_lowpass_A": INITIAL_LOWPASS_A,
            "mask_diameter_A": round(min(box * pixel, 1.15 * diameter_A), 1),
        },
        {"particles": [f"{ext.id}:particles"], "reference": [f"{imp.id}:volumes"]},
        label="3D refinement",
    )
    steps = {r["name"]: r for r in project.read_steps(ref.id).to_records()}
    result = steps["refine"]["result"]
    parts = project.open_set(ref.id, "particles").read_columns(
        ["micrograph_id", "coord_x", "coord_y", "shift_x", "shift_y", "rot", "tilt", "psi"]
    )
    true_poses = _true_poses(truth, mic_name)
    radius = 0.5 * diameter_A / config.pixel_size_A
    errors = []
    for mid in sorted(set(parts["micrograph_id"].tolist())):
        sel = np.flatnonzero(parts["micrograph_id"] == mid)
        centre = np.stack(
            [
                parts["coord_x"][sel] - parts["shift_x"][sel] / config.pixel_size_A,
                parts["coord_y"][sel] - parts["shift_y"][sel] / config.pixel_size_A,
            ],
            axis=1,
        )
        for i, j in match_pairs(centre, true_xy[int(mid)], radius):
            k = sel[i]
            found = euler_matrices([[parts["rot"][k], parts["tilt"][k], parts["psi"][k]]])
            errors.append(
                float(rotation_angles_deg(found, euler_matrices(true_poses[int(mid)][j]))[0])
            )
    vols = project.open_set(ref.id, "volume").read_columns(["image", "half"])
    full_map = read_image(root / str(vols["image"][list(vols["half"]).index(0)]))
    freq, curve = fsc_curve(full_map, true_map.data, pixel)
    truth_res = resolution_at(freq, curve, REFERENCE_THRESHOLD)
    freq0, curve0 = fsc_curve(initial, true_map.data, pixel)
    initial_res = resolution_at(freq0, curve0, REFERENCE_THRESHOLD)
    click.echo(
        f"\n3D refinement against the truth ({result['iterations_run']} iterations, "
        f"{result['refine_s']:.0f} s):\n"
        f"  particles used: {result['particles']} (halves {result['half_counts'][0]} + "
        f"{result['half_counts'][1]}); {len(errors)} on a true particle\n"
        f"  median angular error vs the true poses: "
        f"{np.median(errors) if errors else float('nan'):.1f}°\n"
        f"  gold-standard resolution (FSC 0.143 of the half maps): {result['resolution_A']:.1f} Å\n"
        f"  resolution against the true map (FSC 0.5): {truth_res:.1f} Å "
        f"(the initial model: {initial_res:.1f} Å; Nyquist {2 * pixel:.1f} Å)\n"
        f"  FSC plot: {root / result['plot']}\n"
        f"  FSC per iteration: {root / result['history_plot']}\n"
    )


def _zero_pick_micrographs(project, run_id: int) -> set[int]:
    """Micrographs a picking run handled but found nothing on (counts in its register)."""
    steps = {r["name"]: r for r in project.read_steps(run_id).to_records()}
    for name in ("register", "merge"):
        result = (steps.get(name) or {}).get("result") or {}
        if "per_micrograph" in result:
            return {int(k) for k, n in result["per_micrograph"].items() if n == 0}
    return set()


COMMANDS = [demo_cmd]
