"""Gateway settings: one TOML file, every option also an environment variable.

The file (``--config``, ``$PATCHBAY_CONFIG``, else ``config.toml`` in the config directory when it
exists) has seven tables::

    [server]                       # PATCHBAY_<OPTION>, e.g. PATCHBAY_PORT=9000
    [router]                       # PATCHBAY_ROUTER_<OPTION>, e.g. PATCHBAY_ROUTER_STRATEGY=shuffle
    [providers.<name>]             # OpenAI-compatible services: base_url or preset, api_key_env, ...
    [routes]                       # public model name -> ["provider/model", ...]
    [limits]                       # per API key: PATCHBAY_LIMITS_<OPTION>; [limits.<name>] per named key
    [tracing]                      # OpenTelemetry traces (the patchbay[otel] extra): PATCHBAY_TRACING_<OPTION>
    [cache]                        # the response cache (off by default): PATCHBAY_CACHE_<OPTION>

Precedence: command-line flag, then environment variable, then file, then default. Credentials
are never written in the file, only the names of the variables that hold them. With no file and
no routes, the gateway serves the embedded local model.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from patchbay.errors import InvalidRequest
from patchbay.paths import config_dir
from patchbay.providers.catalog import Prices
from patchbay.timeouts import Timeout

if TYPE_CHECKING:
    from patchbay.providers.base import AsyncGeneratorProvider
    from patchbay.routing.router import Router

__all__ = ["CacheSettings", "RateLimits", "RouterSettings", "ServerSettings", "Settings", "TracingSettings",
           "find_config", "load_settings", "parse_api_keys", "to_toml"]

LOCAL_MODEL = "smollm2-135m-instruct"
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a name for an API key: name=key in the keys variable


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: how ``patchbay serve`` listens and whom it lets in."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_keys_env: str = "PATCHBAY_API_KEYS"  # variable with the comma-separated keys clients must send
    insecure_no_auth: bool = False  # allow a non-loopback bind with no keys
    max_body_bytes: int = 10 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    keepalive_interval: float = 15.0  # seconds between SSE keep-alive comments while waiting
    send_timeout: float = 60.0  # seconds a streaming client may leave the answer unread before it is ended
    # connection limits, enforced before authentication (patchbay/server/protocol.py)
    max_head_bytes: int = 65536  # request line + headers; beyond: 431 and closed
    max_headers: int = 100  # header fields per request; beyond: 431
    max_url_bytes: int = 8192  # request target; beyond: 414
    head_timeout: float = 10.0  # seconds to receive a whole request head; then 408 and closed
    body_idle_timeout: float = 30.0  # longest silence while a request body is arriving; then closed
    keepalive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open
    max_connections: int = 1000  # open connections per process; beyond: 503 and closed
    shutdown_delay: float = 5.0  # seconds from SIGTERM to closing the socket, /ready answering 503 meanwhile
    log_level: str = "info"
    request_log: bool = True  # record every exchange in the request log (SQLite)
    request_log_path: str = ""  # the log's file; empty: logs.db in the data directory
    request_log_max_row_bytes: int = 256 * 1024  # texts of one exchange, at most; longer ones are cut (marked)
    request_log_max_bytes: int = 1024 * 1024 * 1024  # stored text of all exchanges; oldest pruned first (0: no cap)
    request_log_retention_days: float = 0.0  # exchanges older than this are pruned (0: kept)
    request_log_backlog_bytes: int = 64 * 1024 * 1024  # records waiting for the writer; beyond: refused, counted
    web_ui: bool = True  # serve the web chat page at /
    responses_ttl: float = 30 * 86_400.0  # seconds a stored /v1/responses answer can be continued or read
    max_label_values: int = 100  # distinct model/provider names in /metrics and /health; beyond: "other"

    def api_keys(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The configured client API keys (read from the ``api_keys_env`` variable)."""
        return [key for _, key in self.named_api_keys(environ)]

    def named_api_keys(self, environ: Mapping[str, str] | None = None) -> list[tuple[str | None, str]]:
        """The client API keys with their names (``name=key``; ``None`` for a plain key)."""
        return parse_api_keys((os.environ if environ is None else environ).get(self.api_keys_env, ""))

    def request_log_file(self) -> Path:
        """The request log's file (``request_log_path``, else the default in the data directory)."""
        from patchbay.requestlog import log_path

        return log_path(self.request_log_path)

    def request_log_options(self) -> dict[str, Any]:
        """The request log's bounds, as keyword arguments of ``RequestLog``."""
        return {"max_row_bytes": self.request_log_max_row_bytes, "max_bytes": self.request_log_max_bytes or None,
                "retention_days": self.request_log_retention_days or None,
                "backlog_bytes": self.request_log_backlog_bytes}


