"""uvicorn's httptools protocol with the connection limits that hold before authentication.

uvicorn's own protocol puts no bound on a request head (httptools keeps every byte of an
unfinished header) and no timer on a head or a body, so one client could take a gigabyte or hold
a connection forever. :class:`LimitedHttpProtocol` counts what arrives and answers with a minimal
raw response before the app sees anything:

- a head (request line and headers) beyond ``max_head_bytes``, or more than ``max_headers``
  fields: 431; a request target beyond ``max_url_bytes``: 414; HTTP/1.1 without exactly one
  ``Host``: 400;
- a head not complete ``head_timeout`` seconds after its first byte (or after the connection
  opened): 408 (a connection that sent nothing is just closed);
- a body with no bytes for ``body_idle_timeout`` seconds while the app waits for it: 408 (or just
  closed once the answer has begun);
- an idle keep-alive connection is closed after ``keepalive_timeout``;
- beyond ``max_connections`` open connections in this process: 503 and closed at once.

Writes are joined per turn of the event loop (:mod:`patchbay.server.writes`): a head and its
body, or the events of a stream that arrived together, leave in one system call.

Memory per connection is bounded by those limits plus one socket read. HTTP/1.0 clients get an
answer of unknown length delimited by closing the connection, never chunked (which they cannot
read).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, fields
from typing import Any

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from patchbay.errors import InvalidRequest
from patchbay.server.writes import CoalescingTransport
from patchbay.settings import ServerSettings, load_settings

__all__ = ["DESCRIPTOR_RESERVE", "Limits", "LimitedHttpProtocol"]

log = logging.getLogger("patchbay.server")

#: Open files kept for the app's own use (its files, upstream connections) beyond the connections.
DESCRIPTOR_RESERVE = 256
#: Seconds a rejected connection is drained before it is closed.
LINGER = 2.0
LINGER_REFUSED = 0.5
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class Limits:
    """The limits of :class:`LimitedHttpProtocol` (the ``[server]`` options of the same names)."""

    max_head_bytes: int = ServerSettings.max_head_bytes  # the defaults are the settings' own
    max_headers: int = ServerSettings.max_headers
    max_url_bytes: int = ServerSettings.max_url_bytes
    head_timeout: float = ServerSettings.head_timeout
    body_idle_timeout: float = ServerSettings.body_idle_timeout
    keepalive_timeout: float = ServerSettings.keepalive_timeout
    max_connections: int = ServerSettings.max_connections

    @classmethod
    def from_settings(cls, server: ServerSettings) -> Limits:
        """The limits configured in ``[server]``; a limit that is not positive is InvalidRequest.

        ``max_connections`` is lowered to what the open-file limit leaves after
        :data:`DESCRIPTOR_RESERVE`: beyond the limit accepting fails, and then every client
        waits, which the cap is there to prevent."""
        values = {f.name: getattr(server, f.name) for f in fields(cls)}
        for name, value in values.items():
            if value <= 0:
                raise InvalidRequest(f"server.{name} must be positive, got {value}")
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and values["max_connections"] > soft - DESCRIPTOR_RESERVE:
            fitting = max(1, soft - DESCRIPTOR_RESERVE)
            log.warning("server.max_connections %d does not fit the open-file limit %d: %d are accepted "
                        "(raise the limit with ulimit -n)", values["max_connections"], soft, fitting)
            values["max_connections"] = fitting
        return cls(**values)


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the answer is on the protocol."""


def _raw_response(status: int, message: str) -> bytes:
    body = message.encode("ascii")
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ])


