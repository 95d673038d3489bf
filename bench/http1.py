"""A lean HTTP/1.1 client connection for the benchmarks: an asyncio protocol parsed by httptools.

aiohttp's client costs several times the CPU per request of this one; a load generator sharing the
machine with the server it loads should take as little of it as it can. One request at a time per
connection, kept alive; the body is collected whole, and a stream's first event can be awaited on
its own.
"""

from __future__ import annotations

import asyncio

import httptools

__all__ = ["REQUEST_TIMEOUT", "HTTPConnection", "fetch"]

REQUEST_TIMEOUT = 60.0  # seconds for one request


class HTTPConnection(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time, the response parsed by httptools.

    ``request()`` sends; ``first_event()`` returns once the body holds a whole SSE event (or the
    response ended); ``response()`` once the response ended. A connection that breaks makes both
    raise ``ConnectionError``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.status = 0
        self.keep_alive = True
        self.body = bytearray()
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)

    @classmethod
    async def open(cls, port: int) -> HTTPConnection:
        _, conn = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return conn

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def request(self, data: bytes) -> None:
        """Send one whole request (head and body)."""
        if not self.usable:
            raise ConnectionError("the connection is closed")
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.status, self.body, self.keep_alive, self.error = 0, bytearray(), True, None
        self._first, self._done = loop.create_future(), loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(data)

    async def first_event(self) -> None:
        await self._first
        if self.error is not None:
            raise self.error

    async def response(self) -> None:
        await self._done
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(ConnectionError(f"malformed response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(ConnectionError(f"the connection closed before the response ended ({exc})"))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body
        if not self._first.done() and b"\n\n" in self.body:
            self._first.set_result(None)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        if self._done.done():
            return
        self.error = error
        for future in (self._first, self._done):
            if not future.done():
                future.set_result(None)


async def fetch(port: int, method: str, path: str, api_key: str) -> tuple[int, bytes]:
    """One bodiless request on a connection of its own: (status, body)."""
    conn = await HTTPConnection.open(port)
    try:
        conn.request(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await conn.response()
        return conn.status, bytes(conn.body)
    finally:
        conn.close()
