"""Validation of maps: Fourier shell correlation, resolution, masks, mask correction by
phase randomisation, B-factor and sharpening (:mod:`~hpcem.validate.fsc`)."""
