"""Low-level file handling of the store: crash-safe replacement of whole HDF5 files and
reading them with clear errors.

Every file that changes is replaced whole: it is written under a temporary name in the
same folder (``<name>.tmp-<pid>-<rand>``), flushed, fsync'ed, renamed over the old name
with :func:`os.replace` (atomic on POSIX filesystems) and the folder is fsync'ed. A
reader therefore sees either the old or the new file, never a half-written one.

Files up to :data:`IN_MEMORY_MAX_BYTES` are built in memory (HDF5's core driver) and
written by us, so HDF5 never meets a full disk (where it can crash instead of raising);
bigger ones are written by HDF5 after a free-space check. The temp file is created with
``O_EXCL | O_NOFOLLOW`` in a folder opened without following links (hpcem.store.safeopen).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# We do our own locking (hpcem.store.locks); HDF5's own file locks fail on NFS/Lustre/GPFS.
# Must be set before HDF5 opens a file; h5py.File(locking=False) is passed as well.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py
import numpy as np

from hpcem.errors import CorruptStoreError, SchemaVersionError

# hpcem.store.safeopen (creating files without following links, full-disk errors) is
# imported by the functions that write: readers such as `hpcem status` never load it.

#: Version of the on-disk layout written by this code (see docs/store.md).
SCHEMA_VERSION = 1

TMP_MARK = ".tmp-"
STR_DTYPE = h5py.string_dtype("utf-8")

#: fsync files and folders on commit (survives power loss, not only process death).
FSYNC = os.environ.get("HPCEM_STORE_FSYNC", "1") != "0"

#: Store files up to this size are built in memory and written by us (see module doc);
#: ``atomic_h5(size_hint=...)`` above it lets HDF5 write the file itself (no second copy
#: of a big segment in memory).
IN_MEMORY_MAX_BYTES = 64 << 20


def tmp_name(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (same folder, so rename is atomic)."""
    import secrets  # here: it loads OpenSSL, and readers (`hpcem status`) never need it

    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file or a folder by path (no-op when HPCEM_STORE_FSYNC=0)."""
    if not FSYNC:
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_h5(path: Path, *, size_hint: int | None = None, levels: int = 0) -> Iterator[h5py.File]:
    """Write a new HDF5 file that atomically replaces ``path`` when the block ends.

    If the block raises, nothing is left behind and ``path`` is untouched. ``levels``
    folders above ``path`` belong to the project and must not be links (StoreError).
    ``size_hint`` is the expected size in bytes (when known); with less than
    ``MIN_FREE_BYTES + size_hint`` free, or on a full, over-quota or read-only disk, it
    raises StorageFullError naming the folder.
    """
    from hpcem.store.safeopen import check_free_space, open_dir, storage_errors

    path = Path(path)
    folder = path.parent
    dfd = open_dir(folder, levels)
    try:
        with storage_errors(folder):
            check_free_space(folder, size_hint or 0, fd=dfd)
        tmp = tmp_name(path).name
        if size_hint is None or size_hint <= IN_MEMORY_MAX_BYTES:
            f = h5py.File(folder / tmp, "w", driver="core", backing_store=False, locking=False)
            try:
                yield f
                f.flush()
                image = f.id.get_file_image()
            finally:
                f.close()
            _commit(dfd, folder, tmp, path.name, image)
        else:
            yield from _write_by_hdf5(dfd, folder, tmp, path.name)
    finally:
        os.close(dfd)


def _commit(dfd: int, folder: Path, tmp: str, name: str, image: bytes) -> None:
    """Write ``image`` to a new temp file and rename it over ``name`` (all in ``dfd``)."""
    from hpcem.store.safeopen import check_free_space, open_in, storage_errors

    try:
        with storage_errors(folder):
            check_free_space(folder, len(image), fd=dfd)
            fd = open_in(dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, folder / tmp)
            try:
                view, done = memoryview(image), 0
                while done < len(view):
                    done += os.write(fd, view[done : done + (64 << 20)])
                if FSYNC:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            if FSYNC:
                os.fsync(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _write_by_hdf5(dfd: int, folder: Path, tmp: str, name: str) -> Iterator[h5py.File]:
    """The big-file branch of :func:`atomic_h5`: HDF5 writes the temp file itself.

    Mode "x" creates it with O_EXCL, which never follows a link planted at the name, and
    /proc/self/fd pins the folder we checked (no race with a link swapped in later).
    """
    from hpcem.store.safeopen import open_in, storage_errors

    pinned = Path(f"/proc/self/fd/{dfd}")
    where = pinned / tmp if pinned.is_dir() else folder / tmp
    try:
        with storage_errors(folder):
            try:
                f = h5py.File(where, "x", locking=False)
            except FileExistsError:
                # a link (or anything) at our fresh random name: refuse it, never use it
                os.close(open_in(dfd, tmp, os.O_RDONLY, 0, folder / tmp))
                raise
            with f:
                yield f
            fd = open_in(dfd, tmp, os.O_RDONLY, 0, folder / tmp)
            try:
                if FSYNC:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            if FSYNC:
                os.fsync(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def open_h5(path: Path, what: str = "store file") -> h5py.File:
    """Open an HDF5 file read-only; CorruptStoreError naming the file if it cannot be.

    FileNotFoundError passes through unchanged (callers decide what a missing file means).
    """
    path = Path(path)
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not path.exists():
            raise FileNotFoundError(str(path)) from exc
        size = path.stat().st_size
        reason = str(exc).split("(")[0].strip() or exc.__class__.__name__
        raise CorruptStoreError(
            f"{path}: {what} is corrupt or truncated and cannot be read "
            f"({reason}; {size} bytes); it was not modified"
        ) from exc


def check_header(f: h5py.File, expected_type: str | tuple[str, ...], what: str) -> str:
    """Check ``hpcem_type`` and ``schema_version`` attributes; return the type name."""
    path = f.filename
    try:
        type_name = _as_str(f.attrs["hpcem_type"])
        version = int(f.attrs["schema_version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(
            f"{path}: {what} lacks its hpcem_type/schema_version attributes; "
            "it is not an hpcem store file or is damaged"
        ) from exc
    if version > SCHEMA_VERSION or version < 1:
        raise SchemaVersionError(
            f"{path}: {what} has schema_version {version}, this hpcem supports up to "
            f"{SCHEMA_VERSION}; upgrade hpcem to read it"
        )
    allowed = (expected_type,) if isinstance(expected_type, str) else expected_type
    if type_name not in allowed:
        raise CorruptStoreError(
            f"{path}: {what} has hpcem_type {type_name!r}, expected {' or '.join(allowed)}"
        )
    return type_name


def _as_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def read_str_array(ds: h5py.Dataset, block: int = 1024) -> np.ndarray:
    """Read a vlen string dataset as an object array of ``str``.

    A 1-D one is read ``block`` rows at a time, so that HDF5's and h5py's buffers are
    reused (fresh memory costs a page fault per 4 kB), each block's bytes decoded at
    once, joined by NUL (which a vlen string cannot hold): much faster than h5py's
    ``asstr()`` or one decode per string.
    """
    if ds.shape == (0,):
        return np.empty(0, dtype=object)
    if ds.ndim != 1:
        return ds.asstr()[()]
    out = np.empty(len(ds), dtype=object)
    for start in range(0, len(ds), block):
        raw = ds[start : start + block].tolist()
        texts = b"\0".join(raw).decode("utf-8").split("\0")
        if len(texts) != len(raw):  # a NUL after all (a fixed-length column): one by one
            texts = [b.decode("utf-8") for b in raw]
        out[start : start + len(texts)] = texts
    return out


def write_column(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """Write one column as a contiguous dataset (strings as vlen UTF-8)."""
    if data.dtype == object or data.dtype.kind in "UST":
        group.create_dataset(name, data=np.asarray(data, dtype=object), dtype=STR_DTYPE)
    else:
        group.create_dataset(name, data=data)


def attr_str(f: h5py.File | h5py.Group, name: str, default: str = "") -> str:
    """A string attribute (default when missing)."""
    if name not in f.attrs:
        return default
    return _as_str(f.attrs[name])


def clean_tmp_files(folder: Path, pattern: str) -> None:
    """Remove leftover temp files of store files whose name matches ``pattern`` (a regex
    for the final name) in ``folder``; call only while holding the folder's lock.
    Other files, e.g. a protocol's own outputs, are never touched."""
    tmp_re = re.compile(f"^(?:{pattern}){re.escape(TMP_MARK)}\\d+-[0-9a-f]+$")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if tmp_re.match(entry.name) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def __getattr__(name: str):
    if name == "open_append_nofollow":  # for run folders: stdout.log, stderr.log
        from hpcem.store.safeopen import open_append_nofollow

        return open_append_nofollow
    raise AttributeError(f"module 'hpcem.store.files' has no attribute {name!r}")
