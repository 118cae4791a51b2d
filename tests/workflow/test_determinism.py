"""Determinism (issue 13, item 7): the same workflow on the same data gives outputs bit
for bit equal on one machine, and equal within a stated tolerance with another number of
workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

#: With another number of workers every item is still computed by one process with the
#: same code; the tolerance covers BLAS/FFT thread scheduling differences.
WORKER_RTOL = 1e-5

TEMPLATE = {
    "format": "hpcem.workflow",
    "schema_version": 1,
    "runs": [
        {
            "key": "imp",
            "protocol": "import.movies",
            "params": {"files": "${movies}", "pixel_size_A": 1.0, "dose_per_frame_e_A2": 1.5},
        },
        {"key": "ali", "protocol": "motion.align", "inputs": {"movies": "@imp:movies"}},
        {
            "key": "ctf",
            "protocol": "ctf.estimate",
            "inputs": {"micrographs": "@ali:micrographs"},
        },
    ],
}


def _run(tmp_path, name, data, workers):
    from hpcem.store import Project
    from hpcem.workflow.load import check, instantiate

    project = Project.create(tmp_path / name)
    wf = check(TEMPLATE, {"movies": f"{data}/movie_*.mrc"}, project)
    ids = instantiate(project, wf, run=True, workers=workers)
    return project, ids


def _outputs(project, ids):
    out = {}
    for key, rid in ids.items():
        rec = project.run(rid)
        for name in sorted(rec.output_types):
            cols = project.open_set(rid, name).read_columns()
            for col, values in cols.items():
                if isinstance(values, np.ndarray) and values.dtype.kind in "SUO":
                    # paths are read back absolute: compare them relative to the project
                    values = [str(v).replace(str(project.path), "PROJECT") for v in values]
                out[f"{key}.{name}.{col}"] = values
    return out


#: The MRC header's 10 text labels (bytes 224-1023): mrcfile stamps label 0 with the time
#: of writing ("Created by mrcfile.py  YYYY-MM-DD HH:MM:SS"), so they are left out.
MRC_LABELS = slice(224, 1024)


def _image_hashes(project, ids):
    """SHA-256 of the files the runs wrote: aligned micrographs (MRC, without the text
    labels of the header) and plots (PNG, whole)."""
    mics = project.open_set(ids["ali"], "micrographs").read_columns(["image", "thumbnail"])
    out = []
    for f in list(mics["image"]) + list(mics["thumbnail"]):
        data = bytearray(Path(f).read_bytes())
        if f.endswith(".mrc"):
            data[MRC_LABELS] = bytes(MRC_LABELS.stop - MRC_LABELS.start)
        out.append(hashlib.sha256(bytes(data)).hexdigest())
    return out


def _as_array(v):
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in v])


@pytest.mark.slow
def test_same_seeds_same_data_bit_for_bit(tmp_path):
    from hpcem.sim.dataset import DatasetConfig, simulate_dataset

    data = tmp_path / "data"
    simulate_dataset(data, DatasetConfig(kind="movies", n_items=2, size_px=512, n_frames=6, seed=5))
    p1, ids1 = _run(tmp_path, "a", data, workers=2)
    p2, ids2 = _run(tmp_path, "b", data, workers=2)
    o1, o2 = _outputs(p1, ids1), _outputs(p2, ids2)
    assert o1.keys() == o2.keys() and len(o1) > 10
    different = [k for k in o1 if _digest(o1[k]) != _digest(o2[k])]
    assert different == []
    assert _image_hashes(p1, ids1) == _image_hashes(p2, ids2)

    p3, ids3 = _run(tmp_path, "c", data, workers=1)
    o3 = _outputs(p3, ids3)
    for k in o1:
        a = o1[k]
        if isinstance(a, list) and a and isinstance(a[0], str):
            assert list(a) == list(o3[k]), k
            continue
        np.testing.assert_allclose(_as_array(o3[k]), _as_array(a), rtol=WORKER_RTOL, err_msg=k)


def _digest(values) -> str:
    h = hashlib.sha256()
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        h.update(values.dtype.str.encode() + values.tobytes())
    else:
        for v in values:
            h.update(repr(np.asarray(v).tolist()).encode())
    return h.hexdigest()
