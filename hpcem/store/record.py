"""The typed run record: request, attempts, blocks, outputs and the state machine.

A run record has parts, each written by the one piece of code that owns it:

- the **request** (protocol, params, inputs, placement): written once, when the run is
  created (only its label may change later);
- the **attempts**: one per launch (``continue``, ``restart``, a scheduler requeue). An
  attempt is created by the launcher, gets its controller's pid and host from the
  controller, and the scheduler's own final state and reason from the job tracker;
- the **blocks**: Parsl batch jobs of the running attempt, written by its controller;
- **progress** (steps done/total, heartbeat) and **outputs** (name → type and size),
  written by the controller of the current attempt only (fenced, see below);
- the **state** with its reason, changed only by compare-and-swap transitions along
  :data:`TRANSITIONS`.

Fencing: the number of the latest attempt is the lease. Every write a controller makes
names its attempt; the store refuses it (:class:`~hpcem.errors.FencedError`) once a later
attempt exists or the run has left the active states, so a controller that wakes up
after another took over stops without writing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from hpcem.errors import RunError, StoreError
from hpcem.store.states import ACTIVE_STATES, FINAL_STATES, RUN_STATES  # noqa: F401 (re-exported)

#: The state machine: state -> the states it may move to. Written down once.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "saved": ("launched",),
    "launched": ("running", "failed", "aborted"),
    "running": ("finished", "failed", "aborted"),
    "failed": ("launched",),
    "aborted": ("launched",),
    "finished": ("launched",),  # restart only; continue refuses a finished run
}
#: A provisional outcome (a signal seen by the controller) may be refined by the
#: scheduler's accounting (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED ...).
REFINABLE = {"aborted": ("failed", "aborted"), "failed": ("failed", "aborted")}

RECORD_VERSION = 2


def check_transition(run_id: int, current: str, new: str) -> None:
    """StoreError unless ``current -> new`` is an edge of the state machine."""
    if new not in RUN_STATES:
        raise StoreError(f"unknown run state {new!r}; states: {', '.join(RUN_STATES)}")
    if new not in TRANSITIONS.get(current, ()):
        raise StoreError(
            f"run {run_id}: illegal transition {current} -> {new} (allowed from "
            f"{current}: {', '.join(TRANSITIONS.get(current, ())) or 'none'})"
        )


@dataclass(frozen=True)
class Placement:
    """Where the run executes, as requested at creation (never changed afterwards).

    ``mode``: ``local`` (a controller on this machine) or ``job`` (the whole run as one
    batch job); ``dispatch``: ``local`` (worker processes) or ``parsl`` (steps sent to
    cluster nodes); ``resources``: queue, walltime, cores, nodes of the batch job or
    blocks; ``parsl``: Parsl options (max_blocks ...); ``workers``: local processes.
    """

    mode: str = "local"
    dispatch: str = "local"
    site: str = "localhost"
    workers: int = 0
    resources: dict = field(default_factory=dict)
    parsl: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict | None) -> Placement:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise StoreError(
                f"unknown placement field(s) {sorted(unknown)}; fields: {', '.join(sorted(known))}"
            )
        if d.get("workers") is None:
            d["workers"] = 0
        return cls(**d)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Attempt:
    """One launch of a run: who launched it, which controller ran it, what ended it.

    Times are unix seconds (nan if unset). ``job_id`` is the batch job of a whole-run job
    attempt. ``scheduler_state``/``scheduler_reason`` are the scheduler's own words (e.g.
    ``TIMEOUT``); ``outcome`` (a final run state) and ``outcome_reason`` are what the controller
    or the tracker concluded, and ``provisional`` says the scheduler's final state may
    still refine them.
    """

    number: int
    launched: float = math.nan
    launcher_host: str = ""
    launcher_pid: int = 0
    host: str = ""
    pid: int = 0
    started: float = math.nan
    ended: float = math.nan
    site: str = ""
    scheduler: str = ""
    queue: str = ""
    job_id: str = ""
    exit_code_file: str = ""
    node: str = ""
    scheduler_state: str = ""
    scheduler_reason: str = ""
    scheduler_final: bool = False
    request_digest: str = ""
    outcome: str = ""
    outcome_reason: str = ""
    provisional: bool = False
    software: dict = field(default_factory=dict, hash=False)

    @classmethod
    def from_json(cls, d: dict) -> Attempt:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {
            k: (math.nan if v is None and k in _TIME_FIELDS else v)
            for k, v in d.items()
            if k in known
        }
        if not isinstance(fields.get("software", {}), dict):
            fields["software"] = {}
        return cls(**fields)

    def to_json(self) -> dict:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }


_TIME_FIELDS = ("launched", "started", "ended")
ATTEMPT_FIELDS = frozenset(f.name for f in dataclasses.fields(Attempt)) - {"number"}


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One run as stored in the project index (a snapshot; never edited in place).

    ``inputs`` maps an input name to refs ``"run_id:set_name"``; ``outputs`` (property)
    opens output sets lazily; ``output_types``/``output_sizes`` describe them without
    opening anything. ``error`` is the reason of the current state (empty when none).
    """

    id: int
    protocol: str
    label: str = ""
    state: str = "saved"
    params: dict = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    placement: Placement = field(default_factory=Placement)
    attempts: tuple[Attempt, ...] = ()
    blocks: tuple[str, ...] = ()
    output_types: dict[str, str] = field(default_factory=dict)
    output_sizes: dict[str, int] = field(default_factory=dict)
    created: float = math.nan
    heartbeat: float = math.nan
    steps_done: int = 0
    steps_total: int = 0
    error: str = ""
    #: A random id (uuid4 hex) given at creation and kept by every copy of the project,
    #: so that a merge recognises the same run in two copies; "" for runs created before
    #: it existed. A copied run (a branch) is a new run with a new origin.
    origin: str = ""
    project_path: Any = field(default=None, compare=False, repr=False)

    # --- derived views ----------------------------------------------------------------
    @property
    def attempt(self) -> Attempt | None:
        """The latest attempt (the one that holds the lease), or None before launch."""
        return self.attempts[-1] if self.attempts else None

    @property
    def pid(self) -> int:
        a = self.attempt
        return a.pid if a else 0

    @property
    def host(self) -> str:
        a = self.attempt
        return (a.host or a.launcher_host) if a else ""

    @property
    def started(self) -> float:
        a = self.attempt
        return a.started if a else math.nan

    @property
    def ended(self) -> float:
        a = self.attempt
        return a.ended if a else math.nan

    @property
    def job_text(self) -> str:
        """The latest attempt's batch job as ``hpcem status`` shows it (``slurm 53
        PENDING``); '' when it is not a batch job."""
        a = self.attempt
        if a is None or not a.job_id:
            return ""
        return " ".join(x for x in (a.scheduler or a.site, a.job_id, a.scheduler_state) if x)

    @property
    def jobs(self) -> list[Attempt]:
        """Attempts that were batch jobs (oldest first)."""
        return [a for a in self.attempts if a.job_id]

    @property
    def outputs(self):
        """Lazy mapping output name -> :class:`~hpcem.store.sets.Set` (opened on access)."""
        from hpcem.store.project import OutputSets, Project

        if self.project_path is None:
            raise StoreError(f"run {self.id}: record is not attached to a project")
        return OutputSets(Project(self.project_path), self)

    def open_output(self, name: str):
        """Open one output set of this run."""
        return self.outputs[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunRecord):
            return NotImplemented
        return to_json(self) == to_json(other)

    __hash__ = None


