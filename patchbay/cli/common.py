"""What every command shares: option decorators, loading settings and the request log, and the one
place that turns errors into a one-line message on stderr and a non-zero exit status."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from patchbay.errors import PatchbayError
from patchbay.secrets import redact

if TYPE_CHECKING:
    from patchbay.providers.base import AsyncGeneratorProvider
    from patchbay.requestlog import RequestLog
    from patchbay.settings import Settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "config_option",
    "error_line",
    "fail",
    "json_option",
    "load",
    "model_for",
    "open_log",
    "reported",
    "verbose_option",
]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(error: BaseException | str, verbose: bool = False) -> NoReturn:
    """Print ``error`` as one line on stderr and exit non-zero; ``verbose`` adds its cause."""
    error_line(error, verbose)
    sys.exit(EXIT_ERROR)


def error_line(error: BaseException | str, verbose: bool = False) -> None:
    """Print ``error`` as one line on stderr (and its cause when ``verbose``)."""
    if isinstance(error, PatchbayError):
        message = str(error)
    elif isinstance(error, OSError) and error.strerror:
        message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        message = redact(str(error))
    click.echo(f"Error: {message}", err=True)
    cause = error.__cause__ if isinstance(error, BaseException) else None
    if verbose and cause is not None:
        click.echo(f"  caused by: {redact(repr(cause))}", err=True)


@contextlib.contextmanager
def reported(verbose: bool = False) -> Iterator[None]:
    """Run a command's body; library, file and database errors end it through :func:`fail`."""
    try:
        yield
    except (PatchbayError, OSError, sqlite3.Error) as error:
        fail(error, verbose)


def verbose_option(function: F) -> F:
    return click.option("-v", "--verbose", is_flag=True, help="Show more detail on errors.")(function)


def config_option(function: F) -> F:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help="TOML config file (default: $PATCHBAY_CONFIG, else config.toml in the config "
                             "directory).")(function)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(function)


def load(config_path: str | None) -> Settings:
    """The settings from the config file and environment."""
    from patchbay.settings import load_settings

    return load_settings(config_path)


def model_for(provider: type[AsyncGeneratorProvider], model: str | None) -> str | None:
    """``model``, else the provider's default model, else the first it lists (None if it lists none)."""
    if model:
        return model
    default = getattr(provider, "default_model", "")
    get_models = getattr(provider, "get_models", None)
    models = get_models() if get_models else []
    return default or (models[0] if models else None)


def open_log(settings: Settings, enabled: bool = True) -> RequestLog | None:
    """The request log, unless ``enabled`` is False (``--no-log``) or the config turns it off."""
    if not (enabled and settings.server.request_log):
        return None
    from patchbay.requestlog import RequestLog

    return RequestLog(settings.server.request_log_file())
