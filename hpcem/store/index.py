"""Reading the project index (``project.h5``): its columns, and its errors by name.

:class:`~hpcem.store.project.Project` reads the index through this module, and so does
``hpcem status``, which lists thousands of runs from these columns without loading the
run records or the rest of the store.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpcem.errors import CorruptStoreError, NotAProjectError
from hpcem.store import files as sf
from hpcem.store.states import RUN_STATES

INDEX = "project.h5"
PROJECT_TYPE = "hpcem.Project"

# Columns of the /runs group: (name, dtype). "str" = vlen UTF-8. record_json holds the
# typed parts of each run (request, attempts, blocks, outputs; see hpcem.store.record).
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "int64"),
    ("protocol", "str"),
    ("label", "str"),
    ("state", "str"),
    ("created", "float64"),
    ("heartbeat", "float64"),
    ("steps_done", "int64"),
    ("steps_total", "int64"),
    ("error", "str"),
    ("record_json", "str"),
)
# Derived from each record in the same commit (never written on their own), so that
# `hpcem status` can list thousands of runs without decoding their records.
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("started", "float64"),
    ("ended", "float64"),
    ("job", "str"),
    ("job_open", "int64"),
    ("outputs_text", "str"),
    ("n_blocks", "int64"),
    ("protocol_text", "str"),  # the protocol again, for the table (see SUMMARY_TEXT)
)
#: The string summaries are stored together in one uint8 dataset: the UTF-8 of each
#: row's texts, all joined by NUL (which no vlen string can hold), with the names of the
#: texts in its attribute ``columns``. A vlen column costs HDF5 one heap lookup per row,
#: the slow part of listing thousands of runs; this is one read. Indexes written before
#: it have one vlen dataset per string summary instead.
SUMMARY_TEXT = "summary_text"
TEXT_SUMMARIES = tuple(name for name, dtype in SUMMARY_COLUMNS if dtype == "str")
#: A summary that copies a run column is that column in an index written before it.
COPIES = {"protocol_text": "protocol"}
#: Not a stored column: the record texts that do not look like a JSON object, by row
#: (see :func:`suspect_records`), for a reader that lists runs without their records.
RECORD_SUSPECTS = "record_suspects"
#: Rows of records read at once for :data:`RECORD_SUSPECTS`: a few hundred kB, never
#: all records of a big project in memory (fresh memory is a page fault per 4 kB).
RECORD_BLOCK = 1024


def file_key(path: Path) -> tuple | None:
    """The identity of the committed index file (every commit is a new file), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_project(project_path: Path) -> None:
    """NotAProjectError unless ``project_path`` is a folder with an index file."""
    if not project_path.is_dir():
        raise NotAProjectError(f"{project_path} is not an hpcem project (no such folder)")
    if not (project_path / INDEX).is_file():
        raise NotAProjectError(f"{project_path} is not an hpcem project (no {INDEX})")


