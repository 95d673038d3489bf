"""``patchbay logs``: the request log, newest first (``--cost``: spend by key, provider and
model); ``logs show ID`` for one exchange in full; ``logs prune`` applies the retention settings
(or ``--days``/``--max-bytes``) now."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from patchbay.cli.common import config_option, fail, json_option, load, reported, verbose_option
from patchbay.cli.output import seconds, table
from patchbay.redact import clip

if TYPE_CHECKING:
    from patchbay.requestlog import Exchange, Spend

__all__ = ["COMMANDS", "logs"]

PREVIEW = 40  # characters of prompt and answer in the list
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*\Z", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Duration(click.ParamType):
    """A time span back from now: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``; converted to seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        found = _DURATION.match(str(value))
        if not found:
            self.fail(f"{value!r} is not a duration (examples: 30m, 24h, 7d)", param, ctx)
        return float(found.group(1)) * _SECONDS[found.group(2).lower()]


@click.group(invoke_without_command=True)
@click.option("-n", "--count", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="How many exchanges, newest first (0: all).")
@click.option("-q", "--query", default=None, metavar="TEXT",
              help="Only exchanges whose messages or answer contain TEXT.")
@click.option("--conversation", "conversation_id", default=None, metavar="ID", help="Only conversation ID.")
@click.option("--since", type=Duration(), default=None, metavar="DURATION",
              help="Only exchanges of the last DURATION (30m, 24h, 7d...).")
@click.option("--cost", "by_cost", is_flag=True,
              help="Sum the cost (US dollars) and tokens by API key, provider and model instead.")
@json_option
@config_option
@verbose_option
@click.pass_context
def logs(ctx: click.Context, count: int, query: str | None, conversation_id: str | None, since: float | None,
         by_cost: bool, as_json: bool, config_path: str | None, verbose: bool) -> None:
    """Show the request log: every exchange from the CLI, the server and the library."""
    if ctx.invoked_subcommand is not None:
        return
    start = None if since is None else time.time() - since
    if by_cost:
        with reported(verbose):
            _show_spend(_read(config_path, lambda log: log.spend(start)), as_json)
        return
    with reported(verbose):
        exchanges = _read(config_path, lambda log: log.latest(count, query=query, conversation_id=conversation_id,
                                                              since=start))
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in exchanges], indent=2, ensure_ascii=False))
        return
    if not exchanges:
        click.echo("No exchanges logged" + (" match." if query or conversation_id else " yet."), err=True)
        return
    table(["id", "time", "model", "prompt", "answer", "latency"],
          [[str(e.id), _when(e.time), _who(e), _preview(e.prompt), _preview(_outcome(e)), seconds(e.latency)]
           for e in exchanges], flexible=("model", "prompt", "answer"))


def _show_spend(rows: list[Spend], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([{"key": r.key, "provider": r.provider, "model": r.model, "requests": r.requests,
                                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                                "cost": r.cost, "cache_hits": r.cache_hits} for r in rows], indent=2))
        return
    if not rows:
        click.echo("No exchanges logged in that time.", err=True)
        return
    lines = [[r.key or "-", r.provider or "-", r.model or "-", str(r.requests), f"{r.prompt_tokens:,}",
              f"{r.completion_tokens:,}", str(r.cache_hits), _dollars(r.cost)] for r in rows]
    lines.append(["total", "", "", str(sum(r.requests for r in rows)), f"{sum(r.prompt_tokens for r in rows):,}",
                  f"{sum(r.completion_tokens for r in rows):,}", str(sum(r.cache_hits for r in rows)),
                  _dollars(sum(r.cost for r in rows))])
    table(["key", "provider", "model", "requests", "prompt tokens", "completion tokens", "cache hits", "cost (USD)"],
          lines, flexible=("provider", "model"))


def _dollars(amount: float) -> str:
    return f"${amount:,.6f}" if amount < 1 else f"${amount:,.2f}"


