"""Provenance of runs: per-run records, a methods paragraph with its BibTeX, and a
Workflow Run RO-Crate for deposition (docs/provenance.md); and the rule by which stochastic
protocols derive per-item randomness from a run's seed (:mod:`hpcem.provenance.seeds`).

The public functions are loaded on first use, so that protocols importing
:mod:`hpcem.provenance.seeds` do not pay for the record's imports."""

from __future__ import annotations

import importlib

_PUBLIC = {
    "bibtex": "hpcem.provenance.methods",
    "methods_text": "hpcem.provenance.methods",
    "provenance": "hpcem.provenance.record",
    "export_crate": "hpcem.provenance.rocrate",
}

__all__ = ["bibtex", "export_crate", "methods_text", "provenance"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
