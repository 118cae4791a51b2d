"""Ragged columns (values + offsets): building, indexing, taking rows, joining."""

from __future__ import annotations

import numpy as np
import pytest

from hpcem.store import Ragged


def test_from_list_index_take_concat():
    rows = [[1, 2, 3], [], [4], [5, 6]]
    r = Ragged.from_list(rows, "int64")
    assert len(r) == 4 and r.values.dtype == np.int64
    np.testing.assert_array_equal(r.offsets, [0, 3, 3, 4, 6])
    assert [list(x) for x in r] == rows
    assert list(r[-1]) == [5, 6] and list(r[1]) == []
    t = r.take(np.array([3, 0, 1]))
    assert [list(x) for x in t] == [[5, 6], [1, 2, 3], []]
    m = r.take(np.array([True, False, True, False]))
    assert [list(x) for x in m] == [[1, 2, 3], [4]]
    assert [list(x) for x in r[1:3]] == [[], [4]]
    c = Ragged.concat([t, m])
    assert [list(x) for x in c] == [[5, 6], [1, 2, 3], [], [1, 2, 3], [4]]
    np.testing.assert_array_equal(c.lengths, [2, 3, 0, 3, 1])
    with pytest.raises(IndexError):
        r[4]


def test_equality_ignores_storage_offset():
    r = Ragged.from_list([[1.5], [2.5, 3.5]], "float32")
    shifted = Ragged(np.array([9, 1.5, 2.5, 3.5], dtype=np.float32), np.array([1, 2, 4]))
    assert shifted == r and shifted.normalized().offsets[0] == 0
    assert Ragged.from_list([[1.5], [2.5]], "float32") != r
