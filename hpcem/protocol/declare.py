"""Declaring a protocol: inputs, outputs, citations and steps.

A protocol is one class in one file. It *declares* what it takes and makes; the framework
derives the command-line form, validation, the stored run record and the workflow JSON
from that declaration alone. Example (see docs/protocols.md for a complete one)::

    class EstimateCTF(Protocol):
        name = "ctf.estimate"
        label = "Estimate CTF"
        inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",)),)
        params = (Param.float("min_res_A", 30.0, units="Å"),)
        outputs = (Output("ctfs", "hpcem.SetOfCTFs"),)
        citations = (Citation("hpcem2026", "@software{...}"),)

        def steps(self, ctx):
            ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from typing import ClassVar

from hpcem.errors import ProtocolError
from hpcem.protocol.params import Param


@dataclasses.dataclass(frozen=True)
class Input:
    """A pointer to outputs of other runs (``RUN:OUTPUT``) with the accepted set types."""

    name: str
    types: tuple[str, ...]
    help: str = ""
    required: bool = True
    many: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"types": list(self.types)}


@dataclasses.dataclass(frozen=True)
class Output:
    """A named output of a run and its stable set type name."""

    name: str
    type: str
    help: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Citation:
    """A BibTeX entry shipped with the protocol; ``short`` is shown in tables."""

    key: str
    bibtex: str

    @property
    def short(self) -> str:
        """'Surname et al. (Year)' from the BibTeX, or the key."""
        authors = _bibtex_field(self.bibtex, "author")
        year = _bibtex_field(self.bibtex, "year")
        if not authors:
            return self.key
        names = [a.strip() for a in re.split(r"\s+and\s+", authors) if a.strip()]
        first = names[0]
        if first.startswith("{") and first.endswith("}"):
            surname = first[1:-1]  # a corporate author, kept whole
        elif "," in first:
            surname = first.split(",")[0].strip()
        else:
            surname = first.split()[-1]
        text = surname + (
            " et al." if len(names) > 2 else f" and {_surname(names[1])}" if len(names) == 2 else ""
        )
        return f"{text} ({year})" if year else text


def _surname(name: str) -> str:
    name = name.strip("{} ")
    return name.split(",")[0].strip() if "," in name else name.split()[-1]


def _bibtex_field(bibtex: str, field: str) -> str:
    """The value of ``field = {...}`` (balanced braces) or ``field = "..."`` or a bare word."""
    m = re.search(rf"\b{field}\s*=\s*", bibtex, re.IGNORECASE)
    if not m:
        return ""
    rest = bibtex[m.end() :]
    if rest.startswith("{"):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                return rest[1:i].strip()
        return ""
    if rest.startswith('"'):
        return rest[1:].split('"', 1)[0].strip()
    return re.split(r"[,}\s]", rest, maxsplit=1)[0]


@dataclasses.dataclass(frozen=True)
class MPI:
    """Declares that a step runs under MPI with ``ranks`` processes."""

    ranks: int
    threads_per_rank: int = 1


@dataclasses.dataclass(frozen=True)
class Step:
    """One node of a run's step graph.

    ``func`` is ``"module:function"``; ``args`` must be JSON-serialisable (checked here,
    since steps are shipped to workers and re-identified on resume by their hash).
    ``deps`` names steps that must finish first. ``controller=True`` steps run in the
    controller process and receive a :class:`~hpcem.protocol.context.RunContext` as
    first argument (to read results of other steps and write output sets).
    """

    name: str
    func: str
    args: dict = dataclasses.field(default_factory=dict)
    deps: tuple[str, ...] = ()
    controller: bool = False
    mpi: MPI | None = None

    def __post_init__(self) -> None:
        if ":" not in self.func:
            raise ProtocolError(
                f"step {self.name!r}: func must be 'module:function', got {self.func!r}"
            )
        try:
            canonical = json.dumps(self.args, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(
                f"step {self.name!r}: arguments must be JSON-serialisable ({exc})"
            ) from None
        object.__setattr__(self, "deps", tuple(self.deps))
        object.__setattr__(self, "_canonical", canonical)

    @property
    def id(self) -> str:
        """Stable identity: a hash of the function, its arguments and MPI shape."""
        mpi = f"{self.mpi.ranks}x{self.mpi.threads_per_rank}" if self.mpi else ""
        text = f"{self.func}\n{self._canonical}\n{mpi}"  # type: ignore[attr-defined]
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def step_identity(step: Step, protocol_version: str) -> str:
    """What a run stores to recognise a finished step on ``continue``: the step's own
    identity and the protocol's ``version``, so that a new version of a method does not
    silently keep the results of an older one."""
    text = f"{protocol_version}\n{step.id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Protocol:
    """Base of all protocols: subclasses only declare class attributes and ``steps``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    help: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    inputs: ClassVar[Sequence[Input]] = ()
    params: ClassVar[Sequence[Param]] = ()
    outputs: ClassVar[Sequence[Output]] = ()
    citations: ClassVar[Sequence[Citation]] = ()
    #: How often a step is run again when its worker process is lost (killed, OOM).
    retries: ClassVar[int] = 1

    def steps(self, ctx) -> list[Step]:  # pragma: no cover - every protocol overrides
        """The step graph of a run, given its parameters and inputs (``ctx``)."""
        raise NotImplementedError

    def validate(self, ctx) -> list[str]:
        """The protocol's own checks beyond types and ranges; return problem texts."""
        return []

    # --- derived from the declaration ---------------------------------------------------
    @classmethod
    def to_json(cls) -> dict:
        """The whole declaration as JSON."""
        return {
            "name": cls.name,
            "label": cls.label,
            "help": cls.help,
            "version": cls.version,
            "retries": cls.retries,
            "inputs": [i.to_json() for i in cls.inputs],
            "params": [p.to_json() for p in cls.params],
            "outputs": [o.to_json() for o in cls.outputs],
            "citations": [{"key": c.key, "bibtex": c.bibtex} for c in cls.citations],
        }

    @classmethod
    def check_declaration(cls) -> None:
        """Raise ProtocolError when the declaration itself is inconsistent."""
        where = f"protocol {cls.__module__}.{cls.__qualname__}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", cls.name or ""):
            raise ProtocolError(f"{where}: name {cls.name!r} must look like 'group.action'")
        names = [p.name for p in cls.params] + [i.name for i in cls.inputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ProtocolError(f"{where}: duplicate parameter/input names {sorted(dup)}")
        for p in cls.params:
            for c in p.when:
                if c.param not in names:
                    raise ProtocolError(
                        f"{where}: parameter {p.name!r} depends on unknown {c.param!r}"
                    )
