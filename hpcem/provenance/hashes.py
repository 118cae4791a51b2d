"""Sizes and hashes of the files a run read or wrote, computed once per file version.

The hash rule (see docs/provenance.md):

* ``fast_hash`` — ``"b2fast:"`` + BLAKE2b-256 of the file's size (8 bytes, little
  endian), its first MiB and its last MiB (the whole file when it is at most 2 MiB).
  It costs at most 2 MiB of reading per file, whatever its size, so a run over ten
  thousand 4 GB movies can still be fingerprinted. It tells files apart in practice
  (the header, the first frames and the end of an image file differ), but it is not
  a content hash: a change in the middle of a large file goes unseen.
* ``sha256`` — SHA-256 of the whole file, for files of at most
  :data:`FULL_HASH_MAX_BYTES` (STAR files, set metadata, pictures, small images);
  ``None`` above that. The RO-Crate export computes it for every file it copies.

Results are cached in ``runs/<id>/provenance/hashes.json`` keyed by the path with the
file's size and ``st_mtime_ns``: a file is read again only when one of them changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from hpcem.errors import StoreError

#: Bytes read from each end of a file for the fast hash.
FAST_CHUNK_BYTES = 1 << 20
#: Files up to this size also get a full SHA-256.
FULL_HASH_MAX_BYTES = 64 << 20
FAST_PREFIX = "b2fast:"
CACHE_NAME = "hashes.json"
CACHE_VERSION = 1
_READ_BYTES = 1 << 20


def fast_hash(path: str | os.PathLike) -> str:
    """The fast fingerprint of ``path`` (size + first and last MiB, BLAKE2b-256)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.blake2b(digest_size=32)
        h.update(size.to_bytes(8, "little"))
        if size <= 2 * FAST_CHUNK_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(FAST_CHUNK_BYTES))
            f.seek(size - FAST_CHUNK_BYTES)
            h.update(f.read(FAST_CHUNK_BYTES))
    return FAST_PREFIX + h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
    return h.hexdigest()


def describe_file(path: str | os.PathLike, full_max_bytes: int = FULL_HASH_MAX_BYTES) -> dict:
    """``{"size", "mtime_ns", "fast_hash", "sha256"}`` of one file (sha256 None when
    the file is larger than ``full_max_bytes``); ``{"missing": True}`` when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"missing": True}
    return {
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "fast_hash": fast_hash(path),
        "sha256": sha256_file(path) if st.st_size <= full_max_bytes else None,
    }


class HashCache:
    """The hashes of files already described, kept in one JSON file of a run folder.

    ``describe(path)`` returns the cached record while the file's size and mtime are
    unchanged, and reads the file otherwise; :meth:`save` writes the cache (atomically,
    without following links) when something new was computed.
    """

    def __init__(self, cache_path: Path) -> None:
        self.path = Path(cache_path)
        self._entries: dict[str, dict] | None = None
        self._dirty = False
        self.computed = 0  # files read by this cache object (for tests and reports)

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("version") == CACHE_VERSION and isinstance(doc.get("files"), dict):
                    self._entries = doc["files"]
            except (OSError, ValueError, AttributeError):
                pass  # absent or damaged: recomputed
        return self._entries

    def describe(self, path: str | os.PathLike) -> dict:
        key = os.path.abspath(path)
        entries = self._load()
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return {"missing": True}
        old = entries.get(key)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            return dict(old)
        new = describe_file(key)
        self.computed += 1
        if not new.get("missing"):
            entries[key] = new
            self._dirty = True
        return dict(new)

    def describe_all(self, paths: Iterable[str | os.PathLike]) -> list[dict]:
        return [self.describe(p) for p in paths]

    def save(self) -> None:
        """Write the cache when it changed (a read-only project folder is not an error:
        the hashes are then computed again next time)."""
        if not self._dirty:
            return
        from hpcem.store.safeopen import open_nofollow

        text = json.dumps({"version": CACHE_VERSION, "files": self._entries}, sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            fd = open_nofollow(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                0o644,
                levels=3,
                create_dirs=True,
            )
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            self._dirty = False
        except (OSError, StoreError):
            tmp.unlink(missing_ok=True)
