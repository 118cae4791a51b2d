"""Fixtures of the store tests: a fresh project and a run in it."""

from __future__ import annotations

import pytest

from hpcem.store import Project


@pytest.fixture
def project(tmp_path) -> Project:
    """A new, empty project in a temporary folder."""
    return Project.create(tmp_path / "proj")


@pytest.fixture
def run_id(project) -> int:
    """A run of ``project`` to hold output sets."""
    return project.create_run("hpcem.test", label="test run").id
