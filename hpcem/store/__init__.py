"""The project store: a project folder with an HDF5 index, runs, step tables and
columnar sets of items (see docs/store.md for the layout and the guarantees)."""

from hpcem.store.files import SCHEMA_VERSION
from hpcem.store.project import OutputSets, Project
from hpcem.store.record import RUN_STATES, Attempt, Placement, RunRecord

# Sets, their writer and the step table load on first use (`hpcem status` needs none).
_LAZY = {
    "Ragged": "hpcem.store.ragged",
    "Set": "hpcem.store.sets",
    "SetWriter": "hpcem.store.writer",
    "StepTable": "hpcem.store.steps",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpcem.store' has no attribute {name!r}")


__all__ = [
    "RUN_STATES",
    "SCHEMA_VERSION",
    "Attempt",
    "OutputSets",
    "Placement",
    "Project",
    "Ragged",
    "RunRecord",
    "Set",
    "SetWriter",
    "StepTable",
]
