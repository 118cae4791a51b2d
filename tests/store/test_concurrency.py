"""A set that grows while another process reads it: every read is a consistent prefix."""

from __future__ import annotations

import time

import numpy as np
from store_helpers import MP

from hpcem.errors import HpcemError
from hpcem.store import Project

BATCHES = 40


def checksum(ids: np.ndarray) -> np.ndarray:
    """A value derived from the id, written with it and checked by the reader."""
    return (ids * 7919 % 100003).astype(np.float32)


def _writer(path, run_id, done):
    project = Project.open(path)
    rng = np.random.default_rng(3)
    w = project.create_set(run_id, "stream", "hpcem.SetOfParticles")
    w.compact_threshold = 5  # compaction races the reader too
    n = 0
    for _ in range(BATCHES):
        k = int(rng.integers(1, 400))
        ids = np.arange(n, n + k)
        w.append_columns(
            {
                "id": ids,
                "defocus_u": checksum(ids),
                "image": [f"Extract/mic{i // 100}.mrcs" for i in ids],
                "image_index": ids % 100,
            }
        )
        n += k
        time.sleep(0.005)
    w.close()
    done.set()


def _reader(path, run_id, done, results):
    project = Project.open(path)
    sizes, errors = [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = done.is_set()
        try:
            s = project.open_set(run_id, "stream")
        except HpcemError as exc:  # the set may not exist yet
            if "has no set" not in str(exc):
                errors.append(repr(exc))
            continue
        try:
            ids = s.columns["id"]
            n = len(s)
            if len(ids) != n or not np.array_equal(ids, np.arange(n)):
                errors.append(f"ids not 0..{n - 1}")
            elif not np.array_equal(s.columns["defocus_u"], checksum(ids)):
                errors.append(f"checksum mismatch at n={n}")
            elif not np.array_equal(s.columns["image_index"], ids % 100):
                errors.append(f"image_index mismatch at n={n}")
            elif n and s.columns["image"][-1] != str(
                project.path / f"Extract/mic{(n - 1) // 100}.mrcs"
            ):
                errors.append(f"path mismatch at n={n}")
            sizes.append(n)
        except (HpcemError, OSError, KeyError, ValueError) as exc:
            errors.append(repr(exc))
        s.close()
        if finished:
            sizes.append(-1 if s.is_open else n)
            break
    results.put((sizes, errors))


def test_reader_sees_consistent_prefixes_while_writer_appends(project, run_id):
    done, results = MP.Event(), MP.Queue()
    reader = MP.Process(target=_reader, args=(project.path, run_id, done, results))
    writer = MP.Process(target=_writer, args=(project.path, run_id, done))
    reader.start()
    writer.start()
    sizes, errors = results.get(timeout=90)
    writer.join(30)
    reader.join(30)
    assert writer.exitcode == 0 and reader.exitcode == 0
    assert errors == []
    final = project.open_set(run_id, "stream")
    assert sizes[-1] == len(final) > 0  # last read after close saw everything
    seen = sizes[:-1]
    assert len(seen) > 10 and len(set(seen)) > 3  # really read while it grew
    assert seen == sorted(seen)  # never went back
    assert len(list(final.path.glob("seg-*.h5"))) <= 6


def _updater(path, run_id, n, done):
    project = Project.open(path)
    for k in range(1, n + 1):
        project.set_params(run_id, {"k": k})
    done.set()


def test_status_reads_while_a_run_updates_the_index(project, run_id):
    done = MP.Event()
    child = MP.Process(target=_updater, args=(project.path, run_id, 150, done))
    child.start()
    seen = []
    while not done.is_set() or not seen:
        run = Project.open(project.path).runs[0]
        seen.append(run.params.get("k", 0))
    child.join(30)
    assert child.exitcode == 0
    assert seen == sorted(seen) and len(set(seen)) > 5
    assert project.run(run_id).params == {"k": 150}
