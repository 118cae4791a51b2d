"""Per-item randomness from a run's seed, independent of workers and order.

A stochastic protocol declares one ``seed`` parameter (recorded in the run like every
parameter, listed by ``hpcem provenance`` under seeds). What each item draws must not
depend on which worker ran it, how many there were or in which order the items came, so
every item derives its own stream from (run seed, item id):

* :func:`item_rng` — a numpy Generator for one item (one micrograph, one class), seeded
  with the sequence ``[seed, item_id]`` (numpy's SeedSequence mixes both);
* :func:`coin_flips` — one fair random bit per id for millions of ids at once (random
  half sets), from the SplitMix64 finaliser of (seed, id): vectorised, no Generator per id.
"""

from __future__ import annotations

import numpy as np

from hpcem.errors import ValidationError

#: The default ``seed`` of hpcem's stochastic protocols (a fixed number: runs are
#: reproducible unless the user asks for another seed).
DEFAULT_SEED = 0
#: The largest seed a protocol parameter accepts.
MAX_SEED = 2**31 - 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _check(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed:
        raise ValidationError(f"a seed is an integer >= 0, got {seed!r}")
    return int(seed)


def item_rng(seed: int, item_id: int) -> np.random.Generator:
    """The random stream of item ``item_id`` (>= 0) of a run with seed ``seed``."""
    return np.random.default_rng([_check(seed), _check(item_id)])


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output for states ``values`` (uint64 array): the state plus the
    golden-ratio increment, then Stafford's "mix13" finaliser (Steele, Lea & Flood 2014)."""
    z = np.asarray(values, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def coin_flips(seed: int, ids: np.ndarray) -> np.ndarray:
    """One fair random bit (0 or 1, uint8) per id, a function of (seed, id) only: the same
    id gets the same bit whatever the order of ``ids`` or the other ids in it."""
    ids = np.asarray(ids)
    if ids.size and (ids.dtype.kind not in "iu" or int(ids.min()) < 0):
        raise ValidationError("item ids for random bits must be integers >= 0")
    with np.errstate(over="ignore"):
        key = splitmix64(np.asarray([_check(seed)], dtype=np.uint64))[0]
        bits = splitmix64(ids.astype(np.uint64) ^ key)
    return (bits >> np.uint64(63)).astype(np.uint8)
