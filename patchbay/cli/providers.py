"""``patchbay providers``: what is registered and configured, whether it works, and ``check`` to find out.

The table joins three sources: each provider's flags (registry and config file), the live health
the router's state store holds (shared through Redis when configured, so what the running servers
saw), and the last ``patchbay providers check`` (kept in the request log database).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import click

from patchbay.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    config_option,
    find_provider,
    json_option,
    listed_model,
    load,
    model_for,
    reported,
    require_key,
    verbose_option,
)
from patchbay.cli.output import ago, is_terminal, seconds, table
from patchbay.errors import PatchbayError

if TYPE_CHECKING:
    from patchbay.providers.base import AsyncGeneratorProvider
    from patchbay.requestlog import ProviderCheck
    from patchbay.routing import Health
    from patchbay.settings import Settings

__all__ = ["COMMANDS", "Probe", "providers"]

PROBE_MESSAGES = [{"role": "user", "content": "Reply with the single word OK."}]
PROBE_MAX_TOKENS = 8
HEALTH_TIMEOUT = 5.0  # seconds to read the shared router state


@dataclass(frozen=True)
class Probe:
    """One provider to check, with the model and address its first route target uses, or the
    reason it cannot be asked at all (a mistake in its configuration), which is its result."""

    name: str
    provider: type[AsyncGeneratorProvider] | None
    model: str | None
    base_url: str | None = None
    error: str | None = None


@click.group(invoke_without_command=True)
@json_option
@config_option
@verbose_option
@click.pass_context
def providers(ctx: click.Context, as_json: bool, config_path: str | None, verbose: bool) -> None:
    """List providers: working flag, auth needed, model count, live health and the last check."""
    if ctx.invoked_subcommand is not None:
        return
    with reported(verbose):
        settings = load(config_path)
        rows = _rows(settings)
        health = asyncio.run(_health(settings))
        checks = _last_checks(settings)
    for row in rows:
        row["health"] = health.get(row["name"].lower())
        check = checks.get(row["name"])
        row["last_check"] = None if check is None else asdict(check)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table(["name", "working", "auth", "models", "health", "last check"],
          [[row["name"], _yes(row["working"]), _yes(row["needs_auth"]), str(len(row["models"])),
            _health_text(row["health"]), _check_text(row["last_check"])] for row in rows],
          flexible=("health", "last check"))


@providers.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=20.0, show_default=True, metavar="SECONDS",
              help="Seconds each provider gets to answer.")
@json_option
@config_option
@verbose_option
def check(names: tuple[str, ...], timeout: float, as_json: bool, config_path: str | None, verbose: bool) -> None:
    """Ask each configured provider (or each NAME) a tiny question, all at once, and show how it went.

    Exits non-zero if any provider failed. The results show in `patchbay providers`."""
    from patchbay.requestlog import RequestLog

    with reported(verbose):
        settings = load(config_path)
        probes = _probes(settings, names)
        log = RequestLog(settings.server.request_log_file())
    try:
        results = asyncio.run(_check_all(probes, timeout, show=not as_json))
        for result in results:
            log.record(result)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        log.close()
    if as_json:
        click.echo(json.dumps([asdict(result) for result in results], indent=2))
    if not all(result.ok for result in results):
        sys.exit(EXIT_ERROR)


# -- the table ----------------------------------------------------------------------------------------


def _rows(settings: Settings) -> list[dict[str, Any]]:
    from patchbay.providers import registry

    found = list(registry.all(include_not_working=True)) + list(settings.provider_classes().values())
    return [{"name": p.name, "working": p.working, "needs_auth": p.needs_auth,
             "default_model": getattr(p, "default_model", ""), "models": [r.model for r in p.model_records()]}
            for p in found]


async def _health(settings: Settings) -> dict[str, dict[str, Any]]:
    """The router state's health, summed per provider (lower-case name)."""
    router = settings.build_router()
    try:
        targets: dict[str, Health] = await asyncio.wait_for(router.health(), HEALTH_TIMEOUT)
    except TimeoutError:
        targets = {}
    finally:
        await router.state.close()
    summary: dict[str, dict[str, Any]] = {}
    now = time.time()
    for key, health in targets.items():
        entry = summary.setdefault(key.partition("/")[0].lower(),
                                   {"successes": 0, "failures": 0, "cooling_down": False, "last_error": None})
        entry["successes"] += health.successes
        entry["failures"] += health.failures
        entry["cooling_down"] |= bool(health.cooldown_until and health.cooldown_until > now)
        entry["last_error"] = entry["last_error"] or health.last_error
    return summary


def _last_checks(settings: Settings) -> dict[str, ProviderCheck]:
    path = settings.server.request_log_file()
    if not path.exists():  # reading must not create the database
        return {}
    from patchbay.requestlog import RequestLog

    with RequestLog(path) as log:
        return log.latest_checks()


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _health_text(health: dict[str, Any] | None) -> str:
    if not health:
        return "-"
    text = f"{health['successes']} ok, {health['failures']} failed"
    return text + ", cooling down" if health["cooling_down"] else text


def _check_text(check: dict[str, Any] | None) -> str:
    if check is None:
        return "-"
    outcome = f"ok in {check['total']:.2f} s" if check["ok"] else "failed"
    return f"{outcome}, {ago(check['time'])}"


# -- checking -----------------------------------------------------------------------------------------


