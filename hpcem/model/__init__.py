"""The cryo-EM data model: item types declared as data, and item view classes.

Units and conventions are in :mod:`hpcem.model.types`. Sets of items are stored as
columns by :mod:`hpcem.store`; the classes below are convenient views of one item.
"""

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

Acquisition = ACQUISITION.make_class()
Movie = MOVIE.make_class()
Micrograph = MICROGRAPH.make_class()
CTFModel = CTF_MODEL.make_class()
Coordinate = COORDINATE.make_class()
Particle = PARTICLE.make_class()
Volume = VOLUME.make_class()
Mask = MASK.make_class()
Class2D = CLASS_2D.make_class()
Class3D = CLASS_3D.make_class()
FSCCurve = FSC.make_class()
MovieAlignment = MOVIE_ALIGNMENT.make_class()

#: Item view class by stable item type name.
ITEM_CLASSES: dict[str, type] = {
    cls.ITEM_TYPE.name: cls
    for cls in (Acquisition, Movie, Micrograph, CTFModel, Coordinate, Particle, Volume, Mask,
                Class2D, Class3D, FSCCurve, MovieAlignment)
}

__all__ = [
    "ACQUISITION", "CLASS_2D", "CLASS_3D", "COORDINATE", "CTF_MODEL", "FSC", "ITEM_CLASSES",
    "ITEM_TYPES", "MASK", "MICROGRAPH", "MOVIE", "MOVIE_ALIGNMENT", "PARTICLE", "SET_TYPES",
    "VOLUME", "Acquisition", "CTFModel", "Class2D", "Class3D", "Coordinate", "FSCCurve",
    "Field", "ItemType", "Mask", "Micrograph", "Movie", "MovieAlignment", "Particle",
    "Volume",
]
