"""A whole simulated dataset on disk: movies or micrographs of a real particle, with a
gain reference if asked, and the ground truth (:mod:`hpcem.sim.truth`).

The dataset is a pure function of its :class:`DatasetConfig`: a plan draws every item's
parameters (defocus, astigmatism, drift, its own seed) from the dataset seed, and each
item is then simulated on its own (:func:`make_item`), so that a protocol can run one
step per item and get the same bytes as ``hpcem simulate``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from hpcem.errors import ValidationError

KINDS = ("movies", "micrographs")
FILE_FORMATS = ("mrc", "tiff")
GAIN_NAME = "gain_reference.mrc"

_VOLUMES: dict[tuple, object] = {}


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Everything that defines a simulated dataset (all JSON-serialisable).

    ``model`` is a map or atomic model file (None: the model shipped with hpcem).
    Defocus U is drawn uniformly in [defocus_min_A, defocus_max_A], V = U − a uniform
    astigmatism in [0, astigmatism_max_A], the angle uniformly in [0, 180). Movies drift
    smoothly: a steady drift of up to ``drift_px_per_frame`` plus an early motion of up
    to ``early_drift_px`` pixels in a random direction, decaying over 3 frames.
    """

    kind: str = "movies"
    n_items: int = 6
    size_px: int = 1024
    pixel_size_A: float = 1.0
    n_frames: int = 24
    dose_per_frame_e_A2: float = 1.5
    snr: float = 0.1
    defocus_min_A: float = 8000.0
    defocus_max_A: float = 35000.0
    astigmatism_max_A: float = 1000.0
    phase_shift_deg: float = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    b_factor_A2: float = 60.0
    fill_fraction: float = 0.25
    ice_level: float = 0.3
    drift_px_per_frame: float = 0.3
    early_drift_px: float = 5.0
    local_motion_px: float = 0.0
    dose_decay: bool = True
    gain_sd: float = 0.0
    file_format: str = "mrc"
    model: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.file_format not in FILE_FORMATS:
            problems.append(f"file_format must be one of {FILE_FORMATS}, got {self.file_format!r}")
        if self.n_items < 1:
            problems.append(f"n_items must be >= 1, got {self.n_items}")
        if self.size_px < 64:
            problems.append(f"size_px must be >= 64, got {self.size_px}")
        if not 0 < self.defocus_min_A <= self.defocus_max_A:
            problems.append("defocus range must satisfy 0 < defocus_min_A <= defocus_max_A")
        if self.astigmatism_max_A < 0 or self.astigmatism_max_A >= self.defocus_min_A:
            problems.append("astigmatism_max_A must be in [0, defocus_min_A)")
        if self.kind == "micrographs" and self.file_format == "tiff":
            problems.append("micrographs are written as MRC (file_format 'tiff' is for movies)")
        if self.kind == "micrographs" and self.gain_sd > 0:
            problems.append("a gain reference is simulated for movies only")
        if problems:
            raise ValidationError("; ".join(problems))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def item_name(config: DatasetConfig, index: int) -> str:
    """File name of item ``index``: ``movie_000.mrc``/``.tif`` or ``mic_000.mrc``."""
    if config.kind == "movies":
        return f"movie_{index:03d}." + ("tif" if config.file_format == "tiff" else "mrc")
    return f"mic_{index:03d}.mrc"


def plan_items(config: DatasetConfig) -> list[dict]:
    """Per-item parameters, drawn from the dataset seed (JSON-serialisable)."""
    rng = np.random.default_rng(config.seed)
    seeds = np.random.SeedSequence(config.seed).spawn(config.n_items)
    items = []
    for i in range(config.n_items):
        u = float(rng.uniform(config.defocus_min_A, config.defocus_max_A))
        v = u - float(rng.uniform(0.0, config.astigmatism_max_A))
        angle = float(rng.uniform(0.0, 180.0))
        direction = float(rng.uniform(0.0, 2.0 * np.pi))
        early = config.early_drift_px * float(rng.uniform(0.5, 1.0))
        steady = config.drift_px_per_frame * float(rng.uniform(0.3, 1.0))
        steady_direction = direction + float(rng.uniform(-0.5, 0.5))
        items.append(
            {
                "index": i,
                "name": item_name(config, i),
                "seed": int(seeds[i].generate_state(1)[0]),
                "defocus_u": round(u, 3),
                "defocus_v": round(v, 3),
                "defocus_angle": round(angle, 4),
                "early_drift_px": [
                    round(early * np.cos(direction), 4),
                    round(early * np.sin(direction), 4),
                ],
                "drift_px_per_frame": [
                    round(steady * np.cos(steady_direction), 4),
                    round(steady * np.sin(steady_direction), 4),
                ],
            }
        )
    return items


def dataset_volume(config: DatasetConfig):
    """The config's volume at its pixel size (cached per process: items share it)."""
    from hpcem.sim.volume import load_volume

    key = (config.model, config.pixel_size_A)
    if key not in _VOLUMES:
        _VOLUMES.clear()
        _VOLUMES[key] = load_volume(config.model, config.pixel_size_A)
    return _VOLUMES[key]


def gain_reference(config: DatasetConfig) -> np.ndarray | None:
    """The dataset's detector gain reference (one for all movies), or None."""
    from hpcem.sim.movie import make_gain_reference

    if config.kind != "movies" or config.gain_sd <= 0:
        return None
    shape = (config.size_px, config.size_px)
    return make_gain_reference(shape, config.gain_sd, config.seed + 7919)


