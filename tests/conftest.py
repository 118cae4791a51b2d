"""Shared test set-up: the test plugin (found through a real entry point) and projects."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PLUGINS = TESTS / "plugins"
SHARED_DATA = TESTS.parent.parent / "shared" / "data"

# The test plugin is an installed-looking distribution (dist-info with an entry point) on
# the path of this process and of every controller process the tests start.
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PLUGINS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


@pytest.fixture
def project(tmp_path):
    """A fresh, empty project."""
    from hpcem.store import Project

    return Project.create(tmp_path / "proj")


@pytest.fixture
def shared_data():
    """The read-only third-party data folder (tests skip where it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def _wait_for_run(project, run_id, timeout_s=60.0, states=("finished", "failed", "aborted")):
    """Poll until the run reaches one of ``states`` (as diagnosed); return its record."""
    import time

    from hpcem.execution.runs import effective_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = project.run(run_id)
        if effective_state(run) in states:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {project.run(run_id).state} after {timeout_s} s")


@pytest.fixture
def wait_for_run():
    """``wait_for_run(project, run_id, timeout_s=60)``: poll until the run has ended."""
    return _wait_for_run