class _Http10Cycle(RequestResponseCycle):
    """A request/response cycle for an HTTP/1.0 client: an answer without a length is delimited
    by closing the connection instead of chunked encoding."""

    close_delimited = False

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does, except a length-less body, which is written as is."""
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", [])}
            if (b"content-length" not in names and b"transfer-encoding" not in names
                    and self.scope["method"] != "HEAD" and message["status"] not in (204, 304)):
                self.close_delimited = True
                self.keep_alive = False
                self.chunked_encoding = False  # so uvicorn adds no transfer-encoding header
        elif (message["type"] == "http.response.body" and self.close_delimited and self.response_started
              and not self.response_complete):
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            self.transport.write(message.get("body", b""))
            if not message.get("more_body", False):
                self.response_complete = True
                self.message_event.set()
                self.transport.close()
                self.on_response()
            return
        await super().send(message)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded by :class:`Limits` (see the module docstring).

    ``limits`` is set by ``patchbay serve`` in its own process; a worker process started by
    uvicorn's supervisor reads them from the config file and environment, as its app does."""

    limits: Limits | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            cls.limits = Limits.from_settings(load_settings().server)
        self.bounds = cls.limits
        self.timeout_keep_alive = self.bounds.keepalive_timeout  # type: ignore[assignment]
        self._in_head = True
        self._skip_chunk = False  # a new head began inside the chunk being parsed (counted by callbacks)
        self._head_started = False  # the unfinished head has its first byte
        self._head_bytes = 0  # bytes of the unfinished head, counted by socket reads
        self._exact_head = 0  # bytes of the head, counted by parser callbacks
        self._header_count = 0
        self._rejection: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse the connection with 503 when this process has ``max_connections`` open."""
        if len(self.connections) >= self.bounds.max_connections:
            self._refused = True
            self.transport = transport
            self._reject(503, "too many connections", linger=LINGER_REFUSED)
            return
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._head_timer = self.loop.call_later(self.bounds.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timers as well."""
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does, counting the unfinished head's bytes."""
        if self._refused or self._rejection is not None or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._in_head and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.bounds.head_timeout, self._head_timed_out)
        self._skip_chunk = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._rejection is not None:
                self._reject(*self._rejection)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._reject(400, "invalid HTTP request")
            return
        if self._in_head and not self._skip_chunk:
            self._head_bytes += len(data)
            if self._head_bytes > self.bounds.max_head_bytes:
                self._reject(431, "request head too large")

    def _reject(self, status: int, message: str, linger: float = 0.0) -> None:
        """Answer ``status`` with a minimal response and close the connection.

        The close lingers: the answer is followed by a half-close, and what the client still sends
        is read and dropped for up to :data:`LINGER` seconds, because closing a socket with unread
        input resets it, and a reset destroys the answer before the client has read it (a refused
        connection lingers ``linger`` seconds: less, as it holds a descriptor beyond the cap)."""
        self._rejection = (status, message)
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self.transport.is_closing():
            return
        self.transport.write(_raw_response(status, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(linger or LINGER, self.transport.close)
        else:
            self.transport.close()

    def _stop(self, status: int, message: str) -> None:
        """Reject from inside a parser callback (which may only raise)."""
        self._rejection = (status, message)
        raise _Rejected(message)

    # parser callbacks

    def on_message_begin(self) -> None:
        """A new head: reset its counts."""
        super().on_message_begin()
        self._in_head = self._head_started = self._skip_chunk = True
        self._head_bytes = self._exact_head = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        """Bound the request target."""
        super().on_url(url)
        self._exact_head += len(url)
        if len(self.url) > self.bounds.max_url_bytes:
            self._stop(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Bound the number and total size of the header fields."""
        self._header_count += 1
        self._exact_head += len(name) + len(value) + 4
        if self._header_count > self.bounds.max_headers:
            self._stop(431, "too many header fields")
        if self._exact_head > self.bounds.max_head_bytes:
            self._stop(431, "request head too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Check ``Host``, stop the head timer, start the app, and time the body."""
        if self._exact_head > self.bounds.max_head_bytes:
            self._stop(431, "request head too large")
        version = self.parser.get_http_version()
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if (version == "1.1" and hosts != 1) or hosts > 1:
            self._stop(400, "exactly one Host header is required")
        self._in_head = self._head_started = False
        self._cancel_head_timer()
        super().on_headers_complete()
        if version == "1.0" and self.cycle is not None:
            self.cycle.__class__ = _Http10Cycle
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        """Restart the body's idle timer."""
        super().on_body(body)
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        """The body is complete; what follows is the next head."""
        self._cancel_body_timer()
        self._in_head = True
        self._skip_chunk = True
        self._head_bytes = self._exact_head = self._header_count = 0
        super().on_message_complete()

    # timers

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.bounds.body_idle_timeout, self._body_timed_out)

    def _head_timed_out(self) -> None:
        """The head took too long: 408, or just close when nothing was sent or an answer is under way."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if self._head_started and not busy:
            self._reject(408, "request head not received in time")
            return
        self._rejection = (408, "")
        self.transport.close()

    def _body_timed_out(self) -> None:
        """The body went silent: 408 before the answer began, else just close."""
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        cycle = self.cycle
        if self.flow.read_paused or cycle.waiting_for_100_continue:  # the wait is ours, not the client's
            self._arm_body_timer()
            return
        if not cycle.response_started:
            self._reject(408, "request body not received in time")
        else:
            self._rejection = (408, "")
            self.transport.close()
        cycle.disconnected = True
        cycle.message_event.set()
