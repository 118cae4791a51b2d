"""Independent steps on cluster nodes through Parsl's HighThroughputExecutor.

Blocks are batch jobs built from hpcem's site template (:class:`HpcemProvider`); Parsl
scales them up and down with the number of pending steps. Workers only compute and
return JSON-serialisable results; the single controller writes the project store.

The site's ``[parsl]`` table says where workers connect back to: the interchange listens
for them on that one address (never on every interface), on a port of ``port_range``; the
controller talks to the interchange on 127.0.0.1. The channel is CurveZMQ-encrypted. The
interchange is started by this interpreter and the workers by the site's
``worker_command``, so neither needs Parsl's scripts on PATH.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import os
import shlex
import sys
from pathlib import Path

from hpcem.cluster.site import Site, resolve_parsl_address, worker_command
from hpcem.errors import RunError, ValidationError
from hpcem.execution.worker import execute_step

#: The interchange as a module of this interpreter (Parsl's default runs ``interchange.py``
#: from PATH). ``-P``: the current folder is not put on its ``sys.path``.
INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"


def parsl_launch_cmd(site: Site, controller_python: str | None = None) -> str:
    """HTEX ``launch_cmd``: the site's worker command, then Parsl's own worker options.

    Parsl's default starts with the script name ``process_worker_pool.py``; its options
    (``{placeholders}`` Parsl fills in) are kept as they are.
    """
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    script = "process_worker_pool.py "
    if not DEFAULT_LAUNCH_CMD.startswith(script):
        raise RunError(
            f"this Parsl's worker launch command does not start with {script.strip()!r}: "
            f"{DEFAULT_LAUNCH_CMD[:60]!r}...; hpcem cannot put the site's worker command first"
        )
    command = shlex.join(worker_command(site, controller_python))
    # Parsl formats the whole string: braces of the site's command are literal
    return command.replace("{", "{{").replace("}", "}}") + " " + DEFAULT_LAUNCH_CMD[len(script) :]


def _check_parsl(htex_class) -> None:
    """RunError unless this Parsl and pyzmq can run an encrypted HTEX from this interpreter."""
    import inspect

    import parsl
    import zmq

    params = inspect.signature(htex_class.__init__).parameters
    missing = [p for p in ("interchange_launch_cmd", "launch_cmd", "encrypted") if p not in params]
    if missing:
        raise RunError(
            f"Parsl {parsl.__version__}: HighThroughputExecutor has no {', '.join(missing)}; "
            "hpcem needs them (tested with Parsl 2026.10): upgrade parsl"
        )
    if not zmq.has("curve"):
        raise RunError(
            f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}) has no CURVE support, so "
            "Parsl's channel cannot be encrypted: install a pyzmq wheel (it bundles libsodium)"
        )


def _check_func_ref(func_ref: str) -> None:
    module_name, sep, func_name = func_ref.partition(":")
    if not sep or not module_name or not func_name.isidentifier():
        raise ValidationError(f"step function {func_ref!r} is not 'module:function'")


class ParslExecutor:
    """The executor contract (``submit``/``shutdown``) on a site, via Parsl HTEX.

    Construction only stores settings; :meth:`start` resolves the site's Parsl address and
    creates the provider, the executor and the Parsl DataFlowKernel.

    ``workers_per_node``: workers each block starts per node, and the cores it asks for
    (the run's requested cores; default: the queue's cores per node).
    """

    def __init__(
        self,
        site: Site,
        *,
        queue: str | None = None,
        max_blocks: int = 1,
        min_blocks: int = 0,
        init_blocks: int = 0,
        nodes_per_block: int = 1,
        workers_per_node: int | None = None,
        walltime_s: int | None = None,
        run_dir: str | os.PathLike = "hpcem-parsl",
        max_idletime_s: float = 30.0,
        strategy_period_s: float = 1.0,
        label: str = "hpcem",
        cwd: str | os.PathLike | None = None,
    ):
        self.site = site
        self.queue = queue or site.default_queue
        self.max_blocks = max_blocks
        self.min_blocks = min_blocks
        self.init_blocks = init_blocks
        self.nodes_per_block = nodes_per_block
        self.workers_per_node = workers_per_node
        self.walltime_s = walltime_s
        self.run_dir = Path(run_dir)
        self.max_idletime_s = max_idletime_s
        self.strategy_period_s = strategy_period_s
        self.label = label
        self.cwd = str(cwd) if cwd else None  # where steps run on the nodes (the project)
        self.provider = None
        self.htex = None
        self._dfk = None
        self._app = None

    def start(self) -> ParslExecutor:
        """Start Parsl (interchange on the site's Parsl address); blocks are submitted as
        steps arrive."""
        if self._dfk is not None:
            return self
        from parsl.app.app import python_app
        from parsl.config import Config
        from parsl.dataflow.dflow import DataFlowKernel
        from parsl.executors import HighThroughputExecutor

        from hpcem.execution.parsl_provider import HpcemProvider

        self.site.queue(self.queue)  # ConfigError now, not inside Parsl
        address = resolve_parsl_address(self.site)  # ConfigError now, too
        _check_parsl(HighThroughputExecutor)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cores = self.workers_per_node or self.site.queues[self.queue].cores_per_node
        self.provider = HpcemProvider(
            self.site,
            queue=self.queue,
            script_dir=str(self.run_dir / "blocks"),
            nodes_per_block=self.nodes_per_block,
            init_blocks=self.init_blocks,
            min_blocks=self.min_blocks,
            max_blocks=self.max_blocks,
            walltime_s=self.walltime_s,
            cores_per_node=cores,
        )
        htex = HighThroughputExecutor(
            label=self.label,
            provider=self.provider,
            address=address,
            loopback_address="127.0.0.1",
            worker_port_range=self.site.parsl.port_range,
            launch_cmd=parsl_launch_cmd(self.site),
            interchange_launch_cmd=[sys.executable, "-P", "-m", INTERCHANGE_MODULE],
            encrypted=True,
            max_workers_per_node=cores,
            cores_per_worker=1,
            heartbeat_period=5,
            heartbeat_threshold=30,
            poll_period=10,
            worker_logdir_root=str(self.run_dir / "workers"),
        )
        self.htex = htex
        config = Config(
            executors=[htex],
            run_dir=str(self.run_dir / "runinfo"),
            # "simple": add blocks while steps wait, remove them after max_idletime with no
            # steps. (htex_auto_scale also kills blocks whose workers have not connected yet
            # whenever slots exceed tasks, so a block still queued is cancelled and resubmitted.)
            strategy="simple",
            strategy_period=self.strategy_period_s,
            max_idletime=self.max_idletime_s,
            usage_tracking=0,
            initialize_logging=False,
        )
        self._dfk = DataFlowKernel(config)
        self._app = python_app(execute_step, data_flow_kernel=self._dfk, executors=[self.label])
        # a controller that dies of an exception must not leave blocks holding nodes until
        # their walltime (idle workers do not notice that the interchange is gone)
        atexit.register(self._cancel_blocks_at_exit)
        return self

    def _cancel_blocks_at_exit(self) -> None:
        if self._dfk is not None:
            try:
                self.shutdown(cancel=True)
            except Exception:  # noqa: BLE001 - last resort: cancel the batch jobs directly
                if self.provider is not None:
                    self.provider.cancel(self.provider.tracker.job_ids)

    def submit(
        self, func_ref: str, args: dict, resources: dict | None = None
    ) -> concurrent.futures.Future:
        """Run ``func_ref(**args)`` on a worker; the future's result is
        :func:`hpcem.execution.worker.execute_step`'s dict (result, host, pid, times)."""
        if self._dfk is None:
            raise RunError("ParslExecutor.submit before start()")
        _check_func_ref(func_ref)
        try:
            json.dumps(args)
        except TypeError as exc:
            raise ValidationError(
                f"arguments of {func_ref} are not JSON-serialisable: {exc}"
            ) from None
        return self._app(func_ref, args, self.cwd)

    def job_ids(self) -> list[str]:
        """Batch job ids of every block submitted so far."""
        return self.provider.tracker.job_ids if self.provider else []

    @property
    def status_calls(self) -> int:
        return self.provider.status_calls if self.provider else 0

    def shutdown(self, cancel: bool = False) -> None:
        """Stop Parsl; its blocks are cancelled (``cancel`` also cancels pending steps first)."""
        if self._dfk is None:
            return
        if cancel:
            for task in list(self._dfk.tasks.values()):
                fut = task.get("app_fu")
                if fut is not None and not fut.done():
                    fut.cancel()
        atexit.unregister(self._cancel_blocks_at_exit)
        try:
            self._dfk.cleanup()
        finally:
            self._dfk = None
            self._app = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown(cancel=exc[0] is not None)
