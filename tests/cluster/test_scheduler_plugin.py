"""A new scheduler is one module plus one template: a toy scheduler in a temporary plugin
(a real dist-info with an entry point in ``hpcem.schedulers``) is found, renders its own
template, submits, tracks and cancels a real job, and runs a whole hpcem run, with no
other change to hpcem."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

TOY = '''
"""A toy scheduler: jobs are detached bash processes, as with "local", but its own name,
its own template and its own job-id variable."""
from pathlib import Path

from hpcem.cluster.schedulers import local as _local

NAME = "toy"
JOB_ID_ENV = "TOY_JOB_ID"
NODE_ENV = None
TEMPLATE = str(Path(__file__).with_name("toy.sh.j2"))
PROGRAMS = _local.PROGRAMS
STATE_MAP = _local.STATE_MAP
for _name in ("submit_argv", "parse_submit_output", "status_argv", "parse_status_output",
              "history_argv", "parse_history_output", "cancel_argv", "user_jobs_argv",
              "parse_user_jobs_output", "map_state", "test_submit_argv"):
    globals()[_name] = getattr(_local, _name)
'''

TEMPLATE = """#!/bin/bash
# toy job script (site {{ site.name }}) -- rendered from the plugin's own template
export TOY_JOB_ID=$$
exec > {{ job.stdout | shquote }} 2>&1 < /dev/null
{% include "_job_body.sh.j2" %}
"""

SITE = """
[site]
name = "toy-site"
scheduler = "toy"
description = "a site on the toy scheduler plugin"
default_queue = "q"

[defaults]
walltime = "00:10:00"

[mpi]
command = ["mpiexec.gforker", "-n", "{ranks}"]

[queues.q]
description = "the only queue"
max_nodes = 1
cores_per_node = 2
max_walltime = "01:00:00"
"""


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    root = tmp_path / "plugin"
    pkg = root / "hpcem_toysched"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "toy.py").write_text(textwrap.dedent(TOY))
    (pkg / "toy.sh.j2").write_text(TEMPLATE)
    dist = root / "hpcem_toysched-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hpcem-toysched\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hpcem.schedulers]\ntoy = hpcem_toysched.toy\n")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "toy-site.toml").write_text(SITE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HPCEM_SITE_PATH", str(sites))
    from hpcem.cluster import schedulers

    monkeypatch.setattr(schedulers, "_ENV_VARS", None)
    return root


def test_the_toy_scheduler_is_found_and_renders_its_own_template(toy_plugin, tmp_path):
    from hpcem.cluster.job import JobSpec
    from hpcem.cluster.schedulers import get_scheduler, job_environment, scheduler_names
    from hpcem.cluster.site import load_site
    from hpcem.cluster.templates import render_job_script

    assert "toy" in scheduler_names() and get_scheduler("toy").NAME == "toy"
    site = load_site("toy-site")
    spec = JobSpec(
        command=("true",),
        name="t",
        workdir=str(tmp_path),
        exit_code_file=str(tmp_path / "x.exit"),
        stdout=str(tmp_path / "o"),
    )
    script = render_job_script(site, spec)
    assert "rendered from the plugin's own template" in script and "export TOY_JOB_ID=$$" in script
    assert job_environment({"TOY_JOB_ID": "77"}) == ("77", "")


def test_a_whole_run_goes_through_the_toy_scheduler(toy_plugin, project, tmp_path):
    from hpcem.execution import runs as lifecycle
    from hpcem.execution.batch import refresh_jobs
    from hpcem.execution.placement import execution_request

    out = tmp_path / "out"
    out.mkdir()
    placement = execution_request(project, {"site": "toy-site", "queue": "q", "cores": 2})
    assert placement["mode"] == "job"
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 2, "sleep_s": 0.1}, placement=placement
    )
    lifecycle.launch(project, run.id)
    job_id = project.run(run.id).attempt.job_id
    assert job_id.isdigit() and project.run(run.id).attempt.scheduler == "toy"
    deadline = time.monotonic() + 60
    while project.run(run.id).state in ("launched", "running") and time.monotonic() < deadline:
        refresh_jobs(project, project.runs)
        time.sleep(0.2)
    done = project.run(run.id)
    assert done.state == "finished", done.error
    assert (project.run_dir(run.id) / "job-1.sh").read_text().count("TOY_JOB_ID") == 1
    assert sys.modules["hpcem_toysched.toy"].NAME == "toy"
