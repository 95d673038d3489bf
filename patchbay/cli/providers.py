"""``patchbay providers``: what is registered and whether it works."""

from __future__ import annotations

import json

import click

__all__ = ["COMMANDS", "providers"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers(as_json: bool) -> None:
    """List providers with their flags."""
    from patchbay.providers import registry

    rows = registry.describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<16} {'working':<8} {'auth':<6} {'models':>6}  default model")
    for row in rows:
        click.echo(f"{row['name']:<16} {('yes' if row['working'] else 'no'):<8} "
                   f"{('yes' if row['needs_auth'] else 'no'):<6} {len(row['models']):>6}  {row['default_model']}")



COMMANDS = [providers]
