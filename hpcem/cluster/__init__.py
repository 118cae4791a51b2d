"""Sites, queue templates, schedulers (one module each), tracking, Parsl and MPI.

The functions other parts of hpcem call::

    from hpcem.cluster import load_site, submit_job, JobSpec, JobTracker, cancel_jobs
    site = load_site("local-slurm")
    job_id = submit_job(site, JobSpec(command=("python", "-m", "x"), name="run-3",
                                      workdir=d, exit_code_file=f"{d}/step.exit"))
    tracker = JobTracker(site); tracker.add(job_id, f"{d}/step.exit")
    tracker.poll()  # one status call for all tracked jobs
"""

from hpcem.cluster.job import JobSpec, JobState, JobStatus
from hpcem.cluster.site import Queue, Site, list_sites, load_site
from hpcem.cluster.submit import (
    cancel_jobs,
    list_user_jobs,
    query_history,
    query_status,
    submit_job,
)
from hpcem.cluster.templates import render_job_script
from hpcem.cluster.tracking import JobTracker, read_exit_code

__all__ = [
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobTracker",
    "Queue",
    "Site",
    "cancel_jobs",
    "list_sites",
    "list_user_jobs",
    "load_site",
    "query_history",
    "query_status",
    "read_exit_code",
    "render_job_script",
    "submit_job",
]
