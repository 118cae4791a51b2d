"""The cryo-EM data model: item types declared as data, and item view classes.

Units and conventions are in :mod:`hpcem.model.types`. Sets of items are stored as
columns by :mod:`hpcem.store`; the classes below are convenient views of one item.
"""

from typing import ClassVar

from hpcem.model.fields import Field, ItemType
from hpcem.model.types import (
    ACQUISITION,
    CLASS_2D,
    CLASS_3D,
    COORDINATE,
    CTF_MODEL,
    FSC,
    ITEM_TYPES,
    MASK,
    MICROGRAPH,
    MOVIE,
    MOVIE_ALIGNMENT,
    PARTICLE,
    SET_TYPES,
    VOLUME,
)

# Item view classes are built on first use (building them all costs ~40 ms at import,
# which `hpcem status` would pay for nothing).
_CLASS_TYPES = {
    "Acquisition": ACQUISITION,
    "Movie": MOVIE,
    "Micrograph": MICROGRAPH,
    "CTFModel": CTF_MODEL,
    "Coordinate": COORDINATE,
    "Particle": PARTICLE,
    "Volume": VOLUME,
    "Mask": MASK,
    "Class2D": CLASS_2D,
    "Class3D": CLASS_3D,
    "FSCCurve": FSC,
    "MovieAlignment": MOVIE_ALIGNMENT,
}
_BUILT: dict[str, type] = {}


def _item_class(name: str) -> type:
    if name not in _BUILT:
        _BUILT[name] = _CLASS_TYPES[name].make_class()
    return _BUILT[name]


class _ItemClasses(dict):
    """Item view class by stable item type name (``ITEM_CLASSES["hpcem.Particle"]``)."""

    _by_type: ClassVar[dict[str, str]] = {t.name: n for n, t in _CLASS_TYPES.items()}

    def __missing__(self, type_name: str) -> type:
        cls = _item_class(self._by_type[type_name])
        self[type_name] = cls
        return cls


#: Item view class by stable item type name.
ITEM_CLASSES: dict[str, type] = _ItemClasses()


def __getattr__(name: str) -> type:
    if name in _CLASS_TYPES:
        return _item_class(name)
    raise AttributeError(f"module 'hpcem.model' has no attribute {name!r}")


__all__ = [
    "ACQUISITION",
    "CLASS_2D",
    "CLASS_3D",
    "COORDINATE",
    "CTF_MODEL",
    "FSC",
    "ITEM_CLASSES",
    "ITEM_TYPES",
    "MASK",
    "MICROGRAPH",
    "MOVIE",
    "MOVIE_ALIGNMENT",
    "PARTICLE",
    "SET_TYPES",
    "VOLUME",
    "Acquisition",
    "CTFModel",
    "Class2D",
    "Class3D",
    "Coordinate",
    "FSCCurve",
    "Field",
    "ItemType",
    "Mask",
    "Micrograph",
    "Movie",
    "MovieAlignment",
    "Particle",
    "Volume",
]
