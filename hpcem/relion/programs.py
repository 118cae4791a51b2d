"""Finding a RELION program for a run and checking that its version is one we support.

Where a program is looked for, first match wins:

1. the site's ``[programs]`` entry named like the program (``relion_autopick = "/opt/
   relion-3.1.4/bin/relion_autopick"``);
2. the site's ``[programs]`` entry ``relion_bin``: a folder holding the ``relion_*``
   programs;
3. the ``PATH`` of the process (Debian's ``relion`` package installs into /usr/bin).

A path named by the site is used as given: when it is wrong, the run is refused rather
than silently falling back to another RELION on ``PATH``. The version is read once per
program file (``PROGRAM --version`` prints ``RELION version: 3.1.3``); only RELION
3.1.x is supported, because the protocols write and read 3.1's STAR tables (optics
groups, ``_rlnOriginXAngst``) and use its command-line options.

Protocols call :func:`program_problems` in ``validate`` (so a missing or unsupported
RELION is reported before anything runs) and steps call :func:`find_program` (the
path on the machine the step runs on).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Iterable

from hpcem.errors import CommandError, ConfigError, HpcemError, ValidationError

#: Site ``[programs]`` key naming the folder of the ``relion_*`` programs.
BIN_KEY = "relion_bin"
#: (major, minor) versions the protocols are written for.
SUPPORTED = ((3, 1),)
VERSION_TIMEOUT_S = 30.0
_VERSION_RE = re.compile(r"RELION version:\s*v?(\d+)\.(\d+)(?:\.(\d+))?([^\s|]*)")


def site_name_of(ctx) -> str:
    """The site a run uses: its placement once the run exists, else the site ``validate``
    was told (``ctx.site`` when the framework sets it), else the project's default site,
    ``$HPCEM_SITE`` or localhost (the order of :mod:`hpcem.execution.placement`)."""
    from hpcem.cluster.site import default_site_name

    if getattr(ctx, "run_id", None) is not None:
        try:
            return ctx.project.run(ctx.run_id).placement.site
        except HpcemError:  # pragma: no cover - a run record that cannot be read
            pass
    named = getattr(ctx, "site", None)
    if named:
        return str(named)
    return default_site_name(getattr(ctx.project, "default_site", None))


def _site_programs(site_name: str | None) -> tuple[dict[str, str], str]:
    """The site's ``[programs]`` table and the site file's path (empty for no site)."""
    if not site_name:
        return {}, ""
    from hpcem.cluster.site import load_site

    site = load_site(site_name)
    return dict(site.programs), site.path


def locate(program: str, site_name: str | None = None) -> tuple[str | None, str]:
    """``(path or None, where it was looked for)`` of ``program`` for ``site_name``."""
    programs, site_path = _site_programs(site_name)
    if program in programs:
        path = os.path.expanduser(programs[program])
        where = f"site {site_name!r} [programs] {program} = {programs[program]!r} ({site_path})"
        return (path if _is_program(path) else None), where
    if BIN_KEY in programs:
        folder = os.path.expanduser(programs[BIN_KEY])
        path = os.path.join(folder, program)
        where = f"site {site_name!r} [programs] {BIN_KEY} = {programs[BIN_KEY]!r} ({site_path})"
        return (path if _is_program(path) else None), where
    found = shutil.which(program)
    return found, f"PATH ({os.environ.get('PATH', '')})"


def _is_program(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def parse_version(text: str) -> tuple[int, int, int, str] | None:
    """``(major, minor, patch, suffix)`` from RELION's ``--version`` output, or None."""
    m = _VERSION_RE.search(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4) or ""


@functools.cache
def _version_of(path: str, mtime_ns: int) -> str:
    """``PROGRAM --version`` output (cached per file and modification time)."""
    from hpcem.command import run_command

    result = run_command([path, "--version"], timeout_s=VERSION_TIMEOUT_S, check=False)
    return result.stdout + result.stderr


def program_version(path: str) -> tuple[int, int, int, str]:
    """The RELION version of the program file ``path``.

    Raises ConfigError when it cannot be run or does not print a RELION version.
    """
    try:
        text = _version_of(path, os.stat(path).st_mtime_ns)
    except (OSError, CommandError) as exc:
        raise ConfigError(f"{path}: cannot run '{path} --version': {exc}") from None
    version = parse_version(text)
    if version is None:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(
            f"{path}: '--version' printed no 'RELION version: X.Y.Z' line ({tail[0]!r}); "
            "is it a RELION program?"
        )
    return version


def version_text(version: tuple[int, int, int, str]) -> str:
    """``"3.1.3"`` from :func:`program_version`'s tuple."""
    return f"{version[0]}.{version[1]}.{version[2]}{version[3]}"


def supported_text() -> str:
    return ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED)


def check_program(program: str, site_name: str | None = None) -> tuple[str, str]:
    """``(path, version)`` of a usable ``program``; ValidationError naming the program and
    where it was looked for when it is missing, cannot be run or is of another version."""
    path, where = locate(program, site_name)
    if path is None:
        raise ValidationError(
            f"RELION program {program} not found: looked in {where}. Install RELION "
            f"{supported_text()} (Debian/Ubuntu: apt-get install relion) or set "
            f"[programs] {BIN_KEY} (the folder of the relion_* programs) in the site config"
        )
    try:
        version = program_version(path)
    except ConfigError as exc:
        raise ValidationError(f"RELION program {program} ({where}): {exc}") from None
    if version[:2] not in SUPPORTED:
        raise ValidationError(
            f"RELION program {program} at {path} is version {version_text(version)}; "
            f"hpcem's RELION protocols support {supported_text()} (found in {where})"
        )
    return path, version_text(version)


def program_problems(programs: Iterable[str], site_name: str | None = None) -> list[str]:
    """Problem texts for ``validate``: one per program that is missing, unusable or of
    an unsupported version (an empty list when all are fine)."""
    problems = []
    for program in programs:
        try:
            check_program(program, site_name)
        except (ValidationError, ConfigError) as exc:
            problems.append(str(exc))
    return problems


def find_program(program: str, site_name: str | None = None) -> tuple[str, str]:
    """``(path, version)`` of ``program`` in a step (the machine it runs on); the same
    checks as at validation, so a node without RELION fails with the same message."""
    return check_program(program, site_name)
