"""The test proxies (tests/replicas/proxy.py), driven by a plain aiohttp client against a local target.

Shows that requests through the HTTP and SOCKS5 proxies reach the target and are recorded, that
non-loopback targets are refused without any connection attempt, that streamed responses pass
through unbuffered and intact, and that the proxies drop stalled clients and close cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp_socks import ProxyConnector, ProxyError

from tests.replicas import proxy as proxy_module
from tests.replicas.proxy import HTTPProxy, Socks5Proxy

# pytest finds fixtures by name in the module namespace (the root conftest may instead declare
# pytest_plugins = ["tests.replicas.proxy"]).
http_proxy = proxy_module.http_proxy
socks5_proxy = proxy_module.socks5_proxy

UNREACHABLE = "10.255.255.1"  # never connected to: the proxies must refuse it up front
STREAM_PARTS = [b"first,", b"second,", b"third,", b"fourth"]
TIMEOUT = aiohttp.ClientTimeout(total=10)


class Target:
    """A tiny aiohttp.web server on 127.0.0.1: ``/api/chat`` answers text, ``/stream`` streams."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.first_chunk_seen = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/api/chat", self.chat)
        app.router.add_get("/stream", self.stream)
        self.runner = web.AppRunner(app)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def chat(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        body = await request.text()
        return web.Response(text=f"hello from target: {request.method} {request.path_qs} {body}".rstrip())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Chunked; the later parts only after the client has seen the first (so no buffering)."""
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(STREAM_PARTS[0])
        await asyncio.wait_for(self.first_chunk_seen.wait(), 5)
        for part in STREAM_PARTS[1:]:
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    await server.start()
    try:
        yield server
    finally:
        await server.runner.cleanup()


@pytest.fixture
def upstream_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every outgoing connection the proxies attempt (they all go through ``open_upstream``)."""
    calls: list[tuple[str, int]] = []
    real = proxy_module.open_upstream

    async def spy(host: str, port: int) -> Any:
        calls.append((host, port))
        return await real(host, port)

    monkeypatch.setattr(proxy_module, "open_upstream", spy)
    return calls


def socks_session(url: str, **kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=ProxyConnector.from_url(url, **kwargs), timeout=TIMEOUT)


def proxy_authorization(user: str, password: str) -> dict[str, str]:
    """Request headers with Basic proxy credentials (aiohttp 3.14 deprecates ``aiohttp.BasicAuth``)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


async def raw_connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.rsplit("/", 1)[1].split(":")
    return await asyncio.open_connection(host, int(port))


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)


# --- HTTP proxy --------------------------------------------------------------------------------


async def test_http_proxy_forwards_absolute_form_request(http_proxy: HTTPProxy, target: Target) -> None:
    url = f"{target.base_url}/api/chat?x=1"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(url, proxy=http_proxy.url) as resp:
            assert resp.status == 200
            assert await resp.text() == "hello from target: GET /api/chat?x=1"
        async with session.post(f"{target.base_url}/api/chat", data=b"ping", proxy=http_proxy.url) as resp:
            assert await resp.text() == "hello from target: POST /api/chat ping"
    assert http_proxy.requests == [url, f"{target.base_url}/api/chat"]
    assert http_proxy.refused == []
    seen = target.headers[0]
    assert seen["Connection"] == "close"
    assert seen["Host"] == f"127.0.0.1:{target.port}"
    assert not any(name.lower().startswith("proxy-") for name in seen)


async def test_http_proxy_requires_basic_auth_when_configured(target: Target) -> None:
    url = f"{target.base_url}/api/chat"
    async with HTTPProxy(auth=("user", "s3cret")) as proxy, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(url, proxy=proxy.url) as resp:
            assert resp.status == 407
            assert resp.headers["Proxy-Authenticate"].startswith("Basic")
        async with session.get(url, proxy=proxy.url, headers=proxy_authorization("user", "wrong")) as resp:
            assert resp.status == 407
        assert proxy.requests == []
        async with session.get(url, proxy=proxy.url, headers=proxy_authorization("user", "s3cret")) as resp:
            assert resp.status == 200
        assert proxy.requests == [url]
    assert "Proxy-Authorization" not in target.headers[0]


async def test_http_proxy_refuses_non_loopback_without_connecting(
    http_proxy: HTTPProxy, upstream_calls: list[tuple[str, int]]
) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(f"http://{UNREACHABLE}/", proxy=http_proxy.url) as resp:
            assert resp.status == 403
        # https:// goes through CONNECT, which aiohttp reports as a proxy error.
        with pytest.raises(aiohttp.ClientHttpProxyError) as excinfo:
            await session.get(f"https://{UNREACHABLE}/", proxy=http_proxy.url)
        assert excinfo.value.status == 403
    assert http_proxy.refused == [f"http://{UNREACHABLE}/", f"CONNECT {UNREACHABLE}:443"]
    assert http_proxy.requests == []
    assert upstream_calls == []


async def test_http_proxy_connect_tunnel(http_proxy: HTTPProxy, target: Target) -> None:
    reader, writer = await raw_connect(http_proxy.url)
    try:
        authority = f"127.0.0.1:{target.port}"
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
        writer.write(f"GET /api/chat HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        await close(writer)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"hello from target: GET /api/chat")
    assert http_proxy.requests == [f"CONNECT {authority}"]


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET ftp://127.0.0.1/ HTTP/1.1\r\n\r\n", 400),
        (b"nonsense\r\n\r\n", 400),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n", 431),
    ],
)
async def test_http_proxy_rejects_bad_requests(http_proxy: HTTPProxy, request_head: bytes, status: int) -> None:
    reader, writer = await raw_connect(http_proxy.url)
    try:
        writer.write(request_head)
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        await close(writer)
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert http_proxy.requests == []


# --- SOCKS5 proxy ------------------------------------------------------------------------------


async def test_socks5_proxy_forwards_request(socks5_proxy: Socks5Proxy, target: Target) -> None:
    async with socks_session(socks5_proxy.url) as session, session.get(f"{target.base_url}/api/chat") as resp:
        assert resp.status == 200
        assert await resp.text() == "hello from target: GET /api/chat"
    assert socks5_proxy.connections == [("127.0.0.1", target.port)]
    assert socks5_proxy.refused == []


async def test_socks5_proxy_domain_name_target(socks5_proxy: Socks5Proxy, target: Target) -> None:
    # rdns=True: the client sends the name "localhost" (address type 0x03) for the proxy to resolve.
    async with (
        socks_session(socks5_proxy.url, rdns=True) as session,
        session.get(f"http://localhost:{target.port}/api/chat") as resp,
    ):
        assert await resp.text() == "hello from target: GET /api/chat"
    assert socks5_proxy.connections == [("localhost", target.port)]


async def test_socks5_proxy_refuses_non_loopback_without_connecting(
    socks5_proxy: Socks5Proxy, upstream_calls: list[tuple[str, int]]
) -> None:
    async with socks_session(socks5_proxy.url) as session:
        with pytest.raises(ProxyError) as excinfo:
            await session.get(f"http://{UNREACHABLE}/")
    assert excinfo.value.error_code == 0x02
    assert socks5_proxy.refused == [f"{UNREACHABLE}:80"]
    assert socks5_proxy.connections == []
    assert upstream_calls == []


async def test_socks5_proxy_username_password(target: Target) -> None:
    url = f"{target.base_url}/api/chat"
    async with Socks5Proxy(auth=("user", "s3cret")) as proxy:
        authority = proxy.url.removeprefix("socks5://")
        async with socks_session(f"socks5://user:s3cret@{authority}") as session, session.get(url) as resp:
            assert resp.status == 200
        async with socks_session(f"socks5://user:wrong@{authority}") as session:
            with pytest.raises(ProxyError):
                await session.get(url)
        async with socks_session(proxy.url) as session:  # "no authentication" is not offered
            with pytest.raises(ProxyError):
                await session.get(url)
        assert proxy.connections == [("127.0.0.1", target.port)]


async def socks5_exchange(proxy: Socks5Proxy, request: bytes) -> bytes:
    """Greeting ("no authentication"), then ``request``; the proxy's reply to the request."""
    reader, writer = await raw_connect(proxy.url)
    try:
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        await close(writer)


async def test_socks5_proxy_ipv6_address_type(socks5_proxy: Socks5Proxy) -> None:
    outside = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    reply = await socks5_exchange(socks5_proxy, b"\x05\x01\x00\x04" + outside + (80).to_bytes(2, "big"))
    assert reply[:2] == b"\x05\x02"  # connection not allowed by ruleset
    assert socks5_proxy.refused == ["[2001:db8::1]:80"]


async def test_socks5_proxy_ipv6_loopback(socks5_proxy: Socks5Proxy) -> None:
    try:
        server = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with server:
        port = server.sockets[0].getsockname()[1]
        loopback = socket.inet_pton(socket.AF_INET6, "::1")
        reply = await socks5_exchange(socks5_proxy, b"\x05\x01\x00\x04" + loopback + port.to_bytes(2, "big"))
    assert reply[:2] == b"\x05\x00"
    assert socks5_proxy.connections == [("::1", port)]


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", 0x07),  # BIND: command not supported
        (b"\x05\x01\x00\x09", 0x08),  # unknown address type
    ],
)
async def test_socks5_proxy_rejects_unsupported(socks5_proxy: Socks5Proxy, request_bytes: bytes, code: int) -> None:
    reply = await socks5_exchange(socks5_proxy, request_bytes)
    assert reply[:2] == bytes([0x05, code])
    assert socks5_proxy.connections == []