@dataclass(frozen=True)
class RouterSettings:
    """``[router]``: strategy, mid-stream behaviour, limits and shared state."""

    strategy: str = "priority"
    mid_stream: str = "continue"
    retries: int = 2  # attempts per target for retryable errors
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 60.0
    timeout: float = 600.0  # the whole request, every attempt included
    redis_url_env: str = "PATCHBAY_REDIS_URL"  # variable with the Redis URL that workers share state through
    namespace: str = "default"
    instances: int = 1  # `patchbay serve` instances sharing that Redis: while it is down, each process
    #                     enforces 1/(instances * workers) of every rate limit
    max_targets: int = 10_000  # target states kept (a "*" route makes one per model name); least recent forgotten
    state_ttl: float = 86_400.0  # seconds a target's state lives in Redis after its last change

    def limits(self) -> Timeout:
        return Timeout(connect=self.connect_timeout, first_byte=self.first_byte_timeout, idle=self.idle_timeout,
                       total=self.timeout)

    def redis_url(self, environ: Mapping[str, str] | None = None) -> str | None:
        return (os.environ if environ is None else environ).get(self.redis_url_env) or None


@dataclass(frozen=True)
class TracingSettings:
    """``[tracing]``: OpenTelemetry traces over OTLP/HTTP (``pip install 'patchbay[otel]'``), one span
    per request and one per upstream attempt; off while there is no endpoint. Message content is
    recorded only with ``content = true`` (redacted); credentials never."""

    endpoint: str = ""  # e.g. http://127.0.0.1:4318/v1/traces; empty: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else off
    service_name: str = "patchbay"
    content: bool = False  # record the messages and the answer in the request spans
    headers_env: str = "PATCHBAY_TRACING_HEADERS"  # variable with the exporter's headers, "name=value,..."
    timeout: float = 10.0  # seconds one export may take

    def traces_endpoint(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Where spans are sent: ``endpoint``, else the standard variable; None: tracing is off."""
        env = os.environ if environ is None else environ
        return self.endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None

    def headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """The exporter's headers from ``headers_env`` (None when unset: the exporter then reads
        the standard ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``)."""
        value = (os.environ if environ is None else environ).get(self.headers_env, "")
        if not value.strip():
            return None
        headers: dict[str, str] = {}
        for entry in value.split(","):
            name, sep, text = entry.partition("=")
            if not sep or not name.strip():
                raise InvalidRequest(f"{self.headers_env} must be name=value pairs separated by commas")
            headers[name.strip()] = text.strip()
        return headers


@dataclass(frozen=True)
class CacheSettings:
    """``[cache]``: the response cache (:mod:`patchbay.server.cache`): deterministic answers kept
    for ``ttl`` seconds, in this process's memory or in Redis (shared by every worker and host)."""

    enabled: bool = False
    backend: str = "auto"  # "memory", "redis" ([router] redis_url_env must name a set variable), "auto": redis if set
    max_bytes: int = 64 * 1024 * 1024  # what the memory backend keeps at most (least recently used out first)
    max_entry_bytes: int = 1024 * 1024  # a longer answer is not cached
    ttl: float = 3600.0  # seconds an answer is served from the cache


def parse_api_keys(value: str) -> list[tuple[str | None, str]]:
    """``"alice=sk-1,sk-2"`` -> ``[("alice", "sk-1"), (None, "sk-2")]``. A name is letters, digits,
    ``_.-``; a plain key that itself contains ``=`` needs a name in front (``name=ab=cd``)."""
    keys: list[tuple[str | None, str]] = []
    for entry in value.split(","):
        entry = entry.strip()
        name, sep, key = entry.partition("=")
        if sep and KEY_NAME.fullmatch(name) and key and not key.startswith("="):
            keys.append((name, key))
        elif entry:
            keys.append((None, entry))
    return keys


