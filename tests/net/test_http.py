"""The HTTP session factory: proxies, timeouts, cookies and transport-error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from patchbay.errors import ConnectionFailed, ConnectTimeout, DeadlineExceeded, InvalidRequest, ProtocolError
from patchbay.net.cookiejar import CookieJar
from patchbay.net.session import HTTPSession, map_transport_error, parse_retry_after
from patchbay.net.transport import ConnectTimeoutError, IncompleteResponse, MalformedResponse
from patchbay.providers import AiChatOnline, Liaobots
from patchbay.redact import redact
from patchbay.timeouts import Timeout
from tests.replicas.aichatonline import AiChatOnlineReplica
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.proxy import HTTPProxy, Socks5Proxy
from tests.support.tls import self_signed_server_context

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_documentation_example_through_an_http_proxy(aichatonline_replica: AiChatOnlineReplica,
                                                           http_proxy: HTTPProxy) -> None:
    chunks = [chunk async for chunk in await AiChatOnline.create_async_generator(
        "gpt-4o-mini", MESSAGES, proxy=http_proxy.url, base_url=aichatonline_replica.base_url)]
    assert "".join(chunks) == aichatonline_replica.answer
    assert any("/aichatonline/api/chat/gpt" in target for target in http_proxy.requests)


async def test_grab_token_through_an_http_proxy(aichatonline_replica: AiChatOnlineReplica,
                                                http_proxy: HTTPProxy) -> None:
    async with HTTPSession() as session:  # the seed's call shape: the proxy given to grab_token
        token = await AiChatOnline.grab_token(session, http_proxy.url, base_url=aichatonline_replica.base_url)
    assert token in aichatonline_replica.issued_ids
    assert any("getUniqueId" in target for target in http_proxy.requests)


async def test_liaobots_through_a_socks5_proxy(liaobots_replica: LiaobotsReplica, socks5_proxy: Socks5Proxy) -> None:
    Liaobots.auth_codes.clear()
    Liaobots.cookies.clear()
    text = await Liaobots.create_async("gpt-4o", MESSAGES, proxy=socks5_proxy.url, base_url=liaobots_replica.base_url)
    assert text == liaobots_replica.answer
    assert len(socks5_proxy.connections) >= 1
    assert liaobots_replica.violations == []


async def test_unsupported_proxy_scheme_is_named() -> None:
    with pytest.raises(InvalidRequest, match=r"unsupported proxy 'ftp://127\.0\.0\.1:1/'"):
        await AiChatOnline.create_async("", MESSAGES, proxy="ftp://127.0.0.1:1", base_url="http://127.0.0.1:9")


async def test_connection_refused_is_connection_failed(unused_tcp_port: int) -> None:
    with pytest.raises(ConnectionFailed) as info:
        await AiChatOnline.create_async("", MESSAGES, base_url=f"http://127.0.0.1:{unused_tcp_port}")
    assert info.value.provider == "AiChatOnline"


async def test_total_deadline_bounds_every_wait(aichatonline_replica: AiChatOnlineReplica) -> None:
    aichatonline_replica.scenario = "stall"
    aichatonline_replica.stall_seconds = 10
    with pytest.raises(Exception) as info:
        await AiChatOnline.create_async("", MESSAGES, base_url=aichatonline_replica.base_url,
                                        timeout=Timeout(connect=1, first_byte=5, idle=5, total=0.5))
    cause = info.value.__cause__ or info.value
    assert isinstance(cause, DeadlineExceeded)


class _AlwaysAtHand:
    """A pooled-style response whose body always has more bytes buffered: reads never wait."""

    status = 200

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.content = self

    def buffered_chunk(self) -> bytes:
        return b"data: more\n\n"

    async def readany(self) -> bytes:
        return self.buffered_chunk()

    def release(self) -> None:
        pass


async def test_total_deadline_ends_a_body_that_never_needs_a_wait() -> None:
    # An endless upstream read by a slower client always has data at hand; the deadline, once
    # only checked while waiting, must still end it.
    async with HTTPSession(timeout=Timeout(connect=1, first_byte=1, idle=1, total=0.2)) as http:
        with pytest.raises(DeadlineExceeded, match=r"deadline of 0\.2 s"):
            async with asyncio.timeout(5):
                async for _ in http.iter_bytes(_AlwaysAtHand()):
                    await asyncio.sleep(0)  # a consumer that yields between chunks, as a server does


@pytest.mark.parametrize("impl", ["pool", "curl"])
async def test_cookies_survive_the_session(liaobots_replica: LiaobotsReplica, impl: str) -> None:
    jar = CookieJar()
    async with HTTPSession(cookies=jar, transport=impl) as http, \
            http.request("POST", f"{liaobots_replica.base_url}/recaptcha/api/login",
                         data={"token": "x" * 20}) as response:
        assert response.status == 200
    assert liaobots_replica.base_url in jar
    session_cookie = jar.header_for(URL(liaobots_replica.base_url + "/api/user"))
    assert session_cookie is not None and redact(session_cookie) != session_cookie  # a secret now


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_transport_errors_map_by_class() -> None:
    assert isinstance(map_transport_error(IncompleteResponse("closed early")), ConnectionFailed)
    assert isinstance(map_transport_error(MalformedResponse("garbage")), ProtocolError)
    assert isinstance(map_transport_error(ConnectTimeoutError("slow")), ConnectTimeout)
    assert isinstance(map_transport_error(ConnectionResetError()), ConnectionFailed)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS server on 127.0.0.1 with a freshly made self-signed certificate."""
    context = self_signed_server_context(tmp_path)
    async def garden(request: web.Request) -> web.Response:
        return web.Response(text="secret garden")

    app = web.Application()
    app.router.add_get("/", garden)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.mark.process
async def test_tls_is_verified_by_default(tls_server: str) -> None:
    async with HTTPSession() as http:
        with pytest.raises(ConnectionFailed, match="certificate"):
            async with http.request("GET", tls_server):
                pass


@pytest.mark.process
async def test_tls_verification_can_be_turned_off_per_provider(tls_server: str) -> None:
    assert Liaobots.verify_ssl is False  # the service's certificate was never verifiable
    async with HTTPSession(verify_ssl=Liaobots.verify_ssl) as http, http.request("GET", tls_server) as response:
        assert await http.read_body(response) == "secret garden"


def test_error_for_response_reads_the_message_wherever_services_put_it() -> None:
    from patchbay.errors import AuthError, PaymentRequired, RateLimited
    from patchbay.net.session import error_for_response

    flat = error_for_response(401, '{"message":"401 Unauthorized"}', {}, during="chat")
    assert isinstance(flat, AuthError) and flat.message == "upstream answered 401: chat: 401 Unauthorized"
    nested = error_for_response(429, '{"error": {"message": "slow down"}}', {"retry-after": "2"})
    assert isinstance(nested, RateLimited) and nested.retry_after == 2.0 and nested.message.endswith("slow down")
    plain = error_for_response(402, "  Error\n" + "x" * 500, {})
    assert isinstance(plain, PaymentRequired) and len(plain.message) < 250


async def test_a_proxy_password_is_registered_as_a_secret() -> None:
    proxy = "http://user:proxy-pass-777@127.0.0.1:3128"
    async with HTTPSession(proxy=proxy):
        pass
    # Any message that ever names the proxy URL (an error, a log line) shows it without the password.
    assert redact(f"could not reach {proxy}") == "could not reach http://user:[REDACTED]@127.0.0.1:3128"
