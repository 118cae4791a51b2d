"""The project store: a project folder with an HDF5 index, runs, step tables and
columnar sets of items (see docs/store.md for the layout and the guarantees)."""

from hpcem.store.files import SCHEMA_VERSION
from hpcem.store.project import RUN_STATES, OutputSets, Project, RunRecord
from hpcem.store.ragged import Ragged
from hpcem.store.sets import Set
from hpcem.store.steps import StepTable
from hpcem.store.writer import SetWriter

__all__ = ["RUN_STATES", "SCHEMA_VERSION", "OutputSets", "Project", "Ragged", "RunRecord",
           "Set", "SetWriter", "StepTable"]