# --- both --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "socks5"])
async def test_streaming_response_passes_through_unbuffered(
    kind: str, http_proxy: HTTPProxy, socks5_proxy: Socks5Proxy, target: Target
) -> None:
    url = f"{target.base_url}/stream"
    if kind == "http":
        session, proxy = aiohttp.ClientSession(timeout=TIMEOUT), http_proxy.url
    else:
        session, proxy = socks_session(socks5_proxy.url), None
    async with session, session.get(url, proxy=proxy) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        # The target sends the rest only once the first part has arrived here.
        first = await asyncio.wait_for(resp.content.readexactly(len(STREAM_PARTS[0])), 5)
        target.first_chunk_seen.set()
        rest = await resp.content.read()
    assert first + rest == b"".join(STREAM_PARTS)


ProxyFactory = Callable[..., HTTPProxy | Socks5Proxy]


@pytest.mark.parametrize("factory", [HTTPProxy, Socks5Proxy])
async def test_silent_client_is_dropped(factory: ProxyFactory) -> None:
    async with factory(handshake_timeout=0.2) as proxy:
        reader, writer = await raw_connect(proxy.url)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            await close(writer)


@pytest.mark.parametrize("factory", [HTTPProxy, Socks5Proxy])
async def test_stop_closes_open_tunnels(
    factory: ProxyFactory, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = factory()
    await proxy.start()
    reader, writer = await raw_connect(proxy.url)
    try:
        if isinstance(proxy, HTTPProxy):
            writer.write(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
        else:
            writer.write(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + target.port.to_bytes(2, "big"))
            assert (await reader.readexactly(12))[:4] == b"\x05\x00\x05\x00"
        started = time.monotonic()
        await proxy.stop()
        assert time.monotonic() - started < 5
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        await close(writer)
    await proxy.stop()  # idempotent
    await asyncio.sleep(0.05)  # let asyncio run the done-callbacks of the cancelled connection tasks
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
