"""Simulate a dataset inside a project: movies or micrographs of a real particle with
full ground truth (:mod:`hpcem.sim.dataset`), one step per movie/micrograph.

The plan (every item's defocus, astigmatism, drift and seed) is drawn from ``seed`` when
the run is planned, so steps are independent and the files are the same bytes as
``hpcem simulate`` with the same settings. The ``register`` step writes
``ground_truth.json`` and ``ground_truth.star`` into the run folder and the output set
with its optics table.
"""

from __future__ import annotations

from hpcem.protocol import Citation, Output, Param, Protocol, Step
from hpcem.protocol.params import when

_STEP_PREFIX = "simulate/"

GRANT_GRIGORIEFF_2015 = Citation(
    "Grant2015",
    "@article{Grant2015, author = {Grant, Timothy and Grigorieff, Nikolaus}, title = "
    "{Measuring the optimal exposure for single particle cryo-EM using a 2.6 {\\AA} "
    "reconstruction of rotavirus VP6}, journal = {eLife}, volume = {4}, pages = {e06980}, "
    "year = {2015}, doi = {10.7554/eLife.06980}}",
)
PENG_1996 = Citation(
    "Peng1996",
    "@article{Peng1996, author = {Peng, L.-M. and Ren, G. and Dudarev, S. L. and Whelan, "
    "M. J.}, title = {Robust parameterization of elastic and absorptive electron atomic "
    "scattering factors}, journal = {Acta Cryst. A}, volume = {52}, pages = {257--276}, "
    "year = {1996}, doi = {10.1107/S0108767395014371}}",
)
GEMMI = Citation(
    "Wojdyr2022",
    "@article{Wojdyr2022, author = {Wojdyr, Marcin}, title = {GEMMI: A library for "
    "structural biology}, journal = {J. Open Source Softw.}, volume = {7}, number = {73}, "
    "pages = {4200}, year = {2022}, doi = {10.21105/joss.04200}}",
)

_MOVIES = when("kind", "==", "movies")
_MICROGRAPHS = when("kind", "==", "micrographs")


def _config(p: dict, model: str | None):
    from hpcem.sim.dataset import DatasetConfig

    movies = p["kind"] == "movies"
    return DatasetConfig(
        kind=p["kind"],
        n_items=p["n_items"],
        size_px=p["size_px"],
        pixel_size_A=p["pixel_size_A"],
        n_frames=p["n_frames"] if movies else 1,
        dose_per_frame_e_A2=p["dose_per_frame_e_A2"] if movies else 0.0,
        snr=p["snr"] if not movies else 0.1,
        defocus_min_A=p["defocus_min_A"],
        defocus_max_A=p["defocus_max_A"],
        astigmatism_max_A=p["astigmatism_max_A"],
        phase_shift_deg=p["phase_shift_deg"],
        voltage_kV=p["voltage_kV"],
        cs_mm=p["spherical_aberration_mm"],
        amplitude_contrast=p["amplitude_contrast"],
        b_factor_A2=p["b_factor_A2"],
        fill_fraction=p["fill_fraction"],
        local_motion_px=p["local_motion_px"] if movies else 0.0,
        dose_decay=p["dose_decay"] if movies else False,
        gain_sd=p["gain_sd"] if movies else 0.0,
        file_format=p["file_format"] if movies else "mrc",
        model=model,
        seed=p["seed"],
    )


def simulate_one(config: dict, item: dict, path: str) -> dict:
    """Step: simulate one movie or micrograph into ``path``; return its truth record."""
    from pathlib import Path

    from hpcem.sim.dataset import DatasetConfig, make_item

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    record = make_item(DatasetConfig(**config), item, path)
    return {**record, "path": path}


def write_gain(config: dict, folder: str) -> dict:
    """Step: write the dataset's gain reference into ``folder``."""
    from pathlib import Path

    from hpcem.sim.dataset import DatasetConfig
    from hpcem.sim.dataset import write_gain as write

    Path(folder).mkdir(parents=True, exist_ok=True)
    path = write(folder, DatasetConfig(**config))
    return {"path": str(path) if path else None}


