"""Opening the files hpcem creates or appends to without following links, and turning a
full, over-quota or read-only filesystem into one clear :class:`StorageFullError`.

A project folder may contain anything its users (or a copied archive) put there, so
every file the store writes is opened with ``O_NOFOLLOW`` through a chain of folder
descriptors, each opened with ``O_NOFOLLOW`` too: a symbolic link planted at a lock file,
a log, a temp file or one of the project's own folders is refused, never written
through. The project folder itself (and anything above it) may be a link; ``levels``
says how many folders above a file belong to the project and must be real folders
(2 for ``runs/<id>/run.log``, 4 for ``runs/<id>/sets/<name>/manifest.h5``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from hpcem.errors import StorageFullError, StoreError

#: Refuse to write a store file when less than this many bytes (plus the size of the file
#: about to be written) are free: on a nearly full disk HDF5 can crash instead of raising.
#: Override with HPCEM_STORE_MIN_FREE_BYTES (e.g. for a site with tiny quotas).
MIN_FREE_BYTES = int(os.environ.get("HPCEM_STORE_MIN_FREE_BYTES", str(1 << 20)))

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_FULL = {errno.ENOSPC: "", errno.EDQUOT: ", disk quota exceeded"}
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")  # HDF5 puts the errno in its message text


def link_error(path: Path | str) -> StoreError:
    """The error for a symbolic link found where hpcem writes."""
    return StoreError(
        f"{path} is a symbolic link; hpcem does not follow links in a project (remove it)"
    )


def full_error(folder: Path | str, code: int = errno.ENOSPC) -> StorageFullError:
    """The one-line error for a full (ENOSPC), over-quota (EDQUOT) or read-only (EROFS)
    filesystem, naming the folder hpcem was writing in."""
    if code == errno.EROFS:
        return StorageFullError(f"the project's filesystem is read-only ({folder})")
    return StorageFullError(
        f"no space left on the project's filesystem ({folder}"
        f"{_FULL.get(code, '')}): free space and run `hpcem continue`"
    )


def storage_errno(exc: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EROFS when ``exc`` says the filesystem refused a write.

    h5py raises ``OSError`` with ``errno`` set for failed data writes, but a failed
    metadata flush comes as ``RuntimeError`` (or ``OSError`` without errno) whose text
    holds HDF5's ``errno = 28``; both are recognised.
    """
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    code = getattr(exc, "errno", None)
    if code is None:
        m = _ERRNO_IN_TEXT.search(str(exc))
        code = int(m.group(1)) if m else None
    return code if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else None


