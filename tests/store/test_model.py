"""The data model: declared item types, stable names, generated item classes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hpcem import model
from hpcem.model import ITEM_CLASSES, ITEM_TYPES, PARTICLE, SET_TYPES


def test_set_type_names_are_stable_strings():
    assert set(SET_TYPES) == {
        "hpcem.SetOfParticles",
        "hpcem.SetOfMicrographs",
        "hpcem.SetOfCoordinates",
        "hpcem.SetOfCTFs",
        "hpcem.SetOfMovies",
        "hpcem.SetOfVolumes",
        "hpcem.SetOfMasks",
        "hpcem.SetOfClasses2D",
        "hpcem.SetOfClasses3D",
        "hpcem.SetOfFSCs",
        "hpcem.SetOfMovieAlignments",
    }
    assert ITEM_TYPES["hpcem.Particle"] is PARTICLE
    assert "hpcem.Acquisition" in ITEM_TYPES


def test_every_item_type_has_an_int64_id_and_known_dtypes():
    for item in SET_TYPES.values():
        assert item.fields[0].name == "id" and item.fields[0].dtype == "int64"
        names = item.field_names
        assert len(names) == len(set(names)), item.name
        for fd in item.fields:
            if fd.kind in ("scalar", "ragged"):
                np.dtype(fd.dtype)  # must be a real numpy dtype
            assert fd.doc, f"{item.name}.{fd.name} has no doc"


def test_particle_fields_and_units():
    units = {f.name: f.unit for f in PARTICLE.fields}
    for name in ("defocus_u", "defocus_v", "shift_x", "shift_y", "ctf_fit_resolution"):
        assert units[name] == "Å"
    for name in ("defocus_angle", "phase_shift", "rot", "tilt", "psi"):
        assert units[name] == "deg"
    assert units["coord_x"] == units["coord_y"] == "px"
    assert PARTICLE.field("image").kind == "path"
    # fixed-size part of a particle stays well under 200 bytes
    size = sum(np.dtype(f.dtype).itemsize for f in PARTICLE.fields if f.kind != "str")
    assert size <= 120


def test_item_classes_are_generated_from_declarations():
    assert ITEM_CLASSES["hpcem.Particle"] is model.Particle
    fields = [f.name for f in dataclasses.fields(model.Particle)]
    assert tuple(fields) == PARTICLE.field_names
    p = model.Particle(defocus_u=12000.0)
    assert p.id == -1 and p.weight == 1.0 and math.isnan(p.defocus_v) and p.image == ""
    c = model.Class2D()
    assert tuple(c.member_ids) == ()
    assert "defocus_u [Å]" in model.Particle.__doc__
