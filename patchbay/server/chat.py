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

from patchbay.completions import ChatCompletionRequest, complete, decode_request, open_stream, stream_chunks
from patchbay.config import Timeout
from patchbay.errors import PatchbayError, UpstreamError
from patchbay.events import EventStream
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.server.asgi import DisconnectWatch, Receive, Send, SSEWriter, error_body, send_bytes
from patchbay.server.metrics import GatewayMetrics

__all__ = ["ChatEndpoint"]

log = logging.getLogger("patchbay.server")

_encode = msgspec.json.encode
NO_PROVIDER = "none"


class ChatEndpoint:
    """Serves chat completions from one provider class (normally a Router)."""

    def __init__(self, provider: type[AsyncGeneratorProvider], *, limits: Timeout, metrics: GatewayMetrics,
                 keepalive_interval: float) -> None:
        self.provider = provider
        self.limits = limits
        self.metrics = metrics
        self.keepalive_interval = keepalive_interval

    async def __call__(self, body: bytes, receive: Receive, send: Send) -> None:
        request = decode_request(body)
        self.provider.resolve_model(request.model)  # unknown -> 404 naming the valid models
        started = time.perf_counter()
        events = open_stream(self.provider, request, timeout=self.limits)
        self.metrics.in_flight.inc()
        try:
            if request.stream:
                await self._stream(request, events, receive, send, started)
            else:
                await self._whole(request, events, receive, send, started)
        finally:
            self.metrics.in_flight.dec()

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
        keepalive = asyncio.ensure_future(writer.keep_alive(self.keepalive_interval))
        chunks = stream_chunks(events, request.model, include_usage=request.include_usage)
        first: float | None = None
        try:
            async with DisconnectWatch(receive) as watch, aclosing(chunks):
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
            keepalive.cancel()
        self._record(request, events, started, 499 if watch.disconnected else 200, ttft=first)

    @staticmethod
    async def _in_band(writer: SSEWriter, error: PatchbayError) -> None:
        """After the headers: the error as an event, then the end of the stream."""
        with contextlib.suppress(OSError):  # the client may be gone too
            await writer.data(error_body(error))
            await writer.end()

    def _record(self, request: ChatCompletionRequest, events: EventStream, started: float, status: int, *,
                ttft: float | None = None, error: PatchbayError | None = None) -> None:
        info = events.provider_info
        provider = info.provider if info else (error.provider if error and error.provider else NO_PROVIDER)
        model = info.model if info else request.model
        usage = events.usage
        extra: dict[str, Any] = {}
        if usage is not None:
            extra = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        self.metrics.record(provider, model, status, time.perf_counter() - started,
                            ttft=None if ttft is None else ttft - started,
                            error_code=error.code if error else None, **extra)
