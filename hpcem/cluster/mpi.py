"""MPI steps: build the launch command from the site's MPI command and run a step body.

A step body is a ``module:function`` that uses mpi4py itself (``MPI.COMM_WORLD``). hpcem
writes the arguments as JSON, launches ``python -m hpcem.cluster.mpi_entry`` under the
site's MPI command (``srun --mpi=pmi2 -n {ranks}`` inside a SLURM allocation,
``mpiexec.gforker -n {ranks}`` without a scheduler), and rank 0 writes the result JSON.
MPICH is told ``UCX_TLS=self,sm`` (from the site config) so nothing leaves the host's
shared memory on the test machines.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import Site
from hpcem.command import run_command
from hpcem.errors import CommandError, ConfigError, StepError, ValidationError


def mpi_launch_argv(site: Site, ranks: int, threads: int = 1) -> list[str]:
    """The site's MPI command with ``{ranks}`` and ``{threads}`` filled in."""
    if ranks < 1 or threads < 1:
        raise ValidationError(
            f"MPI step needs ranks >= 1 and threads >= 1 (got {ranks}, {threads})"
        )
    if not site.mpi_command:
        raise ConfigError(f"{site.path}: site {site.name!r} has no [mpi] command")
    try:
        return [part.format(ranks=ranks, threads=threads) for part in site.mpi_command]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{site.path}: mpi.command: bad placeholder {exc} (use {{ranks}} and {{threads}})"
        ) from None


def mpi_environment(site: Site, threads: int = 1, base: dict | None = None) -> dict[str, str]:
    """Environment for the ranks: the caller's, the site's MPI variables, OMP_NUM_THREADS."""
    env = dict(os.environ if base is None else base)
    env.update(site.mpi_env)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def step_argv(
    site: Site,
    func_ref: str,
    args_file: str,
    result_file: str,
    *,
    ranks: int,
    threads: int = 1,
    python: str | None = None,
) -> list[str]:
    """Full argv: MPI launcher + ``python -m hpcem.cluster.mpi_entry FUNC ARGS RESULT``."""
    return [
        *mpi_launch_argv(site, ranks, threads),
        python or sys.executable,
        "-m",
        "hpcem.cluster.mpi_entry",
        func_ref,
        str(args_file),
        str(result_file),
    ]


def write_args(workdir: str | os.PathLike, name: str, args: dict) -> tuple[Path, Path]:
    """Write ``<name>.args.json`` in ``workdir``; returns (args file, result file)."""
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    args_file, result_file = folder / f"{name}.args.json", folder / f"{name}.result.json"
    try:
        args_file.write_text(json.dumps(args))
    except TypeError as exc:
        raise ValidationError(f"MPI step arguments are not JSON-serialisable: {exc}") from None
    result_file.unlink(missing_ok=True)
    return args_file, result_file


def read_result(result_file: str | os.PathLike):
    """The JSON result rank 0 wrote; StepError if it is missing (the step failed)."""
    try:
        return json.loads(Path(result_file).read_text())["result"]
    except (OSError, ValueError, KeyError):
        raise StepError(f"MPI step wrote no result {result_file} (see the step's output)") from None


def run_mpi_step(
    site: Site,
    func_ref: str,
    args: dict,
    *,
    ranks: int,
    threads: int = 1,
    workdir: str | os.PathLike,
    name: str = "mpi-step",
    timeout_s: float = 3600,
):
    """Launch ``func_ref(**args)`` on ``ranks`` ranks here (inside an allocation or locally)
    and return rank 0's result."""
    args_file, result_file = write_args(workdir, name, args)
    argv = step_argv(site, func_ref, str(args_file), str(result_file), ranks=ranks, threads=threads)
    try:
        run_command(argv, timeout_s=timeout_s, env=mpi_environment(site, threads), cwd=str(workdir),
                    die_with_parent=True)  # mpiexec dies with the worker that waits for it
    except CommandError as exc:
        tail = "\n".join((exc.stderr or exc.stdout).strip().splitlines()[-5:])
        raise StepError(f"MPI step {func_ref} on {ranks} ranks failed: {exc}\n{tail}") from None
    return read_result(result_file)


def mpi_job_spec(
    site: Site,
    func_ref: str,
    args: dict,
    *,
    ranks: int,
    threads: int = 1,
    workdir: str | os.PathLike,
    name: str = "mpi-step",
    queue: str | None = None,
    walltime_s: int | None = None,
) -> tuple[JobSpec, Path]:
    """A batch job that runs the MPI step inside its own allocation.

    Ranks are packed onto as few nodes as the queue's cores allow. Returns the spec and
    the result file to read (with :func:`read_result`) once the job has finished.
    """
    q = site.queue(queue)
    per_node = max(1, q.cores_per_node // threads)
    nodes = math.ceil(ranks / per_node)
    if nodes * per_node != ranks and nodes > 1:
        raise ValidationError(
            f"{ranks} ranks x {threads} threads do not fill whole {q.cores_per_node}-core "
            f"nodes of queue {q.name!r}; use a multiple of {per_node} ranks"
        )
    args_file, result_file = write_args(workdir, name, args)
    spec = JobSpec(
        command=tuple(
            step_argv(
                site, func_ref, str(args_file), str(result_file), ranks=ranks, threads=threads
            )
        ),
        name=name,
        workdir=str(workdir),
        exit_code_file=str(Path(workdir) / f"{name}.exit"),
        stdout=str(Path(workdir) / f"{name}.out"),
        nodes=nodes,
        tasks_per_node=min(ranks, per_node),
        cores_per_task=threads,
        walltime_s=walltime_s,
        queue=q.name,
        env={**site.mpi_env, "OMP_NUM_THREADS": str(threads)},
    )
    return spec, result_file
