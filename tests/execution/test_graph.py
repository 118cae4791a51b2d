"""The in-degree ready queue of StepGraph against the whole-graph scan ``ready()``.

Random DAGs are built by hand with a seeded rng (edges only from earlier to later steps,
then the steps shuffled so declaration order is not a topological order).
"""

from __future__ import annotations

import random

import pytest

from hpcem.errors import ProtocolError
from hpcem.execution.graph import StepGraph
from hpcem.protocol.declare import Step


def random_dag(rng: random.Random, n: int, p_edge: float) -> list[Step]:
    names = [f"s{i}" for i in range(n)]
    steps = []
    for i, name in enumerate(names):
        k = min(i, int(rng.expovariate(1 / max(p_edge * i, 1e-9))) if i else 0)
        deps = tuple(rng.sample(names[:i], k))
        steps.append(Step(name, "m:f", {"i": i}, deps=deps))
    rng.shuffle(steps)
    return steps


def drain(g: StepGraph, done: set[str], rng: random.Random) -> list[str]:
    """Run the graph with the incremental API, finishing ready steps in random order."""
    queue = g.start(done)
    emitted = list(queue)
    order = []
    while queue:
        name = queue.pop(rng.randrange(len(queue)))
        order.append(name)
        new = g.done(name)
        emitted += new
        queue += new
    assert len(emitted) == len(set(emitted)), "a step was returned twice"
    return order


@pytest.mark.parametrize("seed", range(30))
def test_incremental_queue_matches_full_scan_on_random_dags(seed):
    """Start ready steps and finish started ones in random order; after every call the
    steps handed out and not yet started are exactly what ready() finds."""
    rng = random.Random(seed)
    steps = random_dag(rng, rng.randint(1, 120), rng.choice([0.0, 0.02, 0.1, 0.5]))
    g = StepGraph(steps)
    by_name = {s.name: s for s in steps}
    done: set[str] = set()  # an earlier attempt's work: closed under dependencies
    for name in g.order:
        if rng.random() < 0.3 and all(d in done for d in by_name[name].deps):
            done.add(name)
    position = {n: i for i, n in enumerate(g.order)}
    handed = g.start(done)
    assert handed == g.ready(done, [])
    ready, started, finished = set(handed), set(), set(done)
    while ready or started:
        if ready and (not started or rng.random() < 0.5):
            name = rng.choice(sorted(ready))
            ready.discard(name)
            started.add(name)
        else:
            name = rng.choice(sorted(started))
            started.discard(name)
            finished.add(name)
            new = g.done(name)
            assert new == sorted(new, key=position.__getitem__)  # graph order
            assert not set(new) & (ready | started | finished), "a step handed out twice"
            handed += new
            ready |= set(new)
        assert set(g.ready(finished, started)) == ready
    assert finished == set(g.steps)
    assert sorted(handed) == sorted(set(g.steps) - done)


@pytest.mark.parametrize("seed", range(30))
def test_incremental_order_is_topological_and_complete(seed):
    rng = random.Random(1000 + seed)
    steps = random_dag(rng, rng.randint(1, 200), rng.choice([0.01, 0.05, 0.3]))
    g = StepGraph(steps)
    order = drain(g, set(), rng)
    assert sorted(order) == sorted(g.steps)
    position = {n: i for i, n in enumerate(order)}
    for s in steps:
        for d in s.deps:
            assert position[d] < position[s.name]


def test_steps_already_done_are_never_returned_and_unblock_their_dependents():
    g = StepGraph(
        [
            Step("c", "m:f", {"i": 3}, deps=("a", "b")),
            Step("a", "m:f", {"i": 1}),
            Step("b", "m:f", {"i": 2}, deps=("a",)),
            Step("d", "m:f", {"i": 4}),
        ]
    )
    assert g.order == ["a", "d", "b", "c"]
    assert g.start({"a"}) == ["d", "b"] == g.ready({"a"}, [])
    assert g.done("d") == []
    assert g.done("b") == ["c"]
    assert g.done("b") == []  # reported twice: nothing new
    assert g.done("c") == []
    assert g.start() == ["a", "d"]  # start again from scratch
    assert g.done("a") == ["b"]


def test_a_failed_step_blocks_only_its_own_dependents():
    g = StepGraph(
        [
            Step("a", "m:f", {"i": 1}),
            Step("b", "m:f", {"i": 2}, deps=("a",)),
            Step("x", "m:f", {"i": 3}),
            Step("y", "m:f", {"i": 4}, deps=("x",)),
        ]
    )
    assert g.start() == ["a", "x"]
    # "a" fails: it is never reported done, so "b" never becomes ready
    assert g.done("x") == ["y"]


def test_misuse_is_reported():
    g = StepGraph([Step("a", "m:f")])
    with pytest.raises(ProtocolError, match="before StepGraph.start"):
        g.done("a")
    with pytest.raises(ProtocolError, match="not in the graph"):
        g.start({"zz"})
    g.start()
    with pytest.raises(ProtocolError, match="'zz' is not in the graph"):
        g.done("zz")


def test_wide_fan_in_costs_one_count_per_edge():
    """Each done() touches only the finished step's dependents (counted, no scan)."""
    n = 5000
    steps = [Step(f"m{i}", "m:f", {"i": i}) for i in range(n)]
    steps.append(Step("join", "m:f", {"i": -1}, deps=tuple(f"m{i}" for i in range(n))))
    g = StepGraph(steps)
    assert len(g.start()) == n
    touched = []
    real = g.dependents
    g.dependents = {k: _Counting(v, touched) for k, v in real.items()}
    for i in range(n - 1):
        assert g.done(f"m{i}") == []
    assert g.done(f"m{n - 1}") == ["join"]
    assert len(touched) == n  # one dependents list read per done(), each of length 1


class _Counting(list):
    def __init__(self, items, log):
        super().__init__(items)
        self._log = log

    def __iter__(self):
        self._log.append(1)
        return super().__iter__()
