"""Placeholders: the dataset-specific values a workflow template asks for on import.

A parameter value may be a placeholder object ``{"placeholder": "pixel_size", "help":
"...", "default": 1.06}``, or a string holding ``${NAME}`` (whole, ``"${files}"``, or
inside text, ``"${raw}/movie_*.tif"``). An input reference ``"${NAME}"`` asks for a
``RUN:OUTPUT`` of the target project. Values come from ``--set NAME=VALUE``; a
placeholder without a value and without a default is a problem, as is a ``--set`` of a
name the template does not have. Substitution is plain text replacement: nothing in a
template or a value is evaluated.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: ``${NAME}`` inside a string.
PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
_NO_DEFAULT = object()


@dataclasses.dataclass
class Placeholder:
    """One placeholder of a template: where it is used, its help and its default."""

    name: str
    help: str = ""
    default: Any = _NO_DEFAULT
    kind: str = "param"  # "param" (a parameter value) or "input" (a RUN:OUTPUT)
    used_in: list[str] = dataclasses.field(default_factory=list)

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "help": self.help}
        if self.has_default:
            out["default"] = self.default
        out["used_in"] = list(self.used_in)
        return out


def is_placeholder_object(value: Any) -> bool:
    """True for ``{"placeholder": NAME, ...}``."""
    return isinstance(value, dict) and "placeholder" in value


def collect(doc: Mapping[str, Any]) -> dict[str, Placeholder]:
    """Every placeholder of a (schema-valid) template document, by name, with where it
    is used (``run KEY param NAME`` / ``run KEY input NAME``)."""
    found: dict[str, Placeholder] = {}
    for name, decl in (doc.get("placeholders") or {}).items():
        found[name] = Placeholder(
            name,
            help=decl.get("help", ""),
            default=decl.get("default", _NO_DEFAULT),
            kind=decl.get("kind", "param"),
        )

    def use(name: str, where: str, kind: str, decl: Mapping[str, Any] | None = None) -> None:
        ph = found.setdefault(name, Placeholder(name, kind=kind))
        if decl:
            ph.help = ph.help or decl.get("help", "")
            if "default" in decl and not ph.has_default:
                ph.default = decl["default"]
        if kind == "input":
            ph.kind = "input"
        ph.used_in.append(where)

    for run in doc.get("runs") or []:
        key = run.get("key")
        for pname, value in (run.get("params") or {}).items():
            where = f"run {key} param {pname}"
            if is_placeholder_object(value):
                use(value["placeholder"], where, "param", value)
            else:
                for name in _names_in(value):
                    use(name, where, "param")
        for iname, refs in (run.get("inputs") or {}).items():
            for ref in [refs] if isinstance(refs, str) else refs:
                for name in PATTERN.findall(ref):
                    use(name, f"run {key} input {iname}", "input")
    return found


def _names_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return PATTERN.findall(value)
    if isinstance(value, list):
        return [n for v in value if isinstance(v, str) for n in PATTERN.findall(v)]
    return []


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` (the ``--set`` options) as a dict; ValueError on a bad one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not PATTERN.fullmatch("${" + name + "}"):
            raise ValueError(f"--set {item!r}: expected NAME=VALUE (NAME: letters, digits, _)")
        out[name] = value
    return out


def check_values(placeholders: Mapping[str, Placeholder], values: Mapping[str, Any]) -> list[str]:
    """Problems: values for names the template does not have, placeholders left unset."""
    problems = []
    for name in sorted(set(values) - set(placeholders)):
        have = ", ".join(sorted(placeholders)) or "none"
        problems.append(f"--set {name}: the template has no placeholder {name!r} (it has: {have})")
    for name, ph in sorted(placeholders.items()):
        if name not in values and not ph.has_default:
            where = "; ".join(ph.used_in) or "declared only"
            hint = f" ({ph.help})" if ph.help else ""
            problems.append(
                f"placeholder {name!r} is not set ({where}){hint}: give --set {name}=VALUE"
            )
    return problems


def value_of(name: str, placeholders: Mapping[str, Placeholder], values: Mapping[str, Any]):
    """The value of one placeholder: the ``--set`` one, else its default."""
    if name in values:
        return values[name]
    return placeholders[name].default


def substitute(
    value: Any, placeholders: Mapping[str, Placeholder], values: Mapping[str, Any]
) -> tuple[Any, bool]:
    """(the value with placeholders replaced, whether any came from ``--set``).

    A whole-value placeholder takes the set value as given (a string from the command
    line is converted later by the parameter's own type); ``${NAME}`` inside longer text
    is replaced by the value's text."""
    if is_placeholder_object(value):
        name = value["placeholder"]
        return value_of(name, placeholders, values), name in values
    if isinstance(value, list):
        parts = [substitute(v, placeholders, values) for v in value]
        return [p[0] for p in parts], any(p[1] for p in parts)
    if not isinstance(value, str):
        return value, False
    names = PATTERN.findall(value)
    if not names:
        return value, False
    from_set = any(n in values for n in names)
    whole = PATTERN.fullmatch(value)
    if whole:
        return value_of(whole.group(1), placeholders, values), from_set
    text = PATTERN.sub(lambda m: str(value_of(m.group(1), placeholders, values)), value)
    return text, from_set
