"""PBS Pro / OpenPBS: qsub / qstat -f -F json -x / qdel as pure functions.

Tested only against recorded output (tests/cluster/fixtures/pbs_*): there is no PBS server
for Debian to test against.
"""

from __future__ import annotations

import json
import re

from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.schedulers import lookup_state
from hpcem.errors import SchedulerError

NAME = "pbs"
JOB_ID_ENV = "PBS_JOBID"  # what a job script of this scheduler sees
NODE_ENV = None
PROGRAMS = ("qsub", "qstat", "qdel")

# job_state letters (PBS Pro Reference Guide, "Job States")
STATE_MAP: dict[str, JobState] = {
    "Q": JobState.QUEUED,
    "H": JobState.QUEUED,
    "W": JobState.QUEUED,
    "T": JobState.QUEUED,
    "M": JobState.QUEUED,
    "S": JobState.QUEUED,
    "U": JobState.QUEUED,
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,
    "B": JobState.RUNNING,
    "X": JobState.COMPLETED,
    "F": JobState.COMPLETED,  # refined by Exit_status below
}

# Negative Exit_status values PBS itself sets (JOB_EXEC_* in OpenPBS src/include/job.h)
_EXEC_CODES: dict[int, JobState] = {
    -11: JobState.PREEMPTED,  # JOB_EXEC_RERUN
    -25: JobState.FAILED,  # JOB_EXEC_KILL_NCPUS_SUM
    -26: JobState.OUT_OF_MEMORY,  # JOB_EXEC_KILL_VMEM
    -27: JobState.OUT_OF_MEMORY,  # JOB_EXEC_KILL_MEM
    -28: JobState.TIMEOUT,  # JOB_EXEC_KILL_CPUT
    -29: JobState.TIMEOUT,  # JOB_EXEC_KILL_WALLTIME
    -20: JobState.NODE_FAIL,  # JOB_EXEC_RERUN_MS_FAIL
}


IDENTIFY_ARGV = ["qstat", "--version"]


def identify(output: str) -> bool:
    """True if ``IDENTIFY_ARGV``'s output is from this scheduler (another one may own the
    same command names: Grid Engine and PBS both ship qsub/qstat)."""
    return re.match(r"^pbs_version\s*=", output.strip(), re.IGNORECASE) is not None


def map_state(native: str) -> JobState:
    return lookup_state(STATE_MAP, native, NAME)


def submit_argv(script_path: str) -> list[str]:
    return ["qsub", str(script_path)]


def test_submit_argv(script_path: str) -> None:
    """PBS has no dry-run submit."""
    return


def parse_submit_output(stdout: str) -> str:
    """The full job id qsub prints ("1234.server", "1234[].server" for arrays)."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    if len(lines) == 1 and re.fullmatch(r"\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?", lines[0]):
        return lines[0]
    raise SchedulerError(f"qsub: cannot find the job id in its output: {stdout.strip()!r}")


def status_argv(job_ids) -> list[str]:
    """One qstat for all ids; -x includes finished jobs (job history must be enabled)."""
    return ["qstat", "-f", "-F", "json", "-x", *job_ids]


def status_missing_ok(stderr: str) -> bool:
    return "Unknown Job Id" in stderr or "Job has finished" in stderr


def _load(stdout: str) -> dict:
    try:
        data = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"{NAME}: cannot parse qstat -F json output: {exc}") from None
    return data.get("Jobs", {}) or {}


def _status(job_id: str, attrs: dict) -> JobStatus:
    native = str(attrs.get("job_state", ""))
    state = map_state(native)
    exit_code = attrs.get("Exit_status")
    exit_code = (
        int(exit_code)
        if isinstance(exit_code, (int, str)) and str(exit_code).lstrip("-").isdigit()
        else None
    )
    reason = str(attrs.get("comment", ""))
    if native in ("F", "X") and exit_code is not None:
        if exit_code == 0:
            state = JobState.COMPLETED
        elif exit_code in _EXEC_CODES:
            state = _EXEC_CODES[exit_code]
        elif exit_code > 256:  # killed by signal exit_code - 256 (qdel: SIGTERM/SIGKILL)
            state = JobState.CANCELLED if exit_code - 256 in (9, 15) else JobState.FAILED
            exit_code = 128 + exit_code - 256
        else:
            state = JobState.FAILED
    host = str(attrs.get("exec_host", "")).split("/")[0]
    return JobStatus(job_id, state, native, reason, exit_code, host)


def parse_status_output(stdout: str) -> dict[str, JobStatus]:
    return {job_id: _status(job_id, attrs) for job_id, attrs in _load(stdout).items()}


def history_argv(job_ids) -> None:
    return None  # status_argv already includes finished jobs (-x)


def parse_history_output(stdout: str) -> dict[str, JobStatus]:
    return parse_status_output(stdout)


def cancel_argv(job_ids) -> list[str]:
    return ["qdel", *job_ids]


def user_jobs_argv(user: str) -> list[str]:
    return ["qstat", "-f", "-F", "json", "-u", user]


def parse_user_jobs_output(stdout: str) -> list[dict]:
    rows = []
    for job_id, attrs in _load(stdout).items():
        st = _status(job_id, attrs)
        rows.append(
            {
                "job_id": job_id,
                "name": attrs.get("Job_Name", ""),
                "queue": attrs.get("queue", ""),
                "native_state": st.native_state,
                "state": st.state.value,
                "nodes": st.nodes,
                "elapsed": attrs.get("resources_used", {}).get("walltime", ""),
                "reason": st.reason,
            }
        )
    return rows
