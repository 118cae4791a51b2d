"""The ``hpcem`` command: a thin click layer over the library.

Library code raises :class:`hpcem.errors.HpcemError`; here each error becomes one line on
stderr and a non-zero exit code (a traceback only with ``--debug``). The plain
``hpcem status PROJECT``, which people run in a loop on projects of thousands of runs,
goes straight to its table without loading click or the other commands.
"""

from __future__ import annotations

import os
import sys

from hpcem.errors import HpcemError


def _cli():
    """The click command group with every command (built on first use)."""
    import click

    from hpcem import __version__
    from hpcem.cli import (
        commands_convert,
        commands_demo,
        commands_project,
        commands_provenance,
        commands_runs,
        commands_sim,
        commands_site,
        commands_workflow,
    )

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="hpcem")
    @click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
    @click.pass_context
    def cli(ctx: click.Context, debug: bool) -> None:
        """hpcem: reproducible cryo-EM single-particle processing on HPC batch systems."""
        ctx.ensure_object(dict)
        ctx.obj["debug"] = debug

    # Each command module defines its click commands; this is the only list of them.
    modules = (
        commands_project,
        commands_runs,
        commands_site,
        commands_demo,
        commands_sim,
        commands_convert,
        commands_provenance,
        commands_workflow,
    )
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)
    return cli


def _is_plain_status(args: list[str]) -> bool:
    """``hpcem status PROJECT`` and nothing else (no option, no run, no help)."""
    return len(args) == 2 and args[0] == "status" and not args[1].startswith("-")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        if _is_plain_status(args):
            # No linear algebra here: without this, loading numpy starts one OpenBLAS
            # thread per core (and exit joins them), which on a busy or many-core login
            # node costs more than reading the whole index. Child processes (squeue,
            # scancel for live runs) do not use it; a user's own setting is kept.
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            from hpcem.cli.status_table import print_status

            print_status(args[1])
        else:
            _cli().main(args=args, prog_name="hpcem", standalone_mode=False)
    except HpcemError as exc:
        if debug:
            raise
        _say(f"hpcem: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("hpcem: interrupted")
        return 130
    except OSError as exc:
        if debug:
            raise
        _say(f"hpcem: error: {_os_error(exc)}")
        return 74
    except Exception as exc:
        code = _click_error(exc)
        if code is not None:
            return code
        if debug:
            raise
        _say(
            f"hpcem: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and please report it)"
        )
        return 70
    return 0


def _click_error(exc: Exception) -> int | None:
    """Say a click error (usage, abort) and return its exit code; None for other errors."""
    click = sys.modules.get("click")
    if click is None:  # click was never loaded: not one of its errors
        return None
    if isinstance(exc, click.exceptions.Abort):
        _say("hpcem: aborted")
        return 130
    if isinstance(exc, click.UsageError):
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _say(f"hpcem: error: {exc.format_message()}{hint}")
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        _say(f"hpcem: error: {exc.format_message()}")
        return exc.exit_code
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _os_error(exc: OSError) -> str:
    """One line for an operating-system error that no library call turned into ours."""
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the filesystem{where}: free space, then 'hpcem continue'"
    if exc.errno == errno.EROFS:
        return f"the filesystem is read-only{where}"
    return f"{exc.strerror or exc}{where}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
