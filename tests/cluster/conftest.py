"""Shared helpers for the cluster tests: fixture files and 'is the scheduler up' checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def job_spec(workdir: Path, name: str, command, **kw):
    """A JobSpec running ``command`` in ``workdir``, with its exit-code and output files there."""
    from hpcem.cluster.job import JobSpec

    return JobSpec(
        command=tuple(command),
        name=name,
        workdir=str(workdir),
        exit_code_file=str(workdir / f"{name}.exit"),
        stdout=str(workdir / f"{name}.out"),
        **kw,
    )


def _answers(argv: list[str]) -> str | None:
    """None if ``argv`` runs and exits 0 within 10 s, else why not."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not installed"
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return f"{' '.join(argv)} timed out"
    if res.returncode != 0:
        return f"{' '.join(argv)} failed: {res.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def slurm_up():
    why = _answers(["sinfo", "-h", "-o", "%T"])
    if why:
        pytest.skip(
            f"local SLURM not answering ({why}); start it with: bash scripts/start-slurm.sh"
        )


@pytest.fixture(scope="session")
def sge_up():
    why = _answers(["qstat", "-g", "c"]) if shutil.which("qconf") else "qconf not installed"
    if why:
        pytest.skip(
            f"local Grid Engine not answering ({why}); start it with: bash scripts/start-sge.sh"
        )


@pytest.fixture
def fixture():
    return fixture_text
