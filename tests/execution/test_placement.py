"""Where a run goes: options, the project's default site and $HPCEM_SITE, checked before
anything is stored (no scheduler needed: nothing is submitted here)."""

from __future__ import annotations

import pytest

from hpcem.errors import ConfigError, ValidationError
from hpcem.execution.placement import execution_request


def test_default_is_local(project, monkeypatch):
    monkeypatch.delenv("HPCEM_SITE", raising=False)
    assert execution_request(project, {}) == {
        "mode": "local",
        "dispatch": "local",
        "site": "localhost",
    }


def test_project_default_site_sends_whole_runs_as_jobs(project, monkeypatch):
    monkeypatch.delenv("HPCEM_SITE", raising=False)
    project.set_default_site("local-slurm")
    assert project.default_site == "local-slurm"
    ex = execution_request(project, {"cores": 2})
    assert ex["mode"] == "job" and ex["site"] == "local-slurm"
    assert ex["resources"] == {
        "queue": "debug",
        "walltime": "00:30:00",
        "cores": 2,
        "nodes": 1,
    }  # the site default
    here = execution_request(project, {"dispatch": "local"})
    assert here == {"mode": "local", "dispatch": "local", "site": "localhost"}
    parsl = execution_request(project, {"dispatch": "parsl", "max_blocks": 3, "queue": "long"})
    assert parsl["dispatch"] == "parsl" and parsl["parsl"] == {"max_blocks": 3}
    assert parsl["resources"]["queue"] == "long"
    two = execution_request(project, {"dispatch": "parsl", "queue": "long", "cores": 2})
    assert two["parsl"] == {"max_blocks": 2, "workers_per_node": 2}  # the run's cores, not 64


def test_environment_site_and_bad_requests(project, monkeypatch):
    monkeypatch.setenv("HPCEM_SITE", "local-sge")
    assert execution_request(project, {})["site"] == "local-sge"
    monkeypatch.delenv("HPCEM_SITE")
    with pytest.raises(ConfigError, match="--queue/--walltime/--nodes need --dispatch job"):
        execution_request(project, {"walltime": "1:00:00", "dispatch": "local"})
    with pytest.raises(
        ValidationError, match="5 nodes requested, site 'local-slurm' queue 'debug' allows 4"
    ):
        execution_request(project, {"site": "local-slurm", "queue": "debug", "nodes": 5})
    with pytest.raises(ConfigError, match="has no queue 'gpu'"):
        execution_request(project, {"site": "local-slurm", "queue": "gpu"})


def test_project_default_site_ranks_above_hpcem_site(project, monkeypatch):
    # --site, then the project's default site, then $HPCEM_SITE, then localhost
    monkeypatch.setenv("HPCEM_SITE", "local-sge")
    assert execution_request(project, {})["site"] == "local-sge"
    project.set_default_site("local-slurm")
    assert execution_request(project, {})["site"] == "local-slurm"
    assert execution_request(project, {"site": "localhost"})["site"] == "localhost"
