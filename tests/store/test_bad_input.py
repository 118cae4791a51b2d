"""Bad input: each gives one clear error naming the file, and never modifies it."""

from __future__ import annotations

import hashlib
import os
import signal

import h5py
import numpy as np
import pytest
from store_helpers import MP

from hpcem.errors import (
    CorruptStoreError,
    LockedError,
    MissingDataError,
    NotAProjectError,
    SchemaVersionError,
    StoreError,
)
from hpcem.store import Project


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _particles(project, run_id, n=100):
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:
        w.append_columns(
            {
                "defocus_u": np.arange(n, dtype=np.float32),
                "image": [f"Extract/s{i % 4}.mrcs" for i in range(n)],
            }
        )
    return project.open_set(run_id, "p")


def test_not_a_project(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAProjectError) as e:
        Project.open(tmp_path / "empty")
    assert _one_line(e) == f"{tmp_path / 'empty'} is not an hpcem project (no project.h5)"
    with pytest.raises(NotAProjectError, match="no such folder"):
        Project.open(tmp_path / "missing")
    assert os.listdir(tmp_path / "empty") == []  # nothing was created


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_project_index(project, damage):
    project.create_run("hpcem.x")
    index = project.path / "project.h5"
    if damage == "truncate":
        _truncate(index)
    elif damage == "garbage":
        index.write_bytes(os.urandom(4096))
    else:
        index.write_bytes(b"")
    before = _digest(index)
    with pytest.raises(CorruptStoreError) as e:
        Project.open(project.path)
    msg = _one_line(e)
    assert str(index) in msg and "corrupt or truncated" in msg
    assert _digest(index) == before


def test_index_that_is_another_hdf5_file(project):
    index = project.path / "project.h5"
    with h5py.File(index, "w") as f:
        f["x"] = [1, 2]
    before = _digest(index)
    with pytest.raises(CorruptStoreError, match="not an hpcem store file"):
        Project.open(project.path)
    assert _digest(index) == before


def test_truncated_segment_and_manifest(project, run_id):
    s = _particles(project, run_id)
    seg = next(s.path.glob("seg-*.h5"))
    _truncate(seg)
    before = _digest(seg)
    fresh = project.open_set(run_id, "p")  # the manifest is fine
    assert len(fresh) == 100
    with pytest.raises(CorruptStoreError) as e:
        fresh.columns["defocus_u"]
    assert str(seg) in _one_line(e)
    assert _digest(seg) == before
    manifest = s.path / "manifest.h5"
    _truncate(manifest, 0.3)
    before = _digest(manifest)
    with pytest.raises(CorruptStoreError, match=str(manifest)):
        project.open_set(run_id, "p")
    assert _digest(manifest) == before


def test_newer_schema_version(project, run_id):
    _particles(project, run_id)
    index = project.path / "project.h5"
    with h5py.File(index, "r+") as f:
        f.attrs["schema_version"] = 99
    before = _digest(index)
    with pytest.raises(SchemaVersionError) as e:
        Project.open(project.path)
    msg = _one_line(e)
    assert str(index) in msg and "schema_version 99" in msg and "up to 1" in msg
    assert _digest(index) == before
    with h5py.File(index, "r+") as f:
        f.attrs["schema_version"] = 1
    manifest = project.open_set(run_id, "p").path / "manifest.h5"
    with h5py.File(manifest, "r+") as f:
        f.attrs["schema_version"] = 7
    with pytest.raises(SchemaVersionError, match="schema_version 7"):
        project.open_set(run_id, "p")


def test_missing_image_files(project, run_id):
    (project.path / "Extract").mkdir()
    for i in range(4):
        (project.path / "Extract" / f"s{i}.mrcs").write_bytes(b"x")
    s = _particles(project, run_id)
    s.check_files()
    os.unlink(project.path / "Extract" / "s1.mrcs")
    os.unlink(project.path / "Extract" / "s3.mrcs")
    with pytest.raises(MissingDataError) as e:
        s.check_files()
    msg = _one_line(e)
    assert "2 missing file(s) of 4" in msg and "s1.mrcs" in msg and "s3.mrcs" in msg


def test_missing_set(project, run_id):
    with pytest.raises(StoreError, match="has no set 'nope'"):
        project.open_set(run_id, "nope")


def _hold_set_lock(path, run_id, ready, stop):
    project = Project.open(path)
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    w.append_columns({"defocus_u": [1.0]})
    ready.set()
    stop.wait(30)


def _hold_project_lock(path, ready, stop):
    project = Project.open(path)
    with project._index_lock():
        ready.set()
        stop.wait(30)


def test_second_set_writer_gets_locked_error_naming_pid(project, run_id):
    ready, stop = MP.Event(), MP.Event()
    child = MP.Process(target=_hold_set_lock, args=(project.path, run_id, ready, stop))
    child.start()
    try:
        assert ready.wait(20)
        with pytest.raises(LockedError) as e:
            project.open_set_writer(run_id, "p")
        assert f"pid {child.pid}" in _one_line(e)
        with pytest.raises(LockedError, match=f"pid {child.pid}"):
            project.create_set(run_id, "p", "hpcem.SetOfParticles")
        assert len(project.open_set(run_id, "p")) == 1  # readers take no lock
    finally:
        stop.set()
        child.join(10)
    with project.open_set_writer(run_id, "p") as w:  # released when the holder exits
        w.append_columns({"defocus_u": [2.0]})
    assert len(project.open_set(run_id, "p")) == 2


def test_project_lock_times_out_and_is_freed_by_sigkill(project, run_id):
    ready, stop = MP.Event(), MP.Event()
    child = MP.Process(target=_hold_project_lock, args=(project.path, ready, stop))
    child.start()
    assert ready.wait(20)
    slow = Project.open(project.path, lock_timeout_s=0.3)
    with pytest.raises(LockedError) as e:
        slow.set_label(run_id, "x")
    assert f"pid {child.pid}" in _one_line(e) and "waited 0.3 s" in str(e.value)
    assert slow.run(run_id).label == "test run"  # status reads still work
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert slow.set_label(run_id, "after").label == "after"


def _create(path, barrier, results):
    barrier.wait()
    try:
        Project.create(path)
        results.put("ok")
    except StoreError as exc:
        results.put(type(exc).__name__)


def test_two_processes_creating_one_project(tmp_path):
    barrier, results = MP.Barrier(2), MP.Queue()
    procs = [MP.Process(target=_create, args=(tmp_path / "p", barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=20) for _ in procs)
    for p in procs:
        p.join(10)
    assert got == ["StoreError", "ok"]
    assert Project.open(tmp_path / "p").runs == []


def test_missing_segment_names_it(project, run_id):
    s = _particles(project, run_id)
    seg = next(s.path.glob("seg-*.h5"))
    seg.unlink()
    with pytest.raises(CorruptStoreError) as e:
        project.open_set(run_id, "p").columns["id"]
    assert str(seg) in _one_line(e) and "missing" in str(e.value)


def test_hdf5_file_locking_is_off():
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"
