"""The local worker pool: a lost worker fails only its step, workers die with their
controller, and nothing in the controller's folder is code for them. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hpcem.errors import ItemRejected, RunError, WorkerLostError
from hpcem.execution.local import LocalExecutor, worker_sys_path

DEATH_S = 10.0  # generous bound for "gone within N seconds"
STEPS = "hpcem_pool_steps"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is dead: pid 1 here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout_s} s")


def _pid_from(path: Path, timeout_s: float = 60.0) -> int:
    text = _wait_until(lambda: path.exists() and path.read_text(), timeout_s, f"{path} written")
    return int(text)


def _pids_with_argv(argv: list[str]) -> list[int]:
    wanted = "\0".join(argv) + "\0"
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/cmdline").read_text() == wanted and _alive(int(name)):
                    out.append(int(name))
            except OSError:
                pass
    return out


def _worker_children() -> list[int]:
    """Live spawned multiprocessing children of this process."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and "spawn_main" in cmdline and _alive(int(name)):
            out.append(int(name))
    return out


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def executor():
    ex = LocalExecutor(2).start()
    yield ex
    ex.shutdown(cancel=True)


def _hold(ex, folder: Path, i: int):
    return ex.submit(
        f"{STEPS}:hold",
        {"pid_file": str(folder / f"pid{i}"), "release_file": str(folder / "release")},
    )


def test_killed_worker_fails_only_its_step_and_is_replaced(tmp_path):
    ex = LocalExecutor(4).start()
    try:
        futures = [_hold(ex, tmp_path, i) for i in range(4)]
        pids = [_pid_from(tmp_path / f"pid{i}") for i in range(4)]
        assert len(set(pids)) == 4
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(WorkerLostError) as lost:
            futures[1].result(timeout=DEATH_S)
        assert str(lost.value) == (
            f"worker process {pids[1]} running the step died (killed by signal 9 (SIGKILL))"
        )
        # The three others still hold their workers: a new step can only run on a new one.
        fifth = ex.submit(f"{STEPS}:pid", {}).result(timeout=60)
        assert fifth["result"] not in pids and fifth["pid"] == fifth["result"]
        assert not any(futures[i].done() for i in (0, 2, 3))
        (tmp_path / "release").touch()
        assert [futures[i].result(timeout=30)["result"] for i in (0, 2, 3)] == [
            pids[0],
            pids[2],
            pids[3],
        ]
    finally:
        ex.shutdown(cancel=True)


def test_step_errors_keep_their_type(executor):
    with pytest.raises(ItemRejected, match=r"^micrograph 3: 1048576 NaN pixels$") as rejected:
        executor.submit(f"{STEPS}:reject", {"message": "micrograph 3: 1048576 NaN pixels"}).result(
            timeout=60
        )
    assert type(rejected.value) is ItemRejected
    assert "in reject" in str(rejected.value.__cause__)  # the worker's traceback
    with pytest.raises(RuntimeError, match=r"^_Unpicklable: boom$"):
        executor.submit(f"{STEPS}:raise_unpicklable", {"message": "boom"}).result(timeout=60)
    with pytest.raises(RuntimeError, match=r"^SystemExit: 3$"):
        executor.submit(f"{STEPS}:exit_step", {"code": 3}).result(timeout=60)
    # none of that cost a worker
    assert executor.submit(f"{STEPS}:pid", {}).result(timeout=60)["result"] > 0


CONTROLLER = """
import sys
from hpcem.execution.local import LocalExecutor

if __name__ == "__main__":
    folder = sys.argv[1]
    ex = LocalExecutor(2).start()
    futures = [ex.submit("hpcem_pool_steps:hold", {"pid_file": f"{folder}/pid{i}",
                                                   "release_file": f"{folder}/never"})
               for i in range(2)]
    for f in futures:
        f.result()
"""


def test_workers_die_with_a_killed_controller(tmp_path):
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path)
    pids = []
    try:
        pids = [_pid_from(tmp_path / f"pid{i}") for i in range(2)]
        assert all(_alive(p) for p in pids) and len(set(pids)) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEATH_S)
        _wait_until(lambda: not any(_alive(p) for p in pids), DEATH_S, "workers gone")
    finally:
        proc.kill()
        proc.wait()
        _kill_all(pids)


