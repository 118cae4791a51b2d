"""hpcem: reproducible cryo-EM single-particle processing on HPC batch systems."""

__version__ = "0.1.0"
