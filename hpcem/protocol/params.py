"""Typed protocol parameters: declared once, checked once, shown everywhere.

A :class:`Param` carries its type, default, range, units, help, expert level and the
conditions under which it applies. Values arrive as Python objects (from the API or a
workflow JSON) or as strings (from the command line); :meth:`Param.convert` turns either
into the declared type and :meth:`Param.check` lists what is wrong, never raising for
user mistakes so that all problems can be reported together.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

KINDS = ("int", "float", "bool", "enum", "string", "path", "numlist", "range")

#: Words a boolean parameter accepts (any case), from the API, a workflow JSON or the CLI.
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
BOOL_WORDS_TEXT = ", ".join(f"{t}/{f}" for t, f in zip(TRUE_WORDS, FALSE_WORDS))

_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
}


@dataclasses.dataclass(frozen=True)
class Condition:
    """``param OP value``: the declaring parameter applies only when this holds."""

    param: str
    op: str
    value: Any

    def holds(self, values: dict) -> bool:
        """True when the condition is met by ``values`` (missing params never match)."""
        if self.param not in values:
            return False
        return bool(_OPS[self.op](values[self.param], self.value))

    def __str__(self) -> str:
        return f"{self.param} {self.op} {self.value!r}"


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared parameter of a protocol.

    ``kind`` is one of :data:`KINDS`; ``numlist`` is a list of numbers, ``range`` is a
    ``(start, stop, step)`` triple. ``when`` lists conditions that must all hold for the
    parameter to apply (otherwise it is neither required nor checked).
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    label: str = ""
    units: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    required: bool = False
    expert: int = 0
    when: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        # Declaration errors are programming errors of the protocol author.
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}")
        if self.kind == "enum" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: an enum needs choices")
        if not self.name.isidentifier():
            raise ValueError(f"parameter name {self.name!r} is not an identifier")

    # --- convenience constructors (read naturally in a protocol file) ----------------
    @classmethod
    def int(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "int", default, **kw)

    @classmethod
    def float(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "float", default, **kw)

    @classmethod
    def bool(cls, name: str, default=False, **kw) -> Param:
        return cls(name, "bool", default, **kw)

    @classmethod
    def enum(cls, name: str, choices: Sequence[str], default=None, **kw) -> Param:
        return cls(name, "enum", default, choices=tuple(choices), **kw)

    @classmethod
    def string(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "string", default, **kw)

    @classmethod
    def path(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "path", default, **kw)

    @classmethod
    def numlist(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "numlist", default, **kw)

    @classmethod
    def range(cls, name: str, default=None, **kw) -> Param:
        return cls(name, "range", default, **kw)

    # --- values ------------------------------------------------------------------------
    def applies(self, values: dict) -> bool:
        """True when every ``when`` condition holds."""
        return all(c.holds(values) for c in self.when)

    def convert(self, raw: Any) -> Any:
        """Turn a raw value (string from the CLI or JSON value) into the declared type.

        Raises ``ValueError`` with a short reason; callers add the parameter name.
        """
        if raw is None:
            return None
        k = self.kind
        if k == "int":
            if isinstance(raw, bool):
                raise ValueError("expected an integer, got a boolean")
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"expected an integer, got {raw!r}")
            try:
                return int(raw) if not isinstance(raw, str) else int(raw.strip(), 10)
            except ValueError:
                raise ValueError(f"expected an integer, got {raw!r}") from None
        if k == "float":
            if isinstance(raw, bool):
                raise ValueError("expected a number, got a boolean")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {raw!r}")
            return value
        if k == "bool":
            return _to_bool(raw)
        if k in ("enum", "string", "path"):
            if not isinstance(raw, str):
                raise ValueError(f"expected text, got {raw!r}")
            return raw
        if k == "numlist":
            items = raw.replace(",", " ").split() if isinstance(raw, str) else list(raw)
            try:
                return [float(x) for x in items]
            except (TypeError, ValueError):
                raise ValueError(f"expected a list of numbers, got {raw!r}") from None
        # range: "start:stop:step" or a 3-sequence
        items = raw.split(":") if isinstance(raw, str) else list(raw)
        if len(items) != 3:
            raise ValueError(f"expected start:stop:step, got {raw!r}")
        try:
            start, stop, step = (float(x) for x in items)
        except (TypeError, ValueError):
            raise ValueError(f"expected start:stop:step numbers, got {raw!r}") from None
        if step <= 0 or stop < start:
            raise ValueError(f"expected start <= stop and step > 0, got {raw!r}")
        return [start, stop, step]

    def check(self, value: Any) -> list[str]:
        """Problems with an already converted value (range, choices); empty when fine."""
        problems = []
        if value is None:
            if self.required:
                problems.append(f"parameter '{self.name}' is required")
            return problems
        numbers: list = []
        if self.kind in ("int", "float"):
            numbers = [value]
        elif self.kind in ("numlist", "range"):
            numbers = list(value[:2]) if self.kind == "range" else list(value)
        for number in numbers:
            if self.min is not None and number < self.min:
                problems.append(
                    f"parameter '{self.name}' = {number:g} is below the minimum "
                    f"{self.min:g}{self._units()}"
                )
            if self.max is not None and number > self.max:
                problems.append(
                    f"parameter '{self.name}' = {number:g} is above the maximum "
                    f"{self.max:g}{self._units()}"
                )
        if self.kind == "enum" and value not in self.choices:
            problems.append(
                f"parameter '{self.name}' = {value!r} is not one of {', '.join(self.choices)}"
            )
        if self.kind in ("string", "path") and self.required and not value.strip():
            problems.append(f"parameter '{self.name}' must not be empty")
        return problems

    def _units(self) -> str:
        return f" {self.units}" if self.units else ""

    def describe_range(self) -> str:
        """A short text for forms: '[0.5, 20] Å/px' or 'one of a, b'."""
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        lo = "" if self.min is None else f"{self.min:g}"
        hi = "" if self.max is None else f"{self.max:g}"
        if not lo and not hi:
            return self.units
        return f"[{lo or '-inf'}, {hi or 'inf'}]{self._units()}"

    def to_json(self) -> dict:
        """The declaration as JSON (for workflow templates and `hpcem protocols NAME --json`)."""
        out = {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "help": self.help,
            "units": self.units,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices),
            "required": self.required,
            "expert": self.expert,
            "when": [[c.param, c.op, c.value] for c in self.when],
        }
        return out


def _to_bool(raw: Any) -> bool:
    """``True``/``False``, the integers 1/0, or one of the words of :data:`TRUE_WORDS` and
    :data:`FALSE_WORDS` in any case. Nothing else: ``bool("false")`` is True, and a
    typo must not silently switch an option on."""
    if isinstance(raw, bool) or _is_numpy_bool(raw):
        return bool(raw)
    if isinstance(raw, numbers.Integral) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    raise ValueError(f"expected one of {BOOL_WORDS_TEXT} (any case), got {raw!r}")


def _is_numpy_bool(value: Any) -> bool:
    # numpy.bool_ (numpy.bool in numpy 2) is no bool subclass; numpy is not imported here
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def when(param: str, op: str, value: Any) -> Condition:
    """Build a :class:`Condition`; ``op`` is one of ``== != < <= > >= in``."""
    if op not in _OPS:
        raise ValueError(f"unknown condition operator {op!r}")
    return Condition(param, op, value)
