"""Particle picking and what pickers share.

* :mod:`hpcem.picking.dog`: reference-free Difference-of-Gaussians picking (Voss 2009);
* :mod:`hpcem.picking.template` / :mod:`hpcem.picking.templates`: fast local normalised
  cross-correlation against templates (Roseman 2003) and the templates from a map or
  class averages;
* :mod:`hpcem.picking.peaks`: local maxima with a minimum distance (Cython kernel);
* :mod:`hpcem.picking.consensus`: merge the picks several pickers agree on (within a
  radius);
* :mod:`hpcem.picking.evaluate`: precision, recall and F1 against a ground truth;
* :mod:`hpcem.picking.plot`: picks over a micrograph (PNG);
* :mod:`hpcem.picking.steps`: the per-micrograph protocol steps and the register step.
"""