@contextlib.contextmanager
def storage_errors(folder: Path | str) -> Iterator[None]:
    """Turn a full / over-quota / read-only filesystem error into StorageFullError."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        code = storage_errno(exc)
        if code is None:
            raise
        raise full_error(folder, code) from exc


def check_free_space(
    folder: Path | str, nbytes: int = 0, *, margin: int | None = None, fd: int | None = None
) -> None:
    """StorageFullError unless ``margin`` (default :data:`MIN_FREE_BYTES`) + ``nbytes``
    bytes are free for us on the filesystem of ``folder`` (or of the open ``fd``), or when
    it is mounted read-only. Quotas are not seen by statvfs; they surface as EDQUOT."""
    st = os.fstatvfs(fd) if fd is not None else os.statvfs(folder)
    if st.f_flag & os.ST_RDONLY:
        raise full_error(folder, errno.EROFS)
    margin = MIN_FREE_BYTES if margin is None else margin
    if st.f_bavail * st.f_frsize < margin + nbytes:
        raise full_error(folder, errno.ENOSPC)


def open_dir(folder: Path | str, levels: int, create: bool = False) -> int:
    """A descriptor of ``folder`` whose last ``levels`` components are real folders (not
    links), opened one by one with ``O_NOFOLLOW`` (no race with a link planted later).

    ``create`` makes missing folders (inside the checked part with ``mkdirat``). A link
    gives StoreError naming it; a full or read-only disk gives StorageFullError.
    """
    folder = Path(os.path.abspath(folder))
    parts = folder.parts
    levels = max(0, min(levels, len(parts) - 1))
    anchor = Path(*parts[: len(parts) - levels])
    with storage_errors(anchor):
        if create:
            anchor.mkdir(parents=True, exist_ok=True)
        fd = os.open(anchor, _DIR_FLAGS)
    cur = anchor
    for name in parts[len(parts) - levels :]:
        cur = cur / name
        try:
            nfd = _open_sub(fd, name, cur, create)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def _open_sub(dfd: int, name: str, path: Path, create: bool) -> int:
    """Open folder ``name`` in ``dfd`` without following a link (mkdirat it if missing)."""
    try:
        return _open_subdir(dfd, name, path)
    except FileNotFoundError:
        if not create:
            raise
    with storage_errors(path.parent), contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o777, dir_fd=dfd)
    return _open_subdir(dfd, name, path)


def _open_subdir(dfd: int, name: str, path: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        err = _refusal(exc, dfd, name, path)
        if err is exc:
            raise
        raise err from None


def _refusal(exc: OSError, dfd: int, name: str, path: Path) -> Exception:
    """The error for an ``O_NOFOLLOW`` open that failed: a link, not a folder, or ``exc``."""
    with contextlib.suppress(OSError):
        st = os.lstat(name, dir_fd=dfd)
        if stat.S_ISLNK(st.st_mode):
            return link_error(path)
        if exc.errno == errno.ENOTDIR:
            return StoreError(f"{path} is not a folder; hpcem needs a folder there")
    return exc


def open_in(dfd: int, name: str, flags: int, mode: int, path: Path) -> int:
    """``os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, dir_fd=dfd)``; a link gives
    StoreError (also for ``O_CREAT | O_EXCL``, which fails on a link with EEXIST)."""
    try:
        return os.open(name, flags | _NOFOLLOW, mode, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EEXIST, errno.ENOTDIR):
            err = _refusal(exc, dfd, name, path)
            if err is not exc:
                raise err from None
        raise


def open_nofollow(
    path: Path | str, flags: int, mode: int = 0o666, *, levels: int = 0, create_dirs: bool = False
) -> int:
    """Open ``path`` without following a link at it or at its last ``levels`` folders.

    A file opened for writing without ``O_EXCL`` must also be a regular file with one
    name: a hard link planted there would be written through like a symlink.
    """
    path = Path(path)
    dfd = open_dir(path.parent, levels, create=create_dirs)
    try:
        with storage_errors(path.parent):
            fd = open_in(dfd, path.name, flags, mode, path)
    finally:
        os.close(dfd)
    if flags & (os.O_WRONLY | os.O_RDWR) and not flags & os.O_EXCL:
        try:
            _check_plain_file(fd, path)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _check_plain_file(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"{path} is not a regular file; hpcem writes only regular files "
            "in a project (remove it)"
        )
    if st.st_nlink > 1:
        raise StoreError(
            f"{path} has {st.st_nlink} hard links; hpcem does not write "
            "through links in a project (remove it)"
        )


def open_append_nofollow(path: Path | str, levels: int = 2) -> int:
    """A file descriptor for appending to ``path`` (created 0o666 & ~umask when missing),
    opened ``O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC``.

    ``levels`` folders above the file must be real folders (default 2: ``runs/<id>/``).
    StoreError for a link, StorageFullError for a full or read-only filesystem. The caller
    closes the descriptor (e.g. after handing it to ``subprocess.Popen``).
    """
    return open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666, levels=levels)


def append_bytes(path: Path | str, data: bytes, levels: int = 2) -> None:
    """Append ``data`` to ``path`` (see :func:`open_append_nofollow`) in one write.

    Refused up front when ``data`` does not fit in the free space (no margin: a log line
    should still be written while it fits). If the disk fills during the write, the
    partial line is cut off again (when no one else appended meanwhile).
    """
    path = Path(path)
    fd = open_append_nofollow(path, levels)
    try:
        with storage_errors(path.parent):
            check_free_space(path.parent, len(data), margin=0, fd=fd)
            start = os.fstat(fd).st_size
            done = 0
            try:
                while done < len(data):
                    done += os.write(fd, data[done:])
            except OSError:
                if done and os.fstat(fd).st_size == start + done:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                raise
    finally:
        os.close(fd)
