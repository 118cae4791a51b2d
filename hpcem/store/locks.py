"""Write locks of the project store: our own lock files with ``fcntl.flock``.

A lock is released by the kernel when its process dies (even by SIGKILL), so a crashed
writer never leaves a stale lock. Each lock file holds ``host pid`` of the holder for
error messages. Lock files are never deleted (deleting a flock'ed file races with the
next locker). On NFSv4 Linux maps flock to byte-range locks, which the server enforces;
Lustre needs the ``flock`` mount option (see docs/store.md).

A lock file is opened with ``O_NOFOLLOW`` in folders opened the same way: a link planted
at it (or at ``.hpcem/locks``) is refused, so taking a lock never truncates another file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Self

from hpcem.errors import LockedError
from hpcem.store.safeopen import open_nofollow, storage_errno


class FileLock:
    """An exclusive lock on ``path``. ``acquire(timeout_s)`` waits up to that long
    (0 = fail at once) and raises :class:`LockedError` naming the holder."""

    def __init__(self, path: Path, what: str, *, levels: int = 2) -> None:
        self.path = Path(path)
        self.what = what
        #: folders above the lock file that are the project's own and must not be links
        #: (2: ``.hpcem/locks/`` or ``runs/<id>/``)
        self.levels = levels
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout_s: float = 0.0) -> FileLock:
        """Take the lock; LockedError after ``timeout_s`` seconds."""
        if self._fd is not None:
            raise LockedError(f"{self.what} is already locked by this object ({self.path})")
        fd = open_nofollow(
            self.path, os.O_RDWR | os.O_CREAT, 0o664, levels=self.levels, create_dirs=True
        )
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise LockedError(
                        f"cannot lock {self.path} for {self.what}: {exc.strerror}; the "
                        "filesystem may not support flock (Lustre: mount with -o flock)"
                    ) from exc
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockedError(self._held_message(holder, timeout_s)) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        except OSError as exc:
            # A full disk only costs the holder's name in others' messages: the lock is
            # held all the same, and the write it guards reports the full disk itself.
            if storage_errno(exc) is None:
                os.close(fd)
                raise
        self._fd = fd
        return self

    def _held_message(self, holder: tuple[str, int] | None, timeout_s: float) -> str:
        waited = f" (waited {timeout_s:g} s)" if timeout_s else ""
        where = f"lock file {self.path}"
        if holder is None:
            return f"{self.what} is being modified by another process{waited}; {where}"
        host, pid = holder
        if host == socket.gethostname() and _process_state(pid) in ("T", "t"):
            return (
                f"{self.what} is held by pid {pid} on {host}, which is stopped "
                f"(SIGSTOP?): resume it with `kill -CONT {pid}` or end it{waited}; "
                f"{where}"
            )
        return f"{self.what} is being modified by pid {pid} on host {host}{waited}; {where}"

    def release(self) -> None:
        """Release the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                self.release()
            except OSError:
                pass


def _read_holder(fd: int) -> tuple[str, int] | None:
    """``(host, pid)`` written in the lock file by its holder (None if unreadable)."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return None
    if len(text) >= 2 and text[1].isdigit():
        return text[0], int(text[1])
    return None


def _process_state(pid: int) -> str:
    """The state letter of a local process from /proc/PID/stat ("" if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # "pid (comm) S ...": comm may hold spaces and parentheses, so split after the last ")"
    rest = stat.rpartition(")")[2].split()
    return rest[0] if rest else ""
