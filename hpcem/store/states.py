"""The states of a run, by name (the state machine itself is in :mod:`hpcem.store.record`).

A module of its own so that ``hpcem status`` can classify thousands of runs without
loading the record classes.
"""

RUN_STATES = ("saved", "launched", "running", "finished", "failed", "aborted")
ACTIVE_STATES = ("launched", "running")
FINAL_STATES = ("finished", "failed", "aborted")
