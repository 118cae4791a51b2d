"""Particle picking: the consensus of several pickers' coordinates on one micrograph.

* :func:`hpcem.picking.consensus.consensus`: merge picks that several pickers agree on
  (within a radius).
"""
