"""The libcurl transport (``curl_cffi``): proxies and browser impersonation.

:class:`CurlTransport` drives libcurl's multi interface on the event loop (``curl_cffi.AsyncCurl``)
with one easy handle per request, so each request is in our hands from start to end: the
response head is parsed from curl's header callback, body chunks arrive through its write
callback, and releasing a response mid-body removes the handle, which closes the connection
(the upstream sees the client leave). It serves requests that the keep-alive pool cannot:

- through a proxy: ``http``, ``https``, ``socks4(a)`` and ``socks5(h)`` URLs;
- impersonating a browser (``UpstreamRequest.impersonate``, a curl_cffi profile such as
  ``"chrome"`` or ``"firefox"``): the browser's TLS ClientHello, HTTP/2 settings and default
  headers, which is what web chat services behind Cloudflare check first.

Limits mean what they mean on the pool: curl bounds connecting (TCP, proxy and TLS handshakes)
itself, and the first-byte limit starts when curl reports the request head written (its debug
callback), not at the start. libcurl keeps connections alive in the multi handle's cache.
libcurl re-sends a request once when a reused connection dies before any response byte,
whatever the method; so a non-idempotent request (a POST) always takes a fresh connection here,
which libcurl never retries: a chat request is never sent twice, at the cost of a handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from curl_cffi import AsyncCurl, Curl, CurlECode, CurlError, CurlOpt
from curl_cffi.curl import CURL_WRITEFUNC_PAUSE, CURLPAUSE_CONT
from curl_cffi.requests import BrowserType
from curl_cffi.requests.impersonate import resolve_latest_browser_type

from patchbay.net.loops import PerLoop, Wakeable
from patchbay.net.transport import (
    READ_HIGH_WATER,
    ConnectError,
    ConnectTimeoutError,
    FirstByteTimeoutError,
    Headers,
    IncompleteResponse,
    InvalidRequestError,
    MalformedResponse,
    UpstreamRequest,
)

__all__ = ["MALFORMED_CODES", "CurlResponse", "CurlTransport", "browser_profile", "transport_for_loop"]

_HEADER_OUT = 2  # CURLINFO_HEADER_OUT: the debug callback's "request head written"

#: curl error codes that mean the connection never carried the request.
_CONNECT_FAILURES = frozenset({
    CurlECode.COULDNT_RESOLVE_PROXY, CurlECode.COULDNT_RESOLVE_HOST, CurlECode.COULDNT_CONNECT,
    CurlECode.SSL_CONNECT_ERROR, CurlECode.PEER_FAILED_VERIFICATION, CurlECode.PROXY,
    CurlECode.SSL_CACERT_BADFILE,
})
_PROFILES = frozenset(browser.value for browser in BrowserType)  # curl_cffi's browser profiles
#: curl error codes that mean the server's bytes are not a valid HTTP answer.
MALFORMED_CODES = frozenset({CurlECode.WEIRD_SERVER_REPLY, CurlECode.HTTP2, CurlECode.BAD_CONTENT_ENCODING,
                        CurlECode.UNSUPPORTED_PROTOCOL})
_INVALID = frozenset({CurlECode.URL_MALFORMAT, CurlECode.BAD_FUNCTION_ARGUMENT})


class CurlResponse(Wakeable):
    """One transfer's response (a :class:`~patchbay.net.transport.Response`), fed by curl's callbacks."""

    def __init__(self, transport: CurlTransport, curl: Curl) -> None:
        self._transport = transport
        self._curl: Curl | None = curl
        self.status = 0
        self.headers = Headers([])
        self._raw_headers: list[tuple[str, str]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.paused = False  # libcurl holds the body back until the reader drains the buffer
        self._error: BaseException | None = None
        self._done = False
        self._head_complete = False
        self.request_sent = asyncio.Event()

    # -- curl callbacks (run inside AsyncCurl's socket handling, on the loop) -------------------

    def on_header(self, line: bytes) -> int:
        self._header_line(line.decode("latin-1").rstrip("\r\n"))
        return len(line)  # curl's callbacks say how much they took: all of it

    def _header_line(self, text: str) -> None:
        if text.startswith("HTTP/"):
            parts = text.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self._raw_headers = []
        elif text:
            name, sep, value = text.partition(":")
            if sep:
                self._raw_headers.append((name.strip(), value.strip()))
        elif 100 <= self.status < 200:
            self.status = 0  # an interim answer (100 Continue): the real one follows
        elif self.status:
            self.headers = Headers(self._raw_headers)
            self._head_complete = True
            self._wake()

    def on_body(self, data: bytes) -> int:
        if self._buffered >= READ_HIGH_WATER:
            self.paused = True
            return CURL_WRITEFUNC_PAUSE  # libcurl keeps these bytes and offers them again on resume
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return len(data)

    def on_debug(self, kind: int, _data: bytes) -> None:
        if kind == _HEADER_OUT and not self.request_sent.is_set():
            self.request_sent.set()

    def on_done(self, future: asyncio.Future[None]) -> None:
        self._done = True
        if future.cancelled():
            self._error = self._error or IncompleteResponse("the transfer was abandoned")
        elif (exc := future.exception()) is not None:
            self._error = _transport_error(exc, head_arrived=self._head_complete)
        elif not self._head_complete:
            self._error = MalformedResponse("the server answered without a complete response head")
        self.request_sent.set()
        self._wake()
        self._transport.finished(self)

    # -- the Response interface -----------------------------------------------------------------

    async def wait_head(self) -> None:
        while not self._head_complete:
            if self._error is not None:
                raise self._error
            await self._wait()

    def buffered_chunk(self) -> bytes | None:
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            if self.paused and self._curl is not None:
                self.paused = False
                self._curl.pause(CURLPAUSE_CONT)  # may hand over the held bytes at once
            return data
        if self._error is not None:
            raise self._error
        if self._done:
            return b""
        return None

    async def read_chunk(self) -> bytes:
        try:
            while (data := self.buffered_chunk()) is None:
                await self._wait()
        except BaseException:
            self.release()
            raise
        return data

    def release(self) -> None:
        """Done with the response: a transfer still running is removed, which closes its connection."""
        if not self._done and self._curl is not None:
            self._error = IncompleteResponse("the response was released before its body was read")
            self._transport.abort(self)

    @property
    def curl(self) -> Curl | None:
        """The easy handle while the transfer is the transport's to manage."""
        return self._curl

    @property
    def error(self) -> BaseException | None:
        """Why the transfer failed, once it did."""
        return self._error

    def detach(self) -> Curl | None:
        curl, self._curl = self._curl, None
        return curl

    def __repr__(self) -> str:
        return f"<CurlResponse {self.status}>"


