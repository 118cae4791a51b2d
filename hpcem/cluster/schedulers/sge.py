"""Grid Engine (SGE/SoGE/UGE): qsub -terse / qstat -xml / qacct / qdel as pure functions."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from hpcem.cluster.job import JobState, JobStatus
from hpcem.cluster.schedulers import lookup_state
from hpcem.errors import SchedulerError

NAME = "sge"
JOB_ID_ENV = "JOB_ID"  # what a job script of this scheduler sees
NODE_ENV = None
PROGRAMS = ("qsub", "qstat", "qdel", "qacct")

# qstat state codes (man qstat): q queued, w waiting, h hold, r running, t transferring,
# R restarted, s/S/T suspended, d deletion, E error.
STATE_MAP: dict[str, JobState] = {
    "qw": JobState.QUEUED,
    "hqw": JobState.QUEUED,
    "hRwq": JobState.PREEMPTED,
    "Rq": JobState.PREEMPTED,
    "Rqw": JobState.PREEMPTED,
    "r": JobState.RUNNING,
    "t": JobState.RUNNING,
    "Rr": JobState.RUNNING,
    "Rt": JobState.RUNNING,
    "s": JobState.QUEUED,
    "ts": JobState.QUEUED,
    "S": JobState.QUEUED,
    "tS": JobState.QUEUED,
    "T": JobState.QUEUED,
    "tT": JobState.QUEUED,
    "Rs": JobState.QUEUED,
    "Rts": JobState.QUEUED,
    "RS": JobState.QUEUED,
    "RtS": JobState.QUEUED,
    "RT": JobState.QUEUED,
    "RtT": JobState.QUEUED,
    "Eqw": JobState.FAILED,
    "Ehqw": JobState.FAILED,
    "EhRqw": JobState.FAILED,
    "dr": JobState.CANCELLED,
    "dt": JobState.CANCELLED,
    "dRr": JobState.CANCELLED,
    "dRt": JobState.CANCELLED,
    "ds": JobState.CANCELLED,
    "dS": JobState.CANCELLED,
    "dT": JobState.CANCELLED,
    "dqw": JobState.CANCELLED,
    "dhqw": JobState.CANCELLED,
}


IDENTIFY_ARGV = ["qstat", "-help"]


def identify(output: str) -> bool:
    """True if ``IDENTIFY_ARGV``'s output is from this scheduler (another one may own the
    same command names: Grid Engine and PBS both ship qsub/qstat)."""
    return (
        re.match(r"^(SGE|GE|OGS|UGE|Univa|Altair Grid Engine)\b", output.strip(), re.IGNORECASE)
        is not None
    )


def map_state(native: str) -> JobState:
    return lookup_state(STATE_MAP, native, NAME)


def submit_argv(script_path: str) -> list[str]:
    return ["qsub", "-terse", str(script_path)]


def test_submit_argv(script_path: str) -> list[str]:
    """qsub -w v: verify that some queue could run the job; submits nothing."""
    return ["qsub", "-w", "v", str(script_path)]


def parse_submit_output(stdout: str) -> str:
    """The id from ``qsub -terse`` ("123") or plain qsub
    ('Your job 123 ("x") has been submitted')."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    if len(lines) == 1:
        m = re.fullmatch(r"(\d+)", lines[0]) or re.fullmatch(
            r'Your job (\d+) \(".*"\) has been submitted', lines[0]
        )
        if m:
            return m.group(1)
    raise SchedulerError(f"qsub: cannot find the job id in its output: {stdout.strip()!r}")


def status_argv(job_ids) -> list[str]:
    """qstat cannot select several ids with states; list all users' jobs once and filter."""
    return ["qstat", "-xml", "-u", "*"]


def status_missing_ok(stderr: str) -> bool:
    return False


def _jobs_from_xml(stdout: str) -> list[dict]:
    try:
        root = ET.fromstring(stdout)
    except ET.ParseError as exc:
        raise SchedulerError(f"{NAME}: cannot parse qstat -xml output: {exc}") from None
    rows = []
    for el in root.iter("job_list"):
        rows.append({child.tag: (child.text or "").strip() for child in el})
    return rows


def parse_status_output(stdout: str) -> dict[str, JobStatus]:
    out = {}
    for row in _jobs_from_xml(stdout):
        job_id = row.get("JB_job_number", "")
        if not job_id:
            continue
        native = row.get("state", "")
        queue = row.get("queue_name", "")
        out[job_id] = JobStatus(
            job_id,
            map_state(native),
            native,
            "",
            None,
            queue.split("@", 1)[1] if "@" in queue else "",
        )
    return out


def history_argv(job_ids) -> list[str] | None:
    """qacct takes one job id; the tracker asks only for jobs that left no exit-code file."""
    return ["qacct", "-j", str(job_ids[0])] if len(job_ids) == 1 else None


def parse_history_output(stdout: str) -> dict[str, JobStatus]:
    """qacct -j records: 'failed' != 0 means SGE itself killed or could not start the job."""
    out = {}
    for block in re.split(r"^=+\s*$", stdout, flags=re.MULTILINE):
        fields = {}
        for line in block.splitlines():
            m = re.match(r"^(\w+)\s+(.*?)\s*$", line)
            if m:
                fields[m.group(1)] = m.group(2)
        if "jobnumber" not in fields:
            continue
        job_id = fields["jobnumber"]
        failed = fields.get("failed", "0")
        failed_code = int(failed.split()[0]) if failed.split()[0].isdigit() else -1
        exit_word = fields.get("exit_status", "").split()
        exit_status = int(exit_word[0]) if exit_word and exit_word[0].isdigit() else None
        if failed_code == 0:
            state = JobState.COMPLETED if exit_status == 0 else JobState.FAILED
        elif failed_code == 37 or "h_rt" in failed or "s_rt" in failed:
            # 37: "qmaster enforced h_rt, h_cpu, or h_vmem limit" - SGE's walltime kill
            state = JobState.TIMEOUT
        elif failed_code == 100 and exit_status in (137, 143):
            # 100 "assumedly after job" + SIGKILL/SIGTERM: qdel (SGE kills without a grace signal)
            state = JobState.CANCELLED
        else:
            state = JobState.FAILED
        host = fields.get("hostname", "")
        out[job_id] = JobStatus(
            job_id, state, f"failed={failed}", failed if failed_code else "", exit_status, host
        )
    return out


def cancel_argv(job_ids) -> list[str]:
    return ["qdel", *job_ids]


def user_jobs_argv(user: str) -> list[str]:
    return ["qstat", "-xml", "-u", user]


def parse_user_jobs_output(stdout: str) -> list[dict]:
    rows = []
    for row in _jobs_from_xml(stdout):
        queue = row.get("queue_name", "")
        native = row.get("state", "")
        rows.append(
            {
                "job_id": row.get("JB_job_number", ""),
                "name": row.get("JB_name", ""),
                "queue": queue.split("@", 1)[0],
                "native_state": native,
                "state": map_state(native).value,
                "nodes": queue.split("@", 1)[1] if "@" in queue else "",
                "elapsed": row.get("JAT_start_time", ""),
                "reason": "",
            }
        )
    return rows
