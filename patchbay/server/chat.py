"""Every endpoint that answers with a chat: one request through the router, whole or streamed,
in the wire format of the API the client speaks (a :class:`Dialect`).

``/v1/chat/completions``, ``/v1/messages``, ``/v1/responses`` and ``/v1/completions`` differ only
in how the body is read and the answer written; routing, rate limits, metrics, the request log
and the streaming rules below are this one code path for all of them.

Streaming follows three rules. The response headers go out only with the first visible piece
of the answer, so a failure before any text still gets its proper status code. A failure after
that is sent in-band, in the dialect's own error event, and the stream ends. A client that
disconnects cancels the handler, which closes the router's stream and with it the upstream
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, NamedTuple, Protocol

import msgspec

import patchbay.routing.tracing as tracing
from patchbay.chat.context import CHARS_PER_TOKEN, estimate_tokens
from patchbay.chat.rendering import Rendering, rendered_events, rendered_whole
from patchbay.chat.request import ChatCompletionRequest, decode_request
from patchbay.chat.response import complete, stream_chunks
from patchbay.errors import AllProvidersFailed, PatchbayError, UpstreamError
from patchbay.events import EventStream
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.calls import open_stream
from patchbay.requestlog import Exchange, RequestLog
from patchbay.server.asgi import REQUEST_ID, DisconnectWatch, Headers, Receive, Send, SSEWriter, error_body, send_bytes
from patchbay.server.cache import CACHE_HEADER, DEFAULT_DIRECTIVES, Directives, Lookup, ResponseCache
from patchbay.server.metrics import GatewayMetrics
from patchbay.server.ratelimit import ANONYMOUS
from patchbay.timeouts import Timeout

__all__ = ["DONE", "ChatCompletions", "ChatEndpoint", "Dialect", "Frame", "Opener", "RenderedTurn", "Spent", "Turn"]

log = logging.getLogger("patchbay.server")

_encode = msgspec.json.encode
NO_PROVIDER = "none"

#: One server-sent event: its name (None: a plain ``data:`` event) and its encoded data.
Frame = tuple[bytes | None, bytes]
#: How a turn's events are made: from the provider and the request's time limits.
Opener = Callable[[type[AsyncGeneratorProvider], Timeout], EventStream]
#: The end of an OpenAI stream.
DONE: Frame = (None, b"[DONE]")


class Spent(NamedTuple):
    """What one request used, for the client's limits: prompt + completion tokens (the
    provider's usage, else an estimate) and US dollars (every attempt, see ``Ledger``)."""

    tokens: int
    cost: float


NOTHING = Spent(0, 0.0)


class Turn(Protocol):
    """One request in one API's wire format: the chat request it makes, and how its answer is written."""

    request: ChatCompletionRequest

    def open(self, provider: type[AsyncGeneratorProvider], timeout: Timeout) -> EventStream:
        """Start the request on ``provider`` (an unknown model fails here, at once)."""
        ...

    async def whole(self, events: EventStream) -> bytes:
        """Read ``events`` to the end; the whole answer's JSON body."""
        ...

    def frames(self, events: EventStream) -> AsyncGenerator[Frame, None]:
        """The answer as server-sent events, the closing ones included."""
        ...

    def error_frames(self, error: PatchbayError) -> Sequence[Frame]:
        """``error`` as events, for a failure after the stream started."""
        ...


class Dialect(Protocol):
    """One API's wire format over the chat pipeline."""

    async def begin(self, body: bytes) -> Turn:
        """Read a request body (InvalidRequest naming what is wrong)."""
        ...

    def error_body(self, error: PatchbayError) -> bytes:
        """The JSON body of an error response in this API's envelope."""
        ...


class RenderedTurn:
    """A :class:`Turn` written by a :class:`Rendering`; ``result`` gives the whole answer after
    ``finish``, ``done`` (when given) runs once an answer is complete (e.g. to store it), ``fail``
    (when given) writes a failure after the stream started as several events."""

    def __init__(self, request: ChatCompletionRequest, rendering: Rendering, result: Callable[[], Any], *,
                 done: Callable[[], Awaitable[None]] | None = None,
                 fail: Callable[[PatchbayError], Sequence[tuple[str | None, Any]]] | None = None,
                 opener: Opener | None = None, last: Frame | None = None) -> None:
        self.request = request
        self.rendering = rendering
        self.result = result
        self.done = done
        self.fail = fail
        self.opener = opener  # how the events are made, when not by one request to the provider
        self.last = last  # an event after the rendering's own closing ones (``[DONE]``)

    def open(self, provider: type[AsyncGeneratorProvider], timeout: Timeout) -> EventStream:
        if self.opener is not None:
            return self.opener(provider, timeout)
        return open_stream(provider, self.request, timeout=timeout)

    async def whole(self, events: EventStream) -> bytes:
        body = _encode(await rendered_whole(self.rendering, events, self.result))
        if self.done is not None:
            await self.done()
        return body

    async def frames(self, events: EventStream) -> AsyncGenerator[Frame, None]:
        rendered = rendered_events(self.rendering, events, self.done)
        async with aclosing(rendered):
            async for name, payload in rendered:
                yield _frame(name, payload)
        if self.last is not None:
            yield self.last

    def error_frames(self, error: PatchbayError) -> list[Frame]:
        if self.fail is not None:
            return [_frame(name, payload) for name, payload in self.fail(error)]
        return [_frame(*self.rendering.error_frame(error))]