class CurlTransport:
    """The :class:`~patchbay.net.transport.Transport` over libcurl, for one event loop."""

    def __init__(self) -> None:
        self._multi = AsyncCurl()
        self._running: set[CurlResponse] = set()
        self.closed = False

    async def send(
        self, request: UpstreamRequest, *, connect_timeout: float | None = None,
        first_byte_timeout: float | None = None,
    ) -> CurlResponse:
        if self.closed:
            raise RuntimeError("the curl transport is closed")
        if request.url.scheme not in ("http", "https") or not request.url.raw_host:
            raise InvalidRequestError(f"not an http(s) URL with a host: {request.url.human_repr()!r}")
        curl = Curl()
        response = CurlResponse(self, curl)
        try:
            _configure(curl, request, connect_timeout, response)
        except CurlError as exc:
            curl.close()
            raise InvalidRequestError(f"curl refused the request: {exc}") from exc
        except InvalidRequestError:
            curl.close()
            raise
        future = self._multi.add_handle(curl)
        self._running.add(response)
        future.add_done_callback(response.on_done)
        try:
            await response.request_sent.wait()  # connecting: bounded by curl's own connect limit
            try:
                async with asyncio.timeout(first_byte_timeout):
                    await response.wait_head()
            except TimeoutError as exc:
                if response.error is not None:  # libcurl's own failure, as the timer ran out
                    raise response.error from None
                raise FirstByteTimeoutError(f"no answer within {first_byte_timeout} s") from exc
        except BaseException:
            self.abort(response)
            raise
        return response

    def abort(self, response: CurlResponse) -> None:
        """Stop a running transfer at once; libcurl closes its connection."""
        curl = response.curl
        if curl is not None and not self.closed:
            with contextlib.suppress(CurlError):
                self._multi.remove_handle(curl)  # cancels the future: on_done runs, then finished()
        self.finished(response)

    def finished(self, response: CurlResponse) -> None:
        self._running.discard(response)
        curl = response.detach()
        if curl is not None:
            asyncio.get_running_loop().call_soon(curl.close)  # after libcurl is done with the callbacks

    async def close(self) -> None:
        for response in list(self._running):
            self.abort(response)
        self.closed = True
        await self._multi.close()


