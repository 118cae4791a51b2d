"""Movie alignment: global and local (patch) motion, dose weighting, aligned sums.

One module per job (method, conventions and measurements in docs/motion.md):
:mod:`hpcem.motion.frames` (reading and checking movies, gain, defects, frame range),
:mod:`hpcem.motion.align` (global alignment, Fourier cropping, sums; shift convention),
:mod:`hpcem.motion.local` (patches, the smooth local model and its tests),
:mod:`hpcem.motion.dose` (Grant & Grigorieff 2015 weights),
:mod:`hpcem.motion.fourier` (the Fourier-space kernels or their numpy references),
:mod:`hpcem.motion.movie` (one movie end to end: what a ``motion.align`` step does),
:mod:`hpcem.motion.plot` (the trajectory picture).
"""
