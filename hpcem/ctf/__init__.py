"""CTF model (EMX conventions) and a defocus estimator."""

from hpcem.ctf.estimate import estimate_ctf, estimate_ctf_from_file
from hpcem.ctf.model import ctf_1d, ctf_2d, ctf_zeros_1d, electron_wavelength_A

__all__ = [
    "ctf_1d",
    "ctf_2d",
    "ctf_zeros_1d",
    "electron_wavelength_A",
    "estimate_ctf",
    "estimate_ctf_from_file",
]
