"""The step graph of a run: checked once, then asked which steps are ready."""

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
                    raise ProtocolError(f"{where}step {step.name!r} depends on unknown step {dep!r}")
        self.order = self._topological_order(where)
        self.dependents: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in steps:
            for dep in step.deps:
                self.dependents[dep].append(step.name)

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

    def ready(self, finished: set[str], started: Iterable[str]) -> list[str]:
        """Steps not yet started whose dependencies have all finished, in graph order."""
        started = set(started)
        return [
            n
            for n in self.order
            if n not in started and n not in finished and all(d in finished for d in self.steps[n].deps)
        ]

    def __len__(self) -> int:
        return len(self.steps)
