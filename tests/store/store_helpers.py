"""Helpers shared by the store tests (random columns of any item type, path expectations)."""

from __future__ import annotations

import multiprocessing

import numpy as np

from hpcem.model.fields import ItemType
from hpcem.store import Project, Ragged

OUTSIDE = "/data/outside/stack_001.mrcs"  # an absolute path outside the project

# fork keeps child start-up fast; the children never touch HDF5 handles of the parent.
MP = multiprocessing.get_context("fork")


def random_columns(item: ItemType, n: int, rng: np.random.Generator) -> dict:
    """Random values for every field of ``item`` (ids not sequential; paths mixed
    relative / absolute-outside / none; unicode strings; ragged with empty rows)."""
    cols: dict = {}
    for fd in item.fields:
        if fd.name == "id":
            cols["id"] = np.arange(n, dtype=np.int64) * 3 + 5
        elif fd.kind == "path":
            choices = np.array(["Extract/a.mrcs", "Movies/b c.tif", OUTSIDE, ""], dtype=object)
            cols[fd.name] = choices[rng.integers(0, len(choices), n)]
        elif fd.kind == "str":
            choices = np.array(["C1", "D7", "", "défocus Å"], dtype=object)
            cols[fd.name] = choices[rng.integers(0, len(choices), n)]
        elif fd.kind == "ragged":
            cols[fd.name] = Ragged.from_list(
                [rng.normal(size=rng.integers(0, 6)) * 100 for _ in range(n)], fd.dtype
            )
        else:
            dt = np.dtype(fd.dtype)
            if dt.kind == "f":
                cols[fd.name] = rng.normal(1000, 500, n).astype(dt)
            else:
                cols[fd.name] = rng.integers(0, 100, n).astype(dt)
    return cols


def expected_paths(project: Project, values: np.ndarray) -> list[str]:
    """How path values read back: relative ones resolved in the project folder."""
    return [v if (v == "" or v.startswith("/")) else str(project.path / v) for v in values]
