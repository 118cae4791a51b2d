"""``hpcem simulate``: write a simulated dataset with full ground truth (hpcem.sim)."""

from __future__ import annotations

import click


@click.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Atomic model (PDB/mmCIF, may be .gz/.bz2) whose density is projected "
    "[default: the model shipped with hpcem, PDB 7DDO].",
)
@click.option(
    "--volume",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="MRC map to project instead of an atomic model (resampled to --pixel-size-A).",
)
@click.option("--movies", "n_movies", type=int, default=None, help="Simulate N movies.")
@click.option(
    "--micrographs", "n_micrographs", type=int, default=None, help="Simulate N micrographs."
)
@click.option("--frames", default=24, show_default=True, help="Frames per movie.")
@click.option("--size", default=1024, show_default=True, help="Image edge in pixels.")
@click.option("--pixel-size-A", "pixel_size_A", default=1.0, show_default=True, help="Å/px.")
@click.option("--snr", default=0.1, show_default=True, help="Micrographs: signal-to-noise ratio.")
@click.option(
    "--dose-per-frame",
    default=1.5,
    show_default=True,
    help="Movies: electron dose per frame (e⁻/Å²).",
)
@click.option(
    "--defocus-range",
    nargs=2,
    type=float,
    default=(8000.0, 35000.0),
    show_default=True,
    help="Defocus U is drawn in this range (Å, underfocus positive).",
)
@click.option("--astigmatism", default=1000.0, show_default=True, help="Largest U − V (Å).")
@click.option("--phase-shift", default=0.0, show_default=True, help="Phase shift (deg).")
@click.option("--amplitude-contrast", default=0.1, show_default=True, help="Amplitude contrast.")
@click.option(
    "--fill", default=0.25, show_default=True, help="Fraction of the area covered by particles."
)
@click.option(
    "--local-motion", default=0.0, show_default=True, help="Movies: largest local motion (px)."
)
@click.option(
    "--no-dose-decay",
    is_flag=True,
    help="Movies: no radiation damage (by default the spectrum decays with exposure).",
)
@click.option(
    "--gain",
    "gain_sd",
    type=float,
    default=None,
    is_flag=False,
    flag_value=0.05,
    help="Movies: simulate a detector gain (relative s.d. of the per-pixel sensitivity, "
    "0.05 if no value) and write gain_reference.mrc (raw × gain = corrected).",
)
@click.option("--tiff", is_flag=True, help="Movies: write TIFF (uint8 counts) instead of MRC.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--force", is_flag=True, help="Write into OUTDIR even if it is not empty.")
def simulate_cmd(
    outdir,
    model,
    volume,
    n_movies,
    n_micrographs,
    frames,
    size,
    pixel_size_A,
    snr,
    dose_per_frame,
    defocus_range,
    astigmatism,
    phase_shift,
    amplitude_contrast,
    fill,
    local_motion,
    no_dose_decay,
    gain_sd,
    tiff,
    seed,
    force,
):
    """Simulate movies or micrographs of a real particle into OUTDIR, with the ground
    truth in OUTDIR/ground_truth.json and ground_truth.star (RELION 3.1 columns).

    Particles are projections of the model's density at uniformly random orientations;
    each image has its own CTF; movies drift smoothly. See docs/simulation.md.
    """
    from pathlib import Path

    from hpcem.errors import ValidationError
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    if model and volume:
        raise ValidationError("give --model or --volume, not both")
    if (n_movies is None) == (n_micrographs is None):
        raise ValidationError("give either --movies N or --micrographs N")
    kind = "movies" if n_movies is not None else "micrographs"
    if kind == "micrographs" and (tiff or gain_sd):
        raise ValidationError("--tiff and --gain apply to movies only")
    out = Path(outdir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValidationError(f"{out} is not empty; choose another OUTDIR or pass --force")
    config = DatasetConfig(
        kind=kind,
        n_items=n_movies if kind == "movies" else n_micrographs,
        size_px=size,
        pixel_size_A=pixel_size_A,
        n_frames=frames,
        dose_per_frame_e_A2=dose_per_frame,
        snr=snr,
        defocus_min_A=defocus_range[0],
        defocus_max_A=defocus_range[1],
        astigmatism_max_A=astigmatism,
        phase_shift_deg=phase_shift,
        amplitude_contrast=amplitude_contrast,
        fill_fraction=fill,
        local_motion_px=local_motion,
        dose_decay=not no_dose_decay,
        gain_sd=gain_sd or 0.0,
        file_format="tiff" if tiff else "mrc",
        model=str(Path(model or volume).resolve()) if (model or volume) else None,
        seed=seed,
    )

    def progress(i, n, name):
        click.echo(f"  {i}/{n} {name}")

    click.echo(f"simulating {config.n_items} {kind} of {size}x{size} px into {out} ...")
    truth = simulate_dataset(out, config, progress)
    n_particles = sum(len(item["particles"]["x"]) for item in truth["items"])
    click.echo(
        f"{n_particles} particles of {truth['volume']['source']} "
        f"({truth['volume']['diameter_A']:.0f} Å); ground truth in "
        f"{out / 'ground_truth.json'} and ground_truth.star"
    )


COMMANDS = [simulate_cmd]
