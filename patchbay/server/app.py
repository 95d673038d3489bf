"""The gateway as a plain ASGI application.

:class:`Gateway` dispatches on the path from the route table of :mod:`patchbay.server.routes`
(bound once at start-up: one dict lookup for exact paths, then the few patterns), checks the API
key unless the route is public, applies CORS
when an allow-list is configured, and turns every :class:`~patchbay.errors.PatchbayError` into
the OpenAI error object with the status from the one error table. Anything else is logged and
answered with a bare 500: never a traceback to the client. ``HEAD`` is answered wherever ``GET``
is, with the same headers and no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, NamedTuple

import msgspec

from patchbay import __version__
from patchbay.errors import (
    AuthError,
    ClientRateLimited,
    EndpointNotFound,
    InvalidRequest,
    MethodNotAllowed,
    PatchbayError,
    ProviderNotWorking,
)
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.calls import find_model, model_list
from patchbay.redact import register_secret
from patchbay.requestlog import RequestLog
from patchbay.requestlog.responses import MemoryResponseStore, RedisResponseStore, SQLiteResponseStore
from patchbay.routing import Router
from patchbay.server.asgi import (
    REQUEST_ID,
    ClientDisconnected,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    error_body,
    header,
    read_body,
    send_bytes,
)
from patchbay.server.cache import CACHE_HEADER, build_cache, directives_of
from patchbay.server.chat import NOTHING, ChatCompletions, ChatEndpoint, Dialect
from patchbay.server.completions import TextCompletions
from patchbay.server.embeddings import EmbeddingsEndpoint
from patchbay.server.messages import AnthropicMessages, anthropic_error_body, count_tokens
from patchbay.server.metrics import OTHER, GatewayMetrics
from patchbay.server.openapi import openapi_document
from patchbay.server.otel import Tracing, start_tracing
from patchbay.server.ratelimit import ANONYMOUS, Client, clients, limiter_for
from patchbay.server.responses import OpenAIResponses
from patchbay.server.routes import PUBLIC_PATHS, ROUTES
from patchbay.server.webpage import WebPage
from patchbay.settings import Settings, load_settings

__all__ = ["HEALTH_MAX_AGE", "PUBLIC_PATHS", "Bound", "Gateway", "HealthView", "bind_routes", "create_app",
           "request_id_of", "target_status"]

log = logging.getLogger("patchbay.server")

_encode = msgspec.json.encode
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
ErrorBody = Callable[[PatchbayError], bytes]
Handling = tuple[Handler, ErrorBody]  # a handler, and how its errors are written (its API's envelope)


class Bound(NamedTuple):
    """A route of the table bound to its handler: what the dispatch reads for each request."""

    handler: Handler
    error_body: ErrorBody
    methods: frozenset[str]  # every method answered, HEAD wherever GET
    allow: str  # the Allow header of a 405
    public: bool  # answered without an API key


def bind_routes(handlers: Mapping[str, Handling], *, web_ui: bool
                ) -> tuple[dict[str, Bound], tuple[tuple[str, Bound], ...]]:
    """The dispatch of :data:`~patchbay.server.routes.ROUTES`: exact paths by path, and the
    patterns as (prefix, route), longest prefix first. ``handlers`` maps each route's handler name
    to its handler; a route without one is an error at start-up, not a 404 at the first request."""
    exact: dict[str, Bound] = {}
    patterns: list[tuple[str, Bound]] = []
    seen: set[str] = set()  # each path, a pattern as its prefix and "{"
    for route in ROUTES:
        if route.web_ui and not web_ui:
            continue
        if route.handler not in handlers:
            raise LookupError(f"route {route.path} names handler {route.handler!r}, which the gateway lacks")
        handler, write_error = handlers[route.handler]
        bound = Bound(handler, write_error, frozenset(route.allowed), ", ".join(route.allowed), route.public)
        for path in route.paths:
            prefix, brace, _ = path.partition("{")
            if prefix + brace in seen:
                raise ValueError(f"the route table lists {path} twice")
            seen.add(prefix + brace)
            if brace:
                patterns.append((prefix, bound))
            else:
                exact[path] = bound
    patterns.sort(key=lambda pattern: -len(pattern[0]))
    return exact, tuple(patterns)


INTERNAL_ERROR = error_body(PatchbayError("internal server error"))
CLIENT = "patchbay.client"  # scope key: the Client an authenticated request counts against
HEALTH_MAX_AGE = 1.0
_ids = random.Random()  # seeded from the OS once; request ids need to be unique, not unguessable
"""Seconds one computed ``/health`` answer is reused: a flood of probes costs one computation."""


class Gateway:
    """The ASGI app of ``patchbay serve``: the OpenAI API over a provider (normally a Router)."""

    def __init__(self, settings: Settings | None = None, provider: type[AsyncGeneratorProvider] | None = None
                 ) -> None:
        self.settings = settings or load_settings()
        server = self.settings.server
        self.provider = provider or self.settings.build_router()
        self.metrics = GatewayMetrics(server.max_label_values)
        self._endpoints: list[ChatEndpoint | EmbeddingsEndpoint] = []  # each gets the request log at startup
        self.embeddings = EmbeddingsEndpoint(self.provider, limits=self.settings.router.limits(), metrics=self.metrics)
        #: Stored responses: in Redis when configured; else in memory until startup opens the log's file.
        redis_url = self.settings.router.redis_url()
        self._response_redis = (RedisResponseStore(redis_url, namespace=self.settings.router.namespace)
                                if redis_url else None)
        self.responses = OpenAIResponses(self._response_redis or MemoryResponseStore(), server.responses_ttl)
        self._response_file: SQLiteResponseStore | None = None
        keys = server.named_api_keys()
        for _, key in keys:
            register_secret(key)
        self.api_keys = [key.encode() for _, key in keys]
        self.clients = clients(self.settings, keys)  # whom each key's requests count against
        self.anonymous = Client(ANONYMOUS, ANONYMOUS, self.settings.limits)  # every request, with no keys
        self.limiter = limiter_for(self.settings)
        #: The response cache ([cache]), shared by every chat endpoint; None when it is off.
        self.cache = build_cache(self.settings.cache, redis_url, namespace=self.settings.router.namespace)
        self.cors_origins = frozenset(origin.encode() for origin in server.cors_origins)
        self.ready = False
        self.stopping = False  # set by begin_shutdown() or the lifespan shutdown: /ready answers 503
        self.health = HealthView(self.provider, server.max_label_values)
        self.request_log: RequestLog | None = None  # opened at startup when enabled
        self.tracing: Tracing | None = None  # started at startup when [tracing] is configured
        self._openapi = _encode(openapi_document(__version__, auth=bool(self.api_keys)))
        #: The handler of each name the route table uses (patchbay/server/routes.py).
        handlers: dict[str, Handling] = {
            "chat_completions": self._chat_route(ChatCompletions()),
            "messages": self._chat_route(AnthropicMessages()),
            "count_tokens": (count_tokens(self.provider, server.max_body_bytes), anthropic_error_body),
            "responses": self._chat_route(self.responses),
            "retrieve_response": (self.responses.show, error_body),
            "completions": self._chat_route(TextCompletions()),
            "embeddings": (self._chatting(self.embeddings), error_body),
            "models": (self._models, error_body),
            "model": (self._model, error_body),
            "health": (self._health, error_body),
            "ready": (self._ready, error_body),
            "metrics": (self._metrics, error_body),
            "openapi": (self._openapi_json, error_body),
        }
        if server.web_ui:
            handlers["web_page"] = (WebPage(), error_body)
        self._exact, self._patterns = bind_routes(handlers, web_ui=server.web_ui)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            request_id = request_id_of(scope)
            token = REQUEST_ID.set(request_id)
            try:
                send = _with_request_id(send, request_id.encode())
                if scope["method"] == "HEAD":
                    send = _without_body(send)
                if self.cors_origins:
                    await self._with_cors(scope, receive, send)
                else:
                    await self._dispatch(scope, receive, send)
            finally:
                REQUEST_ID.reset(token)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route: Bound | None = None
        try:
            route = self._exact.get(path)
            if route is None:
                for prefix, pattern in self._patterns:
                    if path.startswith(prefix):
                        route = pattern
                        break
                else:
                    raise EndpointNotFound(f"no endpoint at {path}; see /openapi.json")
            if scope["method"] not in route.methods:
                raise MethodNotAllowed(f"{path} takes {route.allow}, not {scope['method']}")
            if self.api_keys and not route.public:
                scope[CLIENT] = self._authenticate(scope)
            await route.handler(scope, receive, send)
        except PatchbayError as error:
            headers: Headers = []
            if isinstance(error, MethodNotAllowed) and route is not None:
                headers.append((b"allow", route.allow.encode()))
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None:
                headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
            body = route.error_body(error) if route is not None else error_body(error)
            await _send_quietly(send, error.status, body, headers)
        except ClientDisconnected:
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", scope["method"], path)
            body = route.error_body(PatchbayError("internal server error")) if route is not None else INTERNAL_ERROR
            await _send_quietly(send, 500, body, [])

    def _authenticate(self, scope: Scope) -> Client:
        """The API key check (constant time per key and over the whole list); the key's client."""
        matched = self._key_index(scope)
        if matched is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')")
        if matched < 0:
            raise AuthError("invalid API key")
        return self.clients[matched]

    def _key_index(self, scope: Scope) -> int | None:
        """The index of the request's API key: None without one, -1 for a key that is not known.
        The key is a bearer token, or an ``x-api-key`` header as Anthropic's clients send it."""
        value = header(scope, b"authorization") or b""
        scheme, _, key = value.partition(b" ")
        if scheme.lower() != b"bearer" or not key:
            key = header(scope, b"x-api-key") or b""
            if not key:
                return None
        matched = -1
        for index, known in enumerate(self.api_keys):
            if hmac.compare_digest(known, key.strip()):
                matched = index
        return matched

    # -- endpoints ----------------------------------------------------------------------------------

    def _chat_route(self, dialect: Dialect) -> Handling:
        """The handler of a chat-answering endpoint for ``dialect`` (sharing the router, metrics and
        limits), its errors in the dialect's envelope."""
        server = self.settings.server
        endpoint = ChatEndpoint(self.provider, limits=self.settings.router.limits(), metrics=self.metrics,
                                keepalive_interval=server.keepalive_interval, send_timeout=server.send_timeout,
                                dialect=dialect)
        endpoint.cache = self.cache
        return self._chatting(endpoint), dialect.error_body

    def _chatting(self, endpoint: ChatEndpoint | EmbeddingsEndpoint) -> Handler:
        """The handler of an endpoint that reaches a model: the client's rate limits around
        ``endpoint`` (which returns what the request used)."""

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            client: Client = scope.get(CLIENT, self.anonymous)
            options: dict[str, Any] = {}  # what the client asks of the response cache, in its headers
            if self.cache is not None and isinstance(endpoint, ChatEndpoint):
                options["cache"] = directives_of(header(scope, b"cache-control"), header(scope, CACHE_HEADER))
            if self.limiter is None or client.limits.unlimited:
                body = await read_body(scope, receive, self.settings.server.max_body_bytes)
                await endpoint(body, receive, send, key=client.name, **options)
                return
            try:  # before the body is read: a refused request costs nothing more
                admission = await self.limiter.admit(client.id, client.limits)
            except ClientRateLimited as error:
                self.metrics.rate_limited.inc((client.name, error.limit))
                raise
            spent = NOTHING
            ending: list[Message] = []

            async def held(message: Message) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    ending.append(message)  # the answer's end waits until the request is charged
                else:
                    await send(message)

            try:
                body = await read_body(scope, receive, self.settings.server.max_body_bytes)
                spent = await endpoint(body, receive, held, key=client.name, **options)
            finally:
                await asyncio.shield(self.limiter.finish(admission, spent.tokens, spent.cost))  # also when cancelled
            for message in ending:  # so the client's next request finds this one's cost, tokens and slot counted
                await send(message)

        self._endpoints.append(endpoint)
        return handle

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, _encode(await model_list(self.provider)))

    async def _model(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = scope["path"].split("/models/", 1)[1]
        await send_bytes(send, 200, _encode(await find_model(self.provider, wanted)))

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Liveness and each target's status; details (counts, last errors) only with a valid API key
        (so never when no keys are configured)."""
        public, detailed = await self.health.bodies()
        index = self._key_index(scope) if self.api_keys else None
        await send_bytes(send, 200, detailed if index is not None and index >= 0 else public)

    def begin_shutdown(self) -> None:
        """Report not ready from now on (``/ready`` answers 503) while requests are still served:
        for the server's runner to call on the stop signal, before it stops accepting connections."""
        self.stopping = True

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stopping:
            raise ProviderNotWorking("the server is shutting down")
        if not self.ready:
            raise ProviderNotWorking("the server is starting")
        models = await model_list(self.provider)
        await send_bytes(send, 200, _encode({"status": "ready", "models": len(models.data)}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")

    async def _openapi_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._openapi)

    # -- plumbing -----------------------------------------------------------------------------------

    async def _with_cors(self, scope: Scope, receive: Receive, send: Send) -> None:
        """CORS for allow-listed origins only; others get no CORS headers (the browser refuses)."""
        origin = header(scope, b"origin")
        if origin is None or origin not in self.cors_origins:
            await self._dispatch(scope, receive, send)
            return
        allow = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method"):
            preflight = [*allow, (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
                         (b"access-control-allow-headers", b"authorization, content-type"),
                         (b"access-control-max-age", b"600")]
            await send({"type": "http.response.start", "status": 204, "headers": preflight})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: dict[str, Any]) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *allow]
            await send(message)

        await self._dispatch(scope, receive, send_with_cors)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.tracing = start_tracing(self.settings.tracing)
                except InvalidRequest as error:
                    await send({"type": "lifespan.startup.failed", "message": f"cannot start tracing: {error.message}"})
                    return
                try:
                    self._open_request_log()
                except (OSError, sqlite3.Error) as exc:
                    await send({"type": "lifespan.startup.failed",
                                "message": f"cannot open the request log: {exc}"})
                    return
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                self.stopping = True
                if self.request_log is not None:  # write what is still queued
                    await asyncio.to_thread(self.request_log.close)
                if self.tracing is not None:  # export the spans still queued
                    await asyncio.to_thread(self.tracing.shutdown)
                if self._response_file is not None:
                    self._response_file.close()
                if self._response_redis is not None:
                    await self._response_redis.close()
                if issubclass(self.provider, Router):  # its shared state's Redis connections
                    await self.provider.state.close()
                if self.limiter is not None:
                    await self.limiter.close()
                if self.cache is not None:
                    await self.cache.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _open_request_log(self) -> None:
        server = self.settings.server
        if server.request_log:
            log = self.request_log = RequestLog(server.request_log_file(), **server.request_log_options())
            for endpoint in self._endpoints:
                endpoint.request_log = log
            if self._response_redis is None:
                self._response_file = SQLiteResponseStore(server.request_log_file())  # a table of its own
                self.responses.store = self._response_file
            self.metrics.request_log_counts = lambda: {
                "written": log.written, "truncated": log.truncated, "dropped_backlog": log.dropped_backlog,
                "dropped_locked": log.dropped_locked, "dropped_error": log.dropped_error}


class HealthView:
    """The two ``/health`` bodies, public and detailed, computed at most once per ``max_age``.

    Computing them walks the router's state, which grows with every target tried (a ``"*"``
    route adds one per model name): a request only reads the cached bytes, and concurrent
    requests wait for one computation. Only the first ``limit`` targets are listed by key; the
    rest are summed up under ``other``, so the answer's size is bounded too."""

    def __init__(self, provider: type[AsyncGeneratorProvider], limit: int, *, max_age: float = HEALTH_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = getattr(provider, "health", None)
        self.limit = limit
        self.max_age = max_age
        self._clock = clock
        self._bodies: tuple[bytes, bytes] | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def bodies(self) -> tuple[bytes, bytes]:
        """``(public, detailed)``: liveness and per-target status; with counts and last errors."""
        if self._bodies is not None and self._clock() < self._expires:
            return self._bodies
        async with self._lock:  # the first caller computes; the others find its result
            if self._bodies is None or self._clock() >= self._expires:
                self._bodies = await self._compute()
                self._expires = self._clock() + self.max_age
            return self._bodies

    async def _compute(self) -> tuple[bytes, bytes]:
        health = await self._read() if self._read is not None else {}
        public: dict[str, str] = {}
        detailed: dict[str, dict[str, Any]] = {}
        rest: dict[str, int] = {}
        for key, value in health.items():
            status = target_status(value)
            if len(public) < self.limit:
                public[key] = status
                detailed[key] = {**asdict(value), "status": status}
            else:
                rest[status] = rest.get(status, 0) + 1
        extra: dict[str, Any] = {OTHER: {"targets": sum(rest.values()), "status": rest}} if rest else {}
        return (_encode({"status": "ok", "targets": public, **extra}),
                _encode({"status": "ok", "targets": detailed, **extra}))


def target_status(health: Any) -> str:
    """One word for a target's state: ``cooldown``, ``untried``, ``failing`` (under half of its
    results were successes) or ``ok``."""
    if health.cooldown_until is not None:
        return "cooldown"
    rate = health.success_rate
    if rate is None:
        return "untried"
    return "failing" if rate < 0.5 else "ok"


_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's own ``x-request-id`` when it is a plain token of at most 128
    characters (so it is safe in a header, a log line and the request log), else a new one."""
    given = header(scope, b"x-request-id")
    if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return f"req_{_ids.getrandbits(96):024x}"


def _with_request_id(send: Send, request_id: bytes) -> Send:
    """``send`` adding ``x-request-id`` to the response head."""

    async def send_with_id(message: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
        await send(message)

    return send_with_id


def _without_body(send: Send) -> Send:
    """``send`` for a HEAD request: the GET response's status and headers, no body bytes."""

    async def send_head(message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head


async def _send_quietly(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Send an error response unless a response already started (then nothing more can be said)."""
    with contextlib.suppress(RuntimeError, OSError):
        await send_bytes(send, status, body, headers=headers)


def create_app() -> Gateway:
    """The app from the config file and environment (the factory ``patchbay serve`` workers use)."""
    return Gateway(load_settings())
