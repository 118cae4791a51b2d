"""Shared fixtures of the science tests: where the real third-party data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Read-only real data (see ../shared/data/README.md), next to the repository.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_file():
    """Return a function mapping a path under ../shared/data to a Path, or skip."""

    def get(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.is_file():
            pytest.skip(f"real test file {relative} not found under {SHARED_DATA}")
        return path

    return get
