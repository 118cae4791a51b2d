"""SLURM: sbatch / squeue / sacct / scancel as pure argv builders and output parsers."""

from __future__ import annotations

import re

from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.schedulers import lookup_state
from hpcem.errors import SchedulerError

NAME = "slurm"
JOB_ID_ENV = "SLURM_JOB_ID"  # what a job script of this scheduler sees
NODE_ENV = "SLURMD_NODENAME"
PROGRAMS = ("sbatch", "squeue", "scancel", "sacct")

STATE_MAP: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.PREEMPTED,
    "REQUEUE_FED": JobState.PREEMPTED,
    "REQUEUED": JobState.PREEMPTED,
    "RESV_DEL_HOLD": JobState.QUEUED,
    "SUSPENDED": JobState.QUEUED,
    "STOPPED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
}

_SQUEUE_FORMAT = "%i|%T|%r|%N"
_SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Reason"
_SUBMITTED = re.compile(r"^(?:Submitted batch job )?(\d+)(?:;[\w.-]+)?$")


IDENTIFY_ARGV = ["sinfo", "--version"]


def identify(output: str) -> bool:
    """True if ``IDENTIFY_ARGV``'s output is from this scheduler (another one may own the
    same command names: Grid Engine and PBS both ship qsub/qstat)."""
    return re.match(r"^slurm", output.strip(), re.IGNORECASE) is not None


def map_state(native: str) -> JobState:
    # sacct writes "CANCELLED by 1000"; the first word is the state
    return lookup_state(STATE_MAP, native.split()[0] if native.strip() else native, NAME)


def submit_argv(script_path: str) -> list[str]:
    return ["sbatch", "--parsable", str(script_path)]


def test_submit_argv(script_path: str) -> list[str]:
    """sbatch --test-only: validates the script and says when it would start; submits nothing."""
    return ["sbatch", "--test-only", str(script_path)]


def parse_submit_output(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` ("123" or "123;cluster") or plain sbatch output."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    if len(lines) == 1:
        m = _SUBMITTED.match(lines[0])
        if m:
            return m.group(1)
    raise SchedulerError(f"sbatch: cannot find the job id in its output: {stdout.strip()!r}")


def status_argv(job_ids) -> list[str]:
    """One squeue call for all jobs, including recently finished ones (``-t all``)."""
    return [
        "squeue",
        "--noheader",
        "--states=all",
        f"--jobs={','.join(job_ids)}",
        f"--format={_SQUEUE_FORMAT}",
    ]


def status_missing_ok(stderr: str) -> bool:
    """squeue exits 1 with this message when none of the ids is known any more."""
    return "Invalid job id specified" in stderr


def _parse_rows(stdout: str, width: int) -> list[list[str]]:
    rows = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != width:
            raise SchedulerError(f"{NAME}: cannot parse status line {line!r}")
        rows.append([f.strip() for f in fields])
    return rows


def parse_status_output(stdout: str) -> dict[str, JobStatus]:
    out = {}
    for job_id, native, reason, nodes in _parse_rows(stdout, 4):
        out[job_id] = JobStatus(
            job_id, map_state(native), native, "" if reason == "None" else reason, None, nodes
        )
    return out


def history_argv(job_ids) -> list[str]:
    """sacct for jobs squeue no longer shows (needs accounting)."""
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        f"--jobs={','.join(job_ids)}",
        f"--format={_SACCT_FIELDS}",
    ]


def parse_history_output(stdout: str) -> dict[str, JobStatus]:
    out = {}
    for job_id, native, exit_code, nodes, reason in _parse_rows(stdout, 5):
        code = None
        m = re.fullmatch(r"(\d+):(\d+)", exit_code)
        if m:
            code = int(m.group(1)) or (128 + int(m.group(2)) if int(m.group(2)) else 0)
        out[job_id] = JobStatus(
            job_id,
            map_state(native),
            native,
            "" if reason == "None" else reason,
            code,
            "" if nodes == "None assigned" else nodes,
        )
    return out


def cancel_argv(job_ids) -> list[str]:
    return ["scancel", *job_ids]


def user_jobs_argv(user: str) -> list[str]:
    return ["squeue", "--noheader", f"--user={user}", "--format=%i|%T|%r|%N|%j|%P|%M"]


def parse_user_jobs_output(stdout: str) -> list[dict]:
    rows = []
    for job_id, native, reason, nodes, name, queue, elapsed in _parse_rows(stdout, 7):
        rows.append(
            {
                "job_id": job_id,
                "name": name,
                "queue": queue,
                "native_state": native,
                "state": map_state(native).value,
                "nodes": nodes,
                "elapsed": elapsed,
                "reason": "" if reason == "None" else reason,
            }
        )
    return rows
