"""Ragged columns: one variable-length 1-D array per item, stored as ``values`` and
``offsets`` (CSR: item ``i`` is ``values[offsets[i]:offsets[i + 1]]``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class Ragged:
    """A column of variable-length arrays (``len(r)`` items, ``r[i]`` a numpy view)."""

    __slots__ = ("offsets", "values")

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = np.asarray(values)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError("ragged offsets must be a 1-D array of length n + 1")

    @classmethod
    def from_list(cls, arrays: Iterable[Sequence], dtype: str) -> Ragged:
        """Build from a list of sequences (one per item)."""
        parts = [np.asarray(a, dtype=dtype).ravel() for a in arrays]
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
        return cls(values.astype(dtype, copy=False), offsets)

    @classmethod
    def empty(cls, n: int, dtype: str) -> Ragged:
        """``n`` empty arrays."""
        return cls(np.empty(0, dtype=dtype), np.zeros(n + 1, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        """Items of all ``parts`` one after another."""
        if len(parts) == 1:
            return parts[0]
        values = np.concatenate([p.values[p.offsets[0] : p.offsets[-1]] for p in parts])
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(values, offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Length of each item's array."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            n = len(self)
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"ragged index {key} out of range for {n} items")
            return self.values[self.offsets[i] : self.offsets[i + 1]]
        return self.take(key)

    def take(self, rows) -> Ragged:
        """A new Ragged of the given rows (index array, boolean mask or slice)."""
        rows = (
            np.arange(len(self))[rows]
            if not isinstance(rows, np.ndarray) or rows.dtype == bool
            else rows.astype(np.int64, copy=False)
        )
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(self.values[idx], offsets)

    def normalized(self) -> Ragged:
        """Same items with offsets starting at 0 (as stored on disk)."""
        if self.offsets[0] == 0 and len(self.values) == self.offsets[-1]:
            return self
        return Ragged(
            self.values[self.offsets[0] : self.offsets[-1]], self.offsets - self.offsets[0]
        )

    def tolist(self) -> list[np.ndarray]:
        """One numpy array per item."""
        return np.split(
            self.values[self.offsets[0] : self.offsets[-1]], self.offsets[1:-1] - self.offsets[0]
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.tolist())

    def __eq__(self, other) -> bool:
        if not isinstance(other, Ragged):
            return NotImplemented
        a, b = self.normalized(), other.normalized()
        return np.array_equal(a.offsets, b.offsets) and np.array_equal(a.values, b.values)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Ragged({len(self)} items, {len(self.values)} values, {self.values.dtype})"
