"""Step functions for the local pool tests (importable by worker processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hpcem.errors import ItemRejected


def pid() -> int:
    """The worker's pid."""
    return os.getpid()


def hold(pid_file: str, release_file: str, timeout_s: float = 60.0) -> int:
    """Write the worker's pid to ``pid_file``, wait until ``release_file`` exists."""
    Path(pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(release_file):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_file} did not appear in {timeout_s} s")
        time.sleep(0.02)
    return os.getpid()


def reject(message: str) -> None:
    raise ItemRejected(message)


class _Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = lambda: None  # lambdas cannot be pickled


def raise_unpicklable(message: str) -> None:
    raise _Unpicklable(message)


def exit_step(code: int) -> None:
    raise SystemExit(code)


def import_planted() -> str:
    """Import a module that exists only in the controller's current folder."""
    import hpcem_planted_probe  # noqa: F401

    return "imported"


def run_program(pid_file: str, argv: list[str]) -> None:
    """Write the worker's pid, then run ``argv`` with ``die_with_parent``."""
    from hpcem.command import run_command

    Path(pid_file).write_text(str(os.getpid()))
    run_command(argv, timeout_s=600, die_with_parent=True)


def open_files() -> list[str]:
    """What the worker's open file descriptors (but stdin, stdout, stderr) point to."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        if int(name) <= 2:
            continue
        try:
            out.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return out
