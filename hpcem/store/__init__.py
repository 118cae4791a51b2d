"""The project store: a project folder with an HDF5 index, runs, step tables and
columnar sets of items (see docs/store.md for the layout and the guarantees)."""

from hpcem.store.files import SCHEMA_VERSION
from hpcem.store.project import OutputSets, Project
from hpcem.store.ragged import Ragged
from hpcem.store.record import RUN_STATES, Attempt, Placement, RunRecord
from hpcem.store.sets import Set
from hpcem.store.steps import StepTable
from hpcem.store.writer import SetWriter

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
