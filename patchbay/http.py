"""The one HTTP session factory every provider uses.

:class:`HTTPSession` wraps an ``aiohttp.ClientSession`` with what chat providers need and should
not each write again: http(s) and socks5 proxies, TLS verification on by default (a provider may
opt out), a cookie store that outlives the session, the four limits of
:class:`~patchbay.config.Timeout` (connect, first byte, idle gap, total), and the mapping of
transport exceptions onto patchbay's errors (:data:`TRANSPORT_ERRORS`, one table).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from http.cookies import SimpleCookie
from typing import Any, Protocol, TypeVar

import aiohttp
from yarl import URL

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
    "HTTPSession",
    "map_transport_error",
    "parse_retry_after",
]

T = TypeVar("T")

BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body worth reading

#: Transport exception -> patchbay error class, looked up along the exception's MRO (most
#: specific class first), so one table decides what every aiohttp failure means.
TRANSPORT_ERRORS: dict[type[BaseException], type[PatchbayError]] = {
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

    async def wait(self, awaitable: Any, limit: float | None, on_timeout: Callable[[], PatchbayError]) -> Any:
        """Await ``awaitable`` within ``limit`` seconds and the deadline, whichever is sooner.

        ``on_timeout`` builds the error to raise when ``limit`` (not the deadline) runs out.
        """
        remaining = self.remaining()
        deadline_first = remaining is not None and (limit is None or remaining < limit)
        # A spent deadline gives a bound of 0: wait_for then cancels the awaitable cleanly.
        bound = max(remaining, 0.0) if remaining is not None and deadline_first else limit
        try:
            return await asyncio.wait_for(awaitable, bound)
        except TimeoutError:
            if deadline_first:
                raise DeadlineExceeded(f"the request ran past its total deadline of {self._total} s") from None
            raise on_timeout() from None


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


class HTTPSession:
    """An aiohttp session configured for one provider request, with patchbay's limits.

    Use as ``async with HTTPSession(...) as http:``; ``http.client`` is the underlying
    ``aiohttp.ClientSession`` for code that needs it directly.
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
        self._client: aiohttp.ClientSession | None = None
        self.deadline: Deadline | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise RuntimeError("HTTPSession is not open; use 'async with HTTPSession(...)'")
        return self._client

    async def __aenter__(self) -> HTTPSession:
        self.deadline = Deadline(self.timeout.total)
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for IP hosts such as 127.0.0.1
        if self.cookies is not None and self.site:
            self.cookies.load_into(jar, self.site)
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout.connect, sock_connect=self.timeout.connect
        )
        connector, proxy = _connector_for(self.proxy, self.verify_ssl)
        self._client = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=jar,
            timeout=client_timeout,
            headers=self.headers,
            proxy=proxy,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.cookies is not None and self.site:
            self.cookies.save_from(client.cookie_jar, self.site)  # type: ignore[arg-type]
        await client.close()

    @asynccontextmanager
    async def request(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request and yield the response once its headers arrived (bounded in time)."""
        assert self.deadline is not None
        limit = _add(self.timeout.connect, self.timeout.first_byte)
        try:
            response = await self.deadline.wait(
                self.client.request(method, url, **kwargs),
                limit,
                lambda: FirstByteTimeout(f"no answer from {URL(url).host} within {limit} s"),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise map_transport_error(exc, provider=self.provider) from exc
        try:
            yield response
        finally:
            response.release()

    async def iter_bytes(self, response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        """The response body in chunks as they arrive, with first-byte, idle and total limits."""
        assert self.deadline is not None
        limit = self.timeout.first_byte
        error: Callable[[], PatchbayError] = self._first_byte_timeout
        while True:
            try:
                chunk = await self.deadline.wait(response.content.readany(), limit, error)
            except (aiohttp.ClientError, OSError) as exc:
                raise map_transport_error(exc, provider=self.provider) from exc
            if not chunk:
                return
            limit, error = self.timeout.idle, self._idle_timeout
            yield chunk

    def _first_byte_timeout(self) -> FirstByteTimeout:
        return FirstByteTimeout(f"the answer's first byte did not arrive within {self.timeout.first_byte} s")

    def _idle_timeout(self) -> IdleTimeout:
        return IdleTimeout(f"the stream stalled for more than {self.timeout.idle} s")

    async def iter_decoded(self, response: aiohttp.ClientResponse, decoder: Decoder[T]) -> AsyncGenerator[T, None]:
        """The response body run through ``decoder``: its items as soon as each chunk allows."""
        async for chunk in self.iter_bytes(response):
            for item in decoder.decode(chunk):
                yield item
        for item in decoder.flush():
            yield item

    async def status_error(self, response: aiohttp.ClientResponse, during: str | None = None) -> PatchbayError:
        """The error for an upstream error answer (see :func:`error_for_response`)."""
        return error_for_response(response.status, await self.read_body(response), response.headers, during=during)

    async def read_body(self, response: aiohttp.ClientResponse, limit: int = ERROR_BODY_LIMIT) -> str:
        """Read up to ``limit`` bytes of the body as text (for error bodies and small replies)."""
        parts: list[bytes] = []
        size = 0
        async with aclosing(self.iter_bytes(response)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
        return b"".join(parts)[:limit].decode("utf-8", errors="replace")


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
