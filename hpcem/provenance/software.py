"""The software an attempt of a run was launched with, recorded in the attempt itself.

:func:`attempt_software` is called by the store when an attempt begins
(:meth:`hpcem.store.project.Project.begin_attempt`): hpcem's version, the protocol's
version, Python, the libraries the numerics rest on, which compiled kernels this
installation has (the kernel backend: a kernel not compiled uses its numpy reference), and
the host. The provenance record shows it per attempt, so a run that
was continued after an upgrade says which attempt ran with what (the versions of *this*
environment, shown too, may be newer).

Cheap (no kernel is imported: the compiled ones are found by their files, about 30 ms
for the package versions) and never fails a launch: what cannot be found is left out.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket

#: Libraries whose versions each attempt records.
PACKAGES = ("numpy", "scipy", "h5py", "mrcfile")


def compiled_kernels() -> list[str]:
    """The compiled kernels built for this interpreter (found by their files, not
    imported), less any that failed to load in this process. A kernel not listed uses
    its numpy reference here; the steps' results say which backend each step used."""
    import pkgutil

    import hpcem.kernels

    failed = set(hpcem.kernels.missing())
    return sorted(
        m.name for m in pkgutil.iter_modules(hpcem.kernels.__path__) if m.name not in failed
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _protocol_version(protocol: str) -> str:
    from hpcem.errors import HpcemError
    from hpcem.protocol.registry import get_protocol

    try:
        return str(get_protocol(protocol).version)
    except HpcemError:
        return ""  # not installed here: the attempt says so by an empty version


def attempt_software(protocol: str) -> dict:
    """What an attempt of a ``protocol`` run records about the software launching it
    (about 300 bytes per attempt in the project index): ``{"hpcem", "protocol_version",
    "python", "packages": {name: version}, "kernels_compiled": [names], "host",
    "platform"}``; the attempt's ``launcher_host`` is the same host."""
    from hpcem import __version__

    return {
        "hpcem": __version__,
        "protocol_version": _protocol_version(protocol),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "kernels_compiled": compiled_kernels(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
