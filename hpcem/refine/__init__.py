"""3D refinement by projection matching (``refine.projmatch``): orientation grids
(:mod:`~hpcem.refine.orientations`), matching particles against CTF-weighted projections
(:mod:`~hpcem.refine.matching`), the gold-standard iteration
(:mod:`~hpcem.refine.projmatch`) and the protocol's step body (:mod:`~hpcem.refine.steps`)."""
