"""What a protocol sees of its run: parameters, input sets, results, output sets.

The same object serves ``Protocol.validate`` and ``Protocol.steps`` (before and at
launch) and controller steps (during the run). Protocols use only this, never the store's
internals.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from hpcem.errors import RunError


def project_relative(root, path: str) -> str:
    """``path`` relative to the project folder ``root`` when it lies inside it (following
    symbolic links of either), else the absolute path."""
    p = os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))
    for base in {os.path.normpath(os.path.abspath(str(root))), os.path.realpath(str(root))}:
        if p == base or p.startswith(base + os.sep):
            return os.path.relpath(p, base)
    real = os.path.realpath(p)
    base = os.path.realpath(str(root))
    if real.startswith(base + os.sep):
        return os.path.relpath(real, base)
    return p


class RunContext:
    """The run-facing view of a project for one protocol run."""

    def __init__(
        self,
        project,
        run_id: int | None,
        params: dict,
        inputs: dict[str, list[str]],
        attempt: int | None = None,
        site: str | None = None,
    ):
        self.project = project
        #: The site named for the run when it is created (``--site``), for checks at
        #: validation that depend on it (programs of the site); None = the default.
        self.site = site
        self.run_id = run_id
        self.attempt = attempt
        self.params = dict(params)
        self.inputs = {k: list(v) for k, v in inputs.items()}
        self._results: dict[str, Any] = {}
        self._rejections: dict[str, str] = {}
        self.step_name: str | None = None

    # --- reading -------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """The run's own folder (logs, per-step files)."""
        if self.run_id is None:
            raise RunError("the run has no folder before it is created")
        return self.project.run_dir(self.run_id)

    def path(self, value: str) -> str:
        """A stored path parameter as an absolute path (stored paths inside the project
        are relative to it, so a moved project keeps working)."""
        value = os.path.expanduser(str(value))
        return value if os.path.isabs(value) else os.path.join(str(self.project.path), value)

    def relpath(self, path: str) -> str:
        """``path`` as steps should carry it: relative to the project when inside it (step
        identities then survive a move of the project), absolute otherwise."""
        return project_relative(self.project.path, path)

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

    def rejections(self, prefix: str = "") -> dict[str, str]:
        """Steps that rejected their item (``ItemRejected``), by step name -> reason."""
        return {k: v for k, v in self._rejections.items() if k.startswith(prefix)}

    def set_results(
        self, results: dict[str, Any], rejections: dict[str, str] | None = None
    ) -> None:
        self._results = dict(results)
        self._rejections = dict(rejections or {})

    # --- writing (controller steps only) ------------------------------------------------
    @contextlib.contextmanager
    def create_set(self, output: str, set_type: str, **kwargs):
        """Open a writer for output ``output``; lineage (run, step, inputs) is recorded.

        A set left by an earlier, interrupted attempt is replaced. If the block fails,
        the half-written set is deleted, so no listed output is ever incomplete; when it
        succeeds the set's size is recorded (fenced: only by the attempt holding the run).
        """
        from hpcem.store.manifest import MANIFEST

        refs = sorted({r for refs in self.inputs.values() for r in refs})
        if (self.project._set_dir(self.run_id, output) / MANIFEST).exists():
            self.project.delete_set(self.run_id, output)
        writer = self.project.create_set(
            self.run_id, output, set_type, inputs=refs, step=self.step_name or "", **kwargs
        )
        try:
            yield writer
            writer.close()
        except BaseException:
            writer.abandon()
            with contextlib.suppress(Exception):
                self.project.delete_set(self.run_id, output)
            raise
        self.project.set_output(self.run_id, output, set_type, writer.n_rows, attempt=self.attempt)
