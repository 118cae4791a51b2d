"""Running one RELION command inside a step: the log, the provenance, the error.

:func:`run_relion` finds the program for the run's site (:mod:`hpcem.relion.programs`),
runs it as an argv list through :func:`hpcem.command.run_command` in the step's own
work folder (under the run folder), appends the command line, RELION's stdout and its
stderr to the run's ``relion.log`` (next to ``run.log``, one block per command, written
in one append so parallel steps do not interleave) and returns the exact command for the
step's result (``"commands"``: the run's provenance). A non-zero exit or a timeout raises
:class:`RelionError` whose message ends with the last lines of RELION's stderr; a step
turns that into :class:`~hpcem.errors.ItemRejected` for its item.

:func:`link_input` puts an input file into the work folder as a relative symbolic link,
so that RELION, which names its outputs after its inputs' paths, writes only inside it.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcem.errors import CommandError

#: A RELION command runs at most this long by default (a micrograph takes seconds; a
#: refinement step is given its own limit by its protocol).
DEFAULT_TIMEOUT_S = 4 * 3600.0
#: Lines of RELION's stderr (else stdout) quoted in an error message.
TAIL_LINES = 6
#: RELION's text progress bar, redrawn in place; not worth keeping in the log.
_PROGRESS_MARK = '~~(,_,">'


class RelionError(CommandError):
    """A RELION program exited non-zero or ran past its time limit."""


def tail(text: str, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` non-empty lines of ``text`` without RELION's progress bars."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()]
    return [ln for ln in lines if ln and _PROGRESS_MARK not in ln][-n:]


def _clean(text: str) -> str:
    lines = text.replace("\r", "\n").splitlines()
    return "".join(f"{ln}\n" for ln in lines if ln.strip() and _PROGRESS_MARK not in ln)


def _append_log(log: str | None, header: str, stdout: str, stderr: str) -> None:
    if not log:
        return
    from hpcem.store.safeopen import append_bytes

    block = f"==== {header}\n"
    if stdout.strip():
        block += "---- stdout\n" + _clean(stdout)
    if stderr.strip():
        block += "---- stderr\n" + _clean(stderr)
    append_bytes(log, block.encode(errors="replace"))


def run_relion(
    program: str,
    args: Sequence[str | float | int],
    *,
    workdir: str | os.PathLike,
    site: str | None = None,
    log: str | os.PathLike | None = None,
    label: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int = 1,
    check: bool = True,
    launcher: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> dict:
    """Run RELION ``program`` with ``args`` in ``workdir``; return its provenance record.

    ``site``: the run's site (its ``[programs]`` table says where RELION is); ``log``:
    the file that collects every command's output (``runs/<id>/relion.log``); ``label``:
    what the log block is about (e.g. ``"pick/000003 micrograph 4"``); ``threads``:
    ``OMP_NUM_THREADS`` for the program; ``launcher``: an argv prefix put before the
    program's path (an MPI launcher such as ``["orterun", "-n", "3"]``, see
    :func:`hpcem.relion.mpi.mpi_launcher`); ``extra_env``: variables added to the
    program's environment (e.g. ``OMPI_MCA_rmaps_base_oversubscribe``). Returns
    ``{"program", "version", "argv", "command", "cwd", "returncode", "seconds"}``
    (``command`` is the shell-quoted argv, launcher included, what a user would type in
    ``cwd``); with ``check=False`` a non-zero exit is returned, not raised, with
    ``"stderr_tail"`` (for a caller that knows when RELION's exit code can be ignored).

    Raises :class:`RelionError` (message ending with RELION's last stderr lines) on a
    non-zero exit or a timeout, and ValidationError when the program is missing or of an
    unsupported version on this machine.
    """
    from hpcem.command import run_command
    from hpcem.relion.programs import find_program

    path, version = find_program(program, site)
    argv = [*map(str, launcher), path, *(str(a) for a in args)]
    command = shlex.join(argv)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = os.path.abspath(log) if log else None
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(threads))), **(extra_env or {})}
    where = f"{label}: " if label else ""
    started = time.time()
    try:
        result = run_command(
            argv, timeout_s=timeout_s, cwd=workdir, env=env, check=False, die_with_parent=True
        )
    except CommandError as exc:  # timed out, or could not be started
        _append_log(
            log_path,
            f"{where}$ {command}  (in {workdir}; failed: {exc})",
            exc.stdout,
            exc.stderr,
        )
        lines = tail(exc.stderr or exc.stdout)
        raise RelionError(
            f"{program}: {exc}" + ("\n" + "\n".join(lines) if lines else ""),
            argv,
            None,
            exc.stdout,
            exc.stderr,
        ) from None
    seconds = time.time() - started
    _append_log(
        log_path,
        f"{where}$ {command}  (in {workdir}; exit {result.returncode}, {seconds:.1f} s)",
        result.stdout,
        result.stderr,
    )
    if result.returncode != 0 and check:
        lines = tail(result.stderr) or tail(result.stdout) or ["no output"]
        raise RelionError(
            f"{program} exited with code {result.returncode}: " + " | ".join(lines),
            argv,
            result.returncode,
            result.stdout,
            result.stderr,
        )
    record = {
        "program": path,
        "version": version,
        "argv": argv,
        "command": command,
        "cwd": str(workdir),
        "returncode": result.returncode,
        "seconds": round(seconds, 3),
    }
    if result.returncode != 0:
        record["stderr_tail"] = tail(result.stderr) or tail(result.stdout)
    return record


def link_input(target: str | os.PathLike, link: str | os.PathLike) -> Path:
    """Make ``link`` a symbolic link to ``target`` by a relative path (a moved project
    keeps working); an existing link is replaced. Returns the link's path."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    target = os.path.abspath(os.fspath(target))
    link.symlink_to(os.path.relpath(target, os.path.abspath(link.parent)))
    return link


def relion_places(ctx) -> dict:
    """Where a run's RELION steps find their programs and write, for their arguments:
    ``site`` (the run's site name), ``work`` (the run's ``relion/`` folder) and ``log``
    (the run's ``relion.log``), both relative to the project."""
    from hpcem.relion.programs import site_name_of

    return {
        "site": site_name_of(ctx),
        "work": ctx.relpath(str(ctx.run_dir / "relion")),
        "log": ctx.relpath(str(ctx.run_dir / "relion.log")),
    }
