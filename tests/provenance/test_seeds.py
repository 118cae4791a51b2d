"""Per-item randomness from a run's seed (hpcem.provenance.seeds) and the seed parameters
of the stochastic protocols it serves (random half sets, dust-removal noise)."""

from __future__ import annotations

import numpy as np
import pytest

from hpcem.errors import ValidationError
from hpcem.provenance.seeds import coin_flips, item_rng, splitmix64

GOLDEN = 0x9E3779B97F4A7C15


def test_splitmix64_gives_the_published_sequence():
    """Vigna's splitmix64.c from state 1234567: the first five outputs as published (Rosetta
    Code, "Pseudo-random numbers/Splitmix64"), and from state 0 the value 0xe220a8397b1dcdaf."""
    states = np.array([(1234567 + k * GOLDEN) % 2**64 for k in range(5)], dtype=np.uint64)
    assert splitmix64(states).tolist() == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]
    assert int(splitmix64(np.zeros(1, np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_coin_flips_depend_on_seed_and_id_only():
    ids = np.arange(1, 20001, dtype=np.int64)
    bits = coin_flips(3, ids)
    order = np.random.default_rng(0).permutation(len(ids))
    # another order, or a subset next to other ids: each id keeps its bit
    np.testing.assert_array_equal(coin_flips(3, ids[order]), bits[order])
    np.testing.assert_array_equal(coin_flips(3, ids[::7]), bits[::7])
    # fair: 20000 flips are within 4 sd (71) of 10000 ones
    assert abs(int(bits.sum()) - 10000) < 4 * 71
    # another seed is another split (about half the bits agree)
    agree = float(np.mean(coin_flips(4, ids) == bits))
    assert 0.47 < agree < 0.53
    # neighbouring ids are not correlated
    assert abs(float(np.corrcoef(bits[:-1], bits[1:])[0, 1])) < 0.03


def test_item_rng_is_numpys_generator_of_the_pair():
    a = item_rng(5, 7).normal(size=4)
    np.testing.assert_array_equal(a, np.random.default_rng([5, 7]).normal(size=4))
    assert not np.array_equal(a, item_rng(5, 8).normal(size=4))
    assert not np.array_equal(a, item_rng(6, 7).normal(size=4))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seeds_are_refused(bad):
    with pytest.raises(ValidationError, match="a seed is an integer >= 0"):
        item_rng(bad, 1)


def test_random_halves_keep_given_ones_and_follow_the_seed():
    from hpcem.protocols.reconstruct_fourier import assign_halves

    ids = np.arange(100, 1100)
    given = np.zeros(1000, dtype=np.int64)
    given[:10] = [1, 2] * 5
    halves = assign_halves(ids, given, seed=11)
    assert halves[:10].tolist() == [1, 2] * 5
    assert set(halves.tolist()) == {1, 2}
    np.testing.assert_array_equal(halves[10:], 1 + coin_flips(11, ids[10:]))
    # the same particles in reverse order get the same halves
    np.testing.assert_array_equal(assign_halves(ids[::-1], given[::-1], 11), halves[::-1])
    assert not np.array_equal(assign_halves(ids, given, 12), halves)


class _Ctx:
    """What ReconstructFourier.steps reads of its run context."""

    def __init__(self, tmp_path, params):
        self.params = params
        self.run_dir = tmp_path

    def relpath(self, path):
        return str(path)


def test_reconstruction_seed_is_a_parameter_given_to_the_prepare_step(tmp_path):
    from hpcem.protocols.reconstruct_fourier import ReconstructFourier

    from hpcem.protocol.validate import convert_params

    values, problems = convert_params(ReconstructFourier, {"seed": 9})
    assert problems == [] and values["seed"] == 9
    _, problems = convert_params(ReconstructFourier, {"seed": -1})
    assert problems and "seed" in problems[0]
    steps = {s.name: s for s in ReconstructFourier().steps(_Ctx(tmp_path, values))}
    assert steps["prepare"].args["seed"] == 9
    # a run stored before the parameter existed plans with the default seed 0
    old = {k: v for k, v in values.items() if k != "seed"}
    steps = {s.name: s for s in ReconstructFourier().steps(_Ctx(tmp_path, old))}
    assert steps["prepare"].args["seed"] == 0