@dataclass(frozen=True)
class RateLimits:
    """``[limits]``: what one API key may use; 0 means unlimited. ``[limits.<name>]`` tables
    override single options for the keys given that name in the keys variable."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0  # prompt + completion tokens
    concurrent_requests: int = 0
    budget_usd_per_day: float = 0.0  # US dollars the key's requests may cost in the last 24 hours

    @property
    def unlimited(self) -> bool:
        return not (self.requests_per_minute or self.tokens_per_minute or self.concurrent_requests
                    or self.budget_usd_per_day)


PROVIDER_FIELDS = {"base_url", "preset", "api_key_env", "models", "default_model", "prefill", "headers",
                   "verify_ssl", "capabilities", "impersonate", "prices"}
WEB_PROVIDER_FIELDS = {"impersonate", "prices"}  # what a [providers.<web chat provider>] table may set


@dataclass(frozen=True)
class Settings:
    """Everything the gateway and the client read from the config file and environment."""

    server: ServerSettings = field(default_factory=ServerSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, list[Any]] = field(default_factory=dict)
    limits: RateLimits = field(default_factory=RateLimits)  # for every key without its own table
    key_limits: dict[str, RateLimits] = field(default_factory=dict)  # [limits.<name>], defaults filled in
    tracing: TracingSettings = field(default_factory=TracingSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    source: Path | None = None

    def limits_for(self, name: str | None) -> RateLimits:
        """The limits of the API key called ``name`` (a plain key, ``None``, has the defaults)."""
        return self.key_limits.get(name, self.limits) if name is not None else self.limits

    def with_server(self, **changes: Any) -> Settings:
        """A copy with some server options replaced (command-line flags), ``None`` values ignored."""
        given = {key: value for key, value in changes.items() if value is not None}
        return replace(self, server=_checked(replace(self.server, **given), "server"))

    def provider_classes(self) -> dict[str, type[AsyncGeneratorProvider]]:
        """The ``[providers]`` table as configured OpenAI-compatible provider classes."""
        return {name: self.provider_class(name) for name in self.providers}

    def provider_class(self, name: str) -> type[AsyncGeneratorProvider]:
        """One ``[providers]`` entry as a configured provider class (a mistake in it names it, and
        leaves the other entries usable)."""
        from patchbay.providers import registry
        from patchbay.providers.openai_compatible import OpenAICompatible
        from patchbay.providers.web import is_web_provider, with_impersonation

        options = dict(self.providers[name])
        preset = options.pop("preset", None)
        prices = options.pop("prices", None)
        web = next((p for p in registry.all(include_not_working=True)
                    if p.name.lower() == name.lower() and is_web_provider(p)), None)
        try:
            if web is not None:
                extra = set(options) - WEB_PROVIDER_FIELDS
                if extra or preset is not None:
                    raise InvalidRequest(f"{web.name} is a web chat provider: only "
                                         f"{', '.join(sorted(WEB_PROVIDER_FIELDS))} can be set")
                chosen = with_impersonation(web, options.get("impersonate"))
                if prices is None:
                    return chosen
                return type(chosen.__name__, (chosen,), {"prices": Prices.of(prices, "prices"),
                                                         "__module__": chosen.__module__})
            if "impersonate" in options:
                raise InvalidRequest("impersonate applies to the web chat providers (Liaobots, AiChatOnline...)")
            if prices is not None:
                options["prices"] = Prices.of(prices, "prices")
            if preset is not None:
                return OpenAICompatible.from_preset(preset, name=name, **options)
            if "base_url" not in options:
                raise InvalidRequest("give a base_url or a preset")
            return OpenAICompatible.configure(name, **options)
        except InvalidRequest as error:
            raise InvalidRequest(f"{self._where()}providers.{name}: {error.message}") from None

    def route_table(self) -> dict[str, list[Any]]:
        """The routes; with none configured, the embedded model under its own name."""
        if self.routes:
            return self.routes
        return {LOCAL_MODEL: [f"Local/{LOCAL_MODEL}"]}

    def build_router(self) -> type[Router]:
        """The Router class these settings describe (shared state through Redis when configured)."""
        from patchbay.routing import MemoryStateStore, RedisStateStore, RetryPolicy, Router, RouteTable

        try:
            table = RouteTable.from_config(self.route_table(), providers=self.provider_classes())
        except InvalidRequest as error:
            raise InvalidRequest(f"{self._where()}{error.message}") from None
        redis_url = self.router.redis_url()
        router = self.router
        state = (RedisStateStore(redis_url, namespace=router.namespace, max_targets=router.max_targets,
                                 state_ttl=router.state_ttl)
                 if redis_url else MemoryStateStore(max_targets=router.max_targets))
        return Router.configure(table, strategy=self.router.strategy, mid_stream=self.router.mid_stream,  # type: ignore[arg-type]
                                retry=RetryPolicy(attempts=self.router.retries), state=state)

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""


def find_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``path``, else ``$PATCHBAY_CONFIG``, else ``config.toml`` in the
    config directory if it exists."""
    env = os.environ if environ is None else environ
    if path is not None:
        return Path(path)
    if env.get("PATCHBAY_CONFIG"):
        return Path(env["PATCHBAY_CONFIG"])
    default = config_dir() / "config.toml"
    return default if default.is_file() else None


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (if any) and the environment; mistakes are InvalidRequest naming the key."""
    env = os.environ if environ is None else environ
    source = find_config(path, env)
    data: dict[str, Any] = {}
    if source is not None:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidRequest(f"config file {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"config file {source} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"config file {source} is not valid TOML: {exc}") from None
    where = f"{source}: " if source else ""
    unknown = set(data) - {"server", "router", "providers", "routes", "limits", "tracing", "cache"}
    if unknown:
        raise InvalidRequest(f"{where}unknown tables {sorted(unknown)}; valid: server, router, providers, routes, "
                             "limits, tracing, cache")
    server = _section(ServerSettings, data.get("server", {}), env, "PATCHBAY_", f"{where}server")
    router = _section(RouterSettings, data.get("router", {}), env, "PATCHBAY_ROUTER_", f"{where}router")
    providers = _table(data.get("providers", {}), f"{where}providers")
    for name, options in providers.items():
        if not isinstance(options, dict):
            raise InvalidRequest(f"{where}providers.{name} must be a table")
        extra = set(options) - PROVIDER_FIELDS
        if extra:
            raise InvalidRequest(f"{where}providers.{name}: unknown fields {sorted(extra)}; "
                                 f"valid: {', '.join(sorted(PROVIDER_FIELDS))}")
    routes = _table(data.get("routes", {}), f"{where}routes")
    for name, targets in routes.items():
        if not isinstance(targets, list) or not targets:
            raise InvalidRequest(f"{where}routes.{name} must be a non-empty list of targets")
    limits, key_limits = _limits(data.get("limits", {}), env, f"{where}limits")
    tracing = _section(TracingSettings, data.get("tracing", {}), env, "PATCHBAY_TRACING_", f"{where}tracing")
    cache = _section(CacheSettings, data.get("cache", {}), env, "PATCHBAY_CACHE_", f"{where}cache")
    return Settings(server=server, router=router, providers=providers, routes=routes, limits=limits,
                    key_limits=key_limits, tracing=tracing, cache=cache, source=source)


def _limits(value: object, env: Mapping[str, str], where: str) -> tuple[RateLimits, dict[str, RateLimits]]:
    """``[limits]``: plain options are the defaults (each also ``PATCHBAY_LIMITS_<OPTION>``), tables
    are named keys' overrides, each option in them replacing the default."""
    table = _table(value, where)
    defaults = _section(RateLimits, {k: v for k, v in table.items() if not isinstance(v, dict)}, env,
                        "PATCHBAY_LIMITS_", where)
    named: dict[str, RateLimits] = {}
    for name, options in table.items():
        if not isinstance(options, dict):
            continue
        if not KEY_NAME.fullmatch(name):
            raise InvalidRequest(f"{where}.{name}: a key name is letters, digits, '_', '.' and '-'")
        _section(RateLimits, options, {}, "", f"{where}.{name}")  # names unknown options and wrong types
        hints = get_type_hints(RateLimits)
        given = {option: _typed(options[option], hints[option], f"{where}.{name}.{option}") for option in options}
        named[name] = _checked(replace(defaults, **given), f"{where}.{name}")
    return defaults, named


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a table")
    return value


