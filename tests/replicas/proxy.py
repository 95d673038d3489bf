"""Real forward proxies on 127.0.0.1 for tests that check client traffic goes through a proxy.

:class:`HTTPProxy` is an HTTP/1.1 forward proxy (absolute-form requests and ``CONNECT`` tunnels);
:class:`Socks5Proxy` is a SOCKS5 proxy (RFC 1928, optional RFC 1929 username/password).  Both
record what they forwarded, refuse every target that is not loopback *before* connecting anywhere
(:func:`open_upstream` is the only place they open outgoing connections, and it re-checks), bound
every read, and close all connections on :meth:`stop`.

Use them as async context managers, or through the ``http_proxy`` and ``socks5_proxy`` fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import socket
import urllib.parse
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self

import pytest_asyncio

#: Largest request head (request line + headers) the HTTP proxy accepts; larger is answered 431.
HEADER_LIMIT = 64 * 1024
#: A client must finish its request head / SOCKS handshake within this many seconds.
HANDSHAKE_TIMEOUT = 10.0
#: A piped connection with no traffic in either direction for this long is closed (above the
#: replicas' longest deliberate stall, so fault scenarios pass through unchanged).
IDLE_TIMEOUT = 90.0
#: Bound of connecting upstream and of every close.
CONNECT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
COPY_CHUNK = 64 * 1024

_ALLOWED_IPS = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is one of the targets the proxies may reach: 127.0.0.1, ::1, localhost."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in _ALLOWED_IPS
    except ValueError:
        return False


async def open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a loopback target; the only place the proxies open outgoing connections.

    ``localhost`` is connected as 127.0.0.1, so no name is ever resolved.
    """
    if not is_loopback(host):
        raise PermissionError(f"refusing to connect to non-loopback host {host!r}")
    address = host.strip("[]")
    if address.rstrip(".").lower() == "localhost":
        address = "127.0.0.1"
    async with asyncio.timeout(CONNECT_TIMEOUT):
        return await asyncio.open_connection(address, port)


def _basic_auth_ok(header: str | None, auth: tuple[str, str]) -> bool:
    """Whether a ``Proxy-Authorization`` value is ``Basic`` with exactly these credentials."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return decoded == f"{auth[0]}:{auth[1]}"


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as ``(host, port)``; ValueError if malformed."""
    parts = urllib.parse.urlsplit("//" + authority)
    port = parts.port or default_port  # .port raises ValueError when out of range
    if not parts.hostname or port is None or parts.username is not None:
        raise ValueError(f"bad authority {authority!r}")
    return parts.hostname, port


