"""Plain ASGI building blocks: the request body under a size limit, JSON and error responses, an
SSE writer, and a watcher that cancels the handler when the client goes away.

No framework: each request costs only what the gateway needs, and each piece is small enough to
read in one sitting.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import msgspec

from patchbay.errors import PatchbayError, PayloadTooLarge

__all__ = ["REQUEST_ID", "ClientDisconnected", "DisconnectWatch", "Headers", "Receive", "Scope", "Send", "SSEWriter",
           "error_body", "read_body", "send_bytes"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
log = logging.getLogger("patchbay.server")
_encode = msgspec.json.encode


class ClientDisconnected(Exception):
    """The client went away before its request was read; there is nobody left to answer."""


#: The ``x-request-id`` of the request being served (set by the gateway for each request; its
#: tasks inherit it), for error bodies, the request log and log lines about the request.
REQUEST_ID: ContextVar[str | None] = ContextVar("patchbay_request_id", default=None)


def error_body(error: PatchbayError) -> bytes:
    """The OpenAI error object for ``error``, with the request's id."""
    body = error.to_dict()
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    return _encode({"error": body})


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                     headers: Headers | None = None) -> None:
    """A whole response in two ASGI messages."""
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` as soon as it is known to exceed ``limit``."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes; the limit is {limit} bytes")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        return body  # type: ignore[no-any-return]
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client left before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class DisconnectWatch:
    """Cancel the current task when the client disconnects; the cancellation ends quietly.

    Start it only after the request body was read (it consumes ``receive``). Used as
    ``async with DisconnectWatch(receive) as watch:``; afterwards ``watch.disconnected`` says
    whether the client left. Cancelling the handler closes the upstream request at once, because
    every stream below is closed on the way out.

    The watching task starts only after ``grace`` seconds: most answers are complete before
    that, and a timer costs far less than a task on every request.
    """

    def __init__(self, receive: Receive, grace: float = 0.05) -> None:
        self._receive = receive
        self._grace = grace
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(self._grace, self._start)
        return self

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    def abandon(self) -> None:
        """End the request as if the client had left (it stopped reading: nobody takes the answer).
        Only inside the ``async with`` block, where the cancellation is caught."""
        if not self.disconnected and self._task is not None:
            self.disconnected = True
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.abandon()
                return

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        task, self._task = self._task, None
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if self.disconnected and task is not None and task.cancelling():
            task.uncancel()
            return exc_type is None or issubclass(exc_type, asyncio.CancelledError)
        return False


class SSEWriter:
    """Server-sent events for one response: the headers go out with the first event, so an error
    before it can still get a proper status; comments keep an idle connection alive.

    Every write, the keep-alive comments' too, goes through one lock and checks one flag: once
    :meth:`end` has begun, nothing more is sent (an ASGI server refuses a message after the
    response is complete). :meth:`end` first stops the keep-alive task and waits for it."""

    def __init__(self, send: Send, headers: Headers | None = None) -> None:
        self._send = send
        self._headers = headers or []
        self._loop = asyncio.get_running_loop()
        self.started = False
        self.sent_at = 0.0  # loop time of the last write
        self.writing_since: float | None = None  # loop time the write under way began (it waits while
        # the client's buffers are full)
        self._lock = asyncio.Lock()
        self.finished = False  # the last message was sent (or attempted): no write may follow
        self._keepalive: asyncio.Task[None] | None = None
        self._send_timeout = math.inf  # the keep-alive's stall limit, kept for the last message

    async def start(self, extra: Headers | None = None) -> None:
        if self.started:
            return
        self.started = True
        head = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"), *self._headers, *(extra or [])]
        await self._send({"type": "http.response.start", "status": 200, "headers": head})

    async def data(self, payload: bytes) -> None:
        """One ``data:`` event (``payload`` is a single line of JSON or ``[DONE]``)."""
        await self._put(b"data: " + payload + b"\n\n")

    async def event(self, name: bytes | None, payload: bytes) -> None:
        """One event: ``event: name`` (when named) and its ``data:`` line."""
        if name is None:
            await self._put(b"data: " + payload + b"\n\n")
        else:
            await self._put(b"event: " + name + b"\ndata: " + payload + b"\n\n")

    async def comment(self, text: bytes = b"keep-alive") -> None:
        await self._write(b": " + text + b"\n\n")

    async def _put(self, body: bytes) -> None:
        """An event from the answer: :meth:`_write`, without the lock when no write is under way."""
        if not self.started or self.finished or self._lock.locked():
            await self._write(body)
            return
        # Only the keep-alive task writes besides this one, always under the lock, and never
        # while ``writing_since`` is set: with no await before that is set, nothing can interleave.
        loop = self._loop
        self.writing_since = loop.time()
        await self._send({"type": "http.response.body", "body": body, "more_body": True})
        self.sent_at = loop.time()
        self.writing_since = None

    async def _write(self, body: bytes, more: bool = True) -> None:
        async with self._lock:
            if self.finished:
                return
            if not more:
                self.finished = True
            if not self.started:
                await self.start()
            self.writing_since = self._loop.time()
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
            self.sent_at = self._loop.time()
            self.writing_since = None

    async def end(self) -> None:
        """The end of the response: the keep-alive task stopped, then the last (empty) message.
        The keep-alive no longer guards that one, so it gets the same stall limit here."""
        await self.stop_keep_alive()
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._write(b"", more=False)
        except TimeoutError:
            log.warning("a client left the end of its stream unread for %g s; letting it go", self._send_timeout)

    def start_keep_alive(self, interval: float, send_timeout: float = math.inf,
                         on_stall: Callable[[], None] | None = None) -> None:
        """Run :meth:`keep_alive` as a task of this writer, stopped by :meth:`end` or
        :meth:`stop_keep_alive`."""
        self._send_timeout = send_timeout
        self._keepalive = asyncio.ensure_future(self.keep_alive(interval, send_timeout, on_stall))

    async def stop_keep_alive(self) -> None:
        """Cancel the keep-alive task and wait until it is gone (so it cannot write any more)."""
        task, self._keepalive = self._keepalive, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:  # retrieved: a bug, logged once
            log.error("the keep-alive task failed", exc_info=task.exception())

    async def keep_alive(self, interval: float, send_timeout: float = math.inf,
                         on_stall: Callable[[], None] | None = None) -> None:
        """Run until cancelled: a comment whenever nothing was written for ``interval`` seconds.
        Before the first event this starts the response, trading a late error status for a
        connection that intermediaries do not time out.

        It is also the stream's guard against a client that stays connected but stopped reading:
        once a write has waited ``send_timeout`` seconds for room, ``on_stall()`` is called (once)
        and the guard ends. Watching here costs nothing per event on the hot path."""
        loop = self._loop
        self.sent_at = loop.time()
        while not self.finished:
            now = loop.time()
            if self.writing_since is not None:  # a write is waiting for the client
                if now - self.writing_since >= send_timeout:
                    break
                await asyncio.sleep(min(interval, self.writing_since + send_timeout - now))
            elif now - self.sent_at >= interval:
                try:  # in this task (wait_for would start another one, which a cancel may not stop in time)
                    async with asyncio.timeout(send_timeout):
                        await self.comment()
                except TimeoutError:
                    break
                except OSError:
                    pass
            else:
                await asyncio.sleep(self.sent_at + interval - now)
        else:
            return  # the response ended: no stall
        if on_stall is not None:
            on_stall()
