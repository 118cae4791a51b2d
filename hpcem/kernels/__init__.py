"""Compiled kernels and their numpy references.

Each ``cython_kernels/NAME.pyx`` is compiled by ``setup.py`` into ``hpcem.kernels.NAME``.
Code that has a compiled kernel asks for it with :func:`load`; when the extension is
missing (a checkout that was never built, a failed compiler) it gets ``None`` and uses
its numpy reference, and a :class:`KernelWarning` says once, clearly, which kernel is
missing and why. :func:`backends` tells which backend each kernel asked for so far used;
protocols put it in their step results so the run records it (its provenance).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


class KernelWarning(UserWarning):
    """A compiled kernel is missing: the slower numpy reference is used instead."""


_LOADED: dict[str, ModuleType | None] = {}
_WHY: dict[str, str] = {}


def load(name: str) -> ModuleType | None:
    """The compiled module ``hpcem.kernels.NAME``, or None (warned once) if not built."""
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(f"hpcem.kernels.{name}")
        except ImportError as exc:
            _LOADED[name] = None
            _WHY[name] = str(exc)
            warnings.warn(
                f"compiled kernel hpcem.kernels.{name} is not available ({exc}); using the "
                "numpy reference (same numbers, slower). Reinstall with a C compiler: "
                "pip install .",
                KernelWarning,
                stacklevel=2,
            )
    return _LOADED[name]


def backend(name: str) -> str:
    """``"cython"`` or ``"numpy"`` for kernel ``name`` (loading it if needed)."""
    return "cython" if load(name) is not None else "numpy"


def backends() -> dict[str, str]:
    """Backend of every kernel loaded so far: ``{"radial": "cython", ...}``."""
    return {name: ("cython" if mod is not None else "numpy") for name, mod in _LOADED.items()}


def missing() -> dict[str, str]:
    """Kernels that failed to load, with the import error."""
    return dict(_WHY)