def to_json(rec: RunRecord) -> dict:
    """The record's JSON form (the ``record_json`` column, plus the scalar columns).

    ``origin`` is written only when the run has one (runs created before it have none)."""
    out = {
        "record_version": RECORD_VERSION,
        "params": rec.params,
        "inputs": rec.inputs,
        "placement": rec.placement.to_json(),
        "attempts": [a.to_json() for a in rec.attempts],
        "blocks": list(rec.blocks),
        "outputs": {
            n: {"type": t, "size": rec.output_sizes.get(n)} for n, t in rec.output_types.items()
        },
    }
    if rec.origin:
        out["origin"] = rec.origin
    return out


def parts_from_json(d: dict) -> dict:
    """RunRecord fields from a ``record_json`` dict (version 1 records are converted)."""
    if "record_version" not in d:  # version 1: one untyped "execution" dict
        return _from_v1(d)
    outputs = d.get("outputs", {})
    return {
        "params": d.get("params", {}),
        "inputs": d.get("inputs", {}),
        "placement": Placement.from_json(d.get("placement")),
        "attempts": tuple(Attempt.from_json(a) for a in d.get("attempts", [])),
        "blocks": tuple(d.get("blocks", [])),
        "output_types": {n: o["type"] for n, o in outputs.items()},
        "output_sizes": {n: o["size"] for n, o in outputs.items() if o.get("size") is not None},
        "origin": str(d.get("origin", "")),
    }


def _from_v1(d: dict) -> dict:
    ex = dict(d.get("execution", {}))
    placement = Placement.from_json(
        {k: ex[k] for k in ("mode", "dispatch", "site", "workers", "resources", "parsl") if k in ex}
    )
    attempts = tuple(
        Attempt(
            number=i + 1,
            job_id=str(j.get("id", "")),
            site=j.get("site", ""),
            queue=j.get("queue", ""),
            exit_code_file=j.get("exit_code_file", ""),
            scheduler_state=j.get("native_state", "") or j.get("state", ""),
            launched=j.get("submitted", math.nan),
        )
        for i, j in enumerate(ex.get("jobs", []))
    )
    sizes = ex.get("output_sizes", {})
    return {
        "params": d.get("params", {}),
        "inputs": d.get("inputs", {}),
        "placement": placement,
        "attempts": attempts,
        "blocks": tuple(ex.get("blocks", [])),
        "output_types": dict(d.get("outputs", {})),
        "output_sizes": dict(sizes),
    }


def new_origin() -> str:
    """A fresh origin id for a new run (or a new project): 32 random hex digits."""
    import uuid

    return uuid.uuid4().hex


def request_digest(rec: RunRecord) -> str:
    """A short hash of the run's params and inputs: what an attempt was asked to do."""
    import hashlib
    import json

    text = json.dumps({"params": rec.params, "inputs": rec.inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def replace_attempt(rec: RunRecord, number: int, **fields: Any) -> RunRecord:
    """A copy of ``rec`` with attempt ``number`` changed (RunError if it has none)."""
    unknown = set(fields) - ATTEMPT_FIELDS
    if unknown:
        raise StoreError(f"unknown attempt field(s) {sorted(unknown)}")
    attempts = list(rec.attempts)
    for i, a in enumerate(attempts):
        if a.number == number:
            attempts[i] = dataclasses.replace(a, **fields)
            return dataclasses.replace(rec, attempts=tuple(attempts))
    raise RunError(f"run {rec.id} has no attempt {number}")
