"""What every command shares: one place that turns library errors into one-line CLI errors."""

from __future__ import annotations

import sys

import click

from patchbay.errors import PatchbayError
from patchbay.secrets import redact

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "fail"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def fail(error: PatchbayError, verbose: bool = False) -> None:
    """Print ``error`` as one line on stderr and exit non-zero."""
    click.echo(f"Error: {error}", err=True)
    if verbose and error.__cause__ is not None:
        click.echo(f"  caused by: {redact(repr(error.__cause__))}", err=True)
    sys.exit(EXIT_ERROR)
