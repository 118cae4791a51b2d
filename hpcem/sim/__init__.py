"""Simulated data with known ground truth: micrographs with a known CTF, drifting movies,
particles that are projections of a real volume (see docs/simulation.md)."""

from __future__ import annotations

import importlib

# name -> module that defines it; imported on first use (PEP 562), so that a worker or an
# MPI rank that needs one submodule does not pay for the others
_WHERE = {
    "DatasetConfig": "hpcem.sim.dataset",
    "simulate_dataset": "hpcem.sim.dataset",
    "simulate_micrograph": "hpcem.sim.micrograph",
    "displacement_px": "hpcem.sim.movie",
    "simulate_movie": "hpcem.sim.movie",
    "load_volume": "hpcem.sim.volume",
}

__all__ = [
    "DatasetConfig",
    "displacement_px",
    "load_volume",
    "simulate_dataset",
    "simulate_micrograph",
    "simulate_movie",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
