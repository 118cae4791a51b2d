"""What a protocol sees of its run: parameters, input sets, results, output sets.

The same object serves ``Protocol.validate`` and ``Protocol.steps`` (before and at
launch) and controller steps (during the run). Protocols use only this, never the store's
internals.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hpcem.errors import RunError


class RunContext:
    """The run-facing view of a project for one protocol run."""

    def __init__(self, project, run_id: int | None, params: dict, inputs: dict[str, list[str]]):
        self.project = project
        self.run_id = run_id
        self.params = dict(params)
        self.inputs = {k: list(v) for k, v in inputs.items()}
        self._results: dict[str, Any] = {}
        self.step_name: str | None = None

    # --- reading -------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """The run's own folder (logs, per-step files)."""
        if self.run_id is None:
            raise RunError("the run has no folder before it is created")
        return self.project.run_dir(self.run_id)

    def input(self, name: str):
        """The input set ``name`` (a list of sets for inputs declared ``many``)."""
        sets = [self._open(ref) for ref in self.inputs.get(name, [])]
        if not sets:
            raise RunError(f"input {name!r} was not given")
        return sets if len(sets) > 1 else sets[0]

    def _open(self, ref: str):
        run_id, _, output = ref.partition(":")
        return self.project.open_set(int(run_id), output)

    def result(self, step_name: str) -> Any:
        """The return value of a finished step of this run."""
        try:
            return self._results[step_name]
        except KeyError:
            raise RunError(f"step {step_name!r} has no result (not finished?)") from None

    def results(self, prefix: str = "") -> dict[str, Any]:
        """Results of finished steps whose names start with ``prefix``, by step name."""
        return {k: v for k, v in self._results.items() if k.startswith(prefix)}

    def set_results(self, results: dict[str, Any]) -> None:
        self._results = dict(results)

    # --- writing (controller steps only) ------------------------------------------------
    @contextlib.contextmanager
    def create_set(self, output: str, set_type: str, **kwargs):
        """Open a writer for output ``output``; lineage (run, step, inputs) is recorded."""
        refs = sorted({r for refs in self.inputs.values() for r in refs})
        writer = self.project.create_set(
            self.run_id, output, set_type, inputs=refs, step=self.step_name or "", **kwargs
        )
        try:
            yield writer
        finally:
            writer.close()
        # The store already lists the output; keep its size for `hpcem status`.
        record = self.project.run(self.run_id)
        sizes = dict(record.execution.get("output_sizes", {}), **{output: writer.n_rows})
        self.project.update_run(self.run_id, execution=dict(record.execution, output_sizes=sizes))
