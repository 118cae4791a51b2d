"""Write locks of the project store: our own lock files with ``fcntl.flock``.

A lock is released by the kernel when its process dies (even by SIGKILL), so a crashed
writer never leaves a stale lock. Each lock file holds ``host pid`` of the holder for
error messages. Lock files are never deleted (deleting a flock'ed file races with the
next locker). On NFSv4 Linux maps flock to byte-range locks, which the server enforces;
Lustre needs the ``flock`` mount option (see docs/store.md).
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


class FileLock:
    """An exclusive lock on ``path``. ``acquire(timeout_s)`` waits up to that long
    (0 = fail at once) and raises :class:`LockedError` naming the holder."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout_s: float = 0.0) -> FileLock:
        """Take the lock; LockedError after ``timeout_s`` seconds."""
        if self._fd is not None:
            raise LockedError(f"{self.what} is already locked by this object ({self.path})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
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
                    waited = f" (waited {timeout_s:g} s)" if timeout_s else ""
                    raise LockedError(
                        f"{self.what} is being modified by {holder}{waited}; "
                        f"lock file {self.path}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

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


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if len(text) >= 2:
        return f"pid {text[1]} on host {text[0]}"
    return "another process"
