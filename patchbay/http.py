"""The one HTTP session factory every provider uses.

:class:`HTTPSession` gives chat providers what they should not each write again: http(s) and
socks5 proxies, TLS verification on by default (a provider may opt out), a cookie store that
outlives the session, the four limits of :class:`~patchbay.config.Timeout` (connect, first byte,
idle gap, total), and the mapping of transport exceptions onto patchbay's errors
(:data:`TRANSPORT_ERRORS`, one table). Direct requests go over the event loop's keep-alive
connection pool (:mod:`patchbay.transport`, several times aiohttp's throughput); requests
through a proxy or with a cookie store go through an ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from http.cookies import SimpleCookie
from typing import Any, Protocol, TypeVar

import aiohttp
import httptools
from yarl import URL

from patchbay import transport
from patchbay.config import Timeout
from patchbay.errors import (
    ConnectionFailed,
    ConnectTimeout,
    DeadlineExceeded,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    PatchbayError,
    ProtocolError,
    UpstreamError,
    error_for_status,
)
from patchbay.secrets import register_secret

__all__ = [
    "TRANSPORT_ERRORS",
    "BROWSER_USER_AGENT",
    "error_for_response",
    "CookieStore",
    "Deadline",
    "HTTPResponse",
    "HTTPSession",
    "map_transport_error",
    "parse_retry_after",
]

T = TypeVar("T")

BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body worth reading
MAX_REDIRECTS = 10  # as aiohttp
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_POOLED_OPTIONS = frozenset({"headers", "json", "data", "params", "allow_redirects"})

#: Transport exception -> patchbay error class, looked up along the exception's MRO (most
#: specific class first), so one table decides what every aiohttp or pooled-transport failure means.
TRANSPORT_ERRORS: dict[type[BaseException], type[PatchbayError]] = {
    transport.ConnectTimeoutError: ConnectTimeout,
    transport.FirstByteTimeoutError: FirstByteTimeout,
    transport.IncompleteResponse: ConnectionFailed,
    transport.InvalidRequestError: InvalidRequest,
    httptools.HttpParserError: ProtocolError,
    aiohttp.ConnectionTimeoutError: ConnectTimeout,
    aiohttp.SocketTimeoutError: FirstByteTimeout,
    aiohttp.ServerTimeoutError: FirstByteTimeout,
    aiohttp.ServerDisconnectedError: ConnectionFailed,
    aiohttp.ClientPayloadError: ConnectionFailed,
    aiohttp.ClientConnectorError: ConnectionFailed,
    aiohttp.ClientOSError: ConnectionFailed,
    aiohttp.ClientResponseError: ProtocolError,
    aiohttp.InvalidURL: InvalidRequest,
    aiohttp.ClientError: ConnectionFailed,
    ConnectionError: ConnectionFailed,
    OSError: ConnectionFailed,
    asyncio.TimeoutError: FirstByteTimeout,
}

_CAUGHT = tuple(TRANSPORT_ERRORS)  # the exceptions request() and iter_bytes() turn into patchbay errors

_TRANSPORT_MESSAGES: dict[type[PatchbayError], str] = {
    ConnectTimeout: "timed out connecting",
    FirstByteTimeout: "timed out waiting for the answer",
    ConnectionFailed: "connection failed",
    ProtocolError: "malformed HTTP response",
    InvalidRequest: "invalid URL",
}


def map_transport_error(exc: BaseException, *, provider: str | None = None) -> PatchbayError:
    """The patchbay error for a transport-level exception (see :data:`TRANSPORT_ERRORS`)."""
    if isinstance(exc, PatchbayError):
        return exc
    for klass in type(exc).__mro__:
        cls = TRANSPORT_ERRORS.get(klass)
        if cls is not None:
            break
    else:
        cls = UpstreamError
    detail = str(exc) or type(exc).__name__
    error = cls(f"{_TRANSPORT_MESSAGES.get(cls, 'request failed')}: {detail}", provider=provider)
    error.__cause__ = exc
    return error


def error_for_response(status: int, body: str, headers: Mapping[str, str], *, during: str | None = None
                       ) -> PatchbayError:
    """The error for an upstream error answer: its status, Retry-After, and the message of a JSON
    ``{"message"}`` or ``{"error": {"message"}}`` body, else the start of the body's text."""
    detail = body.strip()
    try:
        payload = json.loads(detail)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        inner = payload.get("error")
        message = inner.get("message") if isinstance(inner, dict) else payload.get("message")
        if isinstance(message, str):
            detail = message
    detail = detail[:200]
    return error_for_status(status, f"{during}: {detail}" if during else detail,
                            retry_after=parse_retry_after(headers))


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