def _frame(name: str | None, payload: Any) -> Frame:
    return (None if name is None else name.encode(), _encode(payload))


class ChatCompletions:
    """``/v1/chat/completions``: OpenAI's chat format, chunks and ``[DONE]``."""

    async def begin(self, body: bytes) -> Turn:
        return _ChatTurn(decode_request(body))

    def error_body(self, error: PatchbayError) -> bytes:
        return error_body(error)


class _ChatTurn:
    def __init__(self, request: ChatCompletionRequest) -> None:
        self.request = request

    def open(self, provider: type[AsyncGeneratorProvider], timeout: Timeout) -> EventStream:
        return open_stream(provider, self.request, timeout=timeout)

    async def whole(self, events: EventStream) -> bytes:
        return _encode(await complete(events, self.request.model))

    async def frames(self, events: EventStream) -> AsyncGenerator[Frame, None]:
        chunks = stream_chunks(events, self.request.model, include_usage=self.request.include_usage)
        async with aclosing(chunks):
            async for chunk in chunks:
                yield None, _encode(chunk)
        yield DONE

    def error_frames(self, error: PatchbayError) -> list[Frame]:
        return [(None, error_body(error))]


class ChatEndpoint:
    """Serves one :class:`Dialect` from one provider class (normally a Router)."""

    def __init__(self, provider: type[AsyncGeneratorProvider], *, limits: Timeout, metrics: GatewayMetrics,
                 keepalive_interval: float, send_timeout: float = 60.0, dialect: Dialect | None = None) -> None:
        self.provider = provider
        self.limits = limits
        self.metrics = metrics
        self.keepalive_interval = keepalive_interval
        self.send_timeout = send_timeout
        self.dialect: Dialect = dialect if dialect is not None else ChatCompletions()
        #: Set by the Gateway at startup when the request log is on.
        self.request_log: RequestLog | None = None
        #: Set by the Gateway when ``[cache]`` is enabled (patchbay/server/cache.py).
        self.cache: ResponseCache | None = None

    async def __call__(self, body: bytes, receive: Receive, send: Send, *, key: str = ANONYMOUS,
                       cache: Directives = DEFAULT_DIRECTIVES) -> Spent:
        """Serve one request for the API key named ``key`` (``cache``: what its headers ask of the
        response cache); what it used (nothing when it failed before reaching a provider, or was a
        cache hit)."""
        turn = await self.dialect.begin(body)
        request = turn.request
        started = time.perf_counter()
        lookup: Lookup | None = None
        if self.cache is None:
            events = turn.open(self.provider, self.limits)  # unknown model: 404 here, at once
        else:  # several legacy prompts (a turn with its own opener) are more than its request says
            lookup = self.cache.consider(self.provider, request, cache, eligible=getattr(turn, "opener", None) is None)
            events = await self.cache.open(lookup, lambda: turn.open(self.provider, self.limits))
            self.metrics.cache_result(lookup.result)
        span = tracing.request_span("text_completion" if request.prompt is not None else "chat", request.model,
                                    request_id=REQUEST_ID.get())
        self.metrics.in_flight.inc()
        try:
            if request.stream:
                await self._stream(turn, events, receive, send, started, key, lookup)
            else:
                await self._whole(turn, events, receive, send, started, key, lookup)
        finally:
            self.metrics.in_flight.dec()
            span.close()
        if lookup is not None and lookup.result == "hit":
            return NOTHING
        return Spent(tokens_used(request, events), events.ledger.cost)

    async def _whole(self, turn: Turn, events: EventStream, receive: Receive, send: Send, started: float,
                     key: str, lookup: Lookup | None = None) -> None:
        request = turn.request
        try:
            async with DisconnectWatch(receive) as watch, aclosing(events):
                body = await turn.whole(events)
        except PatchbayError as error:
            self._record(request, events, started, error.status, key, error=error, lookup=lookup)
            raise
        if watch.disconnected:
            self._record(request, events, started, 499, key, error=None, lookup=lookup)
            return
        self._record(request, events, started, 200, key, lookup=lookup)
        if self.cache is not None and lookup is not None:
            await self.cache.keep(lookup, events)
        await send_bytes(send, 200, body, headers=_headers(events, lookup))

    async def _stream(self, turn: Turn, events: EventStream, receive: Receive, send: Send, started: float,
                      key: str, lookup: Lookup | None = None) -> None:
        request = turn.request
        writer = SSEWriter(send)
        watch = DisconnectWatch(receive)

        def stalled() -> None:
            log.warning("a client left its stream unread for %g s; ending it as if the client had left",
                        self.send_timeout)
            watch.abandon()

        writer.start_keep_alive(self.keepalive_interval, self.send_timeout, stalled)
        frames = turn.frames(events)
        held: list[Frame] = []  # events before the first visible piece wait for it (see the rules above)
        first: float | None = None
        try:
            async with watch, aclosing(events), aclosing(frames):  # events closed last: charged in full
                async for frame in frames:
                    if first is None:
                        if not events.transcript.delivered:
                            held.append(frame)
                            continue
                        first = time.perf_counter()
                        await writer.start(_headers(events, lookup))
                        for early in held:
                            await writer.event(*early)
                        held.clear()
                    await writer.event(*frame)
                if held:  # an answer with nothing visible (an empty text) is still an answer
                    await writer.start(_headers(events, lookup))
                    for early in held:
                        await writer.event(*early)
                if self.cache is not None and lookup is not None:  # complete, and the client still there
                    await self.cache.keep(lookup, events)
                await writer.end()
        except PatchbayError as error:
            self._record(request, events, started, error.status, key, ttft=first, error=error, lookup=lookup)
            if not writer.started:
                raise  # the app answers with the error's own status
            await self._in_band(writer, turn.error_frames(error))
            return
        except Exception as exc:  # a bug must not leave the client hanging on an open stream
            if not writer.started:
                raise
            log.exception("streaming failed after the response started")
            await self._in_band(writer, turn.error_frames(UpstreamError(f"internal error: {type(exc).__name__}")))
            return
        finally:
            await writer.stop_keep_alive()  # also on the error paths: awaited, so it writes nothing later
        self._record(request, events, started, 499 if watch.disconnected else 200, key, ttft=first, lookup=lookup)

    async def _in_band(self, writer: SSEWriter, frames: Sequence[Frame]) -> None:
        """After the headers: the error as events, then the end of the stream (the client may be
        gone too, or have stopped reading)."""
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.send_timeout):
                for frame in frames:
                    await writer.event(*frame)
                await writer.end()

    def _record(self, request: ChatCompletionRequest, events: EventStream, started: float, status: int, key: str,
                *, ttft: float | None = None, error: PatchbayError | None = None, lookup: Lookup | None = None
                ) -> None:
        provider, model = _answered_by(request, events, error)
        usage = events.usage
        cost = events.ledger.cost
        extra: dict[str, Any] = {}
        if usage is not None and not (lookup is not None and lookup.result == "hit"):  # a hit used no tokens
            extra = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        latency = time.perf_counter() - started
        first = None if ttft is None else ttft - started
        self.metrics.record(provider, model, status, latency, ttft=first,
                            error_code=error.code if error else None, key=key, cost=cost, **extra)
        tracing.finish_request(status, events, error=error, messages=request.message_dicts, prompt=request.prompt)
        if self.request_log is not None:  # one encode and an append; the writer thread does the rest
            self.request_log.record(Exchange(
                time=time.time() - latency, source="server", messages=request.messages, response=events.text,
                requested_model=request.model, provider=None if provider == NO_PROVIDER else provider, model=model,
                finish_reason=events.finish_reason, prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None, latency=latency, ttft=first,
                status=status, error=f"{type(error).__name__}: {error.message}" if error else None,
                fallbacks=events.fallbacks, options=request.options(), request_id=REQUEST_ID.get(), cost=cost,
                key=key, cache=lookup.logged if lookup is not None else None))


