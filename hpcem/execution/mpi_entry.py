"""Entry point every MPI rank runs: ``python -m hpcem.execution.mpi_entry FUNC ARGS RESULT``.

Each rank imports ``module:function`` and calls it with the JSON arguments; rank 0
writes ``{"result": ...}`` to RESULT (atomically). A failing rank writes its error's
first line to ``RESULT.rankN.error`` and aborts the whole job so that no rank waits
forever in a collective.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    func_ref, args_file, result_file = argv
    from hpcem.command import die_with_parent

    die_with_parent(os.getppid())  # a rank never outlives its launcher (mpiexec, srun's step)
    if os.environ.get("HPCEM_STEP_CWD"):  # project-relative paths of the step resolve there
        os.chdir(os.environ["HPCEM_STEP_CWD"])
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        module_name, _, func_name = func_ref.partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
        with open(args_file) as f:
            args = json.load(f)
        result = func(**args)
        if comm.rank == 0:
            tmp = f"{result_file}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"result": result, "ranks": comm.size}, f)
            os.replace(tmp, result_file)
    except Exception as exc:  # noqa: BLE001 - report and abort every rank
        sys.stderr.write(f"rank {comm.rank}: step {func_ref} failed\n{traceback.format_exc()}")
        sys.stderr.flush()
        # The rank's own error, for the step's error message (the launcher's output ends
        # with MPI's abort lines, not with this).
        try:
            with open(f"{result_file}.rank{comm.rank}.error", "w") as f:
                f.write(f"rank {comm.rank}: {type(exc).__name__}: {exc}".splitlines()[0])
        except OSError:
            pass
        comm.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
