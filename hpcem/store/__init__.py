"""The project store: a project folder with an HDF5 index, runs, step tables and
columnar sets of items (see docs/store.md for the layout and the guarantees)."""

# Every name loads its module on first use: `hpcem status` reads the index through
# hpcem.store.index and needs none of the others (the project, records, sets, locks).
_LAZY = {
    "SCHEMA_VERSION": "hpcem.store.files",
    "OutputSets": "hpcem.store.project",
    "Project": "hpcem.store.project",
    "RUN_STATES": "hpcem.store.states",
    "Attempt": "hpcem.store.record",
    "Placement": "hpcem.store.record",
    "RunRecord": "hpcem.store.record",
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


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
