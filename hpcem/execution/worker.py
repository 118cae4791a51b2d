"""What a worker process runs for one step: import ``module:function`` and call it.

Shared by every executor (local processes, Parsl workers on cluster nodes), so a step
behaves the same wherever it runs. Workers never touch the project store.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Any

from hpcem.cluster.schedulers import node_name
from hpcem.errors import ProtocolError


def resolve(func_ref: str) -> Callable:
    """The function named by ``"module:function"``."""
    module_name, _, attr = func_ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ProtocolError(f"cannot find step function {func_ref!r}: {exc}") from None
    return obj


def execute_step(func_ref: str, args: dict, cwd: str | None = None) -> dict:
    """Run one step; return its result with where and when it ran. ``cwd`` (the project
    folder, as seen from this node) is where the step's project-relative paths resolve."""
    if cwd and os.getcwd() != cwd:
        os.chdir(cwd)
    started = time.time()
    return _outcome(resolve(func_ref)(**args), started)


def _outcome(result, started: float) -> dict:
    return {
        "result": result,
        "host": node_name(),
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
    }


def execute_mpi_step(
    site_name: str, func_ref: str, args: dict, ranks: int, threads: int, workdir: str, name: str
) -> dict:
    """Run one MPI step with the site's MPI launcher (srun in an allocation, or
    ``mpiexec.gforker`` here); the step's rank 0 returns the result."""
    from hpcem.cluster.site import load_site
    from hpcem.execution.mpi import run_mpi_step

    started = time.time()
    os.makedirs(workdir, exist_ok=True)
    result = run_mpi_step(
        load_site(site_name),
        func_ref,
        args,
        ranks=ranks,
        threads=threads,
        workdir=workdir,
        name=name,
    )
    return _outcome(result, started)
