"""Provenance of runs: per-run records, a methods paragraph with its BibTeX, and a
Workflow Run RO-Crate for deposition (docs/provenance.md)."""

from hpcem.provenance.methods import bibtex, methods_text
from hpcem.provenance.record import provenance
from hpcem.provenance.rocrate import export_crate

__all__ = ["bibtex", "export_crate", "methods_text", "provenance"]
