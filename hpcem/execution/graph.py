"""The step graph of a run: checked once, then asked which steps are ready.

The ready queue is driven by in-degrees: :meth:`StepGraph.start` counts each step's
unfinished dependencies once (O(steps + edges)); :meth:`StepGraph.done` lowers the count
of the dependents of a finished step and returns those that reach zero (O(out-degree)),
so a run of N steps costs O(N + edges) in all, not O(N) per loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hpcem.errors import ProtocolError
from hpcem.protocol.declare import Step


class StepGraph:
    """Steps by name with checked dependencies (no unknown names, no cycles)."""

    def __init__(self, steps: Sequence[Step], protocol: str = "") -> None:
        self.steps: dict[str, Step] = {}
        where = f"protocol {protocol}: " if protocol else ""
        for step in steps:
            if step.name in self.steps:
                raise ProtocolError(f"{where}two steps are named {step.name!r}")
            self.steps[step.name] = step
        ids: dict[str, str] = {}
        for step in steps:
            if step.id in ids:
                raise ProtocolError(
                    f"{where}steps {ids[step.id]!r} and {step.name!r} have the same function "
                    "and arguments (identical step identity)"
                )
            ids[step.id] = step.name
            for dep in step.deps:
                if dep not in self.steps:
                    raise ProtocolError(
                        f"{where}step {step.name!r} depends on unknown step {dep!r}"
                    )
        self.order = self._topological_order(where)
        self.dependents: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in steps:
            for dep in step.deps:
                self.dependents[dep].append(step.name)
        self._position = {name: i for i, name in enumerate(self.order)}
        self._waiting_on: dict[str, int] | None = None  # unfinished deps (after start)
        self._done: set[str] = set()

    def _topological_order(self, where: str) -> list[str]:
        indegree = {name: len(s.deps) for name, s in self.steps.items()}
        children: dict[str, list[str]] = {name: [] for name in self.steps}
        for name, s in self.steps.items():
            for dep in s.deps:
                children[dep].append(name)
        queue = [n for n, d in indegree.items() if d == 0]
        order = []
        while queue:
            n = queue.pop(0)
            order.append(n)
            for c in children[n]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    queue.append(c)
        if len(order) != len(self.steps):
            cyclic = sorted(n for n, d in indegree.items() if d > 0)
            raise ProtocolError(f"{where}steps form a cycle: {', '.join(cyclic)}")
        return order

    def start(self, done: Iterable[str] = ()) -> list[str]:
        """Begin (or begin again) the incremental ready queue: ``done`` are the steps that
        need not run (finished or rejected earlier). Returns the steps not in ``done``
        whose dependencies are all in it, in graph order. O(steps + edges)."""
        done = set(done)
        unknown = done - self.steps.keys()
        if unknown:
            raise ProtocolError(f"steps {sorted(unknown)} are marked done but are not in the graph")
        self._done = done
        self._waiting_on = {n: sum(d not in done for d in s.deps) for n, s in self.steps.items()}
        return [n for n in self.order if n not in done and self._waiting_on[n] == 0]

    def done(self, name: str) -> list[str]:
        """Record that step ``name`` finished (or was rejected: its item is data, not a
        blocker); returns the steps that became ready because of it, in graph order, each
        once over the whole run. O(out-degree). A step reported twice returns []."""
        if self._waiting_on is None:
            raise ProtocolError("StepGraph.done() called before StepGraph.start()")
        if name not in self.steps:
            raise ProtocolError(f"step {name!r} is not in the graph")
        if name in self._done:
            return []
        self._done.add(name)
        ready = []
        for c in self.dependents[name]:
            self._waiting_on[c] -= 1
            if self._waiting_on[c] == 0 and c not in self._done:
                ready.append(c)
        if len(ready) > 1:
            ready.sort(key=self._position.__getitem__)
        return ready

    def ready(self, finished: set[str], started: Iterable[str]) -> list[str]:
        """Steps not yet started whose dependencies have all finished, in graph order.

        O(steps) per call; kept for callers that do not use :meth:`start`/:meth:`done`.
        """
        started = set(started)
        return [
            n
            for n in self.order
            if n not in started
            and n not in finished
            and all(d in finished for d in self.steps[n].deps)
        ]

    def __len__(self) -> int:
        return len(self.steps)
