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


def classify_rows(
    index_path: Path, cols: Mapping[str, Any]
) -> tuple[list[int], list[int], list[str]]:
    """``(quiet, live, problems)`` for the index columns ``cols`` read from ``index_path``.

    ``quiet`` and ``live`` are row positions in the index: quiet runs have nothing more
    to say (not active, no batch job or Parsl block to reconcile) and are listed from the
    summary columns; live runs are decoded and checked (their jobs asked about, their
    blocks cancelled). ``problems`` names each damaged row (left out of both).
    """
    quiet: list[int] = []
    live: list[int] = []
    problems: list[str] = []
    active = set(ACTIVE_STATES)
    known = set(RUN_STATES)
    rows = zip(
        cols["state"].tolist(),
        cols["record_json"].tolist(),
        cols["job_open"].tolist(),
        cols["n_blocks"].tolist(),
    )
    for i, (state, text, job_open, n_blocks) in enumerate(rows):
        if isinstance(text, str):
            text = text.encode()
        if text and not (text[:1] == b"{" and text[-1:] == b"}"):  # cheap; decoded if suspect
            problem = _undecodable(index_path, int(cols["id"][i]), text)
            if problem:
                problems.append(problem)
                continue
        if state not in known:
            from hpcem.store.index import unknown_state

            problems.append(str(unknown_state(index_path, int(cols["id"][i]), state)))
        elif state in active or job_open or n_blocks:
            live.append(i)
        else:
            quiet.append(i)
    return quiet, live, problems


def _undecodable(index_path: Path, run_id: int, text: bytes) -> str:
    """The problem with a record text that does not look like a JSON object ('' if none)."""
    import json

    from hpcem.store.index import damaged

    try:
        json.loads(text)
    except ValueError as exc:
        return str(damaged(index_path, run_id, exc))
    return ""
