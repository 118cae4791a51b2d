"""The one way hpcem runs an external program: an argv list, a timeout, no shell.

Every scheduler call (sbatch, squeue, qsub ...) and helper program goes through
:func:`run_command`, so errors always carry the argv, exit code, stdout and stderr.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from hpcem.errors import CommandError, CommandNotFoundError

DEFAULT_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
) -> CommandResult:
    """Run ``argv`` (a list, never a shell string) and return its result.

    Raises :class:`CommandNotFoundError` when the program is not on PATH and
    :class:`CommandError` on a timeout or, with ``check``, on a non-zero exit.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise CommandError("empty command", argv)
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise CommandNotFoundError(
            f"command not found: {argv[0]!r} (is it installed and on PATH?)", argv
        )
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


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
