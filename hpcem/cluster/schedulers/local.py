"""No scheduler: a job is a detached ``bash script`` process; its id is the process id.

The job runs in its own session (setsid), so cancelling signals its whole process group.
The outcome comes from the exit-code file, as for every scheduler.
"""

from __future__ import annotations

import re

from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.schedulers import lookup_state
from hpcem.errors import SchedulerError

NAME = "local"
JOB_ID_ENV = None  # what a job script of this scheduler sees
NODE_ENV = None
PROGRAMS = ("bash", "setsid", "ps", "kill")

# ps STAT first letters
STATE_MAP: dict[str, JobState] = {
    "R": JobState.RUNNING,
    "S": JobState.RUNNING,
    "D": JobState.RUNNING,
    "I": JobState.RUNNING,
    "T": JobState.QUEUED,
    "t": JobState.QUEUED,
    "Z": JobState.COMPLETED,  # exited, not yet reaped: the exit-code file decides
    "X": JobState.COMPLETED,
}

# The script path is passed as an argument ($1), never pasted into the shell text.
_LAUNCH = 'setsid bash "$1" </dev/null >/dev/null 2>&1 & echo $!'


IDENTIFY_ARGV = ["bash", "--version"]


def identify(output: str) -> bool:
    """True if ``IDENTIFY_ARGV``'s output is from this scheduler (another one may own the
    same command names: Grid Engine and PBS both ship qsub/qstat)."""
    return re.match(r"^GNU bash", output.strip(), re.IGNORECASE) is not None


def map_state(native: str) -> JobState:
    return lookup_state(STATE_MAP, native[:1], NAME)


def submit_argv(script_path: str) -> list[str]:
    return ["bash", "-c", _LAUNCH, "hpcem-submit", str(script_path)]


def test_submit_argv(script_path: str) -> list[str]:
    return ["bash", "-n", str(script_path)]


def parse_submit_output(stdout: str) -> str:
    text = stdout.strip()
    if text.isdigit():
        return text
    raise SchedulerError(f"local submit: expected a process id, got {text!r}")


def status_argv(job_ids) -> list[str]:
    return ["ps", "-o", "pid=,stat=", "-p", ",".join(job_ids)]


def status_missing_ok(stderr: str) -> bool:
    return True  # ps exits 1 when none of the pids exists


def parse_status_output(stdout: str) -> dict[str, JobStatus]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[parts[0]] = JobStatus(parts[0], map_state(parts[1]), parts[1])
    return out


def history_argv(job_ids) -> None:
    return None


def parse_history_output(stdout: str) -> dict[str, JobStatus]:
    return {}


def cancel_argv(job_ids) -> list[str]:
    # negative pid: the job's whole process group (setsid made the job its leader)
    return ["kill", "-TERM", "--", *(f"-{j}" for j in job_ids)]


def user_jobs_argv(user: str) -> list[str]:
    return ["ps", "-u", user, "-o", "pid=,stat=,etime=,args="]


def parse_user_jobs_output(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and "hpcem" in parts[3] and parts[3].startswith("bash "):
            rows.append(
                {
                    "job_id": parts[0],
                    "name": parts[3][5:],
                    "queue": "local",
                    "native_state": parts[1],
                    "state": map_state(parts[1]).value,
                    "nodes": "localhost",
                    "elapsed": parts[2],
                    "reason": "",
                }
            )
    return rows
