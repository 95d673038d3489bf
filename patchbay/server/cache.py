"""The gateway's response cache (``[cache] enabled = true``): a repeated deterministic request is
answered from the first one's answer, with no upstream call.

What is kept is the answer's *events* (text, tool-call fragments, logprobs, usage, finish, who
answered), not the bytes of one rendering: a hit is replayed through the normal rendering, so a
whole answer and a stream share one entry (and so do the chat endpoints that build the same chat
request). A replayed :class:`~patchbay.events.Usage` says ``cost`` 0, and a hit is charged
nothing: its ledger stays empty, and it spends no tokens of the key's limits.

The key is the SHA-256 of a canonical encoding (sorted keys) of the route the model resolves to
(the router's targets, in order), the requested model name and every field of the request that
can change the answer: messages (or prompt), tools, tool_choice, response_format, seed,
temperature, top_p, max_tokens, stop, n, logprobs, extra_body... Left out are ``stream``,
``stream_options``, ``user``, ``metadata`` and ``store``.

What is cached:

- only deterministic requests: ``temperature`` 0, or a ``seed``; another request is cached only
  when it opts in with the request header ``x-patchbay-cache: use``;
- only an answer that finished cleanly (finish reason ``stop``, ``length`` or ``tool_calls``, a
  200, the client still there), never an error, an interrupted stream, a disconnected client, nor
  an answer spliced from two targets by a mid-stream fallback; nor one encoded bigger than
  ``max_entry_bytes``;
- ``Cache-Control: no-store`` from the client: the cache is neither read nor written;
  ``no-cache``: not read (the answer is fresh), but written.

Every chat response says ``x-patchbay-cache: hit`` or ``miss`` (a request that was not looked up
says ``miss`` too) while the cache is on, and so does the request log's ``cache`` column; with
the cache off there is no header and the column is empty. ``patchbay_cache_results_total``
counts ``hit``, ``miss`` and ``bypass`` (not looked up: not cacheable, ``no-cache``/``no-store``,
or several legacy prompts in one request).

Two stores: :class:`MemoryCacheStore` (this process, least recently used out first beyond
``max_bytes``) and :class:`RedisCacheStore` (shared by every worker and host, each entry expiring
with its TTL). Every Redis call is bounded by a timeout; while Redis is down every lookup is a
miss and nothing is written (one warning says so): the cache never fails a request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import msgspec

from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import InvalidRequest
from patchbay.events import (
    EventStream,
    Fallback,
    Finish,
    Logprobs,
    ProviderInfo,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.redis_link import RedisLink
from patchbay.routing import Router
from patchbay.settings import CacheSettings

__all__ = [
    "CACHE_HEADER",
    "DEFAULT_DIRECTIVES",
    "CacheStore",
    "Directives",
    "Lookup",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "build_cache",
    "cache_key",
    "deterministic",
    "directives_of",
    "route_of",
]

log = logging.getLogger("patchbay.server.cache")

#: The response header (hit or miss), and the request header of the opt-in (``use``).
CACHE_HEADER = b"x-patchbay-cache"
OPT_IN = "use"
FORMAT = 1  # of the key and the entry: a change of either starts a new key space
KEPT_FINISH = frozenset({"stop", "length", "tool_calls"})
#: Request fields that cannot change the answer, left out of the key.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
_KINDS: dict[str, type[StreamEvent]] = {kind.__name__: kind for kind in (  # type: ignore[misc]
    TextDelta, ToolCallDelta, Logprobs, Usage, Finish, ProviderInfo)}

_encode = msgspec.json.encode


# -- what a request asks for ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Directives:
    """What the client asked of the cache: may it be read, may the answer be written, and does
    it opt in although the request is not deterministic."""

    read: bool = True
    write: bool = True
    opt_in: bool = False


#: A request that says nothing about the cache: read it, write to it, only when deterministic.
DEFAULT_DIRECTIVES = Directives()


def directives_of(cache_control: bytes | None, choice: bytes | None) -> Directives:
    """The directives of a request's ``Cache-Control`` and ``x-patchbay-cache`` headers (another
    value than ``use`` in the latter: InvalidRequest naming it)."""
    read = write = True
    for part in (cache_control or b"").decode("latin-1").split(","):
        directive = part.partition("=")[0].strip().lower()
        if directive == "no-store":
            read = write = False
        elif directive == "no-cache":
            read = False
    opt_in = False
    if choice is not None:
        value = choice.decode("latin-1").strip().lower()
        if value != OPT_IN:
            raise InvalidRequest(f"the x-patchbay-cache request header takes 'use' (cache this answer although the "
                                 f"request is not deterministic), got {value[:40]!r}")
        opt_in = True
    return Directives(read, write, opt_in)


def deterministic(request: ChatCompletionRequest) -> bool:
    """Whether the same request gives the same answer: temperature 0, or a seed."""
    return request.temperature == 0 or request.seed is not None


def route_of(provider: type[AsyncGeneratorProvider], model: str) -> list[str]:
    """The targets that can answer ``model`` (a Router's route; another provider is its own)."""
    if issubclass(provider, Router):
        return provider.route_of(model)
    return [provider.name]


def cache_key(route: Sequence[str], request: ChatCompletionRequest) -> str:
    """The SHA-256 (hex) of the route and every field of ``request`` that can change the answer."""
    fields = {name: value for name, value in msgspec.structs.asdict(request).items()
              if value is not None and name not in IGNORED_FIELDS}
    document = {"format": FORMAT, "kind": type(request).__name__, "route": list(route), "request": fields}
    return hashlib.sha256(_encode(document, order="sorted")).hexdigest()


# -- entries ---------------------------------------------------------------------------------------


def encode_events(events: Sequence[StreamEvent]) -> bytes:
    """An answer's events as one JSON entry (fallback notices left out: a hit had none)."""
    return _encode([[type(event).__name__, event] for event in events if not isinstance(event, Fallback)])


def decode_events(data: bytes | str) -> list[StreamEvent]:
    """The events of an entry (msgspec's errors for one that is not)."""
    return [msgspec.convert(fields, _KINDS[kind]) for kind, fields in msgspec.json.decode(data)]


async def _replay(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield replace(event, cost=0.0) if isinstance(event, Usage) else event


class _Tap:
    """The events of ``inner``, each also appended to ``recorded``; closing closes ``inner``."""

    def __init__(self, inner: EventStream, recorded: list[StreamEvent]) -> None:
        self._inner = inner.__aiter__()
        self._recorded = recorded

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> StreamEvent:
        event = await self._inner.__anext__()
        self._recorded.append(event)
        return event

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- stores ------------------------------------------------------------------------------------------


class CacheStore(Protocol):
    """Where entries are kept, by key, for the store's TTL."""

    async def get(self, key: str) -> bytes | str | None:
        """The entry, or None (none, expired, or the store unavailable)."""
        ...

    async def put(self, key: str, entry: bytes) -> None:
        """Keep ``entry`` (never raises: an unavailable store keeps nothing)."""
        ...

    async def close(self) -> None:
        ...


class MemoryCacheStore:
    """Entries in this process's memory: at most ``max_bytes`` of them (entry and key lengths),
    least recently used out first, each for ``ttl`` seconds."""

    def __init__(self, *, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (entry, expires)
        self.stored_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def put(self, key: str, entry: bytes) -> None:
        self._remove(key)
        size = len(entry) + len(key)
        if size > self.max_bytes:
            return
        self._entries[key] = (entry, self._clock() + self.ttl)
        self.stored_bytes += size
        while self.stored_bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.stored_bytes -= len(found[0]) + len(key)

    async def close(self) -> None:
        self._entries.clear()
        self.stored_bytes = 0


class RedisCacheStore:
    """Entries in Redis under ``patchbay:{namespace}:cache:{key}``, each expiring after ``ttl``
    seconds (Redis does the pruning; its ``maxmemory`` policy bounds the size). Every call takes
    ``timeout`` seconds at most; while Redis is unavailable a lookup finds nothing and nothing is
    written, and ``retry_after`` seconds pass before it is tried again."""

    def __init__(self, url: str, *, ttl: float, namespace: str = "default", timeout: float = 0.5,
                 retry_after: float = 5.0) -> None:
        self.ttl = ttl
        self._link = RedisLink(url, timeout=timeout, retry_after=retry_after, logger=log,
                               fallback="answering without the response cache", restored="caching responses again")
        self._prefix = f"patchbay:{namespace}:cache:"

    async def get(self, key: str) -> bytes | str | None:
        async def remote() -> bytes | str | None:
            value: bytes | str | None = await self._link.client().get(self._prefix + key)
            return value

        return await self._link.run(remote, _nothing)

    async def put(self, key: str, entry: bytes) -> None:
        async def remote() -> None:
            await self._link.client().set(self._prefix + key, entry, px=max(1, int(self.ttl * 1000)))

        await self._link.run(remote, _nothing)

    async def close(self) -> None:
        """Close this event loop's Redis connections."""
        await self._link.close()


async def _nothing() -> None:
    return None


# -- the cache ------------------------------------------------------------------------------------------


class Lookup:
    """One request's dealings with the cache: its key (None: not cacheable), what it may do,
    and the outcome (``hit``, ``miss`` or ``bypass``)."""

    __slots__ = ("key", "read", "recorded", "result", "write")

    def __init__(self, key: str | None, directives: Directives) -> None:
        self.key = key
        self.read = key is not None and directives.read
        self.write = key is not None and directives.write
        self.result = "bypass"
        self.recorded: list[StreamEvent] | None = None  # the answer's events, on a miss that may be written

    @property
    def header(self) -> bytes:
        """The ``x-patchbay-cache`` value: every response that is not a hit is a miss."""
        return b"hit" if self.result == "hit" else b"miss"

    @property
    def logged(self) -> str:
        return "hit" if self.result == "hit" else "miss"


class ResponseCache:
    """The policy over a :class:`CacheStore`: which requests, which answers, and the replay."""

    def __init__(self, store: CacheStore, *, max_entry_bytes: int = 1024 * 1024) -> None:
        self.store = store
        self.max_entry_bytes = max_entry_bytes

    def consider(self, provider: type[AsyncGeneratorProvider], request: ChatCompletionRequest,
                 directives: Directives, *, eligible: bool = True) -> Lookup:
        """The lookup of ``request`` answered by ``provider`` (``eligible``: False when the turn
        is more than its request says, e.g. several legacy prompts)."""
        wanted = eligible and (directives.read or directives.write)
        if wanted and (directives.opt_in or deterministic(request)):
            return Lookup(cache_key(route_of(provider, request.model), request), directives)
        return Lookup(None, directives)

    async def open(self, lookup: Lookup, start: Callable[[], EventStream]) -> EventStream:
        """The answer's events: replayed from the cache on a hit, else ``start()``'s (recorded
        when they may be written)."""
        if lookup.key is not None and lookup.read:
            lookup.result = "miss"
            entry = await self.store.get(lookup.key)
            if entry is not None:
                try:
                    events = decode_events(entry)
                except (msgspec.MsgspecError, KeyError, TypeError, ValueError):
                    log.warning("response cache entry %s cannot be read; answering afresh", lookup.key[:16])
                else:
                    lookup.result = "hit"
                    return EventStream(_replay(events))
        stream = start()
        if not lookup.write:
            return stream
        lookup.recorded = []
        return EventStream(_Tap(stream, lookup.recorded), ledger=stream.ledger)

    async def keep(self, lookup: Lookup, events: EventStream) -> None:
        """Store the answer ``events`` gave, when it finished cleanly (call only after a 200 the
        client received whole)."""
        if lookup.key is None or lookup.recorded is None:
            return
        if events.finish_reason not in KEPT_FINISH or any(f.delivered for f in events.fallbacks):
            return
        entry = encode_events(lookup.recorded)
        if len(entry) > self.max_entry_bytes:
            log.debug("answer of %d bytes not cached (max_entry_bytes %d)", len(entry), self.max_entry_bytes)
            return
        await self.store.put(lookup.key, entry)

    async def close(self) -> None:
        await self.store.close()


def build_cache(settings: CacheSettings, redis_url: str | None, *, namespace: str = "default"
                ) -> ResponseCache | None:
    """The cache ``[cache]`` describes (None when it is off); ``backend = "redis"`` without a Redis
    URL is InvalidRequest."""
    if not settings.enabled:
        return None
    store: CacheStore
    if settings.backend == "redis" or (settings.backend == "auto" and redis_url):
        if not redis_url:
            raise InvalidRequest("cache.backend is redis, but no Redis URL is set (the variable that "
                                 "[router] redis_url_env names, PATCHBAY_REDIS_URL by default)")
        store = RedisCacheStore(redis_url, ttl=settings.ttl, namespace=namespace)
    else:
        store = MemoryCacheStore(max_bytes=settings.max_bytes, ttl=settings.ttl)
    return ResponseCache(store, max_entry_bytes=settings.max_entry_bytes)
