"""The ``hpcem`` command: a thin click layer over the library.

Library code raises :class:`hpcem.errors.HpcemError`; here each error becomes one line on
stderr and a non-zero exit code (a traceback only with ``--debug``).
"""

from __future__ import annotations

import sys

import click

from hpcem import __version__
from hpcem.errors import HpcemError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcem")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """hpcem: reproducible cryo-EM single-particle processing on HPC batch systems."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each command module defines its click commands; this is the only list of them.
    from hpcem.cli import commands_demo, commands_project, commands_runs, commands_site

    for module in (commands_project, commands_runs, commands_site, commands_demo):
        for command in module.COMMANDS:
            cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    _register()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="hpcem", standalone_mode=False)
    except HpcemError as exc:
        if debug:
            raise
        click.echo(f"hpcem: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("hpcem: interrupted", err=True)
        return 130
    except click.exceptions.Abort:
        click.echo("hpcem: aborted", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"hpcem: error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"hpcem: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        click.echo(f"hpcem: error: {_os_error(exc)}", err=True)
        return 74
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"hpcem: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and please report it)",
            err=True,
        )
        return 70
    return 0


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
