"""The transports (patchbay.net: the keep-alive pool and libcurl) and HTTPSession over each,
against real servers on 127.0.0.1: aiohttp ones for well-formed HTTP, and a raw TCP server for
broken framing and drops (tests/support/raw_server.py). Tests taking ``impl`` run once per
transport: the same matrix."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest
import pytest_asyncio
import uvloop
from aiohttp import web
from yarl import URL

from patchbay.errors import (
    ConnectionFailed,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    ProtocolError,
)
from patchbay.net import pool as transport
from patchbay.net.curl import CurlResponse
from patchbay.net.pool import ConnectionPool, pool_for_loop
from patchbay.net.session import TRANSPORTS, HTTPSession, parse_retry_after
from patchbay.net.transport import READ_HIGH_WATER, ConnectError, IncompleteResponse, UpstreamRequest
from patchbay.timeouts import Timeout
from tests.support.raw_server import OK, RawServer, answer_first_request_only, port_that_never_connects
from tests.support.tls import self_signed_server_context

WAIT = 5.0  # upper bound of every wait on a condition


# -- servers ------------------------------------------------------------------------------------


class Observed:
    """Counters a test waits on: ``await observed.wait_until(lambda: ...)`` wakes on every change."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)


class AppServer(Observed):
    """An aiohttp server that counts the connections its requests came over (by client address)."""

    def __init__(self, routes: list[web.RouteDef], ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.routes = routes
        self.ssl_context = ssl_context
        self.peers: set[Any] = set()
        self.requests = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        self.requests += 1
        await self.changed()
        response: web.StreamResponse = await handler(request)
        return response

    async def __aenter__(self) -> AppServer:
        app = web.Application(middlewares=[self._count])
        app.add_routes(self.routes)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.25, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        scheme = "https" if self.ssl_context else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()




async def keep_alive_ok(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await server.read_request(reader) is not None:
        writer.write(OK)


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(params=sorted(TRANSPORTS))
def impl(request: pytest.FixtureRequest) -> str:
    """The transport a test's sessions use: each such test runs once per implementation."""
    return str(request.param)


async def send(pool: ConnectionPool, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    response = await pool.send(UpstreamRequest(method, URL(url), body=body))
    try:
        parts = []
        while chunk := await response.read_chunk():
            parts.append(chunk)
        return response.status, b"".join(parts)
    finally:
        response.release()


async def get(pool: ConnectionPool, url: str) -> tuple[int, bytes]:
    return await send(pool, "GET", url)


# -- keep-alive ---------------------------------------------------------------------------------


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), headers={"X-Method": request.method})


async def test_sequential_requests_reuse_one_connection(pool: ConnectionPool) -> None:
    async with AppServer([web.get("/", echo)]) as server:
        for _ in range(20):
            assert await get(pool, server.base_url + "/") == (200, b"")
    assert server.requests == 20
    assert len(server.peers) == 1
    assert pool.connections_opened == 1


async def test_sessions_share_the_loops_transport(impl: str) -> None:
    async with AppServer([web.post("/", echo), web.get("/", echo)]) as server:
        for n in range(5):
            async with HTTPSession(transport=impl) as http, \
                    http.request("GET", server.base_url + "/", params={"n": n}) as response:
                assert response.headers["x-method"] == "GET"
                assert await http.read_body(response) == ""
        assert len(server.peers) == 1  # one kept-alive connection served every session
        async with HTTPSession(transport=impl) as http, \
                http.request("POST", server.base_url + "/", json={"n": 1}) as response:
            assert await http.read_body(response) == '{"n":1}'
        if impl == "pool":
            assert pool_for_loop().idle_count() == 1


async def test_concurrent_requests_open_several_connections(pool: ConnectionPool) -> None:
    arrived = 0
    all_in = asyncio.Event()

    async def gather_four(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived == 4:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), WAIT)  # answer only once four are in flight at once
        return web.Response(text="done")

    async with AppServer([web.get("/", gather_four)]) as server:
        url = server.base_url + "/"
        results = await asyncio.gather(*(get(pool, url) for _ in range(4)))
        assert results == [(200, b"done")] * 4
        assert len(server.peers) == 4
        assert pool.idle_count() == 4
        all_in.clear()
        arrived = 0
        await asyncio.gather(*(get(pool, url) for _ in range(4)))  # the four idle ones serve again
        assert len(server.peers) == 4
    assert pool.connections_opened == 4