def _probes(settings: Settings, names: tuple[str, ...]) -> list[Probe]:
    """The providers to check: every one the config uses (routes and [providers]), or ``names``.

    Nothing here touches the network (models a service must be asked for are read inside the
    probe, within its timeout), and a provider that cannot be set up becomes a probe carrying
    that error rather than ending the command. An unknown NAME is an error listing the known ones.
    """
    wanted = {name.lower() for name in names}
    known: dict[str, Probe] = {}

    def add(probe: Probe) -> None:
        if not wanted or probe.name.lower() in wanted:
            known.setdefault(probe.name.lower(), probe)

    configured: dict[str, type[AsyncGeneratorProvider]] = {}
    for name in settings.providers:
        if wanted and name.lower() not in wanted:
            continue
        try:
            configured[name] = settings.provider_class(name)
        except PatchbayError as error:
            add(Probe(name, None, None, error=str(error)))
    for route, entries in settings.route_table().items():
        for entry in entries:
            named = _provider_named(entry)
            if wanted and (named or "").lower() not in wanted:
                continue
            try:
                [target] = _targets(route, entry, configured)
            except PatchbayError as error:
                add(Probe(named or str(entry), None, None, error=str(error)))
                continue
            add(Probe(target.provider.name, target.provider, model_for(target.provider, target.model),
                      target.base_url))
    for name, provider in configured.items():
        add(Probe(name, provider, model_for(provider, None)))
    if not names:
        return list(known.values())
    chosen: list[Probe] = []
    for name in dict.fromkeys(names, None):
        probe = known.get(name.lower())
        if probe is None:
            provider = find_provider(settings, name)  # an unknown name is an error listing the known ones
            probe = Probe(provider.name, provider, model_for(provider, None))
        chosen.append(probe)
    return chosen


def _provider_named(entry: Any) -> str | None:
    """The provider a route entry names (``"groq/llama"``, ``{"provider": "groq"}``), if any."""
    if isinstance(entry, str):
        return entry.partition("/")[0]
    if isinstance(entry, dict) and isinstance(entry.get("provider"), str):
        return str(entry["provider"])
    return None


def _targets(route: str, entry: Any, configured: dict[str, type[AsyncGeneratorProvider]]) -> list[Any]:
    """The target ``entry`` of ``route`` makes (with its default model settled, as the router does)."""
    from patchbay.routing import RouteTable

    table = RouteTable.from_config({route: [entry]}, providers=configured)
    return table.targets_for(route)


async def probe(target: Probe, timeout: float) -> ProviderCheck:
    """Ask ``target`` the probe question; any failure, or no answer within ``timeout``, fails it.

    Everything that may reach the network (a service's model list too) runs within ``timeout``."""
    from patchbay.events import TextDelta
    from patchbay.requestlog import ProviderCheck
    from patchbay.timeouts import Timeout

    started_at, started = time.time(), time.perf_counter()
    first: float | None = None
    error: str | None = target.error
    model = target.model
    if error is None:
        assert target.provider is not None
        try:
            async with asyncio.timeout(timeout):
                require_key(target.provider)  # said as such, before anything is sent
                if model is None and target.base_url is None:
                    model = await listed_model(target.provider)
                stream = target.provider.stream(model, PROBE_MESSAGES, base_url=target.base_url,
                                                max_tokens=PROBE_MAX_TOKENS, temperature=0,
                                                timeout=Timeout(total=timeout))
                try:
                    async for event in stream:
                        if first is None and isinstance(event, TextDelta):
                            first = time.perf_counter() - started
                finally:
                    await stream.aclose()
            if first is None:
                error = "the answer had no text"
        except TimeoutError:
            error = f"no answer within {timeout:g} s"
        except PatchbayError as exc:
            error = str(exc)
        except Exception as exc:  # a broken provider is a failed check, not a crashed command
            error = f"{type(exc).__name__}: {exc}"
    return ProviderCheck(time=started_at, provider=target.name, model=model, ok=error is None, ttft=first,
                         total=time.perf_counter() - started, error=error)


async def _check_all(probes: list[Probe], timeout: float, *, show: bool) -> list[ProviderCheck]:
    """Run every probe at once; show a live table on a terminal, a line per result otherwise."""
    results: dict[str, ProviderCheck] = {}
    width = max((len(p.name) for p in probes), default=0)

    async def one(target: Probe) -> ProviderCheck:
        result = await probe(target, timeout)
        results[target.name] = result
        if show and not live:
            click.echo(_line(result, width))
        return result

    live: Any = None
    if show and is_terminal():
        from rich.live import Live

        live = Live(_live_table(probes, results), refresh_per_second=8, transient=False)
    if live is None:
        return list(await asyncio.gather(*(one(target) for target in probes)))
    with live:
        tasks = [asyncio.ensure_future(one(target)) for target in probes]
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.125)
            live.update(_live_table(probes, results))
        return [task.result() for task in tasks]


def _line(result: ProviderCheck, width: int) -> str:
    status = "ok" if result.ok else "FAILED"
    text = (f"{result.provider:<{width}}  {status:<6}  first token {seconds(result.ttft):>8}  "
            f"total {seconds(result.total):>8}")
    return f"{text}  {result.error}" if result.error else text


def _live_table(probes: list[Probe], results: dict[str, ProviderCheck]) -> Any:
    from rich.spinner import Spinner
    from rich.table import Table

    view = Table("provider", "model", "status", "first token", "total", "error")
    for target in probes:
        result = results.get(target.name)
        if result is None:
            view.add_row(target.name, target.model or "-", Spinner("dots", text="checking"), "", "", "")
        else:
            status = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
            view.add_row(target.name, target.model or "-", status, seconds(result.ttft), seconds(result.total),
                         result.error or "")
    return view


COMMANDS = [providers]
