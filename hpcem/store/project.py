"""The project folder and its index (``project.h5``): runs, their state and records.

The index is small and columnar (one dataset per run field). Every change is one
commit under the project lock: read the index, change it, write a new file, rename it
over the old one. Readers take no lock and always see a whole committed index.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcem import __version__
from hpcem.errors import CorruptStoreError, FencedError, RunError, StoreError
from hpcem.store import files as sf
from hpcem.store import record, safeopen
from hpcem.store.index import (
    INDEX,
    PROJECT_TYPE,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    TEXT_SUMMARIES,
    check_project,
    file_key,
    write_summary_text,
)
from hpcem.store.index import damaged as _damaged
from hpcem.store.index import read_index_file as _read_index_file
from hpcem.store.index import unknown_state as _unknown_state
from hpcem.store.locks import FileLock
from hpcem.store.record import Attempt, Placement, RunRecord

if TYPE_CHECKING:  # imported where used: `hpcem status` needs none of them
    from hpcem.store.sets import Set
    from hpcem.store.steps import StepTable
    from hpcem.store.writer import SetWriter

MANIFEST = "manifest.h5"  # hpcem.store.manifest.MANIFEST

PROGRESS = "progress.h5"
PROGRESS_TYPE = "hpcem.RunProgress"
LOCK_TIMEOUT_S = 10.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# The index's columns (RUN_COLUMNS, SUMMARY_COLUMNS) are declared in hpcem.store.index.
_SCALARS = tuple(name for name, _ in RUN_COLUMNS if name != "record_json")


class OutputSets(Mapping):
    """``run.outputs["particles"]`` opens that set (fresh snapshot each access)."""

    def __init__(self, project: Project, run: RunRecord) -> None:
        self._project = project
        self._run = run

    def __getitem__(self, name: str) -> Set:
        if name not in self._run.output_types:
            raise KeyError(
                f"run {self._run.id} has no output {name!r}; outputs: "
                f"{', '.join(self._run.output_types) or 'none'}"
            )
        return self._project.open_set(self._run.id, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._run.output_types)

    def __len__(self) -> int:
        return len(self._run.output_types)

    @property
    def types(self) -> dict[str, str]:
        """Output name -> stable set type name, without opening anything."""
        return dict(self._run.output_types)


def check_label(label: str) -> str:
    """The label, or StoreError when it holds control characters (newlines, escapes)."""
    label = str(label)
    bad = _CONTROL_RE.search(label)
    if bad:
        raise StoreError(
            f"label {label!r} contains the control character {bad.group()!r}; "
            "labels are one line of printable text"
        )
    return label


class Project:
    """A project folder. ``Project(path)`` does no I/O: use :meth:`create` or :meth:`open`."""

    def __init__(self, path: str | os.PathLike, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(os.path.abspath(path))
        self.lock_timeout_s = lock_timeout_s
        self._cache: tuple | None = None  # (file identity, last read of the index)

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    # --- paths and locks ---
    @property
    def index_path(self) -> Path:
        return self.path / INDEX

    def _lock(self, name: str, what: str) -> FileLock:
        return FileLock(self.path / ".hpcem" / "locks" / f"{name}.lock", what)

    def _index_lock(self) -> FileLock:
        return self._lock("project", f"project {self.path}").acquire(self.lock_timeout_s)

    def run_dir(self, run_id: int) -> Path:
        """``<project>/runs/<run_id:06d>/`` (created on demand)."""
        d = self.path / "runs" / f"{int(run_id):06d}"
        os.close(safeopen.open_dir(d, 2, create=True))  # a planted link is refused
        return d

    def _set_dir(self, run_id: int, name: str) -> Path:
        return self.path / "runs" / f"{int(run_id):06d}" / "sets" / name

    # --- create / open ---
    @classmethod
    def create(cls, path: str | os.PathLike, **kwargs: Any) -> Project:
        """Make a new project in a new or empty folder; StoreError if one exists."""
        p = cls(path, **kwargs)
        if p.path.exists() and not p.path.is_dir():
            raise StoreError(f"{p.path} exists and is not a folder")
        p.path.mkdir(parents=True, exist_ok=True)
        with p._index_lock():
            if p.index_path.exists():
                raise StoreError(f"{p.path} is already an hpcem project ({INDEX} exists)")
            others = [e for e in os.listdir(p.path) if e != ".hpcem"]
            if others:
                raise StoreError(
                    f"{p.path} is not empty ({len(others)} entries, e.g. "
                    f"{min(others)!r}); create a project in a new folder"
                )
            (p.path / "runs").mkdir(exist_ok=True)
            now = time.time()
            attrs = {
                "hpcem_type": PROJECT_TYPE,
                "schema_version": sf.SCHEMA_VERSION,
                "created": now,
                "hpcem_version": __version__,
                "next_run_id": 1,
                # kept by every copy of the folder: a merge refuses unrelated projects
                "project_id": record.new_origin(),
            }
            p._write_index(attrs, _empty_run_columns())
        return p

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> Project:
        """Open an existing project (read-only checks; nothing is modified).

        NotAProjectError, CorruptStoreError or SchemaVersionError when it cannot be.
        """
        p = cls(path, **kwargs)
        check_project(p.path)
        p._read_index()
        return p

    # --- the index ---
    def _read_index(self, fresh: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(attrs, columns) of the index. Unless ``fresh``, a read of the same committed
        file (same inode, size and mtime: every commit is a new file) is reused; callers
        that change the columns in place must ask for a fresh copy."""
        path = self.index_path
        key = file_key(path)
        if not fresh and key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        attrs, cols = self._read_index_file(path)
        if key is not None:
            self._cache = (key, (attrs, cols))
        return attrs, cols

    def _read_index_file(self, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        attrs, cols, missing = _read_index_file(self.path, path)
        if missing:  # an index written before the summary columns: derive them once
            self._derive_summaries(cols)
        return attrs, cols

    def _derive_summaries(self, cols: dict[str, np.ndarray]) -> None:
        rows = []
        for i in range(len(cols["id"])):
            try:
                rows.append(_summary_row(self._record(cols, i)))
            except CorruptStoreError:  # placeholders, and the protocol of its column
                rows.append({**_summary_row(None), "protocol_text": str(cols["protocol"][i])})
        for name, dtype in SUMMARY_COLUMNS:
            cols[name] = np.array(
                [r[name] for r in rows], dtype=object if dtype == "str" else dtype
            )

    def summary_columns(self) -> dict[str, np.ndarray]:
        """The index's columns as arrays (scalars and summaries, records undecoded): what
        ``hpcem status`` lists without decoding thousands of records."""
        return self._read_index()[1]

    def _write_index(self, attrs: Mapping[str, Any], cols: Mapping[str, np.ndarray]) -> None:
        sf.clean_tmp_files(self.path, re.escape(INDEX))
        with sf.atomic_h5(self.index_path) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["schema_version"] = sf.SCHEMA_VERSION
            g = f.create_group("runs")
            for name, dtype in (*RUN_COLUMNS, *SUMMARY_COLUMNS):
                if name in TEXT_SUMMARIES:  # all of them in one dataset, below
                    continue
                sf.write_column(
                    g, name, np.asarray(cols[name], dtype=object if dtype == "str" else dtype)
                )
            write_summary_text(g, cols)

    def _record(self, cols: Mapping[str, Any], i: int) -> RunRecord:
        """Row ``i`` as a typed record; CorruptStoreError naming the file and the run."""
        run_id = int(cols["id"][i])
        try:
            parts = record.parts_from_json(json.loads(_text(cols["record_json"][i]) or "{}"))
        except (ValueError, TypeError, KeyError, StoreError) as exc:
            raise self.damaged(run_id, exc) from None
        values = {name: _py(cols[name][i]) for name in _SCALARS}
        if values["state"] not in record.RUN_STATES:
            raise self.unknown_state(run_id, values["state"])
        if values["state"] in record.ACTIVE_STATES and parts["attempts"]:
            # an active run's progress lives in its own file (see controller_commit);
            # a transition out of the active states copies it into the index
            progress = self._read_progress(run_id, parts["attempts"][-1].number)
            if progress:
                values.update({k: progress[k] for k in ("steps_done", "steps_total", "heartbeat")})
                parts = {**parts, "blocks": progress["blocks"]}
        return RunRecord(**values, **parts, project_path=self.path)

    def damaged(self, run_id: int, exc: Exception) -> CorruptStoreError:
        return _damaged(self.index_path, run_id, exc)

    def unknown_state(self, run_id: int, state: str) -> CorruptStoreError:
        return _unknown_state(self.index_path, run_id, state)

    # --- the progress of an active run (runs/NNNNNN/progress.h5) ---
    def _progress_path(self, run_id: int) -> Path:
        return self.path / "runs" / f"{int(run_id):06d}" / PROGRESS

    def _write_progress(self, run_id: int, attempt: int, progress: Mapping[str, Any]) -> None:
        path = self.run_dir(run_id) / PROGRESS
        sf.clean_tmp_files(path.parent, re.escape(PROGRESS))
        with sf.atomic_h5(path, levels=2) as f:
            f.attrs["hpcem_type"] = PROGRESS_TYPE
            f.attrs["schema_version"] = sf.SCHEMA_VERSION
            f.attrs["attempt"] = int(attempt)
            f.attrs["steps_done"] = int(progress["steps_done"])
            f.attrs["steps_total"] = int(progress["steps_total"])
            f.attrs["heartbeat"] = float(progress["heartbeat"])
            f.attrs["blocks"] = json.dumps(list(progress["blocks"]))

    def _read_progress(self, run_id: int, attempt: int) -> dict | None:
        """The progress file of ``attempt``; None when absent, older or unreadable (the
        index then has the last committed figures)."""
        try:
            with sf.open_h5(self._progress_path(run_id), "run progress") as f:
                if int(f.attrs["attempt"]) != attempt:
                    return None
                return {
                    "steps_done": int(f.attrs["steps_done"]),
                    "steps_total": int(f.attrs["steps_total"]),
                    "heartbeat": float(f.attrs["heartbeat"]),
                    "blocks": tuple(json.loads(sf.attr_str(f, "blocks", "[]"))),
                }
        except (OSError, KeyError, ValueError, StoreError):
            return None

    @property
    def project_id(self) -> str | None:
        """The random id given at creation (kept by copies of the folder); None for a
        project created before projects had one (see docs/merge.md)."""
        attrs, _ = self._read_index()
        return sf._as_str(attrs["project_id"]) if "project_id" in attrs else None

    @property
    def default_site(self) -> str | None:
        """The site runs of this project use when none is named (None: not set)."""
        attrs, _ = self._read_index()
        return sf._as_str(attrs["default_site"]) if "default_site" in attrs else None

    def set_default_site(self, name: str) -> None:
        """Store the project's default site (one atomic commit)."""
        with self._index_lock():
            attrs, cols = self._read_index(fresh=True)
            attrs["default_site"] = str(name)
            self._write_index(attrs, cols)

    @property
    def runs(self) -> list[RunRecord]:
        """All readable runs, read fresh from the index (no lock; never blocks a writer).
        Damaged records are left out: :meth:`read_runs` also says which and why."""
        return self.read_runs()[0]

    def read_runs(self) -> tuple[list[RunRecord], list[str]]:
        """(readable runs, one message per damaged record naming the file and the run)."""
        _, cols = self._read_index()
        runs, problems = [], []
        for i in range(len(cols["id"])):
            try:
                runs.append(self._record(cols, i))
            except CorruptStoreError as exc:
                problems.append(str(exc))
        return runs, problems

    def run(self, run_id: int) -> RunRecord:
        """One run; RunError if the project has no such run."""
        _, cols = self._read_index()
        return self._record(cols, self._row(cols, run_id))

    def _row(self, cols: Mapping[str, np.ndarray], run_id: int) -> int:
        rows = np.flatnonzero(cols["id"] == int(run_id))
        if len(rows) == 0:
            raise RunError(f"project {self.path} has no run {run_id}")
        return int(rows[0])

    def create_run(
        self,
        protocol: str,
        label: str = "",
        params: dict | None = None,
        inputs: Mapping[str, Sequence[str] | str] | None = None,
        placement: Placement | dict | None = None,
    ) -> RunRecord:
        """Add a run in state "saved" and return it. ``inputs`` maps an input name to
        refs ``"run_id:set_name"`` (a single ref or a list)."""
        ins = {
            k: [v] if isinstance(v, str) else [str(x) for x in v] for k, v in (inputs or {}).items()
        }
        if not isinstance(placement, Placement):
            placement = Placement.from_json(placement)
        label = check_label(label)
        with self._index_lock():
            attrs, cols = self._read_index(fresh=True)
            run_id = attrs["next_run_id"]
            self._recover_merge(cols)
            rec = RunRecord(
                id=run_id,
                protocol=protocol,
                label=label,
                state="saved",
                params=dict(params or {}),
                inputs=ins,
                placement=placement,
                created=time.time(),
                origin=record.new_origin(),
                project_path=self.path,
            )
            row = _record_row(rec)
            cols = {
                name: np.append(cols[name], np.array([row[name]], dtype=cols[name].dtype))
                for name, _ in (*RUN_COLUMNS, *SUMMARY_COLUMNS)
            }
            attrs["next_run_id"] = run_id + 1
            self._write_index(attrs, cols)
        return rec

    def _recover_merge(self, cols) -> None:
        """Under the index lock, before a commit: undo a merge killed in the middle of its
        own commit (run folders renamed into place or aside, index not yet written), so no
        run is created or changed on a folder the index does not describe."""
        from hpcem.store.merge import pending, recover_locked

        if pending(self.path):
            recover_locked(self.path, cols["id"].tolist())

    # --- atomic changes of one run (each one commit under the index lock) ---
    def _mutate(self, run_id: int, change: Callable[[RunRecord], RunRecord]) -> RunRecord:
        """Read the run under the index lock, apply ``change``, commit. ``change`` may
        raise to refuse (nothing is written); it must not do I/O."""
        with self._index_lock():
            attrs, cols = self._read_index(fresh=True)
            self._recover_merge(cols)
            i = self._row(cols, run_id)
            old = self._record(cols, i)
            new = change(old)
            if new is old:
                return old
            for name, value in _record_row(new).items():
                cols[name][i] = value
            self._write_index(attrs, cols)
        return new

    def transition(
        self,
        run_id: int,
        from_states: Sequence[str],
        to_state: str,
        reason: str = "",
        *,
        attempt: int | None = None,
        **attempt_fields: Any,
    ) -> RunRecord:
        """Compare-and-swap the run's state: ``from_states -> to_state`` with ``reason``.

        Refused with :class:`StateConflict` (carrying the current record) when the state
        is not one of ``from_states`` or, with ``attempt``, when that attempt is not the
        latest one. ``attempt_fields`` change that attempt in the same commit.
        """

        def change(rec: RunRecord) -> RunRecord:
            _check_lease(rec, from_states, attempt)
            record.check_transition(rec.id, rec.state, to_state)
            new = dataclasses.replace(rec, state=to_state, error=str(reason))
            if attempt_fields:
                new = record.replace_attempt(new, attempt or rec.attempt.number, **attempt_fields)
            return new

        return self._mutate(run_id, change)

    def begin_attempt(
        self, run_id: int, from_states: Sequence[str], *, reset: bool = False, **attempt_fields: Any
    ) -> RunRecord:
        """A new attempt and ``-> launched`` in one commit (CAS on ``from_states``).

        The new attempt's number is the new lease: a controller of an older attempt is
        fenced off from then on. ``reset`` also clears outputs and progress (restart).
        Taken under the run's steps lock too, so no fenced write can land after it.
        The attempt records the software of this process (``software``, found before the
        locks are taken: :func:`hpcem.provenance.software.attempt_software`).
        """
        if "software" not in attempt_fields:
            from hpcem.provenance.software import attempt_software

            attempt_fields["software"] = attempt_software(self.run(run_id).protocol)

        def change(rec: RunRecord) -> RunRecord:
            _check_lease(rec, from_states, None)
            record.check_transition(rec.id, rec.state, "launched")
            number = (rec.attempt.number if rec.attempt else 0) + 1
            new = Attempt(
                number=number,
                launched=time.time(),
                launcher_host=this_host(),
                launcher_pid=os.getpid(),
                request_digest=record.request_digest(rec),
                **attempt_fields,
            )
            extra = {"output_types": {}, "output_sizes": {}, "steps_done": 0} if reset else {}
            return dataclasses.replace(
                rec,
                state="launched",
                error="",
                blocks=(),
                attempts=(*rec.attempts, new),
                heartbeat=time.time(),
                **extra,
            )

        with self._steps_lock(run_id):
            return self._mutate(run_id, change)

    def update_attempt(
        self, run_id: int, number: int, *, only_active: bool = False, **fields: Any
    ) -> RunRecord:
        """Merge ``fields`` into attempt ``number`` (e.g. the launcher's controller pid,
        the tracker's scheduler state). With ``only_active``, a no-op once the run ended."""

        def change(rec: RunRecord) -> RunRecord:
            if only_active and rec.state not in record.ACTIVE_STATES:
                return rec
            return record.replace_attempt(rec, number, **fields)

        return self._mutate(run_id, change)

    def controller_commit(
        self,
        run_id: int,
        attempt: int,
        *,
        steps: StepTable | None = None,
        changed_steps: Sequence[Mapping[str, Any]] | None = None,
        state: str | None = None,
        reason: str | None = None,
        attempt_fields: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> RunRecord:
        """The controller of ``attempt`` records progress (fenced).

        Writes the step table (``steps``: the whole table, replacing the stored one;
        ``changed_steps``: only the records that changed, appended to the step log in
        O(changed)) and then the run fields ``steps_done``,
        ``steps_total``, ``heartbeat``, ``blocks`` and, with ``state``, a transition.
        :class:`~hpcem.errors.FencedError` when a later attempt exists or the run is
        no longer active: the caller must stop without writing anything more.
        """
        unknown = set(fields) - {"steps_done", "steps_total", "heartbeat", "blocks"}
        if unknown:
            raise StoreError(f"a controller cannot write run field(s) {sorted(unknown)}")

        def change(rec: RunRecord) -> RunRecord:
            _fence(rec, attempt)
            new = dataclasses.replace(
                rec, **{k: tuple(v) if k == "blocks" else v for k, v in fields.items()}
            )
            if state is not None and state != rec.state:
                record.check_transition(rec.id, rec.state, state)
                new = dataclasses.replace(new, state=state)
            if reason is not None:
                new = dataclasses.replace(new, error=str(reason))
            if attempt_fields:
                new = record.replace_attempt(new, attempt, **attempt_fields)
            return new

        with self._steps_lock(run_id):
            current = self.run(run_id)
            _fence(current, attempt)  # under the steps lock: no takeover can slip in
            if steps is not None:
                self._write_steps_unlocked(run_id, steps)
            if changed_steps:
                from hpcem.store.steps import append_steps

                append_steps(self.run_dir(run_id) / "steps.h5", int(run_id), list(changed_steps))
            if state is not None:  # the run ends (or starts): fold its step log
                from hpcem.store.steps import compact_steps

                compact_steps(self.run_dir(run_id) / "steps.h5", int(run_id))
            if state is None and reason is None and not attempt_fields:
                # progress only: the run's own file, never the project lock
                progress = {
                    "steps_done": current.steps_done,
                    "steps_total": current.steps_total,
                    "heartbeat": current.heartbeat,
                    "blocks": current.blocks,
                    **fields,
                }
                self._write_progress(run_id, attempt, progress)
                return dataclasses.replace(
                    current, **{k: tuple(v) if k == "blocks" else v for k, v in progress.items()}
                )
            return self._mutate(run_id, change)

    def refine_outcome(
        self, run_id: int, attempt: int, state: str, reason: str, **attempt_fields: Any
    ) -> RunRecord:
        """Replace a provisional outcome of the latest attempt (a signal the controller
        saw) by the scheduler's final word; a no-op when the outcome is not provisional."""

        def change(rec: RunRecord) -> RunRecord:
            a = rec.attempt
            if a is None or a.number != attempt or not a.provisional:
                return rec
            if state not in record.REFINABLE.get(rec.state, ()):
                return rec
            new = dataclasses.replace(rec, state=state, error=str(reason))
            return record.replace_attempt(new, attempt, provisional=False, **attempt_fields)

        return self._mutate(run_id, change)

    def set_output(
        self, run_id: int, name: str, set_type: str, size: int, attempt: int | None = None
    ) -> RunRecord:
        """List a finished output set with its size (fenced when ``attempt`` is given)."""

        def change(rec: RunRecord) -> RunRecord:
            if attempt is not None:
                _fence(rec, attempt)
            return dataclasses.replace(
                rec,
                output_types={**rec.output_types, name: set_type},
                output_sizes={**rec.output_sizes, name: int(size)},
            )

        return self._mutate(run_id, change)

    def release_blocks(self, run_id: int, job_ids: Sequence[str]) -> RunRecord:
        """Drop cancelled Parsl blocks from a run that is no longer active (its controller
        died without shutting them down)."""
        gone = set(job_ids)

        def change(rec: RunRecord) -> RunRecord:
            if rec.state in record.ACTIVE_STATES:
                raise StateConflict(
                    f"run {rec.id} is {rec.state}: its controller owns its blocks", rec
                )
            return dataclasses.replace(rec, blocks=tuple(b for b in rec.blocks if b not in gone))

        return self._mutate(run_id, change)

    def set_label(self, run_id: int, label: str) -> RunRecord:
        """Change the label of a run."""
        label = check_label(label)
        return self._mutate(run_id, lambda rec: dataclasses.replace(rec, label=label))

    def set_params(self, run_id: int, params: Mapping[str, Any]) -> RunRecord:
        """Change the parameters of a run that is not active (they apply at its next
        launch: steps whose arguments change run again)."""

        def change(rec: RunRecord) -> RunRecord:
            if rec.state in record.ACTIVE_STATES:
                raise StateConflict(
                    f"run {rec.id} is {rec.state}: stop it before changing its parameters", rec
                )
            return dataclasses.replace(rec, params=dict(params))

        return self._mutate(run_id, change)

    # --- steps ---
    def read_steps(self, run_id: int) -> StepTable:
        """The run's step table (empty if none was written)."""
        from hpcem.store.steps import read_steps_file

        return read_steps_file(self.path / "runs" / f"{int(run_id):06d}" / "steps.h5", int(run_id))

    def _steps_lock(self, run_id: int) -> FileLock:
        return self._lock(f"run-{int(run_id):06d}.steps", f"steps of run {run_id}").acquire(
            self.lock_timeout_s
        )

    def _write_steps_unlocked(self, run_id: int, table: StepTable) -> None:
        d = self.run_dir(run_id)
        sf.clean_tmp_files(d, r"steps\.h5")
        from hpcem.store.steps import write_steps_file

        write_steps_file(d / "steps.h5", int(run_id), table)

    def write_steps(self, run_id: int, table: StepTable) -> None:
        """Atomically replace the run's step table (unfenced: controllers use
        :meth:`controller_commit`)."""
        with self._steps_lock(run_id):
            self._write_steps_unlocked(run_id, table)

    # --- sets ---
    def _set_lock(self, run_id: int, name: str) -> FileLock:
        return self._lock(
            f"run-{int(run_id):06d}.set-{name}",
            f"set {name!r} of run {run_id} in project {self.path}",
        )

    def create_set(
        self, run_id: int, name: str, set_type: str, inputs: Sequence[str] = (), step: str = ""
    ) -> SetWriter:
        """Start a new, empty output set of a run and return its writer (which holds the
        set's lock: a second writer gets LockedError). ``inputs`` are lineage refs
        ``"run_id:set_name"``; ``step`` is the id of the step that produces it."""
        if not _NAME_RE.match(name):
            raise StoreError(f"bad set name {name!r}: use letters, digits, '_', '.', '-'")
        self.run(run_id)  # RunError for an unknown run
        from hpcem.store.manifest import new_manifest, write_manifest
        from hpcem.store.writer import SetWriter

        manifest = new_manifest(set_type, name, int(run_id), step, inputs)
        d = self._set_dir(run_id, name)
        lock = self._set_lock(run_id, name).acquire(0)
        try:
            if (d / MANIFEST).exists():
                raise StoreError(
                    f"run {run_id} already has a set {name!r} ({d}); use "
                    "open_set_writer() to append to it"
                )
            os.close(safeopen.open_dir(d, 4, create=True))
            writer = SetWriter(self.path, d, lock, manifest)
            writer.cleanup()
            write_manifest(d, manifest)
            # listed at once, without a size until the writer's owner records it
            self._mutate(
                run_id,
                lambda rec: dataclasses.replace(
                    rec,
                    output_types={**rec.output_types, name: set_type},
                    output_sizes={k: v for k, v in rec.output_sizes.items() if k != name},
                ),
            )
        except BaseException:
            lock.release()
            raise
        return writer

    def open_set_writer(self, run_id: int, name: str) -> SetWriter:
        """A writer that appends to an existing set (e.g. to resume a stream)."""
        d = self._set_dir(run_id, name)
        lock = self._set_lock(run_id, name).acquire(0)
        try:
            from hpcem.store.manifest import read_manifest, write_manifest
            from hpcem.store.writer import SetWriter

            manifest = read_manifest(d)
            manifest.state = "open"
            writer = SetWriter(self.path, d, lock, manifest)
            writer.cleanup()
            write_manifest(d, manifest)
        except BaseException:
            lock.release()
            raise
        return writer

    def delete_set(self, run_id: int, name: str) -> None:
        """Delete an output set (under its lock; LockedError while a writer has it) and
        drop it from the run's outputs. Readers holding a snapshot keep reading it."""
        d = self._set_dir(run_id, name)
        with self._set_lock(run_id, name).acquire(0):
            if d.exists():
                # rename first so no reader ever opens a half-deleted set
                gone = d.with_name(f".deleted-{name}{sf.TMP_MARK}{os.getpid()}")
                os.replace(d, gone)
                import shutil

                shutil.rmtree(gone, ignore_errors=True)
            self._mutate(
                run_id,
                lambda rec: (
                    rec
                    if name not in rec.output_types
                    else dataclasses.replace(
                        rec,
                        output_types={k: v for k, v in rec.output_types.items() if k != name},
                        output_sizes={k: v for k, v in rec.output_sizes.items() if k != name},
                    )
                ),
            )

    def open_set(self, run_id: int, name: str) -> Set:
        """A read-only snapshot of a run's output set (no lock taken)."""
        d = self._set_dir(run_id, name)
        if not (d / MANIFEST).exists():
            raise StoreError(
                f"run {run_id} of project {self.path} has no set {name!r} (no {d / MANIFEST})"
            )
        from hpcem.store.sets import Set

        return Set.open(self.path, d)


class StateConflict(RunError):
    """A compare-and-swap on a run's state found another state (or a later attempt).

    ``record`` is the run as it is now, so the caller can say what happened instead.
    """

    def __init__(self, message: str, rec: RunRecord) -> None:
        super().__init__(message)
        self.record = rec


def _check_lease(rec: RunRecord, from_states: Sequence[str], attempt: int | None) -> None:
    if rec.state not in from_states:
        raise StateConflict(
            f"run {rec.id} is {rec.state}" + (f" ({rec.error})" if rec.error else ""), rec
        )
    if attempt is not None and (rec.attempt is None or rec.attempt.number != attempt):
        latest = rec.attempt.number if rec.attempt else 0
        raise StateConflict(f"run {rec.id}: attempt {attempt} is not the latest ({latest})", rec)


def _fence(rec: RunRecord, attempt: int) -> None:
    """FencedError unless ``attempt`` still holds the run's lease."""
    latest = rec.attempt.number if rec.attempt else 0
    if latest != attempt:
        raise FencedError(
            f"run {rec.id}: attempt {attempt} was taken over by attempt {latest}; "
            "this controller stops without writing"
        )
    if rec.state not in record.ACTIVE_STATES:
        raise FencedError(
            f"run {rec.id} is {rec.state} ({rec.error or 'no reason'}); the "
            f"controller of attempt {attempt} stops without writing"
        )


def _text(v: Any) -> str:
    """A string column's value (bytes as read without decoding, or str)."""
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _empty_run_columns() -> dict[str, np.ndarray]:
    return {
        name: np.empty(0, dtype=object if dtype == "str" else dtype)
        for name, dtype in (*RUN_COLUMNS, *SUMMARY_COLUMNS)
    }


def _summary_row(rec: RunRecord | None) -> dict[str, Any]:
    """The summary columns of one record (placeholders for a damaged one)."""
    if rec is None:
        return {
            "started": math.nan,
            "ended": math.nan,
            "job": "",
            "job_open": 0,
            "outputs_text": "",
            "n_blocks": 0,
            "protocol_text": "",
        }
    a = rec.attempt
    job = rec.job_text
    outputs = ", ".join(
        f"{n}({rec.output_sizes[n]})" if n in rec.output_sizes else n for n in rec.output_types
    )
    return {
        "started": float(rec.started),
        "ended": float(rec.ended),
        "job": job,
        "job_open": int(
            bool(a is not None and a.job_id and (a.provisional or not a.scheduler_final))
        ),
        "outputs_text": outputs,
        "n_blocks": len(rec.blocks),
        "protocol_text": rec.protocol,
    }


def _record_row(rec: RunRecord) -> dict[str, Any]:
    row = {name: getattr(rec, name) for name in _SCALARS}
    row.update(_summary_row(rec))
    for name in ("created", "heartbeat"):
        row[name] = math.nan if row[name] is None else float(row[name])
    try:
        row["record_json"] = json.dumps(
            record.to_json(rec), sort_keys=True, default=_json_default, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"run {rec.id}: params/inputs/placement must be JSON-able ({exc})"
        ) from exc
    return row


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def find_run(runs: Sequence[RunRecord], ref: str) -> RunRecord:
    """The run named by ``ref``: its id, or else its label when that names one run.

    RunError says which: no such run, or a label shared by several runs.
    """
    ref = str(ref)
    if ref.isdigit():
        for r in runs:
            if r.id == int(ref):
                return r
    matches = [r for r in runs if r.label == ref]
    if len(matches) > 1:
        ids = ", ".join(str(r.id) for r in matches)
        raise RunError(f"label {ref!r} names several runs ({ids}); use the id")
    if not matches:
        raise RunError(f"no run {ref!r} in this project")
    return matches[0]


def this_host() -> str:
    """The host name recorded in runs and locks."""
    import socket

    return socket.gethostname()
