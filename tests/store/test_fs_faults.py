"""Hostile and failing filesystems: planted links, a full disk, a read-only remount and a
stopped lock holder.

Links are planted where hpcem writes (lock files, logs, temp files, the project's own
folders), each pointing at a file outside the project with known bytes; the write must
be refused with one line naming the link and the target must keep its bytes. The disk
tests mount a real 2 MiB tmpfs (root only), fill it and check that every store write
fails with one StorageFullError line, leaves the committed files byte-identical, and
works again once space is freed.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcem.command import run_command
from hpcem.errors import CommandError, LockedError, StorageFullError, StoreError
from hpcem.execution.log import RunLog
from hpcem.store import Project, StepTable
from hpcem.store import files as sf
from hpcem.store.locks import FileLock
from hpcem.store.safeopen import open_append_nofollow, storage_errno

PRECIOUS = b"precious bytes outside the project\n" * 20


def link_msg(path: Path) -> str:
    return f"{path} is a symbolic link; hpcem does not follow links in a project (remove it)"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the project with known content (the target of planted links)."""
    p = tmp_path / "outside" / "victim.txt"
    p.parent.mkdir()
    p.write_bytes(PRECIOUS)
    return p


def plant(link: Path, target: Path) -> None:
    """Replace whatever is at ``link`` by a symlink to ``target``."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def refused(exc_info, path: Path) -> None:
    assert type(exc_info.value) is StoreError
    assert str(exc_info.value) == link_msg(path)


# --- 1. links ---------------------------------------------------------------------------
def test_lock_file_link_is_not_truncated(project, run_id, outside):
    lock = project.path / ".hpcem" / "locks" / "project.lock"
    plant(lock, outside)
    with pytest.raises(StoreError) as ei:
        project.set_label(run_id, "x")
    refused(ei, lock)
    assert outside.read_bytes() == PRECIOUS
    assert project.run(run_id).label == "test run"


def test_controller_lock_link_is_not_truncated(project, run_id, outside):
    lock = project.run_dir(run_id) / "controller.lock"
    plant(lock, outside)
    with pytest.raises(StoreError) as ei:
        FileLock(lock, f"run {run_id}").acquire(0)
    refused(ei, lock)
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("folder", [".hpcem/locks", ".hpcem"])
def test_linked_locks_folder_is_refused(project, run_id, outside, folder):
    # the linked folder holds a file named like our lock file
    (outside.parent / "project.lock").write_bytes(PRECIOUS)
    (outside.parent / "locks").mkdir()
    (outside.parent / "locks" / "project.lock").write_bytes(PRECIOUS)
    plant(project.path / folder, outside.parent)
    with pytest.raises(StoreError) as ei:
        project.set_label(run_id, "x")
    refused(ei, project.path / folder)
    assert (outside.parent / "project.lock").read_bytes() == PRECIOUS
    assert (outside.parent / "locks" / "project.lock").read_bytes() == PRECIOUS


def test_hard_linked_lock_file_is_refused(project, run_id, outside):
    lock = project.path / ".hpcem" / "locks" / "project.lock"
    lock.unlink()
    os.link(outside, lock)
    with pytest.raises(StoreError, match="has 2 hard links"):
        project.set_label(run_id, "x")
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("name", ["run.log", "events.jsonl"])
def test_run_log_links_are_not_followed(project, run_id, outside, name):
    run_dir = project.run_dir(run_id)
    plant(run_dir / name, outside)
    with pytest.raises(StoreError) as ei:
        RunLog(run_dir).event("run", "started")
    refused(ei, run_dir / name)
    assert outside.read_bytes() == PRECIOUS


def test_linked_run_folder_is_refused(project, run_id, outside):
    run_dir = project.run_dir(run_id)
    plant(run_dir, outside.parent)
    with pytest.raises(StoreError) as ei:
        RunLog(run_dir).event("run", "started")
    refused(ei, run_dir)
    with pytest.raises(StoreError) as ei:
        FileLock(run_dir / "controller.lock", "run").acquire(0)
    refused(ei, run_dir)
    with pytest.raises(StoreError) as ei:
        project.write_steps(run_id, StepTable.from_records([{"id": "s1"}]))
    refused(ei, run_dir)
    assert sorted(os.listdir(outside.parent)) == ["victim.txt"]


def test_open_append_nofollow_for_stdout_logs(project, run_id, outside):
    run_dir = project.run_dir(run_id)
    fd = open_append_nofollow(run_dir / "stdout.log")
    try:
        os.write(fd, b"line\n")
    finally:
        os.close(fd)
    assert (run_dir / "stdout.log").read_bytes() == b"line\n"
    plant(run_dir / "stderr.log", outside)
    with pytest.raises(StoreError) as ei:
        open_append_nofollow(run_dir / "stderr.log")
    refused(ei, run_dir / "stderr.log")
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "hdf5-writes"])
def test_link_at_the_temp_name_is_not_followed(project, run_id, outside, monkeypatch, big):
    # Temp names are random (pid + 32 random bits); fix the random part to plant a link
    # exactly where atomic_h5 will create its temp file.
    monkeypatch.setattr(secrets, "token_hex", lambda n: "deadbeef")
    index = project.index_path
    before = index.read_bytes()
    tmp = index.with_name(f"{index.name}{sf.TMP_MARK}{os.getpid()}-deadbeef")
    plant(tmp, outside)
    if big:  # HDF5 creates the temp file itself (mode "x": O_EXCL)
        monkeypatch.setattr(sf, "IN_MEMORY_MAX_BYTES", 0)
    with pytest.raises(StoreError) as ei, sf.atomic_h5(index, size_hint=1) as f:
        f.attrs["x"] = 1
    refused(ei, tmp)
    assert outside.read_bytes() == PRECIOUS
    assert index.read_bytes() == before


@pytest.mark.parametrize("folder", ["sets/p", "sets"])
def test_linked_set_folder_is_refused(project, run_id, outside, folder):
    (project.run_dir(run_id) / "sets").mkdir(exist_ok=True)
    (outside.parent / "seg-000007.h5").write_bytes(PRECIOUS)  # unlisted-segment look-alike
    plant(project.run_dir(run_id) / folder, outside.parent)
    with pytest.raises(StoreError) as ei:
        project.create_set(run_id, "p", "hpcem.SetOfMicrographs")
    refused(ei, project.run_dir(run_id) / folder)
    assert (outside.parent / "seg-000007.h5").read_bytes() == PRECIOUS
    # (project.py's mkdir of the set folder may leave an empty folder there: no files)
    written = [p.name for p in outside.parent.rglob("*") if p.is_file()]
    assert sorted(written) == ["seg-000007.h5", "victim.txt"]


def test_set_folder_swapped_for_a_link_while_writing(project, run_id, outside):
    w = project.create_set(run_id, "p", "hpcem.SetOfMicrographs")
    w.append_columns({"image": ["a.mrc"]})
    d = w.path
    d.rename(d.with_name("moved"))
    plant(d, outside.parent)
    with pytest.raises(StoreError) as ei:
        w.append_columns({"image": ["b.mrc"]})
    refused(ei, d)
    w.abandon()
    assert sorted(os.listdir(outside.parent)) == ["victim.txt"]


# --- 2. full and read-only disks ------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (needs root), unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        r = run_command(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=False)
    except CommandError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        run_command(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            run_command(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> Path:
    """Fill ``mnt`` until about ``leave`` bytes are free; returns the filler file."""
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    data = b"\0" * max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    st = os.statvfs(mnt)
    assert st.f_bavail * st.f_frsize <= leave
    return filler


def snapshot(root: Path) -> dict[str, bytes]:
    """Bytes of every file of the project (lock files excluded: they hold the holder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".hpcem" not in p.parts:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text and "HDF5" not in text
    return text


def full(folder: Path) -> str:
    return (
        f"no space left on the project's filesystem ({folder}): free space and run `hpcem continue`"
    )


def small_project(mnt: Path) -> tuple[Project, int]:
    project = Project.create(mnt / "proj")
    run_id = project.create_run("hpcem.test", label="test run").id
    with project.create_set(run_id, "mics", "hpcem.SetOfMicrographs") as w:
        w.append_columns({"image": [f"m{i}.mrc" for i in range(10)]})
    project.write_steps(run_id, StepTable.from_records([{"id": "s1", "state": "finished"}]))
    RunLog(project.run_dir(run_id)).event("run", "started")
    return project, run_id


def check_intact(project: Project, run_id: int, before: dict[str, bytes]) -> None:
    assert snapshot(project.path) == before
    assert not [p for p in project.path.rglob("*") if sf.TMP_MARK in p.name]
    again = Project.open(project.path)
    assert again.run(run_id).label == "test run"
    assert again.read_steps(run_id).to_records()[0]["id"] == "s1"
    np.testing.assert_array_equal(again.open_set(run_id, "mics").columns["id"], np.arange(10))


@pytest.mark.parametrize("leave", [0, 8192], ids=["0-bytes-free", "8KiB-free"])
def test_full_disk_gives_one_line_and_keeps_the_project(small_fs, capfd, leave):
    project, run_id = small_project(small_fs)
    run_dir = project.run_dir(run_id)
    set_dir = run_dir / "sets" / "mics"
    w = project.open_set_writer(run_id, "mics")
    before = snapshot(project.path)
    filler = fill(small_fs, leave)
    capfd.readouterr()
    batch = {"image": [f"n{i}.mrc" for i in range(5)]}
    big_line = "x" * 9000  # more than is free: a log line that cannot fit
    tries = [
        (lambda: w.append_columns(batch), set_dir),
        (
            lambda: project.create_set(run_id, "more", "hpcem.SetOfMicrographs"),
            run_dir / "sets" / "more",
        ),
        (
            lambda: project.write_steps(
                run_id, StepTable.from_records([{"id": "s1", "state": "finished"}, {"id": "s2"}])
            ),
            run_dir,
        ),
        (lambda: project.set_label(run_id, "x"), project.path),
        (lambda: RunLog(run_dir).event("run", "going on", detail=big_line), run_dir),
    ]
    for attempt, folder in tries:
        with pytest.raises(StorageFullError) as ei:
            attempt()
        assert one_line(ei.value) == full(folder)
    err = capfd.readouterr().err
    assert err == "", err  # no HDF5 diagnostics, no ignored-exception tracebacks
    (run_dir / "sets" / "more").rmdir()  # create_set made the folder before the manifest
    check_intact(project, run_id, before)

    filler.unlink()
    assert w.append_columns(batch) == 5  # the same writer, the same batch: no duplicates
    w.close()
    s = project.open_set(run_id, "mics")
    np.testing.assert_array_equal(s.columns["id"], np.arange(15))
    assert s.columns["image"][-1] == str(project.path / "n4.mrc")
    project.create_set(run_id, "more", "hpcem.SetOfMicrographs").close()
    project.write_steps(run_id, StepTable.from_records([{"id": "s1"}, {"id": "s2"}]))
    assert project.set_label(run_id, "x").label == "x"
    RunLog(run_dir).event("run", "going on", detail=big_line)
    assert big_line in (run_dir / "run.log").read_text()
    assert len(project.read_steps(run_id)) == 2
    assert Project.open(project.path).run(run_id).output_types == {
        "mics": "hpcem.SetOfMicrographs",
        "more": "hpcem.SetOfMicrographs",
    }


def test_log_line_that_fits_is_still_written(small_fs):
    """A log needs no margin: with a few KiB free a line is written (and the store
    refuses its own files only because of the margin)."""
    project, run_id = small_project(small_fs)
    filler = fill(small_fs, 8192)
    RunLog(project.run_dir(run_id)).event("run", "disk nearly full")
    assert "disk nearly full" in (project.run_dir(run_id) / "run.log").read_text()
    with pytest.raises(StorageFullError):
        project.set_label(run_id, "x")
    filler.unlink()


def test_read_only_remount(small_fs):
    project, run_id = small_project(small_fs)
    run_dir = project.run_dir(run_id)
    before = snapshot(project.path)
    r = run_command(["mount", "-o", "remount,ro", str(small_fs)], check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    locks = project.path / ".hpcem" / "locks"
    tries = [
        (lambda: project.set_label(run_id, "x"), locks),
        (lambda: project.write_steps(run_id, StepTable()), locks),
        (lambda: project.create_set(run_id, "more", "hpcem.SetOfMicrographs"), locks),
        (lambda: project.open_set_writer(run_id, "mics"), locks),
        (lambda: RunLog(run_dir).event("run", "x"), run_dir),
        (lambda: sf.atomic_h5(project.index_path).__enter__(), project.path),
    ]
    try:
        for attempt, folder in tries:
            with pytest.raises(StorageFullError) as ei:
                attempt()
            assert one_line(ei.value) == f"the project's filesystem is read-only ({folder})"
    finally:
        run_command(["mount", "-o", "remount,rw", str(small_fs)], check=False)
    check_intact(project, run_id, before)
    assert project.set_label(run_id, "x").label == "x"


def test_hdf5_write_errors_are_recognised():
    # recorded from h5py 3.16 / HDF5 2.0 on a full tmpfs: a failed metadata flush comes
    # as RuntimeError without errno, a failed data write as OSError with errno 28
    flush = RuntimeError(
        "Disable slist on flush dest failure failed (file write failed: time = Tue Dec  1 "
        "22:43:14 2026\n, filename = '/tmp/mt/x.h5', file descriptor = 3, errno = 28, "
        "error message = 'No space left on device', buf = 0x5574e22c1b68, total write "
        "size = 872, bytes this sub-write = 872, offset = 8192)"
    )
    data = OSError(
        28,
        "Can't synchronously write data (file write failed: ..., errno = 28, "
        "error message = 'No space left on device', ...)",
    )
    assert storage_errno(flush) == errno.ENOSPC
    assert storage_errno(data) == errno.ENOSPC
    assert storage_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert storage_errno(OSError(errno.EROFS, "Read-only file system")) == errno.EROFS
    assert storage_errno(OSError(errno.EIO, "I/O error")) is None
    assert storage_errno(RuntimeError("Can't decrement id ref count")) is None


# --- 3. a stopped lock holder ----------------------------------------------------------------
HOLDER = """
import os, signal, sys, time
from hpcem.store.locks import FileLock
lock = FileLock(sys.argv[1], "test lock").acquire(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(60)  # resumed: hold the lock, running, until killed
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_stopped_lock_holder_is_named(tmp_path):
    path = tmp_path / ".hpcem" / "locks" / "x.lock"
    child = subprocess.Popen(
        [sys.executable, "-I", "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        deadline = time.monotonic() + 10
        while _state(child.pid) != "T":
            assert time.monotonic() < deadline, "the child did not stop"
            time.sleep(0.01)
        with pytest.raises(LockedError) as ei:
            FileLock(path, "test lock").acquire(0)
        host = socket.gethostname()
        n = child.pid
        assert str(ei.value) == (
            f"test lock is held by pid {n} on {host}, which is stopped (SIGSTOP?): resume "
            f"it with `kill -CONT {n}` or end it; lock file {path}"
        )
        os.kill(n, signal.SIGCONT)  # running again: the ordinary message
        deadline = time.monotonic() + 10
        while _state(n) == "T":
            assert time.monotonic() < deadline, "the child did not resume"
            time.sleep(0.01)
        with pytest.raises(LockedError) as ei:
            FileLock(path, "test lock").acquire(0)
        assert str(ei.value) == (
            f"test lock is being modified by pid {n} on host {host}; lock file {path}"
        )
    finally:
        child.kill()
        child.wait()
    FileLock(path, "test lock").acquire(0).release()  # freed by the kernel on death