def _configure(curl: Curl, request: UpstreamRequest, connect_timeout: float | None, response: CurlResponse) -> None:
    """Set one easy handle up for ``request``."""
    curl.setopt(CurlOpt.URL, str(request.url).encode())
    if request.impersonate:
        profile = browser_profile(request.impersonate)
        if curl.impersonate(profile, default_headers=True) != 0:
            raise InvalidRequestError(f"libcurl cannot impersonate {profile!r}")
    method = request.method.upper()
    if method == "HEAD":
        curl.setopt(CurlOpt.NOBODY, 1)
    elif method == "GET" and request.body is None:
        curl.setopt(CurlOpt.HTTPGET, 1)
    else:
        if method != "POST":
            curl.setopt(CurlOpt.CUSTOMREQUEST, method.encode())
        body = request.body or b""
        curl.setopt(CurlOpt.POSTFIELDS, body)
        curl.setopt(CurlOpt.POSTFIELDSIZE, len(body))
    headers = [f"{name}: {value}".encode("latin-1") for name, value in request.headers.items()
               if name.lower() not in ("content-length", "transfer-encoding", "host")]
    if not request.impersonate:
        headers.append(b"Accept-Encoding: identity")  # as the pool: bodies arrive as sent
    headers.append(b"Expect:")  # no 100-continue round trip for larger bodies
    curl.setopt(CurlOpt.HTTPHEADER, headers)
    curl.setopt(CurlOpt.FOLLOWLOCATION, 0)  # redirects are the session's
    if not request.verify_ssl:
        curl.setopt(CurlOpt.SSL_VERIFYPEER, 0)
        curl.setopt(CurlOpt.SSL_VERIFYHOST, 0)
    if request.proxy:
        curl.setopt(CurlOpt.PROXY, request.proxy.encode())
        curl.setopt(CurlOpt.SUPPRESS_CONNECT_HEADERS, 1)  # the tunnel's "200 Connection established"
    else:
        curl.setopt(CurlOpt.PROXY, b"")  # never the environment's proxy
    if connect_timeout is not None:
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, max(1, int(connect_timeout * 1000)))
    if not request.idempotent:
        # libcurl re-sends a request whose reused connection died before any response byte,
        # whatever the method; a POST on a fresh connection is never re-sent (RFC 9112 §9.3.1).
        curl.setopt(CurlOpt.FRESH_CONNECT, 1)
    curl.setopt(CurlOpt.NOSIGNAL, 1)
    curl.setopt(CurlOpt.HEADERFUNCTION, response.on_header)
    curl.setopt(CurlOpt.WRITEFUNCTION, response.on_body)
    curl.setopt(CurlOpt.VERBOSE, 1)  # for the debug callback, which says when the request went out
    curl.setopt(CurlOpt.DEBUGFUNCTION, response.on_debug)


def browser_profile(name: str) -> str:
    """curl_cffi's profile for ``name`` ("chrome" is the newest Chrome, "chrome131" that one)."""
    profile = resolve_latest_browser_type(name)
    if profile not in _PROFILES:
        raise InvalidRequestError(f"no browser profile {name!r}; use one of curl_cffi's, such as chrome, firefox, "
                                  "safari or edge (optionally with a version: chrome131)")
    return profile


def _transport_error(exc: BaseException, *, head_arrived: bool) -> BaseException:
    """Our transport exception for a failed curl transfer."""
    if not isinstance(exc, CurlError):
        return exc  # a callback's own exception, as it was raised
    code: Any = getattr(exc, "code", None)
    message = str(exc)
    if code == CurlECode.OPERATION_TIMEDOUT and not head_arrived:
        error: BaseException = ConnectTimeoutError(f"connecting took longer than the limit: {message}")
    elif code in _CONNECT_FAILURES and not head_arrived:
        error = ConnectError(f"cannot connect: {message}")
    elif code in MALFORMED_CODES:
        error = MalformedResponse(f"malformed response: {message}")
    elif code in _INVALID:
        error = InvalidRequestError(f"invalid request: {message}")
    else:
        error = IncompleteResponse(f"the transfer ended early: {message}")
    error.__cause__ = exc
    return error


_transports: PerLoop[CurlTransport] = PerLoop(CurlTransport)


def transport_for_loop() -> CurlTransport:
    """The curl transport of the running event loop (made on first use)."""
    return _transports.get()