def test_program_started_with_die_with_parent_dies_with_its_worker(tmp_path):
    ex = LocalExecutor(1).start()
    argv = ["sleep", f"300.{uuid.uuid4().int % 10**6:06d}"]  # a unique argv to find it by
    found = []
    try:
        future = ex.submit(
            f"{STEPS}:run_program", {"pid_file": str(tmp_path / "pid"), "argv": argv}
        )
        worker = _pid_from(tmp_path / "pid")
        found = _wait_until(lambda: _pids_with_argv(argv), 30, "sleep started")
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match=f"worker process {worker} "):
            future.result(timeout=DEATH_S)
        _wait_until(lambda: not _pids_with_argv(argv), DEATH_S, "sleep gone")
    finally:
        ex.shutdown(cancel=True)
        _kill_all(found)


PLANTED_CONTROLLER = """
import importlib.util, json
from hpcem.execution.local import LocalExecutor

def main():
    seen = importlib.util.find_spec("hpcem_planted_probe") is not None  # found, not imported
    ex = LocalExecutor(1).start()
    try:
        ex.submit("hpcem_pool_steps:import_planted", {}).result(timeout=60)
        outcome = "imported"
    except Exception as exc:
        outcome = type(exc).__name__
    ex.shutdown()
    print(json.dumps({"controller_sees_it": seen, "outcome": outcome}))

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("style", ["-c", "script", "-m"])
def test_module_planted_in_the_current_folder_is_not_code_for_workers(tmp_path, style):
    (tmp_path / "hpcem_planted_probe.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('imported.marker').touch()\n"
    )
    (tmp_path / "planted_controller.py").write_text(PLANTED_CONTROLLER)
    argv = {
        "-c": ["-c", PLANTED_CONTROLLER],
        "script": ["planted_controller.py"],
        "-m": ["-m", "planted_controller"],
    }[style]
    out = subprocess.run(
        [sys.executable, *argv],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"controller_sees_it": True, "outcome": "ModuleNotFoundError"}
    assert not (tmp_path / "imported.marker").exists()


def test_worker_sys_path_drops_relative_and_duplicate_entries():
    assert worker_sys_path(["", ".", "rel/dir", "/x/lib", "/x/lib", "/y"]) == ["/x/lib", "/y"]


def test_workers_hold_no_descriptor_of_the_controller(tmp_path):
    lock = tmp_path / "controller.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.set_inheritable(fd, True)  # even an inheritable one stays here
    ex = LocalExecutor(1).start()
    try:
        targets = ex.submit(f"{STEPS}:open_files", {}).result(timeout=60)["result"]
    finally:
        ex.shutdown()
        os.close(fd)
    assert str(lock) not in targets
    # its pipe to the controller, its sentinel and resource tracker pipes, the /dev/null
    # multiprocessing opens as its stdin
    assert all(t.startswith(("pipe:", "socket:")) or t == os.devnull for t in targets), targets


def test_shutdown_cancel_kills_workers_and_cancels_queued_steps(tmp_path):
    ex = LocalExecutor(2).start()
    running = [_hold(ex, tmp_path, i) for i in range(2)]
    queued = [ex.submit(f"{STEPS}:pid", {}) for _ in range(3)]
    pids = [_pid_from(tmp_path / f"pid{i}") for i in range(2)]
    ex.shutdown(cancel=True)
    assert not any(_alive(p) for p in pids)
    assert _worker_children() == []
    assert all(f.cancelled() for f in queued)
    for f in running:
        with pytest.raises(RunError, match="shut down"):
            f.result(timeout=1)
    with pytest.raises(RunError, match="shut down"):
        ex.submit(f"{STEPS}:pid", {})


def test_shutdown_waits_for_running_and_queued_steps(tmp_path):
    ex = LocalExecutor(2).start()
    futures = [ex.submit(f"{STEPS}:pid", {}) for _ in range(5)]
    ex.shutdown()
    assert all(f.done() and f.result()["result"] > 0 for f in futures)
    assert _worker_children() == []