def _section(cls: type[Any], values: object, env: Mapping[str, str], prefix: str, where: str) -> Any:
    """Build a settings dataclass from its TOML table, each field overridden by ``prefix + NAME``."""
    table = _table(values, where)
    names = {f.name for f in fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise InvalidRequest(f"{where}: unknown options {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    hints = get_type_hints(cls)
    given: dict[str, Any] = {}
    for name in names:
        variable = prefix + name.upper()
        if variable in env:
            given[name] = _from_env(env[variable], hints[name], variable)
        elif name in table:
            given[name] = _typed(table[name], hints[name], f"{where}.{name}")
    return _checked(cls(**given), where)


def _from_env(text: str, kind: Any, variable: str) -> Any:
    if kind is bool:
        if text.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise InvalidRequest(f"{variable} must be true or false, got {text!r}")
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        return kind(text)
    except ValueError:
        raise InvalidRequest(f"{variable} must be {_kind_name(kind)}, got {text!r}") from None


def _typed(value: Any, kind: Any, where: str) -> Any:
    if kind == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise InvalidRequest(f"{where} must be {_kind_name(kind)}, got {value!r}")


def _kind_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, "a list of strings")


def _checked(section: Any, where: str) -> Any:
    """Range checks that types alone do not express."""
    if isinstance(section, ServerSettings):
        if not 0 <= section.port <= 65535:
            raise InvalidRequest(f"{where}.port must be between 0 and 65535, got {section.port}")
        if section.workers < 1:
            raise InvalidRequest(f"{where}.workers must be at least 1, got {section.workers}")
        if section.max_body_bytes < 1024:
            raise InvalidRequest(f"{where}.max_body_bytes must be at least 1024, got {section.max_body_bytes}")
        if section.keepalive_interval <= 0:
            raise InvalidRequest(f"{where}.keepalive_interval must be positive")
        if section.send_timeout <= 0:
            raise InvalidRequest(f"{where}.send_timeout must be a positive number of seconds")
        if section.responses_ttl <= 0:
            raise InvalidRequest(f"{where}.responses_ttl must be a positive number of seconds")
        if section.shutdown_delay < 0:
            raise InvalidRequest(f"{where}.shutdown_delay must be 0 (stop at once) or more seconds")
        if section.max_label_values < 1:
            raise InvalidRequest(f"{where}.max_label_values must be at least 1, got {section.max_label_values}")
    if isinstance(section, RouterSettings):
        for name in ("connect_timeout", "first_byte_timeout", "idle_timeout", "timeout"):
            if getattr(section, name) <= 0:
                raise InvalidRequest(f"{where}.{name} must be a positive number of seconds")
        if section.retries < 1:
            raise InvalidRequest(f"{where}.retries must be at least 1")
        if section.instances < 1:
            raise InvalidRequest(f"{where}.instances must be at least 1, got {section.instances}")
    if isinstance(section, TracingSettings):
        if section.endpoint and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", section.endpoint):
            raise InvalidRequest(f"{where}.endpoint must be an http:// or https:// URL, got {section.endpoint!r}")
        if not section.service_name:
            raise InvalidRequest(f"{where}.service_name must not be empty")
        if not (math.isfinite(section.timeout) and section.timeout > 0):
            raise InvalidRequest(f"{where}.timeout must be a positive number of seconds")
    if isinstance(section, CacheSettings):
        if section.backend not in ("auto", "memory", "redis"):
            raise InvalidRequest(f"{where}.backend must be auto, memory or redis, got {section.backend!r}")
        for name in ("max_bytes", "max_entry_bytes"):
            if getattr(section, name) < 1:
                raise InvalidRequest(f"{where}.{name} must be at least 1, got {getattr(section, name)}")
        if not (math.isfinite(section.ttl) and section.ttl > 0):
            raise InvalidRequest(f"{where}.ttl must be a positive number of seconds, got {section.ttl!r}")
    if isinstance(section, RateLimits):
        for name in ("requests_per_minute", "tokens_per_minute", "concurrent_requests"):
            if getattr(section, name) < 0:
                raise InvalidRequest(f"{where}.{name} must be 0 (unlimited) or more, got {getattr(section, name)}")
        if not (math.isfinite(section.budget_usd_per_day) and section.budget_usd_per_day >= 0):
            raise InvalidRequest(f"{where}.budget_usd_per_day must be a finite number of US dollars, 0 (no budget) "
                                 f"or more, got {section.budget_usd_per_day!r}")
    return section


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """The config file format, written: ``[server]``-style tables of plain values, ``providers`` as a
    table of tables (``patchbay config show``, and tests that write config files)."""
    lines: list[str] = []
    for name, table in tables.items():
        if name == "providers":
            for provider, options in table.items():
                lines += ["", f"[providers.{_key(provider)}]",
                          *(f"{_key(k)} = {_value(v)}" for k, v in options.items())]
        elif table or name != "routes":
            lines += ["", f"[{name}]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    return "\n".join(lines[1:]) + "\n"


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