def register_dataset(ctx, config: dict, folder: str) -> dict:
    """Controller step: the ground truth files and the output set (with its optics)."""

    from hpcem.protocols.import_images import _write_optics

    from hpcem.errors import HpcemError
    from hpcem.sim.dataset import DatasetConfig, dataset_truth
    from hpcem.sim.truth import write_truth

    cfg = DatasetConfig(**config)
    found = ctx.results(_STEP_PREFIX)
    rejected = [
        {"step": name, "reason": reason}
        for name, reason in sorted(ctx.rejections(_STEP_PREFIX).items())
    ]
    if not found:
        raise HpcemError(f"no item was simulated: {rejected[0]['reason'] if rejected else ''}")
    records = [found[k] for k in sorted(found)]
    truth = dataset_truth(cfg, [{k: v for k, v in r.items() if k != "path"} for r in records])
    json_path, star_path = write_truth(ctx.path(folder), truth)
    movies = cfg.kind == "movies"
    columns = {"image": [r["path"] for r in records], "optics_group": [1] * len(records)}
    if movies:
        columns["n_frames"] = [r["n_frames"] for r in records]
    set_type = "hpcem.SetOfMovies" if movies else "hpcem.SetOfMicrographs"
    optics = {
        "pixel_size_A": cfg.pixel_size_A,
        "voltage_kV": cfg.voltage_kV,
        "spherical_aberration_mm": cfg.cs_mm,
        "amplitude_contrast": cfg.amplitude_contrast,
        "dose_per_frame_e_A2": cfg.dose_per_frame_e_A2 if movies else 0.0,
    }
    with ctx.create_set(cfg.kind, set_type) as writer:
        _write_optics(writer, optics)
        writer.append_columns(columns)
    return {
        "count": len(records),
        "particles": sum(len(r["particles"]["x"]) for r in records),
        "ground_truth": [ctx.relpath(str(json_path)), ctx.relpath(str(star_path))],
        "gain_reference": truth["gain_reference"],
        "rejected": rejected,
    }


