"""The one HTTP session every provider uses, over the one transport interface.

:class:`HTTPSession` gives chat providers what they should not each write again: http(s) and
socks proxies, TLS verification on by default (a provider may opt out), browser impersonation,
cookies that outlive the session, the four limits of :class:`~patchbay.timeouts.Timeout`
(connect, first byte, idle gap, total), redirects, and the mapping of transport exceptions onto
patchbay's errors (:data:`TRANSPORT_ERRORS`, one table). It picks the transport by what the
request needs (:mod:`patchbay.net.transport`): the keep-alive pool for direct requests, libcurl
for a proxy or an impersonated browser. Both behave the same way behind this class.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, Protocol, TypeVar

from yarl import URL

from patchbay.errors import (
    ChallengeRequired,
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
from patchbay.net import curl, pool
from patchbay.net.challenge import challenge_in
from patchbay.net.cookiejar import CookieJar
from patchbay.net.transport import (
    ConnectError,
    ConnectTimeoutError,
    FirstByteTimeoutError,
    IncompleteResponse,
    InvalidRequestError,
    MalformedResponse,
    Response,
    Transport,
    TransportError,
    UpstreamRequest,
    encode_body,
)
from patchbay.redact import clip, register_secret
from patchbay.timeouts import Timeout

__all__ = [
    "TRANSPORTS",
    "TRANSPORT_ENV",
    "TRANSPORT_ERRORS",
    "BROWSER_USER_AGENT",
    "error_for_response",
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
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})

#: Transport exception -> patchbay error class, looked up along the exception's MRO (most
#: specific class first): every transport raises these classes (patchbay.net.transport).
TRANSPORT_ERRORS: dict[type[BaseException], type[PatchbayError]] = {
    ConnectTimeoutError: ConnectTimeout,
    FirstByteTimeoutError: FirstByteTimeout,
    ConnectError: ConnectionFailed,
    IncompleteResponse: ConnectionFailed,
    MalformedResponse: ProtocolError,
    InvalidRequestError: InvalidRequest,
    TransportError: ConnectionFailed,
    TimeoutError: FirstByteTimeout,  # a provider's own socket use (the base class maps it too)
    OSError: ConnectionFailed,
}

#: The transports by name, each a function giving the running loop's instance.
TRANSPORTS: dict[str, Callable[[], Transport]] = {"pool": pool.pool_for_loop, "curl": curl.transport_for_loop}

TRANSPORT_ENV = "PATCHBAY_UPSTREAM_TRANSPORT"  # forces the transport of direct requests: pool or curl

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
    ``{"message"}`` or ``{"error": {"message"}}`` body, else the start of the body's text. A
    browser challenge page is a :class:`~patchbay.errors.ChallengeRequired` that carries none of it."""
    challenge = challenge_in(status, headers, body)
    if challenge is not None:
        where = f" ({during})" if during else ""
        return ChallengeRequired(f"the site answered {status} with {challenge}{where}; supply a browser's cookies "
                                 "for it: 'patchbay cookies import FILE' (a HAR, cookie JSON or cookies.txt) or "
                                 "'patchbay cookies import --from-browser chrome --site URL'", status=status)
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
    detail = clip(detail, 200)  # redacted before the cut: a key straddling it would leak its head
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


class Decoder(Protocol[T]):  # the shape of every decoder in patchbay.net.decoders
    def decode(self, data: bytes) -> list[T]: ...
    def flush(self) -> list[T]: ...


