"""Declaring item types as data: one :class:`ItemType` per kind of object, a tuple of
:class:`Field` each with a dtype, a unit and a line of documentation.

The store (``hpcem.store``) keeps a set of items as one column per field; nothing in it is
specific to one item type. Field kinds:

``scalar``  a fixed-size numpy number (``float32`` where the precision is enough).
``path``    a file path; stored as an ``int32`` index into the set's ``files`` table
            (paths relative to the project folder, or absolute when outside it); -1 = none.
``str``     a short UTF-8 string (variable length; fine for small sets).
``ragged``  a variable-length 1-D array per item, stored as ``values`` + ``offsets`` (CSR).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("scalar", "path", "str", "ragged")


@dataclass(frozen=True)
class Field:
    """One field of an item type: ``name``, numpy ``dtype`` (of a scalar or of the values
    of a ragged field), physical ``unit`` ("" when dimensionless), ``doc`` and ``kind``."""

    name: str
    dtype: str = "float32"
    unit: str = ""
    doc: str = ""
    kind: str = "scalar"
    default: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: unknown kind {self.kind!r}; use one of {KINDS}")

    @property
    def fill(self) -> Any:
        """The value used when an item or a column does not give this field."""
        if self.default is not None:
            return self.default
        if self.kind == "path" or self.kind == "str":
            return ""
        if self.kind == "ragged":
            return ()
        if np.dtype(self.dtype).kind == "f":
            return math.nan
        return 0

    def describe(self) -> dict:
        """A JSON-able description, written into every set manifest for other readers."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype,
            "unit": self.unit,
            "doc": self.doc,
        }


@dataclass(frozen=True)
class ItemType:
    """A kind of item (``"hpcem.Particle"``): stable ``name``, ``plural`` (the set type is
    ``"hpcem.SetOf" + plural``), its ``fields`` and a one-line ``doc``."""

    name: str
    plural: str
    fields: tuple[Field, ...]
    doc: str = ""

    @property
    def set_type(self) -> str:
        """Stable name of a set of these items, e.g. ``"hpcem.SetOfParticles"``."""
        return "hpcem.SetOf" + self.plural

    @property
    def short_name(self) -> str:
        """Class name of the item view (``"Particle"``)."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        """The field called ``name``; KeyError if there is none."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def make_class(self) -> type:
        """Build the item view class (a dataclass with one attribute per field)."""
        specs = []
        for f in self.fields:
            fill = f.fill
            specs.append((f.name, Any, dataclasses.field(default=fill)))
        doc_lines = [self.doc or self.name, "", "Fields:"]
        for f in self.fields:
            unit = f" [{f.unit}]" if f.unit else ""
            doc_lines.append(f"    {f.name}{unit}: {f.doc}")
        cls = dataclasses.make_dataclass(
            self.short_name, specs, slots=True, namespace={"ITEM_TYPE": self}
        )
        cls.__doc__ = "\n".join(doc_lines)
        cls.__module__ = "hpcem.model"
        return cls
