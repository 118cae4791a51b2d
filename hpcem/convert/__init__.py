"""Conversions between hpcem sets and other packages' files (RELION, cryoSPARC, CTFFIND,
crYOLO, EMAN): one module per foreign format, pure functions over columnar data.

Every reader returns a :class:`Converted` (the hpcem set type, its columns by hpcem field
name, the optics table, and what the format carries that hpcem has no field for); every
writer takes the same pieces. Conventions (angles, shifts, origins, defocus angle) are
written down once in ``docs/conventions.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Converted:
    """A set read from a foreign file, ready for :meth:`SetWriter.append_columns`.

    ``set_type``: stable set type name (``"hpcem.SetOfParticles"``); ``columns``: hpcem
    field name -> numpy array (one row per item; fields the file lacks are absent, so the
    writer fills their defaults); ``optics``: ACQUISITION columns (may be empty when the
    format has none); ``extra``: per-item columns and per-file metadata without an hpcem
    field (e.g. RELION 5 beam tilt, a LoG figure of merit), kept by name;
    ``source``: the file it was read from.
    """

    set_type: str
    columns: dict[str, Any]
    optics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0
