"""``POST /v1/chat/completions``: one request through the router, whole or streamed.

Streaming follows three rules. The response headers go out only with the first chunk of the
answer, so a failure before any text still gets its proper status code. A failure after that is
sent in-band as an ``error`` event, and the stream ends. A client that disconnects cancels the
handler, which closes the router's stream and with it the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import aclosing
from typing import Any

import msgspec

from patchbay.chat.request import ChatCompletionRequest, decode_request
from patchbay.completions import complete, open_stream, stream_chunks
from patchbay.config import Timeout
from patchbay.context import CHARS_PER_TOKEN, estimate_tokens
from patchbay.errors import AllProvidersFailed, PatchbayError, UpstreamError
from patchbay.events import EventStream
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.requestlog import Exchange, RequestLog
from patchbay.server.asgi import DisconnectWatch, Receive, Send, SSEWriter, error_body, send_bytes
from patchbay.server.metrics import GatewayMetrics

__all__ = ["ChatEndpoint"]

log = logging.getLogger("patchbay.server")

_encode = msgspec.json.encode
NO_PROVIDER = "none"


class ChatEndpoint:
    """Serves chat completions from one provider class (normally a Router)."""

    def __init__(self, provider: type[AsyncGeneratorProvider], *, limits: Timeout, metrics: GatewayMetrics,
                 keepalive_interval: float, send_timeout: float = 60.0) -> None:
        self.provider = provider
        self.limits = limits
        self.metrics = metrics
        self.keepalive_interval = keepalive_interval
        self.send_timeout = send_timeout
        #: Set by the Gateway at startup when the request log is on.
        self.request_log: RequestLog | None = None

    async def __call__(self, body: bytes, receive: Receive, send: Send) -> int:
        """Serve one request; returns the tokens it used (0 when it failed before an answer)."""
        request = decode_request(body)
        started = time.perf_counter()
        events = open_stream(self.provider, request, timeout=self.limits)  # unknown model: 404 here, at once
        self.metrics.in_flight.inc()
        try:
            if request.stream:
                await self._stream(request, events, receive, send, started)
            else:
                await self._whole(request, events, receive, send, started)
        finally:
            self.metrics.in_flight.dec()
        return tokens_used(request, events)

    async def _whole(self, request: ChatCompletionRequest, events: EventStream, receive: Receive, send: Send,
                     started: float) -> None:
        try:
            async with DisconnectWatch(receive) as watch:
                completion = await complete(events, request.model)
        except PatchbayError as error:
            self._record(request, events, started, error.status, error=error)
            raise
        if watch.disconnected:
            self._record(request, events, started, 499, error=None)
            return
        self._record(request, events, started, 200)
        provider = (completion.provider or NO_PROVIDER).encode()
        await send_bytes(send, 200, _encode(completion), headers=[(b"x-patchbay-provider", provider)])

    async def _stream(self, request: ChatCompletionRequest, events: EventStream, receive: Receive, send: Send,
                      started: float) -> None:
        writer = SSEWriter(send)
        watch = DisconnectWatch(receive)

        def stalled() -> None:
            log.warning("a client left its stream unread for %g s; ending it as if the client had left",
                        self.send_timeout)
            watch.abandon()

        writer.start_keep_alive(self.keepalive_interval, self.send_timeout, stalled)
        chunks = stream_chunks(events, request.model, include_usage=request.include_usage)
        first: float | None = None
        try:
            async with watch, aclosing(chunks):
                async for chunk in chunks:
                    if first is None:
                        first = time.perf_counter()
                        await writer.start([(b"x-patchbay-provider", (chunk.provider or NO_PROVIDER).encode())])
                    await writer.data(_encode(chunk))
                await writer.data(b"[DONE]")
                await writer.end()
        except PatchbayError as error:
            self._record(request, events, started, error.status, ttft=first, error=error)
            if not writer.started:
                raise  # the app answers with the error's own status
            await self._in_band(writer, error)
            return
        except Exception as exc:  # a bug must not leave the client hanging on an open stream
            if not writer.started:
                raise
            log.exception("streaming failed after the response started")
            await self._in_band(writer, UpstreamError(f"internal error: {type(exc).__name__}"))
            return
        finally:
            await writer.stop_keep_alive()  # also on the error paths: awaited, so it writes nothing later
        self._record(request, events, started, 499 if watch.disconnected else 200, ttft=first)

    async def _in_band(self, writer: SSEWriter, error: PatchbayError) -> None:
        """After the headers: the error as an event, then the end of the stream (the client may be
        gone too, or have stopped reading)."""
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.send_timeout):
                await writer.data(error_body(error))
                await writer.end()

    def _record(self, request: ChatCompletionRequest, events: EventStream, started: float, status: int, *,
                ttft: float | None = None, error: PatchbayError | None = None) -> None:
        provider, model = _answered_by(request, events, error)
        usage = events.usage
        extra: dict[str, Any] = {}
        if usage is not None:
            extra = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        latency = time.perf_counter() - started
        first = None if ttft is None else ttft - started
        self.metrics.record(provider, model, status, latency, ttft=first,
                            error_code=error.code if error else None, **extra)
        if self.request_log is not None:  # one encode and an append; the writer thread does the rest
            self.request_log.record(Exchange(
                time=time.time() - latency, source="server", messages=request.messages, response=events.text,
                requested_model=request.model, provider=None if provider == NO_PROVIDER else provider, model=model,
                finish_reason=events.finish_reason, prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None, latency=latency, ttft=first,
                status=status, error=f"{type(error).__name__}: {error.message}" if error else None,
                fallbacks=events.fallbacks, options=request.options()))


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