class _ProxyServer:
    """Shared machinery: the listening socket, task and connection tracking, piping, stop."""

    scheme: ClassVar[str]

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.auth = auth
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.url = ""
        self.refused: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        """Listen on 127.0.0.1 (ephemeral port); returns :attr:`url`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0, limit=HEADER_LIMIT)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"{self.scheme}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and close every open connection (bounded; never hangs)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        await asyncio.gather(*(self._close(writer) for writer in list(self._writers)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: run :meth:`_handle`, then close the connection whatever happened."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError):
            pass  # client went away, stalled or sent garbage: just drop it
        except asyncio.CancelledError:
            pass  # stop() cancelled us; end normally, as some 3.11 releases log cancelled stream handlers
        finally:
            self._tasks.discard(task)
            await self._close(writer)

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a (tracked) upstream connection."""
        reader, writer = await open_upstream(host, port)
        self._writers.add(writer)
        return reader, writer

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close ``writer`` (flushing what is buffered) and wait, bounded, until it is closed."""
        self._writers.discard(writer)
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task tracked so that :meth:`stop` cancels it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes from ``reader`` to ``writer`` until EOF, an error or :attr:`idle_timeout`."""
        with contextlib.suppress(OSError, TimeoutError):
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(COPY_CHUNK)
                    if not data:
                        return
                    writer.write(data)
                    await writer.drain()

    async def _pipe(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        """Pipe bytes both ways until either side closes (the caller closes both connections)."""
        tasks = [self._spawn(self._copy(client[0], upstream[1])), self._spawn(self._copy(upstream[0], client[1]))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class HTTPProxy(_ProxyServer):
    """HTTP forward proxy: absolute-form requests (one per connection) and ``CONNECT`` tunnels.

    ``requests`` lists the target of each proxied request (``"http://127.0.0.1:1234/api/chat"``
    or ``"CONNECT 127.0.0.1:1234"``); ``refused`` lists non-loopback targets, answered 403.  With
    ``auth=(user, password)`` a request without matching ``Proxy-Authorization: Basic`` gets 407.
    """

    scheme = "http"

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        super().__init__(auth=auth, handshake_timeout=handshake_timeout, idle_timeout=idle_timeout)
        self.requests: list[str] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.handshake_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, "Request Header Fields Too Large")
            return
        try:
            method, target, version, headers = self._parse_head(head)
            url = urllib.parse.urlsplit(target if method != "CONNECT" else "//" + target)
            if method == "CONNECT":
                record = f"CONNECT {target}"
                host, port = _split_authority(target, None)
            elif url.scheme.lower() == "http":
                record = target
                host, port = _split_authority(url.netloc, 80)
            else:
                raise ValueError(f"not an absolute http:// target: {target!r}")
        except ValueError:
            await self._reply(writer, 400, "Bad Request")
            return
        if self.auth is not None and not _basic_auth_ok(self._header(headers, "proxy-authorization"), self.auth):
            await self._reply(writer, 407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="proxy"')
            return
        if not is_loopback(host):
            self.refused.append(record)
            await self._reply(writer, 403, "Forbidden")
            return
        self.requests.append(record)
        try:
            upstream = await self._connect(host, port)
        except (OSError, TimeoutError):
            await self._reply(writer, 502, "Bad Gateway")
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream[1].write(self._upstream_head(method, url, version, headers))
            await self._pipe((reader, writer), upstream)
        finally:
            await self._close(upstream[1])

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
        """Request line and headers of a request head; ValueError if malformed."""
        request_line, *lines = head.decode("latin-1")[:-4].split("\r\n")
        method, target, version = request_line.split(" ")  # ValueError unless exactly three parts
        if not version.startswith("HTTP/1."):
            raise ValueError(f"unsupported version {version!r}")
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        return method.upper(), target, version, headers

    @staticmethod
    def _header(headers: list[tuple[str, str]], name: str) -> str | None:
        """The first value of header ``name`` (lower case), if any."""
        return next((value for key, value in headers if key.lower() == name), None)

    def _upstream_head(
        self, method: str, url: urllib.parse.SplitResult, version: str, headers: list[tuple[str, str]]
    ) -> bytes:
        """The request head sent upstream: origin-form, no ``Proxy-*`` / hop-by-hop headers, ``Connection: close``."""
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        hop_by_hop = {"connection", "keep-alive"}
        hop_by_hop.update(t.strip().lower() for t in (self._header(headers, "connection") or "").split(","))
        kept = [(k, v) for k, v in headers if not k.lower().startswith("proxy-") and k.lower() not in hop_by_hop]
        if self._header(kept, "host") is None:
            kept.insert(0, ("Host", url.netloc))
        lines = [f"{method} {target} {version}", *(f"{k}: {v}" for k, v in kept), "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, reason: str, *extra: str) -> None:
        """An empty response with ``status`` that ends the connection."""
        lines = [f"HTTP/1.1 {status} {reason}", *extra, "Content-Length: 0", "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1"))
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.drain()


class Socks5Proxy(_ProxyServer):
    """SOCKS5 proxy (RFC 1928), ``CONNECT`` only, to IPv4, IPv6 and domain-name targets.

    ``connections`` lists the ``(host, port)`` of each tunnel opened; ``refused`` lists the
    non-loopback targets (``"host:port"``), answered 0x02 "connection not allowed by ruleset".
    With ``auth=(user, password)`` only RFC 1929 username/password authentication is offered.
    """

    scheme = "socks5"

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        super().__init__(auth=auth, handshake_timeout=handshake_timeout, idle_timeout=idle_timeout)
        self.connections: list[tuple[str, int]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.handshake_timeout):
            target = await self._handshake(reader, writer)
        if target is None:
            return
        host, port = target
        if not is_loopback(host):
            self.refused.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            await self._reply(writer, 0x02)
            return
        self.connections.append((host, port))
        try:
            upstream = await self._connect(host, port)
        except ConnectionRefusedError:
            await self._reply(writer, 0x05)
            return
        except (OSError, TimeoutError):
            await self._reply(writer, 0x04)
            return
        try:
            await self._reply(writer, 0x00, upstream[1].get_extra_info("sockname"))
            await self._pipe((reader, writer), upstream)
        finally:
            await self._close(upstream[1])

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        """Method negotiation, authentication and the request; the target, or None if refused."""
        version, count = await reader.readexactly(2)
        if version != 0x05:
            return None
        methods = await reader.readexactly(count)
        method = 0x00 if self.auth is None else 0x02
        if method not in methods:
            writer.write(b"\x05\xff")
            await writer.drain()
            return None
        writer.write(bytes([0x05, method]))
        await writer.drain()
        if self.auth is not None and not await self._authenticate(reader, writer, self.auth):
            return None
        version, command, _, address_type = await reader.readexactly(4)
        if version != 0x05:
            return None
        if address_type == 0x01:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif address_type == 0x04:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        elif address_type == 0x03:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("ascii", "replace")
        else:
            await self._reply(writer, 0x08)  # address type not supported
            return None
        port = int.from_bytes(await reader.readexactly(2), "big")
        if command != 0x01:
            await self._reply(writer, 0x07)  # command not supported
            return None
        return host, port

    @staticmethod
    async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auth: tuple[str, str]) -> bool:
        """RFC 1929 username/password sub-negotiation; whether the credentials match."""
        version, user_length = await reader.readexactly(2)
        user = await reader.readexactly(user_length)
        password = await reader.readexactly((await reader.readexactly(1))[0])
        ok = version == 0x01 and (user, password) == (auth[0].encode(), auth[1].encode())
        writer.write(b"\x01\x00" if ok else b"\x01\x01")
        await writer.drain()
        return ok

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, code: int, bound: tuple[Any, ...] | None = None) -> None:
        """A SOCKS5 reply with ``code`` and the bound address (0.0.0.0:0 if unknown)."""
        address = ipaddress.ip_address(bound[0]) if bound else ipaddress.IPv4Address(0)
        port = bound[1] if bound else 0
        address_type = 0x01 if address.version == 4 else 0x04
        writer.write(bytes([0x05, code, 0x00, address_type]) + address.packed + port.to_bytes(2, "big"))
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.drain()


@pytest_asyncio.fixture
async def http_proxy() -> AsyncIterator[HTTPProxy]:
    """A running :class:`HTTPProxy` without authentication (``.url``, ``.requests``, ``.refused``)."""
    async with HTTPProxy() as proxy:
        yield proxy


@pytest_asyncio.fixture
async def socks5_proxy() -> AsyncIterator[Socks5Proxy]:
    """A running :class:`Socks5Proxy` without authentication (``.url``, ``.connections``, ``.refused``)."""
    async with Socks5Proxy() as proxy:
        yield proxy
