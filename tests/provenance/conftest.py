"""One real project shared by the provenance tests: simulated micrographs → CTF →
DoG picking (→ RELION LoG picking where RELION is installed), run by real controllers.

About 20 s on the shared 2-core machine, once per test session.
"""

from __future__ import annotations

import shutil
import time

import pytest

RELION_PICKER = "relion_autopick"
#: Parameters set away from their defaults, so the methods text must name them.
SIM = {"kind": "micrographs", "n_items": 2, "size_px": 512, "snr": 0.5, "seed": 7}
CTF = {"min_fit_score": 0.4, "res_low_A": 25.0}
DOG = {"diameter_A": 131.3}
LOG = {"diameter_min_A": 100.0, "diameter_max_A": 160.0}


def _wait(project, run_id, timeout_s=180.0):
    from hpcem.execution.runs import effective_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = project.run(run_id)
        if effective_state(run) in ("finished", "failed", "aborted"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {project.run(run_id).state} after {timeout_s} s")


def _run(project, protocol, params, inputs=None):
    from hpcem.execution import runs as lifecycle

    rec = lifecycle.create_run(project, protocol, params, inputs or {})
    lifecycle.launch(project, rec.id, workers=2)
    done = _wait(project, rec.id)
    assert done.state == "finished", f"{protocol}: {done.error}"
    return done


@pytest.fixture(scope="session")
def workflow(tmp_path_factory):
    """``{"project", "sim", "ctf", "dog", "log" (None without RELION)}``: finished runs."""
    from hpcem.store import Project

    project = Project.create(tmp_path_factory.mktemp("prov") / "proj")
    sim = _run(project, "sim.dataset", SIM)
    mics = [f"{sim.id}:micrographs"]
    ctf = _run(project, "ctf.estimate", CTF, {"micrographs": mics})
    dog = _run(project, "picking.dog", DOG, {"micrographs": mics, "ctfs": [f"{ctf.id}:ctfs"]})
    log = None
    if shutil.which(RELION_PICKER):
        log = _run(project, "relion.autopick_log", LOG, {"micrographs": mics})
    return {"project": project, "sim": sim, "ctf": ctf, "dog": dog, "log": log}
