"""Particles: cutting boxes out of micrographs (extraction) and what is done to them.

* :mod:`hpcem.particles.extract`: pure functions on arrays (nearest-pixel box centres, box
  cutting with edge fill, phase flipping, Fourier-crop binning, dust removal, background
  normalisation, contrast inversion) and :func:`~hpcem.particles.extract.extract_particles`,
  the whole pipeline for one micrograph in RELION's order.
"""