# -- body framing ---------------------------------------------------------------------------------


async def test_content_length_chunked_and_close_delimited_bodies(pool: ConnectionPool) -> None:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"one,", b"two,", b"three"):
            await response.write(piece)
        await response.write_eof()
        return response

    async with AppServer([web.get("/sized", sized), web.get("/chunked", chunked)]) as server:
        assert await get(pool, server.base_url + "/sized") == (200, b"x" * 1000)
        assert await get(pool, server.base_url + "/chunked") == (200, b"one,two,three")
        assert len(server.peers) == 1  # both bodies were framed, so the connection stayed

    async def close_delimited(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")

    async with RawServer(close_delimited) as raw:
        assert await get(pool, raw.url) == (200, b"until the end")
        assert pool.idle_count(("http", "127.0.0.1", raw.port, True)) == 0  # it cannot carry another request


async def test_truncated_chunked_body_is_connection_failed(impl: str) -> None:
    async def truncated(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")  # no last chunk

    async with RawServer(truncated) as server, HTTPSession(transport=impl) as http, \
            http.request("GET", server.url) as response:
        received = []
        with pytest.raises(ConnectionFailed):
            async for chunk in http.iter_bytes(response):
                received.append(chunk)
        assert received == [b"hello"]


async def test_truncated_sized_body_is_connection_failed(impl: str) -> None:
    async def short(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async with RawServer(short) as server, HTTPSession(transport=impl) as http, \
            http.request("GET", server.url) as response:
        with pytest.raises(ConnectionFailed):
            await http.read_body(response)


async def test_malformed_status_line_is_protocol_error(impl: str) -> None:
    async def garbage(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 TWO-HUNDRED OK\r\nContent-Length: 0\r\n\r\n")
        await server.wait_for_hangup(reader)

    async with RawServer(garbage) as server, HTTPSession(transport=impl) as http:
        with pytest.raises(ProtocolError, match="malformed HTTP response"):
            async with http.request("GET", server.url):
                pass
        await server.wait_until(lambda: server.hangups == 1)  # the broken connection was closed


async def test_response_headers_are_case_insensitive(pool: ConnectionPool) -> None:
    async def limited(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down", headers={"Retry-After-Ms": "1500", "X-Twice": "a"})

    async with AppServer([web.get("/", limited)]) as server:
        response = await pool.send(UpstreamRequest("GET", URL(server.base_url + "/")))
        try:
            assert response.status == 429
            assert response.headers.get("content-type") == "text/plain; charset=utf-8"
            assert response.headers["CONTENT-TYPE"] == response.headers["Content-Type"]
            assert parse_retry_after(response.headers) == 1.5
            assert await response.read_chunk() == b"slow down"
            assert await response.read_chunk() == b""
        finally:
            response.release()


# -- failures and stale connections ----------------------------------------------------------------


async def test_connection_refused_is_connection_failed(impl: str, unused_tcp_port: int) -> None:
    async with HTTPSession(provider="Test", transport=impl) as http:
        with pytest.raises(ConnectionFailed) as info:
            async with http.request("GET", f"http://127.0.0.1:{unused_tcp_port}/"):
                pass
    assert info.value.provider == "Test"
    assert isinstance(info.value.__cause__, ConnectError)


async def test_connect_timeout_is_connect_timeout(impl: str) -> None:
    with port_that_never_connects() as port:
        async with HTTPSession(timeout=Timeout(connect=0.2, first_byte=5, idle=5, total=10), transport=impl) as http:
            with pytest.raises(ConnectTimeout):
                async with http.request("GET", f"http://127.0.0.1:{port}/"):
                    pass


async def test_idle_connection_closed_by_the_server_is_replaced(pool: ConnectionPool) -> None:
    async def one_answer_then_close(server: RawServer, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)  # keep-alive by default in HTTP/1.1, yet the server closes right after

    async with RawServer(one_answer_then_close) as server:
        assert await get(pool, server.url) == (200, b"ok")
        assert pool.idle_count() == 1
        conn = pool._idle[("http", "127.0.0.1", server.port, True)][-1]
        await asyncio.wait_for(conn.lost, WAIT)  # the pooled connection noticed the close
        assert await get(pool, server.url) == (200, b"ok")
        assert server.connections == 2


async def test_stale_connection_is_retried_once_on_a_fresh_one(pool: ConnectionPool) -> None:
    async def second_request_dropped(server: RawServer, reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)  # read, then close without a byte: a stale connection

    async with RawServer(second_request_dropped) as server:
        assert await get(pool, server.url) == (200, b"ok")
        assert await get(pool, server.url) == (200, b"ok")  # failed on the reused one, retried
        assert (server.connections, server.requests) == (2, 3)


async def test_a_fresh_connection_is_not_retried(pool: ConnectionPool) -> None:
    async def drop(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    async with RawServer(drop) as server:
        with pytest.raises(IncompleteResponse):
            await get(pool, server.url)
        assert (server.connections, server.requests) == (1, 1)


async def test_a_post_is_never_sent_twice_on_a_dropped_connection(impl: str) -> None:
    """A warm connection the server drops after reading a POST: the POST may have been acted on,
    so it is not sent again (a GET would be: test_stale_connection_is_retried_once...)."""
    async with RawServer(answer_first_request_only("drop")) as server, HTTPSession(transport=impl) as http:
        async with http.request("GET", server.url) as response:
            assert await http.read_body(response) == "ok"  # the connection is warm now
        with pytest.raises(ConnectionFailed):
            async with http.request("POST", server.url, json={"n": 2}):
                pass
        assert server.requests == 2  # the POST reached the server exactly once


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_late_first_byte_on_a_warm_connection_is_one_request_and_a_timeout(impl: str, method: str) -> None:
    """The double-send bug: a timeout is an OSError, and it used to trigger the stale-connection
    retry, so a late answer sent the same request twice and waited twice the limit. A timeout is
    never retried, whatever the method."""
    limits = Timeout(connect=1, first_byte=0.3, idle=5, total=10)
    async with RawServer(answer_first_request_only("hold")) as server, \
            HTTPSession(timeout=limits, transport=impl) as http:
        async with http.request("GET", server.url) as response:
            assert await http.read_body(response) == "ok"  # the connection is warm now
        with pytest.raises(FirstByteTimeout) as info:
            async with http.request(method, server.url, json={"n": 2}):
                pass
        assert info.value.status == 504
        await server.wait_until(lambda: server.hangups == 1)  # the timed-out request was dropped
        assert server.requests == 2  # sent once, not again on a fresh connection


async def test_a_connection_closed_while_idle_is_never_written_to(impl: str) -> None:
    """The server closes a kept-alive connection between two POSTs: the second one goes on a new
    connection, once (the closed one is found out before the request is written)."""
    closed = asyncio.Event()

    async def answer_then_close(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader) is None:
            return
        writer.write(OK)
        await writer.drain()
        writer.close()
        closed.set()

    async with RawServer(answer_then_close) as server, HTTPSession(transport=impl) as http:
        for n in range(3):
            closed.clear()
            async with http.request("POST", server.url, json={"n": n}) as response:
                assert await http.read_body(response) == "ok"
            await asyncio.wait_for(closed.wait(), WAIT)
        assert server.requests == 3 and server.connections == 3


# -- timeouts and abandonment -------------------------------------------------------------------------


async def test_first_byte_timeout(impl: str) -> None:
    async def silent(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await server.wait_for_hangup(reader)

    limits = Timeout(connect=0.5, first_byte=0.2, idle=5, total=10)
    async with RawServer(silent) as server, HTTPSession(timeout=limits, transport=impl) as http:
        with pytest.raises(FirstByteTimeout):
            async with http.request("GET", server.url):
                pass
        await server.wait_until(lambda: server.hangups == 1)  # and the request was dropped
        assert server.requests == 1
    assert pool_for_loop().idle_count() == 0


async def test_idle_timeout_between_chunks(impl: str) -> None:
    async def stall(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await server.wait_for_hangup(reader)

    limits = Timeout(connect=1, first_byte=5, idle=0.2, total=10)
    async with RawServer(stall) as server, HTTPSession(timeout=limits, transport=impl) as http:
        async with http.request("GET", server.url) as response:
            received = []
            with pytest.raises(IdleTimeout):
                async for chunk in http.iter_bytes(response):
                    received.append(chunk)
            assert received == [b"first"]
        await server.wait_until(lambda: server.hangups == 1)


async def stream_then_wait(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the first request with one chunk and wait for the client to leave; answer later ones."""
    await server.read_request(reader)
    if server.requests == 1:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await server.wait_for_hangup(reader)
        return
    writer.write(OK)
    while await server.read_request(reader) is not None:
        writer.write(OK)


async def test_abandoned_stream_closes_its_connection(impl: str) -> None:
    async with RawServer(stream_then_wait) as server, HTTPSession(transport=impl) as http:
        async with http.request("GET", server.url) as response, aclosing(http.iter_bytes(response)) as chunks:
            async for chunk in chunks:
                assert chunk == b"first"
                break  # the consumer stops here
        await server.wait_until(lambda: server.hangups == 1)  # the server saw the client go
        async with http.request("GET", server.url) as response:
            assert await http.read_body(response) == "ok"
        assert server.connections == 2  # not the half-read one


async def test_cancelled_stream_closes_its_connection(impl: str) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async with HTTPSession(transport=impl) as http, http.request("GET", server.url) as response:
            async for _ in http.iter_bytes(response):
                first.set()

    async with RawServer(stream_then_wait) as server:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_until(lambda: server.hangups == 1)
        assert pool_for_loop().idle_count() == 0


# -- TLS, flow control, HTTPSession features ----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a freshly made self-signed certificate for 127.0.0.1."""
    return self_signed_server_context(tmp_path_factory.mktemp("tls"))


@pytest.mark.process
async def test_https_self_signed(impl: str, tls_context: ssl.SSLContext) -> None:
    async with AppServer([web.get("/", echo)], ssl_context=tls_context) as server:
        async with HTTPSession(transport=impl) as http:
            with pytest.raises(ConnectionFailed):
                async with http.request("GET", server.base_url + "/"):
                    pass
        for _ in range(3):
            async with HTTPSession(verify_ssl=False, transport=impl) as http, \
                    http.request("GET", server.base_url + "/", headers={"X-N": "1"}) as response:
                assert response.status == 200 and response.headers["x-method"] == "GET"
                assert await http.read_body(response) == ""
        assert len(server.peers) == 1  # kept alive over TLS too
        async with HTTPSession(transport=impl) as http:  # an unverified connection never serves a verifying one
            with pytest.raises(ConnectionFailed):
                async with http.request("GET", server.base_url + "/"):
                    pass


async def test_flow_control_pauses_reading_and_the_body_arrives_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)  # 5 MiB

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body)

    paused = asyncio.Event()
    on_body = transport.Connection.on_body

    def watching(self: transport.Connection, data: bytes) -> None:
        on_body(self, data)
        if self.paused:
            paused.set()

    monkeypatch.setattr(transport.Connection, "on_body", watching)
    async with AppServer([web.get("/", big)]) as server, HTTPSession() as http, \
            http.request("GET", server.base_url + "/") as response:
        await asyncio.wait_for(paused.wait(), WAIT)  # nobody reads yet: the buffer filled and reading stopped
        chunks = [chunk async for chunk in http.iter_bytes(response)]
    assert b"".join(chunks) == body
    # Each read returns what was buffered; paused reading keeps that near the high-water mark.
    assert max(len(chunk) for chunk in chunks) <= READ_HIGH_WATER + 512 * 1024


async def test_libcurl_flow_control_holds_the_body_back_and_it_arrives_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)  # 5 MiB

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body)

    paused = asyncio.Event()
    on_body = CurlResponse.on_body

    def watching(self: CurlResponse, data: bytes) -> int:
        taken = on_body(self, data)
        if self.paused:
            paused.set()
        return taken

    monkeypatch.setattr(CurlResponse, "on_body", watching)
    async with AppServer([web.get("/", big)]) as server, HTTPSession(transport="curl") as http, \
            http.request("GET", server.base_url + "/") as response:
        await asyncio.wait_for(paused.wait(), WAIT)  # nobody reads yet: libcurl was told to hold on
        chunks = [chunk async for chunk in http.iter_bytes(response)]
    assert b"".join(chunks) == body
    assert max(len(chunk) for chunk in chunks) <= READ_HIGH_WATER + 512 * 1024


async def test_session_headers_bodies_and_defaults(impl: str) -> None:
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        return web.Response(body=await request.read())

    async with AppServer([web.post("/", record), web.get("/", record)]) as server:
        url = server.base_url + "/"
        async with HTTPSession(headers={"X-Session": "s", "User-Agent": "agent/1", "X-Both": "session"},
                               transport=impl) as http:
            async with http.request("POST", url, json={"a": "ü"}, headers={"x-both": "request"}) as response:
                assert await http.read_body(response) == '{"a":"ü"}'
            async with http.request("POST", url, data={"k": "v w"}) as response:
                assert await http.read_body(response) == "k=v+w"
            async with http.request("GET", url, params={"q": "1"}) as response:
                assert await http.read_body(response) == ""
    json_headers, form_headers, get_headers = seen
    assert json_headers["x-session"] == "s" and json_headers["user-agent"] == "agent/1"
    assert json_headers["x-both"] == "request"
    assert json_headers["content-type"] == "application/json"
    assert json_headers["content-length"] == str(len('{"a":"ü"}'.encode()))
    assert json_headers["accept-encoding"] == "identity"
    assert json_headers["host"] == server.base_url.removeprefix("http://")
    assert form_headers["content-type"] == "application/x-www-form-urlencoded"
    assert "content-length" not in get_headers
    # The pool keeps one connection for all three; libcurl opens a fresh one for each POST (which
    # it would otherwise re-send after a dropped connection) and reuses one for the GET.
    assert len(server.peers) == (1 if impl == "pool" else 2)


async def test_redirects_are_followed_as_browsers_do(impl: str) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/target")

    async def temporary(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/target")

    async def target(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {(await request.read()).decode()}")

    routes = [web.post("/moved", moved), web.post("/temporary", temporary), web.route("*", "/target", target)]
    async with AppServer(routes) as server, HTTPSession(transport=impl) as http:
        async with http.request("POST", server.base_url + "/moved", data=b"body") as response:
            assert await http.read_body(response) == "GET "  # 302 after a POST: a GET without the body
        async with http.request("POST", server.base_url + "/temporary", data=b"body") as response:
            assert await http.read_body(response) == "POST body"  # 307 keeps both
        async with http.request("POST", server.base_url + "/moved", allow_redirects=False) as response:
            assert response.status == 302


def test_one_pool_per_event_loop_and_uvloop() -> None:
    """The pool works on uvloop (the server's loop) and never crosses loops."""
    pools: list[ConnectionPool] = []

    async def run() -> None:
        async with AppServer([web.get("/", echo)]) as server:
            for _ in range(3):
                async with HTTPSession() as http, http.request("GET", server.base_url + "/") as response:
                    assert await http.read_body(response) == ""
            assert len(server.peers) == 1
        pools.append(pool_for_loop())

    for factory in (uvloop.new_event_loop, asyncio.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run())
    assert pools[0] is not pools[1]
    assert all(pool.closed for pool in pools)  # closed with their loops (asyncgen shutdown)



# -- choosing the transport ------------------------------------------------------------------------------


def test_the_transport_is_chosen_by_what_the_session_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert HTTPSession().transport_name == "pool"
    assert HTTPSession(proxy="socks5://127.0.0.1:1080").transport_name == "curl"
    assert HTTPSession(impersonate="chrome").transport_name == "curl"
    monkeypatch.setenv("PATCHBAY_UPSTREAM_TRANSPORT", "curl")
    assert HTTPSession().transport_name == "curl"
    monkeypatch.setenv("PATCHBAY_UPSTREAM_TRANSPORT", "pool")
    assert HTTPSession(proxy="http://127.0.0.1:3128").transport_name == "curl"  # a proxy still needs libcurl
    monkeypatch.setenv("PATCHBAY_UPSTREAM_TRANSPORT", "carrier-pigeon")
    with pytest.raises(InvalidRequest, match="PATCHBAY_UPSTREAM_TRANSPORT"):
        HTTPSession()
    with pytest.raises(InvalidRequest, match="unknown transport"):
        HTTPSession(transport="carrier-pigeon")
    with pytest.raises(InvalidRequest, match="cannot use a proxy"):
        HTTPSession(transport="pool", proxy="http://127.0.0.1:3128")


async def test_an_unknown_browser_profile_is_named() -> None:
    async with AppServer([web.get("/", echo)]) as server, HTTPSession(impersonate="netscape4") as http:
        with pytest.raises(InvalidRequest, match="no browser profile 'netscape4'"):
            async with http.request("GET", server.base_url + "/"):
                pass
    assert server.requests == 0
