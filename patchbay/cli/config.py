"""``patchbay config`` (where the config file is, what the settings are) and ``patchbay keys``
(credentials stored in ``keys.json``, readable by the owner only)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from patchbay.cli.common import config_option, fail, json_option, load, reported, verbose_option

if TYPE_CHECKING:
    from patchbay.settings import Settings

__all__ = ["COMMANDS", "config", "keys"]


@click.group()
def config() -> None:
    """Where the config file is, and the settings it and the environment give."""


@config.command(name="path")
def config_path_command() -> None:
    """Print the config file's path (the one that would be created, if there is none)."""
    from patchbay.paths import config_dir
    from patchbay.settings import find_config

    click.echo(str(find_config() or config_dir() / "config.toml"))


@config.command()
@json_option
@config_option
@verbose_option
def show(as_json: bool, config_path: str | None, verbose: bool) -> None:
    """Print the settings in effect (file, environment and defaults) as TOML."""
    from patchbay.settings import to_toml

    with reported(verbose):
        settings = load(config_path)
    if as_json:
        click.echo(json.dumps(_plain(settings), indent=2))
        return
    click.echo(f"# from {settings.source}" if settings.source else "# no config file: defaults and environment")
    click.echo(to_toml({key: value for key, value in _plain(settings).items() if key != "source"}), nl=False)


def _plain(settings: Settings) -> dict[str, Any]:
    limits = {**asdict(settings.limits), **{name: asdict(value) for name, value in settings.key_limits.items()}}
    return {"source": str(settings.source) if settings.source else None, "server": asdict(settings.server),
            "router": asdict(settings.router), "providers": settings.providers, "routes": settings.routes,
            "limits": limits, "cache": asdict(settings.cache), "tracing": asdict(settings.tracing)}


# -- keys ---------------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Stored credentials: a key stored as NAME stands in for the environment variable NAME."""


@keys.command(name="set")
@click.argument("name")
@verbose_option
def set_key(name: str, verbose: bool) -> None:
    """Store a key as NAME (asked for without echo, or read from stdin when piped)."""
    from patchbay.secrets.store import save_key

    if sys.stdin.isatty():
        value = click.prompt(f"Value for {name}", hide_input=True, prompt_suffix=": ").strip()
    else:
        value = sys.stdin.read().strip()
    with reported(verbose):
        path = save_key(name, value)
    click.echo(f"Stored {name} in {path}", err=True)


@keys.command(name="list")
@json_option
@verbose_option
def list_keys(as_json: bool, verbose: bool) -> None:
    """List the stored keys, masked."""
    from patchbay.redact import mask
    from patchbay.secrets.store import load_keys

    with reported(verbose):
        stored = load_keys()
    masked = {name: mask(value) for name, value in sorted(stored.items())}
    if as_json:
        click.echo(json.dumps(masked, indent=2, ensure_ascii=False))
    elif not masked:
        click.echo("No keys stored (patchbay keys set NAME).", err=True)
    else:
        from patchbay.cli.output import table

        table(["name", "value"], [[name, value] for name, value in masked.items()])


@keys.command(name="remove")
@click.argument("name")
@verbose_option
def remove_key(name: str, verbose: bool) -> None:
    """Forget the key stored as NAME."""
    from patchbay.secrets.store import remove_key as remove

    with reported(verbose):
        removed = remove(name)
    if not removed:
        fail(f"no key named {name!r} is stored (see `patchbay keys list`)")
    click.echo(f"Removed {name}", err=True)


@keys.command(name="path")
def keys_path_command() -> None:
    """Print the keys file's path."""
    from patchbay.secrets.store import keys_path

    click.echo(str(keys_path()))


COMMANDS = [config, keys]
