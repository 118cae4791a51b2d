"""Simulated data with known ground truth: micrographs with a known CTF, drifting movies,
particles that are projections of a real volume (see docs/simulation.md)."""

from hpcem.sim.dataset import DatasetConfig, simulate_dataset
from hpcem.sim.micrograph import simulate_micrograph
from hpcem.sim.movie import displacement_px, simulate_movie
from hpcem.sim.volume import load_volume

__all__ = [
    "DatasetConfig",
    "displacement_px",
    "load_volume",
    "simulate_dataset",
    "simulate_micrograph",
    "simulate_movie",
]
