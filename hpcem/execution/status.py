"""Which runs ``hpcem status`` can list from the index's summary columns alone.

A project of thousands of finished runs is listed without decoding one record: only
runs that may still change (active, a batch job or Parsl blocks to reconcile) are read
as records. This module loads nothing but the state names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcem.store.states import ACTIVE_STATES, RUN_STATES

QUIET_STATES = frozenset(RUN_STATES) - frozenset(ACTIVE_STATES)


def classify_rows(
    index_path: Path, cols: Mapping[str, Any]
) -> tuple[list[int], list[int], list[str]]:
    """``(quiet, live, problems)`` for the index columns ``cols`` read from ``index_path``.

    ``quiet`` and ``live`` are row positions in the index: quiet runs have nothing more
    to say (not active, no batch job or Parsl block to reconcile) and are listed from the
    summary columns; live runs are decoded and checked (their jobs asked about, their
    blocks cancelled). ``problems`` names each damaged row (left out of both).
    """
    from hpcem.store.index import RECORD_SUSPECTS, suspect_records

    states = cols["state"].tolist()
    if RECORD_SUSPECTS in cols:  # read without the records themselves
        suspects = cols[RECORD_SUSPECTS]
    else:
        suspects = suspect_records([_bytes(t) for t in cols["record_json"].tolist()])
    open_rows = cols["job_open"].astype(bool) | cols["n_blocks"].astype(bool)
    # The common case, checked a column at a time: every record looks like a JSON
    # object, every state is a final one and no run has a job or blocks to reconcile.
    if not suspects and set(states) <= QUIET_STATES and not open_rows.any():
        return list(range(len(states))), [], []
    quiet: list[int] = []
    live: list[int] = []
    problems: list[str] = []
    for i, (state, is_open) in enumerate(zip(states, open_rows.tolist())):
        if i in suspects:  # decoded to say what is wrong (if anything)
            problem = _undecodable(index_path, int(cols["id"][i]), suspects[i])
            if problem:
                problems.append(problem)
                continue
        if state not in RUN_STATES:
            from hpcem.store.index import unknown_state

            problems.append(str(unknown_state(index_path, int(cols["id"][i]), state)))
        elif state in ACTIVE_STATES or is_open:
            live.append(i)
        else:
            quiet.append(i)
    return quiet, live, problems


def _bytes(text) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _undecodable(index_path: Path, run_id: int, text: bytes) -> str:
    """The problem with a record text that does not look like a JSON object ('' if none)."""
    import json

    from hpcem.store.index import damaged

    try:
        json.loads(text)
    except ValueError as exc:
        return str(damaged(index_path, run_id, exc))
    return ""
