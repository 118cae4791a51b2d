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
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

DEMO_MARKER = ".hpcem-demo"
#: Below this astigmatism (Å) the angle is not defined well enough to be compared.
MIN_ASTIGMATISM_FOR_ANGLE_A = 300.0


def _angle_error(a: float, b: float) -> float:
    """Difference of two astigmatism angles (deg), modulo 180, in [-90, 90)."""
    return (a - b + 90.0) % 180.0 - 90.0


@click.command("demo")
@click.argument("path", default="hpcem-demo", required=False)
@click.option("--movies", "n", default=6, show_default=True, help="Movies to simulate.")
@click.option("--frames", default=24, show_default=True, help="Frames per movie.")
@click.option("--size", default=1024, show_default=True, help="Movie edge in pixels.")
@click.option(
    "--pixel-size-A", "pixel_size_A", default=1.0, show_default=True, help="Pixel size in Å."
)
@click.option("--workers", type=int, default=None, help="Local worker processes (default: cores).")
@click.option("--seed", default=2026, show_default=True, help="Random seed of the simulation.")
def demo_cmd(path, n, frames, size, pixel_size_A, workers, seed):
    """Run the demo workflow in PATH (default ./hpcem-demo): simulate movies, import,
    align, estimate the CTF two ways and put them to a consensus, pick particles two ways
    and put them to a consensus, extract the particles; compare each step with the truth.

    A folder left by an earlier demo is replaced; any other existing folder is refused.
    """
    import numpy as np

    from hpcem.cli.commands_runs import _print_table, _wait
    from hpcem.errors import HpcemError
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.runs import summarize
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset
    from hpcem.store import Project

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
    _particles(project, run, root, config, truth, ali, con, mic_name)
    _print_table(project, [summarize(r) for r in project.runs])


def _particles(project, run, root, config, truth, ali, con, mic_name) -> None:
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
    ext = run(
        "particles.extract",
        {"box_size_px": box, "rescaled_box_px": box // 2},
        {
            "coordinates": [f"{both.id}:coordinates"],
            "micrographs": [f"{ali.id}:micrographs"],
            "ctfs": accepted_ctfs,
        },
        label="extract particles",
    )

    # True centres in each aligned micrograph: the sum is in the first used frame's
    # coordinates, where a particle sits at its frame-0 position plus that frame's shift.
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
        f"\nextraction: {len(particles)} particles, box {box} px binned to {box // 2} px "
        f"({particles.optics['pixel_size_A'][0]:.2f} Å/px); {len(errors)} on a true particle, "
        f"median centre error {np.median(errors) if errors else float('nan'):.1f} px "
        f"(stacks in runs/{ext.id:06d}/particles/, a gallery in runs/{ext.id:06d}/gallery.png)\n"
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