class SimulateDataset(Protocol):
    name = "sim.dataset"
    label = "Simulate a dataset"
    help = (
        "Simulate movies or micrographs of a real particle (projections of an atomic "
        "model's density or of a map, at random orientations) with a known CTF per image, "
        "smooth drift, radiation damage and shot noise, and write the ground truth "
        "(ground_truth.json, ground_truth.star) in the run folder. One step per item."
    )
    version = "1"
    params = (
        Param.enum(
            "kind", ("movies", "micrographs"), "movies", help="What to simulate and output."
        ),
        Param.int("n_items", 6, min=1, max=100000, help="Number of movies or micrographs."),
        Param.int("size_px", 1024, min=64, max=16384, units="px", help="Image edge."),
        Param.float("pixel_size_A", 1.0, min=0.3, max=20.0, units="Å/px", help="Pixel size."),
        Param.path(
            "model",
            "",
            help="Atomic model (PDB/mmCIF, may be .gz/.bz2) or MRC map to project "
            "(empty: the model shipped with hpcem, PDB 7DDO, ~130 Å).",
        ),
        Param.int("n_frames", 24, min=1, max=1000, when=(_MOVIES,), help="Frames per movie."),
        Param.float(
            "dose_per_frame_e_A2",
            1.5,
            min=0.05,
            max=50.0,
            units="e⁻/Å²",
            when=(_MOVIES,),
            help="Electron dose per frame (Poisson counts).",
        ),
        Param.float(
            "snr",
            0.1,
            min=0.001,
            max=1000.0,
            when=(_MICROGRAPHS,),
            help="Variance of the clean image over that of the added gaussian noise.",
        ),
        Param.float(
            "defocus_min_A",
            8000.0,
            min=100.0,
            max=100000.0,
            units="Å",
            help="Defocus U is uniform in [defocus_min_A, defocus_max_A] (underfocus > 0).",
        ),
        Param.float(
            "defocus_max_A",
            35000.0,
            min=100.0,
            max=100000.0,
            units="Å",
            help="Highest defocus U.",
        ),
        Param.float(
            "astigmatism_max_A",
            1000.0,
            min=0.0,
            max=20000.0,
            units="Å",
            help="Largest defocus U − V; the angle is uniform in [0, 180).",
        ),
        Param.float(
            "phase_shift_deg", 0.0, min=0.0, max=180.0, units="deg", help="Phase-plate shift."
        ),
        Param.float(
            "voltage_kV", 300.0, min=20.0, max=3000.0, units="kV", help="Acceleration voltage."
        ),
        Param.float(
            "spherical_aberration_mm",
            2.7,
            min=0.0,
            max=20.0,
            units="mm",
            help="Spherical aberration Cs.",
        ),
        Param.float(
            "amplitude_contrast", 0.1, min=0.0, max=0.5, help="Amplitude contrast (0.07-0.1 ice)."
        ),
        Param.float(
            "b_factor_A2",
            60.0,
            min=0.0,
            max=1000.0,
            units="Å²",
            expert=1,
            help="Envelope exp(−B k²/4) on the CTF.",
        ),
        Param.float(
            "fill_fraction",
            0.25,
            min=0.0,
            max=0.6,
            help="Fraction of the image area covered by (non-overlapping) particles.",
        ),
        Param.float(
            "local_motion_px",
            0.0,
            min=0.0,
            max=50.0,
            units="px",
            when=(_MOVIES,),
            help="Largest local (patch) motion at the last frame; 0 = global drift only.",
        ),
        Param.bool(
            "dose_decay",
            True,
            when=(_MOVIES,),
            help="Attenuate each frame for its exposure (Grant & Grigorieff 2015).",
        ),
        Param.float(
            "gain_sd",
            0.0,
            min=0.0,
            max=0.45,
            when=(_MOVIES,),
            help="Per-pixel detector sensitivity spread; > 0 writes gain_reference.mrc "
            "(raw × gain = corrected) in the run folder.",
        ),
        Param.enum(
            "file_format",
            ("mrc", "tiff"),
            "mrc",
            when=(_MOVIES,),
            help="Movie files: MRC stacks (int8 counts) or TIFF (uint8 counts).",
        ),
        Param.int("seed", 0, min=0, max=2**31 - 1, help="Random seed (same seed, same bytes)."),
    )
    outputs = (
        Output("movies", "hpcem.SetOfMovies", help="The simulated movies (kind movies)."),
        Output(
            "micrographs",
            "hpcem.SetOfMicrographs",
            help="The simulated micrographs (kind micrographs).",
        ),
    )
    citations = (GRANT_GRIGORIEFF_2015, PENG_1996, GEMMI)

    def _model(self, ctx) -> str | None:
        model = ctx.params.get("model") or ""
        return ctx.relpath(ctx.path(model)) if model else None

    def validate(self, ctx) -> list[str]:
        import os

        from hpcem.errors import HpcemError
        from hpcem.sim.volume import is_atomic_model

        problems = []
        model = ctx.params.get("model") or ""
        if model and not os.path.isfile(ctx.path(model)):
            problems.append(f"model: {ctx.path(model)!r} is not a file")
        elif model:
            try:
                is_atomic_model(ctx.path(model))
            except HpcemError as exc:
                problems.append(f"model: {exc}")
        try:
            _config(ctx.params, self._model(ctx) if not problems else None)
        except HpcemError as exc:
            problems.append(str(exc))
        return problems

    def steps(self, ctx) -> list[Step]:
        from hpcem.sim.dataset import plan_items

        config = _config(ctx.params, self._model(ctx))
        folder = ctx.relpath(str(ctx.run_dir / "data"))
        args = {"config": config.to_json()}
        steps = [
            Step(
                f"{_STEP_PREFIX}{item['index']:06d}",
                "hpcem.protocols.simulate:simulate_one",
                {**args, "item": item, "path": f"{folder}/{item['name']}"},
            )
            for item in plan_items(config)
        ]
        if config.gain_sd > 0:
            steps.append(
                Step("gain", "hpcem.protocols.simulate:write_gain", {**args, "folder": folder})
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.simulate:register_dataset",
                {**args, "folder": folder},
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
