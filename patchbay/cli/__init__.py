"""The ``patchbay`` command line: one module per noun, all registered on one click group.

Importing this package has no side effects; :func:`main` is the console entry point. Every error
is one readable line on stderr and a non-zero exit status, one per kind of failure (see
:mod:`patchbay.cli.common`): 2 for a mistake in the command line (click's usage errors, raised as
``click.UsageError``), 1 for a command that failed as it ran (library, file and database errors
through :func:`patchbay.cli.common.fail`, the CLI's own as ``click.ClickException``), 130 after
Ctrl-C.
"""

from __future__ import annotations

import sys

import click

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="patchbay")
def cli() -> None:
    """patchbay: one streaming interface to many chat-model providers."""


def _register() -> None:
    from patchbay.cli import chat, config, cookies, logs, models, providers, serve

    for module in (chat, models, providers, logs, config, cookies, serve):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(args: list[str] | None = None) -> None:
    """Console entry point."""
    from patchbay.cli.common import EXIT_INTERRUPTED

    try:
        status = cli.main(args=args, prog_name="patchbay", standalone_mode=False)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        click.echo(f"Error: {error.format_message()}{hint}", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status if isinstance(status, int) else 0)
