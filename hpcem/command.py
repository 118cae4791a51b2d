"""The one way hpcem runs an external program: an argv list, a timeout, no shell.

Every scheduler call (sbatch, squeue, qsub ...) and helper program goes through
:func:`run_command`, so errors always carry the argv, exit code, stdout and stderr.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from hpcem.errors import CommandError, CommandNotFoundError

DEFAULT_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def checked_argv(
    argv: Sequence[str | os.PathLike], env: Mapping[str, str] | None = None
) -> list[str]:
    """``argv`` as strings, or CommandError (empty) / CommandNotFoundError (its program is
    not on the ``PATH`` of ``env``, else of this process)."""
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise CommandError("empty command", argv)
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise CommandNotFoundError(
            f"command not found: {argv[0]!r} (is it installed and on PATH?)", argv
        )
    return argv


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    die_with_parent: bool = False,
) -> CommandResult:
    """Run ``argv`` (a list, never a shell string) and return its result.

    With ``die_with_parent`` the program is killed (SIGKILL) by the kernel when the
    calling thread's process dies, e.g. a worker killed while it waits for ``mpiexec``
    (Linux only; elsewhere the flag does nothing). Programs the program starts itself
    are not covered.

    Raises :class:`CommandNotFoundError` when the program is not on PATH and
    :class:`CommandError` on a timeout or, with ``check``, on a non-zero exit.
    """
    argv = checked_argv(argv, env)
    try:
        proc = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
            preexec_fn=_death_signal_preexec() if die_with_parent else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"{argv[0]} timed out after {timeout_s:g} s: {' '.join(argv)}",
            argv,
            None,
            _text(exc.stdout),
            _text(exc.stderr),
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc}", argv) from None
    result = CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        tail = detail[-1] if detail else "no output"
        raise CommandError(
            f"{argv[0]} exited with code {proc.returncode}: {tail}",
            argv,
            proc.returncode,
            proc.stdout,
            proc.stderr,
        )
    return result


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends; exit now if it already has.

    ``parent_pid`` is the pid the parent had when it started this process: when it died
    before this call, this process was re-parented and the signal would never come. The
    "parent" is the parent's *thread* that started this process (see ``prctl(2)``).
    Raises :class:`OSError` when the kernel refuses. No-op where prctl does not exist.
    """
    prctl = _prctl()
    if prctl is None:  # pragma: no cover - not Linux
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if os.getppid() != parent_pid:
        os._exit(1)


def _death_signal_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with the calling process.

    It runs in the forked child before ``exec``, so it does nothing but the prctl call
    (resolved here, in the parent) and a ``getppid`` check for a parent that died
    between fork and prctl.
    """
    prctl = _prctl()
    if prctl is None:  # pragma: no cover - not Linux
        return None
    parent = os.getpid()
    getppid, exit_now, sigkill = os.getppid, os._exit, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:
            exit_now(127)

    return preexec


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