class Deadline:
    """The end of a request's total time budget; ``None`` total means no deadline."""

    def __init__(self, total: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._expires = None if total is None else loop.time() + total
        self._total = total

    def remaining(self) -> float | None:
        if self._expires is None:
            return None
        return self._expires - asyncio.get_running_loop().time()

    async def wait(self, awaitable: Awaitable[T], limit: float | None, on_timeout: Callable[[], PatchbayError]) -> T:
        """Await ``awaitable`` within ``limit`` seconds and the deadline, whichever is sooner.

        ``on_timeout`` builds the error to raise when ``limit`` (not the deadline) runs out. A
        ``TimeoutError`` of the awaitable's own (say, a connect timeout) passes through as it is.
        """
        bound, deadline_first = self.bound(limit)
        if bound is not None and bound <= 0:  # spent already: do not start what cannot finish
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()
            raise self.exceeded() if deadline_first else on_timeout()
        # asyncio.timeout rather than wait_for: no task per wait (this runs once per body chunk),
        # and it tells its own expiry apart from a TimeoutError raised inside.
        scope = asyncio.timeout(bound)
        try:
            async with scope:
                return await awaitable
        except TimeoutError:
            if not scope.expired():
                raise
            if deadline_first:
                raise self.exceeded() from None
            raise on_timeout() from None

    def bound(self, limit: float | None) -> tuple[float | None, bool]:
        """The time a wait with its own ``limit`` may take, and whether the deadline is what binds."""
        remaining = self.remaining()
        if remaining is not None and (limit is None or remaining < limit):
            return max(remaining, 0.0), True
        return limit, False

    def expired(self) -> bool:
        """The deadline has passed (checked before using data already at hand, which needs no wait)."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def exceeded(self) -> DeadlineExceeded:
        # A router hands each attempt what is left of the total (2.99996 s of 3): say it as "3 s".
        total = "none" if self._total is None else f"{round(self._total, 3):g}"
        return DeadlineExceeded(f"the request ran past its total deadline of {total} s")


class CookieStore:
    """Cookies kept per site across sessions (and event loops), e.g. a service's session cookie."""

    def __init__(self) -> None:
        self._sites: dict[str, SimpleCookie] = {}

    def load_into(self, jar: aiohttp.CookieJar, site: str) -> None:
        cookies = self._sites.get(_origin(site))
        if cookies:
            jar.update_cookies(cookies, URL(site))

    def save_from(self, jar: aiohttp.CookieJar, site: str) -> None:
        cookies = SimpleCookie()
        cookies.update(jar.filter_cookies(URL(site)))
        self._sites[_origin(site)] = cookies

    def clear(self, site: str | None = None) -> None:
        if site is None:
            self._sites.clear()
        else:
            self._sites.pop(_origin(site), None)

    def __contains__(self, site: str) -> bool:
        return bool(self._sites.get(_origin(site)))


def _origin(site: str) -> str:
    return str(URL(site).origin())


class Decoder(Protocol[T]):  # the shape of every decoder in patchbay.decoders
    def decode(self, data: bytes) -> list[T]: ...
    def flush(self) -> list[T]: ...


class BodyReader(Protocol):
    async def readany(self) -> bytes: ...


class HTTPResponse(Protocol):
    """What providers use of a response; aiohttp's ClientResponse and the pooled response both fit."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> BodyReader: ...
    def release(self) -> Any: ...


class HTTPSession:
    """A session for one provider request, with patchbay's limits, over the right transport.

    Use as ``async with HTTPSession(...) as http:``. Requests without a proxy or a cookie store
    use the event loop's keep-alive pool (:func:`patchbay.transport.pool_for_loop`); the others an
    ``aiohttp.ClientSession``, which ``http.client`` is (made on first use for pooled sessions).
    """

    def __init__(
        self,
        *,
        timeout: Timeout | None = None,
        proxy: str | None = None,
        verify_ssl: bool = True,
        cookies: CookieStore | None = None,
        site: str | None = None,
        headers: Mapping[str, str] | None = None,
        provider: str | None = None,
    ) -> None:
        self.timeout = timeout or Timeout()
        if proxy:
            register_secret(URL(proxy).password)  # a proxy password never shows in errors or logs
        self.proxy = proxy
        self.verify_ssl = verify_ssl
        self.cookies = cookies
        self.site = site
        self.headers = dict(headers or {})
        self.provider = provider
        self.pooled = proxy is None and cookies is None  # the keep-alive pool can carry these requests
        self._client: aiohttp.ClientSession | None = None
        self._open = False
        self.deadline: Deadline | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if not self._open:
            raise RuntimeError("HTTPSession is not open; use 'async with HTTPSession(...)'")
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def __aenter__(self) -> HTTPSession:
        self.deadline = Deadline(self.timeout.total)
        self._open = True
        if not self.pooled:
            self._client = self._make_client()
        return self

    def _make_client(self) -> aiohttp.ClientSession:
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for IP hosts such as 127.0.0.1
        if self.cookies is not None and self.site:
            self.cookies.load_into(jar, self.site)
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout.connect, sock_connect=self.timeout.connect
        )
        connector, proxy = _connector_for(self.proxy, self.verify_ssl)
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=jar,
            timeout=client_timeout,
            headers=self.headers,
            proxy=proxy,
            trust_env=False,
        )

    async def __aexit__(self, *exc_info: object) -> None:
        self._open = False
        client, self._client = self._client, None
        if client is None:
            return
        if self.cookies is not None and self.site:
            self.cookies.save_from(client.cookie_jar, self.site)  # type: ignore[arg-type]
        await client.close()

    @asynccontextmanager
    async def request(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[HTTPResponse]:
        """Send a request and yield the response once its headers arrived (bounded in time).

        Leaving the block releases the response: a fully read pooled connection is reused, one
        left mid-body (an early exit, a cancellation) is closed, which ends the upstream request.
        """
        assert self.deadline is not None
        if not self._open:
            raise RuntimeError("HTTPSession is not open; use 'async with HTTPSession(...)'")
        try:
            if self.pooled and kwargs.keys() <= _POOLED_OPTIONS and url[:8].lower().startswith(("http://", "https://")):
                # The pool bounds connecting and the first byte each on its own, within the deadline.
                response = await self._send_pooled(method, url, **kwargs)
            else:
                limit = _add(self.timeout.connect, self.timeout.first_byte)  # aiohttp cannot tell them apart
                response = await self.deadline.wait(
                    self.client.request(method, url, **kwargs), limit,
                    lambda: FirstByteTimeout(f"no answer from {URL(url).host} within {limit} s"),
                )
        except _CAUGHT as exc:
            raise map_transport_error(exc, provider=self.provider) from exc
        try:
            yield response
        finally:
            response.release()

    async def _send_pooled(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        allow_redirects: bool = True,
    ) -> HTTPResponse:
        """One request over the loop's pool: the session's headers under the request's, redirects
        followed as aiohttp does (303, and 301/302 after a POST, become a GET without a body)."""
        method = method.upper()
        target = URL(url)
        if params:
            target = target.extend_query(params)
        body, content_type = transport.encode_body(json=json, data=data)
        merged = _merge_headers(self.headers, headers, content_type)
        pool = transport.pool_for_loop()
        assert self.deadline is not None
        for _ in range(MAX_REDIRECTS + 1):
            connect, connect_by_deadline = self.deadline.bound(self.timeout.connect)
            first_byte, first_byte_by_deadline = self.deadline.bound(self.timeout.first_byte)
            if connect_by_deadline and connect == 0:  # spent already: do not send what cannot finish
                raise self.deadline.exceeded()
            try:
                response = await pool.request(
                    method, target, headers=merged, body=body, verify_ssl=self.verify_ssl,
                    connect_timeout=connect, first_byte_timeout=first_byte,
                )
            except transport.ConnectTimeoutError:
                if connect_by_deadline:
                    raise self.deadline.exceeded() from None
                raise
            except transport.FirstByteTimeoutError:
                if first_byte_by_deadline:
                    raise self.deadline.exceeded() from None
                raise
            location = response.headers.get("location")
            if not allow_redirects or response.status not in _REDIRECTS or not location:
                return response
            response.release()
            following = target.join(URL(location))
            if following.scheme not in ("http", "https"):
                raise ProtocolError(f"redirected to a non-HTTP URL: {following.human_repr()!r}", provider=self.provider)
            if (response.status == 303 and method != "HEAD") or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                merged = {k: v for k, v in merged.items() if k.lower() != "content-type"}
            if following.origin() != target.origin():
                merged = {k: v for k, v in merged.items() if k.lower() != "authorization"}
            target = following
        raise ProtocolError(f"more than {MAX_REDIRECTS} redirects, the last to {target.human_repr()!r}",
                            provider=self.provider)

    async def iter_bytes(self, response: HTTPResponse) -> AsyncGenerator[bytes, None]:
        """The response body in chunks as they arrive, with first-byte, idle and total limits."""
        assert self.deadline is not None
        limit = self.timeout.first_byte
        error: Callable[[], PatchbayError] = self._first_byte_timeout
        buffered = getattr(response.content, "buffered_chunk", None)  # pooled responses only
        while True:
            try:
                chunk = buffered() if buffered is not None else None
                if chunk is None:  # nothing at hand: wait, within the limits
                    chunk = await self.deadline.wait(response.content.readany(), limit, error)
                elif chunk and self.deadline.expired():
                    # An upstream that always has more at hand (an endless stream read by a slow
                    # client) never makes the read wait, so the deadline is checked here too.
                    raise self.deadline.exceeded()
            except _CAUGHT as exc:
                raise map_transport_error(exc, provider=self.provider) from exc
            if not chunk:
                return
            limit, error = self.timeout.idle, self._idle_timeout
            yield chunk

    def _first_byte_timeout(self) -> FirstByteTimeout:
        return FirstByteTimeout(f"the answer's first byte did not arrive within {self.timeout.first_byte} s")

    def _idle_timeout(self) -> IdleTimeout:
        return IdleTimeout(f"the stream stalled for more than {self.timeout.idle} s")

    async def iter_decoded(self, response: HTTPResponse, decoder: Decoder[T]) -> AsyncGenerator[T, None]:
        """The response body run through ``decoder``: its items as soon as each chunk allows."""
        async for chunk in self.iter_bytes(response):
            for item in decoder.decode(chunk):
                yield item
        for item in decoder.flush():
            yield item

    async def status_error(self, response: HTTPResponse, during: str | None = None) -> PatchbayError:
        """The error for an upstream error answer (see :func:`error_for_response`)."""
        return error_for_response(response.status, await self.read_body(response), response.headers, during=during)

    async def read_body(self, response: HTTPResponse, limit: int = ERROR_BODY_LIMIT, *, whole: bool = False) -> str:
        """Read up to ``limit`` bytes of the body as text (for error bodies and small replies).

        With ``whole`` the body is an answer that is no use cut short: a longer one is a
        :class:`ProtocolError` saying so (rather than a truncated text that fails to parse)."""
        parts: list[bytes] = []
        size = 0
        async with aclosing(self.iter_bytes(response)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > limit or (size == limit and not whole):
                    break
        if whole and size > limit:
            raise ProtocolError(f"the answer is larger than {limit} bytes", provider=self.provider)
        return b"".join(parts)[:limit].decode("utf-8", errors="replace")


def _merge_headers(session: Mapping[str, str], request: Mapping[str, str] | None, content_type: str | None
                   ) -> dict[str, str]:
    """The session's headers overridden by the request's (names compared case-insensitively), and
    the body's content type unless one was given."""
    merged = {name.lower(): (name, value) for name, value in session.items()}
    if request:
        merged.update((name.lower(), (name, value)) for name, value in request.items())
    if content_type is not None and "content-type" not in merged:
        merged["content-type"] = ("Content-Type", content_type)
    return dict(merged.values())


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _connector_for(proxy: str | None, verify_ssl: bool) -> tuple[aiohttp.BaseConnector, str | None]:
    """A connector for ``proxy``: socks proxies need their own connector, http(s) ones do not."""
    # ssl=True: verify with the default context; ssl=False: no verification (a provider's opt-out).
    if proxy is None:
        return aiohttp.TCPConnector(ssl=verify_ssl), None
    scheme = URL(proxy).scheme.lower()
    if scheme in ("http", "https"):
        return aiohttp.TCPConnector(ssl=verify_ssl), proxy
    if scheme in ("socks4", "socks4a", "socks5", "socks5h"):
        from aiohttp_socks import ProxyConnector

        return ProxyConnector.from_url(proxy, ssl=verify_ssl), None
    raise InvalidRequest(f"unsupported proxy scheme {scheme!r}: use http, https, socks4 or socks5", param="proxy")
