"""Particle picking: the consensus of several pickers' coordinates on one micrograph.

* :func:`consensus`: merge picks that several pickers agree on (within a radius).
"""

from hpcem.picking.consensus import consensus

__all__ = ["consensus"]
