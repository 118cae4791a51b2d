"""Parsl dispatch beyond one host: workers in another network namespace reach the controller
through the site's [parsl] address; the interchange and the workers start without Parsl's
scripts on PATH; a localhost run starts the workers it asks for; the channel is encrypted.

Real Parsl, real SLURM (scripts/start-slurm.sh), and for the second host a real network
namespace with a veth pair and its own slurmd (scripts/start-netns-node.sh): node5 at
10.213.0.2, the controller's side at 10.213.0.1.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcem.cluster.site import load_site
from hpcem.execution import runs as lifecycle
from hpcem.execution.placement import execution_request

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
NETNS = "hpcem-n5"
HOST_END = "10.213.0.1"
NODE_END = "10.213.0.2"
NS_REFUSED = 3  # start-netns-node.sh: the kernel refused the namespace or the veth pair


def _slurm_answers() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (scripts/start-slurm.sh installs and starts it)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    if out.returncode != 0 or not out.stdout.strip():
        return (
            f"SLURM is not running (sinfo: {out.stderr.strip()[:200]}); bash scripts/start-slurm.sh"
        )
    return None


@pytest.fixture
def need_slurm():
    why = _slurm_answers()
    if why:
        pytest.skip(why)


@pytest.fixture
def netns_node(need_slurm):
    """node5 in network namespace hpcem-n5; always stopped and the namespace removed after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns, veth)")
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start-netns-node.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    try:
        if start.returncode == NS_REFUSED:
            pytest.skip(f"the kernel refused the network namespace: {start.stderr.strip()}")
        assert start.returncode == 0, start.stdout + start.stderr
        node = subprocess.run(
            ["sinfo", "-h", "-p", "netns", "-o", "%N"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        inode = subprocess.run(
            ["ip", "netns", "exec", NETNS, "readlink", "/proc/self/ns/net"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        yield {"node": node, "netns": inode}
    finally:
        stop = subprocess.run(
            ["bash", str(SCRIPTS / "stop-netns-node.sh")],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        gone = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert NETNS not in gone.stdout


@pytest.fixture
def where_protocol(tmp_path, monkeypatch):
    """Register tests/plugins/hpcem_netns_steps.py as a protocol plugin for this test (and
    for the controller it starts) through an entry point in a dist-info of its own."""
    dist = tmp_path / "plugin-path" / "hpcem_netns_steps-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hpcem-netns-steps\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hpcem.protocols]\nnetns = hpcem_netns_steps\n")
    monkeypatch.syspath_prepend(str(dist.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(dist.parent), os.environ["PYTHONPATH"]]))
    importlib.invalidate_caches()
    monkeypatch.setattr("hpcem.protocol.registry._REGISTRY", None)  # load again, with it


def _wait_ended(project, run_id, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = project.run(run_id)
        if lifecycle.effective_state(run) in ("finished", "failed", "aborted"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} is {project.run(run_id).state} after {timeout_s} s")


def _parsl_dir(project, run_id) -> Path:
    return project.run_dir(run_id) / "parsl"


def _one(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"{what}: {paths}"
    return paths[0]


@pytest.mark.slurm
@pytest.mark.slow
def test_steps_run_in_another_network_namespace_and_connect_through_the_site_address(
    project, netns_node, where_protocol
):
    execution = execution_request(
        project,
        {
            "site": "local-slurm-netns",
            "queue": "netns",
            "dispatch": "parsl",
            "max_blocks": 1,
            "walltime": "0:10:00",
        },
    )
    run = lifecycle.create_run(project, "test.where", {"n": 3}, placement=execution)
    lifecycle.launch(project, run.id)
    done = _wait_ended(project, run.id)
    assert done.state == "finished", done.error
    steps = project.read_steps(run.id).to_records()
    assert len(steps) == 3 and all(s["state"] == "finished" for s in steps)

    parsl = _parsl_dir(project, run.id)
    interchange_log = _one(list(parsl.glob("runinfo/*/*/interchange.log")), "interchange logs")
    port = int(
        re.search(r"Bound to port (\d+) for incoming worker", interchange_log.read_text())[1]
    )
    assert 54000 <= port <= 54999  # the site's port_range

    host_netns = os.readlink("/proc/self/ns/net")
    for s in steps:
        where = s["result"]
        assert s["host"] == netns_node["node"] == where["node"], s  # node5
        # inside the namespace, not in this host's
        assert where["netns"] == netns_node["netns"] != host_netns, where
        assert where["addresses"] == ["10.213.0.2", "127.0.0.1"], where
        assert where["hostname"] == NETNS
        # the worker pool's connection to the interchange, seen from the node
        assert f"{HOST_END}:{port}" in where["peers"], where

    # Parsl's own record: the block was told the site address, the manager connected to it
    block_script = _one(list(parsl.glob("runinfo/*/submit_scripts/*.sh")), "block scripts")
    assert f" -a {HOST_END} " in block_script.read_text()
    manager_log = _one(list(parsl.glob("workers/*/block-*/*/manager.log")), "manager logs")
    assert (
        f"Successfully connected to interchange via URL: tcp://{HOST_END}:{port}"
        in manager_log.read_text()
    )


@pytest.mark.slurm
@pytest.mark.slow
def test_parsl_run_finishes_without_the_venv_on_path(project, need_slurm, tmp_path, monkeypatch):
    # as when hpcem is run by its full path: the controller, the interchange and the
    # workers must not look for Parsl's scripts (interchange.py ...) on PATH
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("interchange.py") is None and shutil.which("process_worker_pool.py") is None
    out = tmp_path / "out"
    out.mkdir()
    execution = execution_request(
        project,
        {
            "site": "local-slurm",
            "queue": "debug",
            "dispatch": "parsl",
            "max_blocks": 1,
            "walltime": "0:10:00",
        },
    )
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 4, "sleep_s": 0.2}, placement=execution
    )
    lifecycle.launch(project, run.id)
    done = _wait_ended(project, run.id)
    assert done.state == "finished", done.error
    steps = project.read_steps(run.id).to_records()
    assert len(steps) == 4 and all(s["host"].startswith("node") for s in steps)
    block = _one(list(_parsl_dir(project, run.id).glob("runinfo/*/submit_scripts/*.sh")), "blocks")
    assert f"{sys.executable} -P -m parsl.executors.high_throughput.process_worker_pool" in (
        block.read_text()
    )


@pytest.mark.slow
def test_localhost_parsl_run_starts_the_workers_it_asks_for_over_an_encrypted_channel(
    project, tmp_path
):
    cores = load_site("localhost").queue().cores_per_node  # "auto": this machine's cores
    assert cores == len(os.sched_getaffinity(0))
    wanted = min(2, cores)
    out = tmp_path / "out"
    out.mkdir()
    execution = execution_request(
        project, {"site": "localhost", "dispatch": "parsl", "cores": wanted, "max_blocks": 1}
    )
    run = lifecycle.create_run(
        project, "test.sleepy", {"out_dir": str(out), "n": 4, "sleep_s": 0.2}, placement=execution
    )
    lifecycle.launch(project, run.id)
    done = _wait_ended(project, run.id, timeout_s=120)
    assert done.state == "finished", done.error

    parsl = _parsl_dir(project, run.id)
    manager_log = _one(list(parsl.glob("workers/*/block-*/*/manager.log")), "manager logs")
    assert f"Manager will spawn {wanted} workers" in manager_log.read_text()
    interchange_log = _one(list(parsl.glob("runinfo/*/*/interchange.log")), "interchange logs")
    counts = re.findall(r"'worker_count': (\d+)", interchange_log.read_text())
    assert counts == [str(wanted)]  # one block, registered with exactly that many workers
    # encrypted: CurveZMQ keys in the run's Parsl folder, handed to the workers
    certs = _one(list(parsl.glob("runinfo/*/*/certificates")), "certificate folders")
    assert {p.name for p in certs.iterdir()} >= {"server.key", "server.key_secret", "client.key"}
    block = _one(list(parsl.glob("runinfo/*/submit_scripts/*.sh")), "blocks")
    assert f"--cert_dir {certs}" in block.read_text()


@pytest.mark.slow
def test_executor_is_encrypted_and_takes_workers_per_node(tmp_path):
    from hpcem.execution.parsl_executor import ParslExecutor

    ex = ParslExecutor(load_site("localhost"), run_dir=tmp_path / "parsl", workers_per_node=1)
    with ex:
        assert ex.htex.encrypted is True and ex.htex.cert_dir
        assert ex.htex.interchange_launch_cmd[:3] == [sys.executable, "-P", "-m"]
        assert ex.htex.address == "127.0.0.1" and ex.htex.worker_port_range == (54000, 55000)
        results = [ex.submit("os:getpid", {}) for _ in range(3)]
        pids = {f.result(timeout=120)["result"] for f in results}
    assert len(pids) == 1  # one worker per node, as asked
