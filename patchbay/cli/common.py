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
from patchbay.redact import redact

if TYPE_CHECKING:
    from patchbay.providers.base import AsyncGeneratorProvider
    from patchbay.requestlog import RequestLog
    from patchbay.settings import Settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "config_option",
    "error_line",
    "fail",
    "find_provider",
    "json_option",
    "listed_model",
    "load",
    "model_for",
    "open_log",
    "reported",
    "require_key",
    "verbose_option",
]

#: The exit statuses, one per kind of failure (README, "Command line").
EXIT_ERROR = 1  # the command was well formed but failed: a provider, a file, a name that does not exist
EXIT_USAGE = 2  # a mistake in the command line itself (click's usage errors exit with this too)
EXIT_INTERRUPTED = 130  # Ctrl-C

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
    """``model``, else the provider's default model as its class states it (never the network);
    None when it states none (:func:`listed_model` asks the service)."""
    from patchbay.routing.targets import default_model

    return model or default_model(provider)


def require_key(provider: type[AsyncGeneratorProvider]) -> None:
    """Raise the AuthError a request would end with because ``provider`` needs an API key and has
    none (neither in its variable nor stored), before anything is sent."""
    from patchbay.errors import AuthError
    from patchbay.secrets.pool import CredentialPool

    pool = getattr(provider, "credentials", None)
    if not (provider.needs_auth and isinstance(pool, CredentialPool)):
        return
    pool.load_env()
    if len(pool):
        return
    where = f" (set {pool.env_var}, or store it with `patchbay keys set {pool.env_var}`)" if pool.env_var else ""
    raise AuthError(f"needs an API key{where}", provider=provider.name)


async def listed_model(provider: type[AsyncGeneratorProvider]) -> str | None:
    """The first model the service lists (``GET /models``), for a provider whose class names no
    default; a missing key is said as such, not as the service's refusal. None: it lists none."""
    fetch = getattr(provider, "fetch_models", None)
    if fetch is None:
        return None
    require_key(provider)
    models = await fetch()
    return str(models[0]) if models else None


def find_provider(settings: Settings, name: str) -> type[AsyncGeneratorProvider]:
    """The provider ``name`` (any case): a ``[providers]`` entry, else a built-in one, else an
    OpenAI-compatible preset (``groq``, ``ollama``...); otherwise InvalidRequest listing them."""
    from patchbay.errors import InvalidRequest
    from patchbay.providers import registry
    from patchbay.providers.openai_compatible import OpenAICompatible
    from patchbay.providers.presets import PRESETS

    configured = next((entry for entry in settings.providers if entry.lower() == name.lower()), None)
    if configured is not None:
        return settings.provider_class(configured)
    try:
        return registry.get(name)
    except InvalidRequest:
        pass  # not a built-in provider: perhaps a preset
    if name.lower() in PRESETS:
        return OpenAICompatible.from_preset(name)
    known = [f"configured: {', '.join(settings.providers)}"] if settings.providers else []
    known += [f"built-in: {', '.join(registry.names())}", f"presets: {', '.join(sorted(PRESETS))}"]
    raise InvalidRequest(f"unknown provider {name!r}; {'; '.join(known)}", param="provider")


def open_log(settings: Settings, enabled: bool = True) -> RequestLog | None:
    """The request log, unless ``enabled`` is False (``--no-log``) or the config turns it off."""
    if not (enabled and settings.server.request_log):
        return None
    from patchbay.requestlog import RequestLog

    return RequestLog(settings.server.request_log_file(), **settings.server.request_log_options())