def simulate_item(config: DatasetConfig, item: dict) -> tuple[np.ndarray, dict]:
    """The image (micrograph) or frames (movie) of one planned item and its truth."""
    from hpcem.sim.micrograph import simulate_micrograph
    from hpcem.sim.movie import simulate_movie
    from hpcem.sim.specimen import n_particles_for_fill

    volume = dataset_volume(config)
    shape = (config.size_px, config.size_px)
    n_particles = n_particles_for_fill(
        shape, volume.diameter_A / config.pixel_size_A, config.fill_fraction
    )
    common = {
        "pixel_size_A": config.pixel_size_A,
        "defocus_u_A": item["defocus_u"],
        "defocus_v_A": item["defocus_v"],
        "angle_deg": item["defocus_angle"],
        "voltage_kV": config.voltage_kV,
        "cs_mm": config.cs_mm,
        "amplitude_contrast": config.amplitude_contrast,
        "b_factor_A2": config.b_factor_A2,
        "n_particles": n_particles,
        "ice_level": config.ice_level,
        "seed": item["seed"],
        "phase_shift_deg": config.phase_shift_deg,
        "volume": volume,
    }
    if config.kind == "micrographs":
        return simulate_micrograph(shape, snr=config.snr, **common)
    return simulate_movie(
        shape,
        n_frames=config.n_frames,
        dose_per_frame_e_per_A2=config.dose_per_frame_e_A2,
        drift_px_per_frame=tuple(item["drift_px_per_frame"]),
        jitter_px=0.0,
        drift_model="smooth",
        early_drift_px=tuple(item["early_drift_px"]),
        early_decay_frames=3.0,
        local_motion_px=config.local_motion_px,
        dose_decay=config.dose_decay,
        gain_reference=gain_reference(config),
        **common,
    )


def item_truth(item: dict, truth: dict) -> dict:
    """The JSON record of one item (see :mod:`hpcem.sim.truth`)."""
    coords = np.asarray(truth["coordinates_px"], dtype=np.float64).reshape(-1, 2)
    angles = np.asarray(truth.get("angles_deg", np.zeros((len(coords), 3)))).reshape(-1, 3)
    record = {
        "name": item["name"],
        "seed": item["seed"],
        "defocus_u": truth["defocus_u"],
        "defocus_v": truth["defocus_v"],
        "defocus_angle": truth["defocus_angle"],
        "phase_shift": truth["phase_shift"],
        "particles": {
            "x": coords[:, 0].tolist(),
            "y": coords[:, 1].tolist(),
            "rot": angles[:, 0].tolist(),
            "tilt": angles[:, 1].tolist(),
            "psi": angles[:, 2].tolist(),
        },
    }
    if "shifts_px" in truth:
        record["shifts_px"] = np.asarray(truth["shifts_px"]).tolist()
        record["local_motion"] = truth["local_motion"]
        record["n_frames"] = truth["n_frames"]
    return record


def make_item(config: DatasetConfig, item: dict, path: str | os.PathLike) -> dict:
    """Simulate one item, write it to ``path`` and return its truth record."""
    from hpcem.sim.detector import write_movie, write_mrc_file

    data, truth = simulate_item(config, item)
    if config.kind == "movies":
        write_movie(path, data, config.pixel_size_A, overwrite=True)
    else:
        write_mrc_file(path, data, config.pixel_size_A, overwrite=True)
    return item_truth(item, truth)


def dataset_truth(config: DatasetConfig, records: list[dict]) -> dict:
    """The whole ground truth of a dataset from its items' records."""
    volume = dataset_volume(config)
    return {
        "kind": config.kind,
        "config": config.to_json(),
        "volume": volume.describe(),
        "optics": {
            "voltage_kV": config.voltage_kV,
            "cs_mm": config.cs_mm,
            "amplitude_contrast": config.amplitude_contrast,
            "pixel_size_A": config.pixel_size_A,
            "dose_per_frame_e_A2": config.dose_per_frame_e_A2 if config.kind == "movies" else 0,
        },
        "gain_reference": GAIN_NAME if gain_reference(config) is not None else None,
        "conventions": {
            "defocus": "Å, positive = underfocus; U along the direction at defocus_angle "
            "(deg) from x towards y (EMX, RELION)",
            "particles": "x, y: centre in pixels of the image (frame 0 of a movie), origin at "
            "the first pixel's centre; rot, tilt, psi: ZYZ Euler angles in degrees "
            "(RELION), see docs/simulation.md",
            "shifts_px": "(dx, dy) per frame: a feature at (x, y) in frame 0 is at "
            "(x + dx, y + dy) in frame i, plus the local motion (hpcem.sim.movie."
            "displacement_px)",
            "gain_reference": "raw frames x gain reference = gain-corrected frames",
        },
        "items": records,
    }


def write_gain(folder: str | os.PathLike, config: DatasetConfig) -> Path | None:
    """Write the dataset's gain reference (if any) into ``folder``."""
    from hpcem.sim.detector import write_gain_reference

    gain = gain_reference(config)
    if gain is None:
        return None
    return write_gain_reference(Path(folder) / GAIN_NAME, gain, config.pixel_size_A, overwrite=True)


def simulate_dataset(folder: str | os.PathLike, config: DatasetConfig, progress=None) -> dict:
    """Write a whole dataset into ``folder`` (created if needed) and return its truth.

    ``progress(i, n, name)`` is called after each item when given.
    """
    from hpcem.sim.truth import write_truth

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_gain(folder, config)
    records = []
    plan = plan_items(config)
    for item in plan:
        records.append(make_item(config, item, folder / item["name"]))
        if progress is not None:
            progress(item["index"] + 1, len(plan), item["name"])
    truth = dataset_truth(config, records)
    write_truth(folder, truth)
    return truth
