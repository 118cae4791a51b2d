"""Finding protocols: the built-in ones in ``protocols/`` and plugins by entry point.

A plugin package adds protocols with one entry-point line in its metadata::

    [project.entry-points."hpcem.protocols"]
    mypkg = "mypkg.protocols"        # a module (all Protocol classes in it) or a class

A plugin that fails to import is recorded in :attr:`Registry.errors` by name and does not
stop the others from loading.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
from types import ModuleType

from hpcem.errors import HpcemError, ProtocolError
from hpcem.protocol.declare import Protocol

ENTRY_POINT_GROUP = "hpcem.protocols"
BUILTIN_PACKAGE = "hpcem.protocols"


class Registry:
    """Protocol classes by stable name, plus the load errors of broken plugins."""

    def __init__(self) -> None:
        self.protocols: dict[str, type[Protocol]] = {}
        self.sources: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def load(self) -> Registry:
        """Import built-in protocols and entry-point plugins (explicit I/O step)."""
        package = importlib.import_module(BUILTIN_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            self._load_module(f"{BUILTIN_PACKAGE}.{info.name}", "builtin")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"plugin {ep.name} ({ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                self.errors[ep.name] = f"{source}: failed to load: {type(exc).__name__}: {exc}"
                continue
            if isinstance(obj, ModuleType):
                self._add_module(obj, source)
            elif inspect.isclass(obj) and issubclass(obj, Protocol):
                self._add(obj, source)
            else:
                self.errors[ep.name] = f"{source}: is neither a module nor a Protocol class"
        return self

    def _load_module(self, module_name: str, source: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a broken protocol file must not stop the others
            self.errors[module_name] = f"{module_name}: failed to load: {type(exc).__name__}: {exc}"
            return
        self._add_module(module, source)

    def _add_module(self, module: ModuleType, source: str) -> None:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, Protocol)
                and obj is not Protocol
                and obj.__module__ == module.__name__
                and obj.name
            ):
                self._add(obj, source)

    def _add(self, cls: type[Protocol], source: str) -> None:
        try:
            cls.check_declaration()
        except HpcemError as exc:
            self.errors[cls.name or cls.__qualname__] = f"{source}: {exc}"
            return
        if cls.name in self.protocols and self.protocols[cls.name] is not cls:
            self.errors[cls.name] = (
                f"{source}: protocol name {cls.name!r} already defined by {self.sources[cls.name]}"
            )
            return
        self.protocols[cls.name] = cls
        self.sources[cls.name] = source

    def get(self, name: str) -> type[Protocol]:
        """The protocol called ``name``; ProtocolError suggesting close names otherwise."""
        try:
            return self.protocols[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.protocols), n=3, cutoff=0.8)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            if name in self.errors:
                hint = f": {self.errors[name]}"
            raise ProtocolError(
                f"unknown protocol {name!r}{hint}; 'hpcem protocols' lists them"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.protocols)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry().load()
    return _REGISTRY


def get_protocol(name: str) -> type[Protocol]:
    """Shortcut for ``registry().get(name)``."""
    return registry().get(name)