class HTTPSession:
    """A session for one provider request, with patchbay's limits, over the right transport.

    Use as ``async with HTTPSession(...) as http:``. ``cookies`` is a jar that outlives the
    session (a service's session cookie, a browser's imported cookies); ``impersonate`` names a
    browser profile (``"chrome"``, ``"firefox"``...: curl_cffi's names). ``transport`` forces an
    implementation (``"pool"`` or ``"curl"``, for tests and benchmarks); by default a request takes
    the pool unless it needs a proxy or impersonation.
    """

    def __init__(
        self,
        *,
        timeout: Timeout | None = None,
        proxy: str | None = None,
        verify_ssl: bool = True,
        cookies: CookieJar | None = None,
        headers: Mapping[str, str] | None = None,
        provider: str | None = None,
        impersonate: str | None = None,
        transport: str | None = None,
    ) -> None:
        self.timeout = timeout or Timeout()
        if proxy:
            parsed = URL(proxy)
            register_secret(parsed.password)  # a proxy password never shows in errors or logs
            if parsed.scheme.lower() not in _PROXY_SCHEMES or not parsed.host:
                raise InvalidRequest(f"unsupported proxy {parsed.with_password(None).human_repr()!r}: use an "
                                     "http, https, socks4 or socks5 URL with a host", param="proxy")
        self.proxy = proxy
        self.verify_ssl = verify_ssl
        self.cookies = cookies
        self.headers = dict(headers or {})
        self.provider = provider
        self.impersonate = impersonate
        self.transport_name = _transport_name(transport, needs_curl=bool(proxy or impersonate))
        self._transport: Transport | None = None
        self.deadline: Deadline | None = None

    @property
    def transport(self) -> Transport:
        """The transport this session's requests take (the loop's pool, or libcurl)."""
        if self._transport is None:
            raise RuntimeError("HTTPSession is not open; use 'async with HTTPSession(...)'")
        return self._transport

    async def __aenter__(self) -> HTTPSession:
        self.deadline = Deadline(self.timeout.total)
        self._transport = TRANSPORTS[self.transport_name]()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._transport = None

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        allow_redirects: bool = True,
    ) -> AsyncIterator[Response]:
        """Send a request and yield the response once its headers arrived (bounded in time).

        Leaving the block releases the response: a fully read connection is reused, one left
        mid-body (an early exit, a cancellation) is closed, which ends the upstream request.
        """
        try:
            response = await self._send(method, url, headers=headers, json=json, data=data, params=params,
                                        allow_redirects=allow_redirects)
        except _CAUGHT as exc:
            raise map_transport_error(exc, provider=self.provider) from exc
        try:
            yield response
        finally:
            response.release()

    async def _send(self, method: str, url: str, *, headers: Mapping[str, str] | None, json: Any, data: Any,
                    params: Mapping[str, Any] | None, allow_redirects: bool) -> Response:
        """One request: the session's headers under the request's, cookies, each hop within the
        limits and the deadline, and redirects followed (303, and 301/302 after a POST, become a
        GET without a body; an Authorization header is not carried to another origin)."""
        transport, deadline = self.transport, self.deadline
        assert deadline is not None
        method = method.upper()
        try:
            target = URL(url)
        except ValueError as exc:
            raise InvalidRequestError(f"not a URL: {url!r}") from exc
        if params:
            target = target.extend_query(params)
        body, content_type = encode_body(json=json, data=data)
        merged = _merge_headers(self.headers, headers, content_type)
        for _ in range(MAX_REDIRECTS + 1):
            connect, connect_by_deadline = deadline.bound(self.timeout.connect)
            first_byte, first_byte_by_deadline = deadline.bound(self.timeout.first_byte)
            if connect_by_deadline and connect == 0:  # spent already: do not send what cannot finish
                raise deadline.exceeded()
            outgoing = self._with_cookies(merged, target)
            request = UpstreamRequest(method, target, outgoing, body, self.verify_ssl, self.proxy, self.impersonate)
            try:
                response = await transport.send(request, connect_timeout=connect, first_byte_timeout=first_byte)
            except ConnectTimeoutError:
                if connect_by_deadline:
                    raise deadline.exceeded() from None
                raise
            except FirstByteTimeoutError:
                if first_byte_by_deadline:
                    raise deadline.exceeded() from None
                raise
            if self.cookies is not None:
                self.cookies.update_from(target, response.headers.get_all("set-cookie"))
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

    def _with_cookies(self, headers: dict[str, str], target: URL) -> dict[str, str]:
        cookie = self.cookies.header_for(target) if self.cookies is not None else None
        if not cookie:
            return headers
        given = next((v for k, v in headers.items() if k.lower() == "cookie"), None)
        merged = {k: v for k, v in headers.items() if k.lower() != "cookie"}
        merged["Cookie"] = f"{cookie}; {given}" if given else cookie
        return merged

    async def iter_bytes(self, response: Response) -> AsyncGenerator[bytes, None]:
        """The response body in chunks as they arrive, with first-byte, idle and total limits."""
        deadline = self.deadline
        assert deadline is not None
        limit = self.timeout.first_byte
        error: Callable[[], PatchbayError] = self._first_byte_timeout
        while True:
            try:
                chunk = response.buffered_chunk()
                if chunk is None:  # nothing at hand: wait, within the limits
                    chunk = await deadline.wait(response.read_chunk(), limit, error)
                elif chunk and deadline.expired():
                    # An upstream that always has more at hand (an endless stream read by a slow
                    # client) never makes the read wait, so the deadline is checked here too.
                    raise deadline.exceeded()
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

    async def iter_decoded(self, response: Response, decoder: Decoder[T]) -> AsyncGenerator[T, None]:
        """The response body run through ``decoder``: its items as soon as each chunk allows."""
        async for chunk in self.iter_bytes(response):
            for item in decoder.decode(chunk):
                yield item
        for item in decoder.flush():
            yield item

    async def status_error(self, response: Response, during: str | None = None) -> PatchbayError:
        """The error for an upstream error answer (see :func:`error_for_response`)."""
        return error_for_response(response.status, await self.read_body(response), response.headers, during=during)

    async def read_body(self, response: Response, limit: int = ERROR_BODY_LIMIT, *, whole: bool = False) -> str:
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


def _transport_name(given: str | None, *, needs_curl: bool) -> str:
    """The transport a session uses: the one given, else ``$PATCHBAY_UPSTREAM_TRANSPORT`` (for
    benchmarks and troubleshooting; a proxy or impersonation still takes libcurl), else the pool
    unless the session needs libcurl."""
    if given is not None:
        if given not in TRANSPORTS:
            raise InvalidRequest(f"unknown transport {given!r}: use one of {', '.join(TRANSPORTS)}",
                                 param="transport")
        if given == "pool" and needs_curl:
            raise InvalidRequest("the pool transport cannot use a proxy or impersonate a browser; use 'curl'",
                                 param="transport")
        return given
    if needs_curl:
        return "curl"
    chosen = os.environ.get(TRANSPORT_ENV)
    if chosen and chosen not in TRANSPORTS:
        raise InvalidRequest(f"${TRANSPORT_ENV} is {chosen!r}: use one of {', '.join(TRANSPORTS)}")
    return chosen or "pool"


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
