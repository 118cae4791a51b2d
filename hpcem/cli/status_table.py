"""The table of ``hpcem status PROJECT``: one row per run.

The command people run in a loop, so it loads only what a project of finished runs
needs: h5py and the index reader. Click is not imported (``hpcem.cli.main`` sends the
plain ``hpcem status PROJECT`` here directly), rows are formatted column by column, and
the records, the scheduler code and the rest of the store load only when some run is
live (see :mod:`hpcem.execution.status`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

_ASCII_CONTROL = re.compile("[\x00-\x1f\x7f]")
HEADER = ("ID", "LABEL", "PROTOCOL", "STATE", "STEPS", "ELAPSED", "JOB", "OUTPUTS")
#: The index columns the table of quiet runs is made of (records only for the check).
TABLE_COLUMNS = frozenset(
    ("id", "label", "state", "steps_done", "steps_total", "record_suspects")
    + ("started", "ended", "job", "job_open", "outputs_text", "n_blocks", "protocol_text")
)
LABEL_WIDTH = 30


def safe(text) -> str:
    """Text from a project (labels, reasons, step names) made safe for a terminal:
    control characters (newlines, escape codes) are shown escaped, never obeyed."""
    text = str(text)
    if text.isprintable():  # the common case, without a loop over characters
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def warn(message: str) -> None:
    """One warning line on stderr, made safe for the terminal."""
    _say(f"hpcem: warning: {safe(message)}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fmt_elapsed(seconds: float) -> str:
    """``"1:02:03"``, ``"2:03"``, or ``"-"`` for no time at all."""
    return _clock(int(seconds)) if seconds else "-"


def _clock(seconds: int) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_outputs(outputs: dict) -> str:
    """``"particles(1000), coords"``: each output with its size when known."""
    parts = []
    for name, o in outputs.items():
        size = o.get("size")
        parts.append(f"{name}({size})" if size is not None else name)
    return ", ".join(parts) or "-"


def print_status(project_path: str) -> None:
    """Print the table of every run of the project at ``project_path``.

    Runs that are live are read as records: their batch jobs are asked about and Parsl
    blocks left by dead controllers are cancelled first (see :func:`refresh_batch_jobs`,
    :func:`reap_blocks`). Damaged rows are named on stderr and left out.
    """
    from hpcem.execution.status import classify_rows
    from hpcem.store.index import INDEX, check_project, read_index_file

    path = Path(os.path.abspath(project_path))
    check_project(path)
    index_path = path / INDEX
    _, cols, missing = read_index_file(path, index_path, TABLE_COLUMNS)
    project = None
    if missing:  # an index older than its summary columns: the store derives them
        project = _project(path)
        cols = project.summary_columns()
    quiet, live_at, problems = classify_rows(index_path, cols)
    live = []
    if live_at:  # their records need every column: the store reads the index whole
        ids = set(cols["id"][live_at].tolist())
        project = project or _project(path)
        whole = project.summary_columns()
        at = [i for i, run_id in enumerate(whole["id"].tolist()) if run_id in ids]
        live = live_records(project, whole, at, problems)
    for problem in problems:
        warn(problem)
    table = _quiet_cells(cols, quiet, time.time())
    if live:
        from hpcem.execution.runs import summarize

        table = _sorted_by_id(_joined(table, _summary_cells([summarize(r) for r in live])))
    elif np.any(np.diff(table["id"]) <= 0):
        table = _sorted_by_id(table)
    sys.stdout.write(format_table(path, table) + "\n")
    sys.stdout.flush()


def _project(path: Path):
    from hpcem.store.project import Project

    return Project.open(path)


def print_table(project_path: Path, summaries: Sequence) -> None:
    """Print the table of some runs' summaries (:class:`hpcem.execution.runs.RunSummary`)."""
    table = _sorted_by_id(_summary_cells(summaries)) if summaries else _summary_cells([])
    sys.stdout.write(format_table(project_path, table) + "\n")
    sys.stdout.flush()


def format_table(project_path: Path, table: dict[str, list]) -> str:
    """The text of the table: a title line, then a header and one row per run, with
    a JOB column only where some run is a batch job. ``table`` maps each name of
    :data:`HEADER` (lower case) to the column's cells, and ``"id"`` to the run ids."""
    n = len(table["id"])
    title = f"project {project_path}: {n} run{'s' if n != 1 else ''}"
    if not n:
        return title
    names = [h.lower() for h in HEADER]
    cells = {**table, "id": list(map(str, table["id"]))}
    if any(table["job"]):
        cells["job"] = [j or "-" for j in table["job"]]
    else:
        names.remove("job")
    header, padded = [], []
    for name in names[:-1]:  # every column but the last is padded to its width
        column = cells[name]
        if name in ("id", "label"):  # (nearly) every value differs
            width = max(len(name), *map(len, column))
            padded.append(list(map(str.ljust, column, repeat(width))))
        else:  # a few values, many times: each padded once
            distinct = set(column)
            width = max(len(name), *map(len, distinct))
            padded.append(list(map({v: v.ljust(width) for v in distinct}.__getitem__, column)))
        header.append(name.upper().ljust(width))
    header.append(names[-1].upper())
    rows = map("  ".join, zip(*padded, cells[names[-1]]))
    return "\n".join((title, "  ".join(header), *rows))


