"""Movie alignment: global and local (patch) motion, dose weighting, aligned sums.

See :mod:`hpcem.motion.align` (global alignment, shift conventions),
:mod:`hpcem.motion.local` (patches and the smooth local model),
:mod:`hpcem.motion.dose` (Grant & Grigorieff 2015 weights),
:mod:`hpcem.motion.frames` (reading and checking movies) and docs/motion.md.
"""
