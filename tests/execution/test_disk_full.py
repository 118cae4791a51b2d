"""A run whose project filesystem fills up (a small real tmpfs): one clear line, the run
failed with that reason, finished steps kept, and ``continue`` works once space is back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hpcem.execution import runs as lifecycle
from hpcem.store import Project

HPCEM = [sys.executable, "-c", "import sys; from hpcem.cli.main import main; sys.exit(main())"]


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder, leave_bytes: int):
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = free - leave_bytes
        while left > 0:
            try:
                left -= fh.write(chunk[: min(len(chunk), left)])
            except OSError:
                break
    return filler


def test_disk_full_during_a_run_fails_it_with_one_line_then_continue_works(small_fs, tmp_path):
    out = tmp_path / "out"  # the steps' own files are elsewhere
    out.mkdir()
    project = Project.create(small_fs / "proj")
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 6, "sleep_s": 1.0}
    )
    lifecycle.launch(project, run.id, workers=1)
    deadline = time.monotonic() + 60
    while project.run(run.id).steps_done < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    filler = _fill(small_fs, leave_bytes=8 * 1024)
    deadline = time.monotonic() + 60
    while (
        lifecycle.effective_state(project.run(run.id)) == "running" and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    state, reason = lifecycle.diagnose(project.run(run.id))
    assert state == "failed"
    assert "no space left on the project's filesystem" in reason, reason
    stderr = (project.run_dir(run.id) / "stderr.log").read_text()
    assert "Traceback" not in stderr and "Segmentation" not in stderr
    # the CLI says the same in one line, and the project stays readable
    status = subprocess.run(
        HPCEM + ["status", str(project.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "failed" in status.stdout
    cont = subprocess.run(
        HPCEM + ["continue", str(project.path), str(run.id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cont.returncode != 0 and len(cont.stderr.strip().splitlines()) == 1, cont.stderr
    assert "no space left" in cont.stderr
    finished_before = {
        s["name"] for s in project.read_steps(run.id).to_records() if s["state"] == "finished"
    }
    assert len(finished_before) >= 2

    filler.unlink()  # space is back
    lifecycle.continue_run(project, run.id, workers=2)
    deadline = time.monotonic() + 60
    while (
        lifecycle.effective_state(project.run(run.id)) in ("launched", "running")
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    done = project.run(run.id)
    assert done.state == "finished", done.error
    for name in finished_before:  # finished work was kept
        assert len((out / f"{name.replace('/', '')}.jsonl").read_text().splitlines()) == 1
