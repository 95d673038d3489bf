"""``patchbay models``: every model patchbay knows, with its provider, limits and capabilities."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from patchbay.cli.common import config_option, fail, json_option, load, reported, verbose_option

if TYPE_CHECKING:
    from patchbay.providers.catalog import ModelRecord
    from patchbay.settings import Settings

__all__ = ["COMMANDS", "models"]

CAPABILITIES = ("streaming", "system_message", "tools", "prefill")


def model_records(settings: Settings) -> list[ModelRecord]:
    """The catalog's records (built-in providers and models.toml) plus the configured services'."""
    from patchbay.providers import registry

    records = list(registry.catalog().records())
    for provider in settings.provider_classes().values():
        records.extend(provider.model_records())
    return sorted(records, key=lambda r: (r.provider.lower(), r.model))


@click.command()
@click.option("--provider", "provider_name", default=None, metavar="NAME", help="Only this provider's models.")
@json_option
@config_option
@verbose_option
def models(provider_name: str | None, as_json: bool, config_path: str | None, verbose: bool) -> None:
    """List models with their provider, context window and capabilities."""
    with reported(verbose):
        records = model_records(load(config_path))
    if provider_name:
        records = [r for r in records if r.provider.lower() == provider_name.lower()]
        if not records:
            fail(f"no models for provider {provider_name!r} (see `patchbay providers`)")
    if as_json:
        click.echo(json.dumps([_plain(r) for r in records], indent=2))
        return
    from patchbay.cli.output import table

    table(["provider", "model", "context", "max output", "capabilities"],
          [[r.provider, r.model, _tokens(r.context_window), _tokens(r.max_output_tokens),
            ", ".join(name.replace("_message", "") for name in CAPABILITIES if getattr(r, name)) or "-"]
           for r in records], flexible=("model", "capabilities"))


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _plain(record: ModelRecord) -> dict[str, object]:
    return {"provider": record.provider, "model": record.model, "context_window": record.context_window,
            "max_output_tokens": record.max_output_tokens, "aliases": list(record.aliases),
            **{name: getattr(record, name) for name in CAPABILITIES}}


COMMANDS = [models]
