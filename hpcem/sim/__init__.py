"""Simulated data with known ground truth (micrographs with a known CTF, drifting movies)."""

from hpcem.sim.micrograph import simulate_micrograph, simulate_movie

__all__ = ["simulate_micrograph", "simulate_movie"]