def _provider_header(events: EventStream) -> bytes:
    info = events.provider_info
    return (info.provider if info is not None else NO_PROVIDER).encode()


def _headers(events: EventStream, lookup: Lookup | None) -> Headers:
    """An answer's own headers: who answered, and (with the cache on) whether it was a cache hit."""
    headers = [(b"x-patchbay-provider", _provider_header(events))]
    if lookup is not None:
        headers.append((CACHE_HEADER, lookup.header))
    return headers


def tokens_used(request: ChatCompletionRequest, events: EventStream) -> int:
    """Prompt + completion tokens: the provider's usage, else an estimate (for rate limits)."""
    usage = events.usage
    if usage is not None:
        return usage.prompt_tokens + usage.completion_tokens
    if not events.text:
        return 0
    return estimate_tokens(request.message_dicts()) + -(-len(events.text) // CHARS_PER_TOKEN)


def _answered_by(request: ChatCompletionRequest, events: EventStream, error: PatchbayError | None
                 ) -> tuple[str, str]:
    """The provider and model to record: who answered, else the last target that failed."""
    info = events.provider_info
    if info is not None:
        return info.provider, info.model
    if isinstance(error, AllProvidersFailed) and error.attempts:
        return error.attempts[-1].provider, error.attempts[-1].model
    return (error.provider if error is not None and error.provider else NO_PROVIDER), request.model
