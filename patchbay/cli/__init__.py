"""The ``patchbay`` command line: one module per noun, all registered on one click group.

Importing this package has no side effects; :func:`main` is the console entry point. Library
errors become one readable line on stderr and a non-zero exit status, in one place
(:func:`patchbay.cli.common.fail`).
"""

from __future__ import annotations

import click

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="patchbay")
def cli() -> None:
    """patchbay: one streaming interface to many chat-model providers."""


def _register() -> None:
    from patchbay.cli import chat, providers, serve

    for module in (chat, providers, serve):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console entry point."""
    cli(prog_name="patchbay")
