"""MPI steps: build the launch command from the site's MPI command and run a step body.

A step body is a ``module:function`` that uses mpi4py itself (``MPI.COMM_WORLD``). hpcem
writes the arguments as JSON, launches ``python -m hpcem.execution.mpi_entry`` under the
site's MPI command (``srun --mpi=pmi2 -n {ranks}`` inside a SLURM allocation,
``mpiexec.gforker -n {ranks}`` without a scheduler), and rank 0 writes the result JSON.
MPICH is told ``UCX_TLS=self,sm`` (from the site config) so nothing leaves the host's
shared memory on the test machines.

A step has no time limit of its own unless one is given: inside a batch job the job's
walltime bounds it. The launcher runs as the leader of its own process group, so that a
step that runs past its limit is ended whole: every rank and whatever the ranks started.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import Site
from hpcem.command import CommandResult, _death_signal_preexec, checked_argv
from hpcem.errors import CommandError, ConfigError, StepError, ValidationError

#: Between SIGTERM and SIGKILL of a launcher's process group: srun passes SIGTERM on to
#: the step's tasks and ends the step cleanly when given the time.
STOP_GRACE_S = 5.0


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
    """Full argv: MPI launcher + ``python -m hpcem.execution.mpi_entry FUNC ARGS RESULT``."""
    return [
        *mpi_launch_argv(site, ranks, threads),
        python or sys.executable,
        "-m",
        "hpcem.execution.mpi_entry",
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
    for stale in rank_error_files(result_file):
        stale.unlink(missing_ok=True)
    return args_file, result_file


def rank_error_files(result_file: str | os.PathLike) -> list[Path]:
    """The ``RESULT.rankN.error`` files failing ranks wrote (hpcem.execution.mpi_entry)."""
    result_file = Path(result_file)
    return sorted(result_file.parent.glob(result_file.name + ".rank*.error"))


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
    timeout_s: float | None = None,
):
    """Launch ``func_ref(**args)`` on ``ranks`` ranks here (inside an allocation or locally)
    and return rank 0's result.

    ``timeout_s`` is a limit for this step; None (the default) sets none, for a step
    inside a batch job whose walltime bounds it. Past the limit every rank is stopped
    and StepError is raised.
    """
    args_file, result_file = write_args(workdir, name, args)
    argv = step_argv(site, func_ref, str(args_file), str(result_file), ranks=ranks, threads=threads)
    try:
        run_launcher(
            argv, timeout_s=timeout_s, env=mpi_environment(site, threads), cwd=str(workdir)
        )
    except CommandError as exc:
        tail = "\n".join((exc.stderr or exc.stdout).strip().splitlines()[-5:])
        ranks_said = []
        for path in rank_error_files(result_file):
            try:
                ranks_said.append(path.read_text().strip())
            except OSError:
                continue
        said = f" ({'; '.join(ranks_said[:2])})" if ranks_said else ""
        raise StepError(
            f"MPI step {func_ref} on {ranks} ranks failed{said}: {exc}\n{tail}"
        ) from None
    return read_result(result_file)


def run_launcher(
    argv: Sequence[str],
    *,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    grace_s: float = STOP_GRACE_S,
) -> CommandResult:
    """Run an MPI launcher (``mpiexec``, ``srun``) like :func:`hpcem.command.run_command`,
    but as the leader of a new session and process group.

    On a timeout (``timeout_s``; None waits as long as it takes), or when waiting is
    interrupted, the whole group gets SIGTERM, then SIGKILL after ``grace_s``: no rank,
    and no program a rank started, outlives the step. The launcher is also killed by the
    kernel when the calling thread's process dies (see ``die_with_parent`` there; the
    ranks of ``hpcem.execution.mpi_entry`` follow their launcher in turn).

    Raises :class:`CommandNotFoundError` when the launcher is not on PATH and
    :class:`CommandError` on a timeout or a non-zero exit.
    """
    argv = checked_argv(argv, env)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            # Only prctl and getppid run in the child (see hpcem.command): thread-safe.
            preexec_fn=_death_signal_preexec(),  # noqa: PLW1509
        )
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc}", argv) from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop_group(proc, grace_s)
        raise CommandError(
            f"{argv[0]} ran past its limit of {timeout_s:g} s and was stopped with all "
            f"its processes: {' '.join(argv)}",
            argv,
            None,
            stdout,
            stderr,
        ) from None
    except BaseException:  # interrupted while waiting (KeyboardInterrupt, SystemExit)
        _stop_group(proc, grace_s)
        raise
    if proc.returncode != 0:
        detail = (stderr or stdout).strip().splitlines()
        tail = detail[-1] if detail else "no output"
        raise CommandError(
            f"{argv[0]} exited with code {proc.returncode}: {tail}",
            argv,
            proc.returncode,
            stdout,
            stderr,
        )
    return CommandResult(argv, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> tuple[str, str]:
    """SIGTERM the launcher's process group, SIGKILL what is left after ``grace_s``;
    return the output read so far."""
    # The launcher leads its own group (start_new_session), so its pid is the group's id;
    # it is not yet reaped at the first signal, so the id can belong to no one else.
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    try:  # returns once every process holding the output pipes has exited
        stdout, stderr = proc.communicate(timeout=grace_s)
        ended = True
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, ended = _text(exc.stdout), _text(exc.stderr), False
    _signal_group(pgid, signal.SIGKILL)  # what ignored SIGTERM or let go of the pipes
    if not ended:
        try:
            stdout, stderr = proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:  # a process that left the group holds the pipes
            proc.kill()
            proc.wait()
    return stdout or "", stderr or ""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group has ended


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


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