# --- the cells of each column ------------------------------------------------------------------
def _quiet_cells(cols: dict, at: list[int], now: float) -> dict[str, list]:
    """The cells of the quiet runs at rows ``at``, from the summary columns alone."""
    pick = slice(None) if len(at) == len(cols["id"]) else np.asarray(at, dtype=np.intp)
    started = cols["started"][pick].astype(np.float64)
    ended = cols["ended"][pick].astype(np.float64)
    ended = np.where(np.isnan(ended) & ~np.isnan(started), now, ended)
    elapsed = ended - started
    elapsed = np.where(np.isnan(elapsed), 0.0, np.maximum(elapsed, 0.0))
    return {
        "id": cols["id"][pick].tolist(),
        "label": _labels(cols["label"][pick].tolist()),
        "protocol": cols["protocol_text"][pick].tolist(),
        "state": cols["state"][pick].tolist(),
        "steps": _step_cells(cols["steps_done"][pick], cols["steps_total"][pick]),
        "elapsed": _elapsed_cells(elapsed),
        "job": cols["job"][pick].tolist(),
        "outputs": [t or "-" for t in cols["outputs_text"][pick].tolist()],
    }


def _summary_cells(summaries: Sequence) -> dict[str, list]:
    """The cells of runs given as summaries (live runs, or any list of summaries)."""
    return {
        "id": [r.id for r in summaries],
        "label": _labels([r.label for r in summaries]),
        "protocol": [r.protocol for r in summaries],
        "state": [r.state for r in summaries],
        "steps": [f"{r.steps_done}/{r.steps_total}" for r in summaries],
        "elapsed": [fmt_elapsed(r.elapsed_s) for r in summaries],
        "job": [r.job for r in summaries],
        "outputs": [fmt_outputs(r.outputs) for r in summaries],
    }


def _labels(labels: list[str]) -> list[str]:
    """Each label made safe and cut to :data:`LABEL_WIDTH` characters."""
    text = "".join(labels)  # ASCII without control characters is printable: one check
    if not (text.isascii() and not _ASCII_CONTROL.search(text)):
        labels = list(map(safe, labels))
    if labels and max(map(len, labels)) > LABEL_WIDTH:
        labels = [s[:LABEL_WIDTH] for s in labels]
    return labels


def _step_cells(done: np.ndarray, total: np.ndarray) -> list[str]:
    """``"done/total"`` of each run; each distinct pair is formatted once."""
    dones, done_at = np.unique(done, return_inverse=True)
    totals, total_at = np.unique(total, return_inverse=True)
    pairs, inverse = np.unique(done_at * len(totals) + total_at, return_inverse=True)
    texts = [f"{dones[k // len(totals)]}/{totals[k % len(totals)]}" for k in pairs.tolist()]
    return np.array(texts, dtype=object)[inverse.reshape(-1)].tolist()


def _elapsed_cells(elapsed: np.ndarray) -> list[str]:
    """:func:`fmt_elapsed` of each value (seconds); each distinct whole second is
    formatted once. No time at all shows as "-", 0.4 s as "0:00"."""
    seconds = np.where(elapsed == 0.0, -1, elapsed.astype(np.int64))
    values, inverse = np.unique(seconds, return_inverse=True)
    texts = np.array([_clock(s) if s >= 0 else "-" for s in values.tolist()], dtype=object)
    return texts[inverse.reshape(-1)].tolist()


def _joined(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    return {k: [*a[k], *b[k]] for k in a}


def _sorted_by_id(table: dict[str, list]) -> dict[str, list]:
    order = sorted(range(len(table["id"])), key=table["id"].__getitem__)
    return {k: [v[i] for i in order] for k, v in table.items()}


# --- live runs -------------------------------------------------------------------------------
def live_records(project, cols: dict, at: Sequence[int], problems: list, refresh=True) -> list:
    """The records of the rows ``at`` of the index columns ``cols`` (a damaged one adds
    its message to ``problems``), their batch jobs asked about and Parsl blocks left by
    dead controllers cancelled (unless not ``refresh``)."""
    from hpcem.errors import CorruptStoreError

    runs = []
    for i in at:
        try:
            runs.append(project._record(cols, i))
        except CorruptStoreError as exc:
            problems.append(str(exc))
    return reap_blocks(project, refresh_batch_jobs(project, runs)) if refresh else runs


def refresh_batch_jobs(project, runs=None) -> list:
    """Ask each site once about the project's active batch jobs (only if there are any);
    return the runs, read again only when that changed them."""
    all_runs = runs is None
    runs = project.runs if all_runs else runs
    if not runs:
        return runs
    from hpcem.execution.batch import needs_refresh

    if not any(needs_refresh(r) for r in runs):
        return runs
    from hpcem.errors import HpcemError
    from hpcem.execution.batch import refresh_jobs

    try:
        refresh_jobs(project, runs)
    except HpcemError as exc:
        _say(f"hpcem: warning: cannot query the batch system: {exc}")
    return project.runs if all_runs else [project.run(r.id) for r in runs]


def reap_blocks(project, runs) -> list:
    """Cancel Parsl blocks left by dead controllers (only runs that list blocks)."""
    leftover = [r for r in runs if r.blocks]
    if not leftover:
        return runs
    from hpcem.errors import HpcemError
    from hpcem.execution.runs import reap_blocks as reap

    for r in leftover:
        try:
            done = reap(project, r)
        except HpcemError as exc:
            _say(f"hpcem: warning: run {r.id}: cannot cancel its Parsl blocks: {exc}")
            continue
        if done:
            _say(
                f"hpcem: run {r.id}: cancelled Parsl blocks left by its dead controller: "
                f"{', '.join(done)}"
            )
    return [project.run(r.id) for r in runs]