@logs.command()
@click.argument("exchange_id", metavar="ID", type=int)
@json_option
@config_option
@verbose_option
def show(exchange_id: int, as_json: bool, config_path: str | None, verbose: bool) -> None:
    """Show exchange ID in full: messages, answer, usage, timings, fallbacks."""
    with reported(verbose):
        found = _read(config_path, lambda log: log.get(exchange_id))
    if found is None:
        fail(f"no exchange {exchange_id} in the request log (see `patchbay logs`)")
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2, ensure_ascii=False))
        return
    usage = "-" if found.prompt_tokens is None else \
        f"{found.prompt_tokens} prompt + {found.completion_tokens} completion tokens"
    fields = [
        ("id", str(found.id)), ("time", _when(found.time)), ("source", found.source),
        ("conversation", found.conversation_id or "-"), ("requested model", found.requested_model or "-"),
        ("answered by", _who(found)), ("status", str(found.status) if found.status is not None else "-"),
        ("finish reason", found.finish_reason or "-"), ("usage", usage),
        ("cost", "-" if found.cost is None else _dollars(found.cost)), ("key", found.key or "-"),
        ("cache", found.cache or "-"), ("latency", seconds(found.latency)),
        ("first token", seconds(found.ttft)), ("error", found.error or "-"),
        ("options", json.dumps(found.options) if found.options else "-"),
    ]
    fields += [("fallback", f"{f.get('provider')}/{f.get('model')}: {f.get('error')}: {f.get('message')}")
               for f in found.fallbacks]
    for name, value in fields:
        click.echo(f"{name + ':':<17}{value}")
    click.echo("\nMessages:")
    for message in found.messages:
        click.echo(f"  [{message.get('role')}] {_content(message.get('content'))}")
    click.echo("\nAnswer:")
    click.echo(found.response)


@logs.command()
@config_option
@verbose_option
def path(config_path: str | None, verbose: bool) -> None:
    """Print the request log's file."""
    with reported(verbose):
        click.echo(str(load(config_path).server.request_log_file()))


_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*\Z", re.IGNORECASE)


class Size(click.ParamType):
    """A size in bytes: ``500000``, ``200MB``, ``1GiB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        found = _SIZE.match(str(value))
        unit = found.group(2).lower() if found else ""
        if not found or unit not in _UNITS:
            self.fail(f"{value!r} is not a size (examples: 500000, 200MB, 1GiB)", param, ctx)
        return int(float(found.group(1)) * _UNITS[unit])


@logs.command()
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None, metavar="N",
              help="Delete exchanges older than N days (default: request_log_retention_days).")
@click.option("--max-bytes", type=Size(), default=None, metavar="SIZE",
              help="Then delete the oldest until the stored text is at most SIZE, e.g. 200MB "
                   "(default: request_log_max_bytes).")
@config_option
@verbose_option
def prune(days: float | None, max_bytes: int | None, config_path: str | None, verbose: bool) -> None:
    """Delete old exchanges now: by age and/or total size, oldest first."""
    from patchbay.requestlog import RequestLog

    with reported(verbose):
        server = load(config_path).server
        file: Path = server.request_log_file()
        if not file.exists():
            click.echo("No exchanges logged yet.", err=True)
            return
        if days is None and max_bytes is None:
            days, max_bytes = server.request_log_retention_days or None, server.request_log_max_bytes or None
        if days is None and max_bytes is None:
            fail("nothing to prune by: give --days or --max-bytes (no retention is configured)")
        with RequestLog(file) as log:
            deleted = log.prune(days=days or 0, max_bytes=max_bytes or 0)
            left, stored = log.count(), log.stored_bytes()
    click.echo(f"Deleted {deleted} exchanges; {left} left, {stored:,} bytes of text.")


def _read(config_path: str | None, query: Any) -> Any:
    """Run ``query`` on the request log; a log that does not exist yet reads as empty (never created)."""
    from patchbay.requestlog import RequestLog

    file: Path = load(config_path).server.request_log_file()
    if not file.exists():
        return query(_Empty())
    with RequestLog(file) as log:
        return query(log)


class _Empty:
    """Answers queries like a log with nothing in it."""

    def latest(self, *args: Any, **kwargs: Any) -> list[Exchange]:
        return []

    def get(self, exchange_id: int) -> None:
        return None

    def spend(self, since: float | None = None) -> list[Spend]:
        return []


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _who(exchange: Exchange) -> str:
    if exchange.provider and exchange.model:
        return f"{exchange.provider}/{exchange.model}"
    return exchange.provider or exchange.model or exchange.requested_model or "-"


def _outcome(exchange: Exchange) -> str:
    return f"[{exchange.error}]" if exchange.error else exchange.response


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return clip(flat, PREVIEW)


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


COMMANDS = [logs]
