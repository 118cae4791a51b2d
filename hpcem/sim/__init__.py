"""Simulated data with known ground truth: micrographs with a known CTF, drifting movies,
particles that are projections of a real volume (see docs/simulation.md)."""

from hpcem.sim.micrograph import simulate_micrograph
from hpcem.sim.movie import displacement_px, simulate_movie

__all__ = ["displacement_px", "simulate_micrograph", "simulate_movie"]
