"""A raw TCP server on 127.0.0.1 that answers with whatever bytes its handler writes.

For what a well-behaved HTTP server cannot do: broken framing, drops after reading a request,
answers held back past a limit. It counts connections, requests read and connections the client
closed, and a test waits on those counts (``await server.wait_until(lambda: ...)``), never on time.
Used by tests/net/test_transport.py and bench/transports.py's fault matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

__all__ = ["OK", "RawHandler", "RawServer", "answer_first_request_only", "port_that_never_connects"]

RawHandler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class RawServer:
    """Serve ``handler`` per connection; ``wait`` bounds every wait of the server's own."""

    def __init__(self, handler: RawHandler, *, wait: float = 5.0) -> None:
        self.handler = handler
        self.wait = wait
        self.connections = self.requests = self.hangups = 0
        self.port = 0
        self.event = asyncio.Event()  # for handlers that announce something (a close)
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def changed(self) -> None:
        """Wake every :meth:`wait_until` to look at the counts again."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Until ``predicate()`` holds; TimeoutError after ``timeout`` (default: ``wait``) seconds."""
        async with asyncio.timeout(self.wait if timeout is None else timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests += 1
        await self.changed()
        return head + body

    async def wait_for_hangup(self, reader: asyncio.StreamReader) -> None:
        """Until the client closes the connection (what an abandoned request does), within ``wait``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.wait):
                await reader.read()
                self.hangups += 1
                await self.changed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        await self.changed()
        try:
            async with asyncio.timeout(self.wait * 2):
                await self.handler(self, reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # the handlers' reads end, and so do the handlers
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.wait)
        for task in list(self._tasks):  # a handler that did not end by itself (not expected)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def answer_first_request_only(then: str) -> RawHandler:
    """A handler that answers the server's first request (on any connection) with :data:`OK` and,
    for every later one, closes without a byte (``then="drop"``) or holds it unanswered until the
    client leaves (``"hold"``): a warm connection, then a dropped or late answer."""
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            if server.requests == 1:
                writer.write(OK)
                continue
            if then == "hold":
                await server.wait_for_hangup(reader)
            return
    return handler


@contextlib.contextmanager
def port_that_never_connects() -> Iterator[int]:
    """A loopback port where a new connection hangs in the SYN stage: a listener that never
    accepts, its backlog filled. For connect timeouts."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
