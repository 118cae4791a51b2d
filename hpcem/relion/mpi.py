"""The MPI launcher of ``relion_refine_mpi``: which one, and that it is the right MPI.

A site says how to launch RELION's MPI programs with ``[programs] relion_mpi_command``
(a command line with ``{ranks}``, e.g. ``"srun --mpi=pmix -n {ranks}"``); it is used as
given. The site's ``[mpi] command`` is not used: it launches hpcem's own MPI steps, whose
MPI library may not be RELION's.

Without a site command the launcher is looked for on ``PATH``, and it must be of the MPI
that ``relion_refine_mpi`` is linked to: a launcher of another MPI starts N single-rank
copies of RELION, each refining alone (an MPICH ``mpirun`` first on ``PATH``, as in a
Python environment with ``mpich`` installed, in front of Debian's Open MPI RELION). The
library is read from ``ldd`` (``libmpi.so.40``, ``libopen-rte``: Open MPI;
``libmpich``, ``libmpi.so.12``: MPICH and its ABI); when ``ldd`` cannot tell, Open MPI
is assumed (Debian's and most distributions' RELION). Each candidate launcher says its
MPI in ``--version`` (``mpirun (Open MPI) 4.1.4``, ``orterun (OpenRTE) 4.1.4``,
``HYDRA build details``). Candidates, first match wins: for Open MPI ``orterun`` (Open
MPI's own name, which no other MPI uses), ``mpirun``, ``mpiexec``; for MPICH
``mpiexec.hydra``, ``mpiexec``, ``mpirun``. No match is a ValidationError at validation
naming what was found and asking for ``relion_mpi_command``.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil

from hpcem.errors import CommandError, ValidationError

OPEN_MPI = "Open MPI"
MPICH = "MPICH"
#: Site ``[programs]`` key of the launcher command line.
SITE_KEY = "relion_mpi_command"
#: Launcher names tried on PATH, by the MPI that relion_refine_mpi is linked to.
LAUNCHERS = {
    OPEN_MPI: ("orterun", "mpirun", "mpiexec"),
    MPICH: ("mpiexec.hydra", "mpiexec", "mpirun"),
}
#: MPI assumed when ldd cannot tell (Debian's relion_refine_mpi is built on Open MPI).
DEFAULT_MPI = OPEN_MPI
PROBE_TIMEOUT_S = 30.0
#: Words in a launcher's ``--version`` output, by MPI (Intel MPI: MPICH's ABI and Hydra).
_VERSION_WORDS = {OPEN_MPI: ("Open MPI", "OpenRTE"), MPICH: ("HYDRA", "MPICH", "Intel(R) MPI")}
#: Shared-library names in ``ldd`` output, by MPI.
_LIBRARY_WORDS = {
    OPEN_MPI: ("libmpi.so.40", "libopen-rte.so", "libopen-pal.so"),
    MPICH: ("libmpich.so", "libmpi.so.12"),
}


def mpi_of_version_text(text: str) -> str | None:
    """The MPI (:data:`OPEN_MPI`, :data:`MPICH`) a launcher's ``--version`` output names,
    or None."""
    for mpi, words in _VERSION_WORDS.items():
        if any(word in text for word in words):
            return mpi
    return None


def mpi_of_ldd_text(text: str) -> str | None:
    """The MPI a program is linked to from its ``ldd`` output, or None (not linked to
    MPI, a static build, not a dynamic executable)."""
    for mpi, words in _LIBRARY_WORDS.items():
        if any(word in text for word in words):
            return mpi
    return None


@functools.cache
def _output(argv: tuple[str, ...], mtime_ns: int) -> str:
    """stdout + stderr of ``argv`` (cached per file and modification time); empty when
    it cannot be run."""
    from hpcem.command import run_command

    try:
        result = run_command(list(argv), timeout_s=PROBE_TIMEOUT_S, check=False)
    except CommandError:
        return ""
    return result.stdout + result.stderr


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def launcher_mpi(path: str) -> tuple[str | None, str]:
    """``(MPI, first line of its --version output)`` of the launcher at ``path``."""
    text = _output((path, "--version"), _mtime_ns(path))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
    return mpi_of_version_text(text), first


def linked_mpi(program_path: str) -> str | None:
    """The MPI the program at ``program_path`` is linked to (from ``ldd``), or None when
    ``ldd`` is missing or does not name an MPI library."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    return mpi_of_ldd_text(_output((ldd, program_path), _mtime_ns(program_path)))


def site_command(site_name: str | None, ranks: int) -> list[str] | None:
    """The site's ``[programs] relion_mpi_command`` with ``{ranks}`` filled in, or None
    when the site has none; ValidationError for a malformed one."""
    from hpcem.relion.programs import _site_programs

    programs, path = _site_programs(site_name)
    if SITE_KEY not in programs:
        return None
    try:
        return [part.format(ranks=ranks) for part in shlex.split(programs[SITE_KEY])]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValidationError(f"{path}: [programs] {SITE_KEY}: {exc} (use {{ranks}})") from None


def mpi_launcher(site_name: str | None, ranks: int, program_path: str | None = None) -> list[str]:
    """The argv prefix that starts ``ranks`` processes of the RELION MPI program at
    ``program_path``: the site's ``relion_mpi_command``, else ``LAUNCHER -n RANKS`` with
    the first launcher on ``PATH`` of the program's MPI (see the module's text).

    Raises ValidationError naming the launchers found, and their MPI, when none fits.
    """
    command = site_command(site_name, ranks)
    if command is not None:
        return command
    linked = linked_mpi(program_path) if program_path else None
    wanted = linked or DEFAULT_MPI
    seen = []
    for name in LAUNCHERS[wanted]:
        path = shutil.which(name)
        if path is None:
            continue
        mpi, first_line = launcher_mpi(path)
        if mpi == wanted:
            return [path, "-n", str(ranks)]
        seen.append(f"{path} is {mpi or 'not a known MPI'} ({first_line!r})")
    why = (
        f"relion_refine_mpi ({program_path}) is linked to {linked}"
        if linked
        else f"relion_refine_mpi is assumed to be built on {wanted} (as Debian's is)"
    )
    found = "; ".join(seen) if seen else f"none of {', '.join(LAUNCHERS[wanted])} is on PATH"
    raise ValidationError(
        f"mpi_ranks > 1 needs an {wanted} launcher: {why}; {found}. Set [programs] "
        f'{SITE_KEY} in the site config (e.g. "orterun -n {{ranks}}" or '
        '"srun --mpi=pmix -n {ranks}")'
    )
