"""CTF model (EMX conventions), two estimators and the consensus of two CTF sets.

* :func:`estimate_ctf` (protocol ``ctf.estimate``): rotational and sector averages;
* :func:`fit_ctf_2d` (protocol ``ctf.fit2d``): a full 2D fit of the spectrum;
* :func:`consensus_resolution_A` (protocol ``ctf.consensus``): where two CTFs' phases
  first differ by 90°.

How each works and when it fails: docs/ctf.md.
"""

from hpcem.ctf.consensus import consensus_resolution_A
from hpcem.ctf.estimate import estimate_ctf, estimate_ctf_from_file
from hpcem.ctf.fit2d import fit_ctf_2d
from hpcem.ctf.model import ctf_1d, ctf_2d, ctf_zeros_1d, electron_wavelength_A

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