def read_index_file(
    project_path: Path, path: Path, names: Collection[str] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """``(attrs, columns, missing)`` of the index file ``path`` of the project folder
    ``project_path``: every column, or those in ``names``.

    String columns are object arrays of ``str``, except ``record_json``: UTF-8 bytes,
    decoded per record when used. ``missing`` names the summary columns an index written
    before them lacks (the caller derives them from the records). NotAProjectError when
    there is no index, CorruptStoreError when it is damaged (it is never modified).
    Each string is a separate object in HDF5's heap, the slow part of a read: callers
    that list thousands of runs ask only for the columns they show.
    """
    try:
        f = sf.open_h5(path, "project index")
    except FileNotFoundError:
        raise NotAProjectError(f"{project_path} is not an hpcem project (no {INDEX})") from None
    _small_metadata_cache(f)
    with f:
        sf.check_header(f, PROJECT_TYPE, "project index")
        try:
            attrs = {k: f.attrs[k] for k in f.attrs}
            attrs["next_run_id"] = int(attrs["next_run_id"])
            g = f["runs"]
            cols = {}
            if names is not None and RECORD_SUSPECTS in names:
                ds = g["record_json"]
                cols[RECORD_SUSPECTS] = {}
                for start in range(0, len(ds), RECORD_BLOCK):
                    texts = ds[start : start + RECORD_BLOCK].tolist()
                    cols[RECORD_SUSPECTS].update(suspect_records(texts, start))
            for name, dtype in RUN_COLUMNS:
                if names is not None and name not in names:
                    continue
                ds = g[name]
                if name == "record_json":  # UTF-8 bytes, decoded per record when used
                    cols[name] = ds[()] if ds.shape != (0,) else np.empty(0, dtype=object)
                else:
                    cols[name] = sf.read_str_array(ds) if dtype == "str" else ds[()]
            joined = _joined_names(g)
            missing = []
            for name, dtype in SUMMARY_COLUMNS:
                if name not in g and name not in joined and name not in COPIES:
                    missing.append(name)
                    continue
                if (names is not None and name not in names) or name in cols:
                    continue
                if name in joined:
                    cols.update(decode_summary_text(g[SUMMARY_TEXT], len(g["id"])))
                elif name in g:
                    ds = g[name]
                    cols[name] = sf.read_str_array(ds) if dtype == "str" else ds[()]
                else:  # a copy of a run column, in an index written before the copy was
                    source = COPIES[name]
                    copy = cols[source] if source in cols else sf.read_str_array(g[source])
                    cols[name] = copy.copy()
        except (KeyError, OSError, ValueError) as exc:
            raise CorruptStoreError(
                f"{path}: project index is incomplete or damaged ({exc}); it was not modified"
            ) from exc
    return attrs, cols, missing


def suspect_records(texts: Sequence[bytes], first_row: int = 0) -> dict[int, bytes]:
    """The texts (record_json, bytes) that are not empty and do not start with ``{`` and
    end with ``}``, by row (``first_row`` is the row of ``texts[0]``): the cheap look at
    each record that needs no decoding; a suspect one is decoded to say what is wrong."""
    if {t[:1] for t in texts} <= {b"{", b""} and {t[-1:] for t in texts} <= {b"}", b""}:
        return {}  # the common case, two passes in C
    return {
        first_row + i: t
        for i, t in enumerate(texts)
        if t and not (t[:1] == b"{" and t[-1:] == b"}")
    }


def _small_metadata_cache(f) -> None:
    """Keep HDF5's metadata cache at 512 kB. Each vlen string is read from a heap
    collection that the cache would otherwise keep (megabytes for a big index, each new
    page of them a page fault); the index is read front to back once, so nothing is
    read twice for it. Left as it is where h5py cannot set it."""
    try:
        config = f.id.get_mdc_config()
        config.set_initial_size = True
        config.initial_size = 256 << 10
        config.min_size = 128 << 10
        config.max_size = 512 << 10
        f.id.set_mdc_config(config)
    except (AttributeError, ValueError, RuntimeError):
        pass


def _joined_names(g) -> tuple[str, ...]:
    """The names of the texts in the group's :data:`SUMMARY_TEXT` (none without it)."""
    if SUMMARY_TEXT not in g:
        return ()
    names = g[SUMMARY_TEXT].attrs.get("columns", "job,outputs_text")
    return tuple((names.decode() if isinstance(names, bytes) else str(names)).split(","))


def write_summary_text(group, cols: Mapping[str, Sequence[str]]) -> None:
    """Write the :data:`SUMMARY_TEXT` dataset of the string summary columns in ``cols``."""
    texts = [str(t) for row in zip(*(cols[n] for n in TEXT_SUMMARIES)) for t in row]
    data = "\0".join(texts)
    if data.count("\0") != max(len(texts) - 1, 0):  # a NUL in a text: shown as U+FFFD
        data = "\0".join(t.replace("\0", "\ufffd") for t in texts)
    ds = group.create_dataset(SUMMARY_TEXT, data=np.frombuffer(data.encode(), dtype=np.uint8))
    ds.attrs["columns"] = ",".join(TEXT_SUMMARIES)


def decode_summary_text(ds, n_rows: int) -> dict[str, np.ndarray]:
    """The string summary columns of ``n_rows`` runs from their :data:`SUMMARY_TEXT`."""
    names = _joined_names(ds.parent)
    texts = ds[()].tobytes().decode("utf-8").split("\0") if n_rows else []
    if len(texts) != len(names) * n_rows:
        raise ValueError(f"{SUMMARY_TEXT} holds {len(texts)} texts for {n_rows} runs")
    out = {}
    for j, name in enumerate(names):
        out[name] = np.empty(n_rows, dtype=object)
        out[name][:] = texts[j :: len(names)]
    return out


def damaged(path: Path, run_id: int, exc: Exception) -> CorruptStoreError:
    """The error of a run whose record in the index file ``path`` cannot be decoded."""
    return CorruptStoreError(
        f"{path}: the record of run {run_id} is damaged "
        f"({type(exc).__name__}: {exc}); other runs are readable"
    )


def unknown_state(path: Path, run_id: int, state: str) -> CorruptStoreError:
    """The error of a run whose state in the index file ``path`` is not a run state."""
    return CorruptStoreError(
        f"{path}: run {run_id} has the unknown state {state!r} (states: {', '.join(RUN_STATES)})"
    )
