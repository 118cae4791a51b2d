"""CTF model (EMX conventions), two estimators and the consensus of two CTF sets.

* :func:`estimate_ctf` (protocol ``ctf.estimate``): rotational and sector averages;
* :func:`fit_ctf_2d` (protocol ``ctf.fit2d``): a full 2D fit of the spectrum;
* :func:`consensus_resolution_A` (protocol ``ctf.consensus``): where two CTFs' phases
  first differ by 90°.

How each works and when it fails: docs/ctf.md.
"""

from __future__ import annotations

import importlib

# name -> module that defines it; imported on first use (PEP 562), so that a worker or an
# MPI rank that needs one submodule does not pay for the others
_WHERE = {
    "consensus_resolution_A": "hpcem.ctf.consensus",
    "estimate_ctf": "hpcem.ctf.estimate",
    "estimate_ctf_from_file": "hpcem.ctf.estimate",
    "fit_ctf_2d": "hpcem.ctf.fit2d",
    "ctf_1d": "hpcem.ctf.model",
    "ctf_2d": "hpcem.ctf.model",
    "ctf_zeros_1d": "hpcem.ctf.model",
    "electron_wavelength_A": "hpcem.ctf.model",
}

__all__ = [
    "consensus_resolution_A",
    "ctf_1d",
    "ctf_2d",
    "ctf_zeros_1d",
    "electron_wavelength_A",
    "estimate_ctf",
    "estimate_ctf_from_file",
    "fit_ctf_2d",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
