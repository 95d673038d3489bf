"""Thin adapters that put other HTTP clients behind patchbay's transport interface, for bench/transports.py.

:class:`patchbay.net.transport.Transport` is what patchbay's own transports implement (the
httptools pool, :class:`~patchbay.net.curl.CurlTransport`). Each adapter here does the same for
one library, as an adapter inside patchbay would have to, so that every candidate is driven by the
same benchmark and fault-matrix code:

- ``aiohttp``: one :class:`aiohttp.ClientSession` with a keep-alive ``TCPConnector``;
- ``rnet``: rnet's async :class:`rnet.Client` (Rust: hyper/tokio with BoringSSL);
- ``pyreqwest``: pyreqwest's async Client with streamed requests (Rust: reqwest/hyper on tokio);
- ``curl-session``: curl_cffi's high-level :class:`curl_cffi.requests.AsyncSession` (libcurl,
  the same library as ``curl``, but with its own connection reuse and streaming).

An adapter translates its library's failures into the exception classes of
:mod:`patchbay.net.transport` by exception type only (never by message), keeping the library's
exception as ``__cause__``. Limits: the connect limit is the library's own (rnet's in whole seconds);
the first-byte limit is an ``asyncio.timeout`` around the wait for the response head. None of these
libraries says when the request went out, so that timer starts at the call and runs for the connect
plus the first-byte limit: a connect that hangs still ends as the library's connect timeout, and a
late answer ends up to one connect limit later than on the pool. Bodies are not decompressed
(``Accept-Encoding: identity``), as on the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
from curl_cffi import CurlECode
from curl_cffi.requests import AsyncSession
from curl_cffi.requests import exceptions as curl_errors

from patchbay.net.curl import MALFORMED_CODES as CURL_MALFORMED
from patchbay.net.curl import CurlTransport
from patchbay.net.pool import ConnectionPool
from patchbay.net.transport import (
    ConnectError,
    ConnectTimeoutError,
    FirstByteTimeoutError,
    Headers,
    IncompleteResponse,
    InvalidRequestError,
    MalformedResponse,
    Response,
    Transport,
    TransportError,
    UpstreamRequest,
)

__all__ = [
    "AiohttpTransport", "CANDIDATES", "CurlSessionTransport", "DESCRIPTIONS", "PyreqwestTransport", "RnetTransport",
    "Unavailable",
    "library_versions", "make_transport", "unavailable_reason",
]


def _optional(module: str) -> Any:
    """The module, or None when it is not installed (rnet is a bench extra: pip install '.[bench]')."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


rnet: Any = _optional("rnet")
pyreqwest_client: Any = _optional("pyreqwest.client")
pyreqwest_errors: Any = _optional("pyreqwest.exceptions")

class Unavailable(Exception):
    """A candidate whose library is not installed here: reported as such, not measured."""


IDENTITY = {"Accept-Encoding": "identity"}  # as the pool sends: bodies arrive as the server wrote them
STREAM_READ_LIMIT = 3600  # seconds: curl_cffi's stream "read timeout" (a low-speed limit), i.e. none here


def _with_identity(headers: Any) -> dict[str, str]:
    merged = {name: value for name, value in headers.items() if name.lower() != "accept-encoding"}
    merged.update(IDENTITY)
    return merged


def _chained(error: TransportError, cause: BaseException) -> TransportError:
    error.__cause__ = cause
    return error


async def _head_within(awaitable: Awaitable[Any], connect: float | None, first_byte: float | None) -> Any:
    """Await the response head within the connect plus the first-byte limit; a FirstByteTimeoutError past it."""
    limit = None if first_byte is None else first_byte + (connect or 0.0)
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            return await awaitable
    except TimeoutError as exc:
        if not scope.expired():
            raise
        raise FirstByteTimeoutError(f"no answer within {limit} s") from exc


class _Closers:
    """Background closes of abandoned responses (the libraries' close is async, release() is not)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, closing: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(closing)  # rnet's close() is a Future, curl_cffi's a coroutine
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the closes; cancel any still running (curl_cffi's waits for the body's end)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


# --- aiohttp -------------------------------------------------------------------------------------


def _aiohttp_error(exc: aiohttp.ClientError, *, head: bool) -> TransportError:
    """Our transport exception for an aiohttp one (by type); ``head``: the response head arrived."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _chained(ConnectTimeoutError("connecting took longer than the limit"), exc)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientSSLError):
        return _chained(ConnectError("cannot connect"), exc)
    if isinstance(exc, aiohttp.ClientResponseError) and not head:
        return _chained(MalformedResponse("malformed response"), exc)  # aiohttp's parser refused the head
    if isinstance(exc, aiohttp.InvalidURL):
        return _chained(InvalidRequestError("invalid URL"), exc)
    return _chained(IncompleteResponse("the connection ended before the response did"), exc)


class AiohttpResponse:
    """An aiohttp ClientResponse as a :class:`~patchbay.net.transport.Response`."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = Headers([(name.decode("latin-1"), value.decode("latin-1"))
                                for name, value in response.raw_headers])
        self._ended = False

    async def read_chunk(self) -> bytes:
        try:
            data = await self._response.content.readany()
        except aiohttp.ClientError as exc:
            self.release()
            raise _aiohttp_error(exc, head=True) from exc
        except BaseException:  # a cancellation mid-body
            self.release()
            raise
        if not data:
            self._end()
        return data

    def buffered_chunk(self) -> bytes | None:
        content = self._response.content
        if content.at_eof():
            self._end()
            return b""
        try:
            data = content.read_nowait()
        except aiohttp.ClientError as exc:
            self.release()
            raise _aiohttp_error(exc, head=True) from exc
        return data or None

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._response.release()  # read to the end: the connection goes back to the connector

    def release(self) -> None:
        if not self._ended:
            self._ended = True
            self._response.close()  # mid-body: close the connection, the server sees the client leave


class AiohttpTransport:
    """aiohttp's ClientSession behind the transport interface (keep-alive, no decompression)."""

    def __init__(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=15)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        self.closed = False

    async def send(self, request: UpstreamRequest, *, connect_timeout: float | None,
                   first_byte_timeout: float | None) -> Response:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        sending = self._session.request(request.method, str(request.url), data=request.body,
                                        headers=_with_identity(request.headers), allow_redirects=False,
                                        timeout=timeout, ssl=request.verify_ssl)
        try:
            response = await _head_within(sending, connect_timeout, first_byte_timeout)
        except aiohttp.ClientError as exc:
            raise _aiohttp_error(exc, head=False) from exc
        return AiohttpResponse(response)

    async def close(self) -> None:
        self.closed = True
        await self._session.close()


# --- rnet ----------------------------------------------------------------------------------------


_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH")


def _rnet_errors() -> tuple[type[BaseException], ...]:
    """Every exception class rnet raises for a failed request (none when rnet is missing)."""
    if rnet is None:
        return ()
    return tuple(getattr(rnet, name) for name in (
        "BodyError", "BuilderError", "ConnectionError", "ConnectionResetError", "DNSResolverError",
        "DecodingError", "RedirectError", "RequestError", "StatusError", "TimeoutError", "URLParseError"))


RNET_ERRORS = _rnet_errors()


def _rnet_error(exc: BaseException, *, head: bool) -> TransportError:
    """Our transport exception for an rnet one (by type). rnet is only ever given a connect limit,
    so its own TimeoutError before the head is a connect timeout."""
    if isinstance(exc, rnet.TimeoutError) and not head:
        return _chained(ConnectTimeoutError("connecting took longer than the limit"), exc)
    if isinstance(exc, rnet.ConnectionError | rnet.DNSResolverError) and not head:
        return _chained(ConnectError("cannot connect"), exc)
    if isinstance(exc, rnet.URLParseError | rnet.BuilderError):
        return _chained(InvalidRequestError("invalid request"), exc)
    return _chained(IncompleteResponse("the transfer ended early"), exc)  # body, request, reset, ...


def rnet_profile(name: str) -> Any:
    """rnet's newest browser profile for a curl_cffi-style name ("chrome" -> Impersonate.Chrome137)."""
    prefix = name.strip().lower()
    versions = [(int(member[len(prefix):]), member) for member in dir(rnet.Impersonate)
                if member.lower().startswith(prefix) and member[len(prefix):].isdigit()]
    if not versions:
        raise InvalidRequestError(f"rnet has no browser profile {name!r}")
    return getattr(rnet.Impersonate, max(versions)[1])


class RnetResponse:
    """An rnet Response read through its body Streamer, as a :class:`~patchbay.net.transport.Response`."""

    def __init__(self, transport: RnetTransport, response: Any) -> None:
        self._transport = transport
        self._response = response
        self.status = response.status
        self.headers = Headers([(bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                                for name, value in response.headers.items()])
        self._stream: AsyncIterator[bytes] | None = None
        self._ended = False

    async def read_chunk(self) -> bytes:
        if self._ended:
            return b""
        if self._stream is None:
            self._stream = self._response.stream()
        try:
            return bytes(await self._stream.__anext__())
        except StopAsyncIteration:
            self._ended = True
            return b""
        except RNET_ERRORS as exc:
            self.release()
            raise _rnet_error(exc, head=True) from exc
        except BaseException:  # a cancellation mid-body
            self.release()
            raise

    def buffered_chunk(self) -> bytes | None:
        return b"" if self._ended else None  # rnet cannot tell what is already at hand

    def release(self) -> None:
        if not self._ended:
            self._ended = True
            self._transport.closers.spawn(self._response.close())  # drops the connection mid-body


class RnetTransport:
    """rnet's async Client behind the transport interface (HTTP/1.1 and 2, keep-alive pool)."""

    def __init__(self) -> None:
        if rnet is None:
            raise Unavailable("rnet is not installed (pip install '.[bench]')")
        self._clients: dict[tuple[int | None, str | None, bool], Any] = {}
        self.closers = _Closers()
        self.closed = False

    def _client(self, connect_timeout: float | None, request: UpstreamRequest) -> Any:
        """The client for these settings (rnet sets limits, TLS and impersonation per client)."""
        # rnet takes whole seconds: the connect limit is rounded up (at least 1 s).
        seconds = None if connect_timeout is None else max(1, math.ceil(connect_timeout))
        key = (seconds, request.impersonate, request.verify_ssl)
        client = self._clients.get(key)
        if client is None:
            options: dict[str, Any] = {"allow_redirects": False, "no_proxy": True, "cookie_store": False,
                                       "pool_idle_timeout": 15, "verify": request.verify_ssl}
            if seconds is not None:
                options["connect_timeout"] = seconds
            if request.impersonate:
                options["impersonate"] = rnet_profile(request.impersonate)
            client = self._clients[key] = rnet.Client(**options)
        return client

    async def send(self, request: UpstreamRequest, *, connect_timeout: float | None,
                   first_byte_timeout: float | None) -> Response:
        name = request.method.upper()
        if name not in _METHODS:
            raise InvalidRequestError(f"rnet has no method {request.method!r}")
        method = getattr(rnet.Method, name)
        options: dict[str, Any] = {"headers": _with_identity(request.headers)}
        if request.body is not None:
            options["body"] = request.body
        sending = self._client(connect_timeout, request).request(method, str(request.url), **options)
        try:
            response = await _head_within(sending, connect_timeout, first_byte_timeout)
        except RNET_ERRORS as exc:
            raise _rnet_error(exc, head=False) from exc
        return RnetResponse(self, response)

    async def close(self) -> None:
        self.closed = True
        await self.closers.drain()
        self._clients.clear()


# --- pyreqwest -----------------------------------------------------------------------------------


def _pyreqwest_error(exc: BaseException, *, head: bool) -> TransportError:
    """Our transport exception for a pyreqwest one (its classes say what failed)."""
    errors = pyreqwest_errors
    if isinstance(exc, errors.ConnectTimeoutError) and not head:
        return _chained(ConnectTimeoutError("connecting took longer than the limit"), exc)
    if isinstance(exc, errors.ConnectError) and not head:
        return _chained(ConnectError("cannot connect"), exc)
    if isinstance(exc, errors.BuilderError):
        return _chained(InvalidRequestError("invalid request"), exc)
    if isinstance(exc, errors.DecodeError) and not isinstance(exc, errors.BodyDecodeError):
        return _chained(MalformedResponse("malformed response"), exc)  # the head (bodies are not decoded here)
    return _chained(IncompleteResponse("the transfer ended early"), exc)  # read, write, network, ...


class PyreqwestResponse:
    """A streamed pyreqwest response as a :class:`~patchbay.net.transport.Response`."""

    def __init__(self, transport: PyreqwestTransport, request: Any, response: Any) -> None:
        self._transport = transport
        self._request = request  # the StreamRequest context: leaving it ends the transfer
        self.status = int(response.status)
        self.headers = Headers([(str(name), str(value)) for name, value in response.headers.items()])
        self._reader = response.body_reader
        self._released = False
        self._ended = False

    async def read_chunk(self) -> bytes:
        if self._ended:
            return b""
        try:
            chunk = await self._reader.read_chunk()
        except pyreqwest_errors.PyreqwestError as exc:
            self.release()
            raise _pyreqwest_error(exc, head=True) from exc
        except BaseException:  # a cancellation mid-body
            self.release()
            raise
        if chunk is None:
            self._ended = True
            self.release()
            return b""
        return bytes(chunk)

    def buffered_chunk(self) -> bytes | None:
        return b"" if self._ended else None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._transport.closers.spawn(self._request.__aexit__(None, None, None))


class PyreqwestTransport:
    """pyreqwest's async Client (Rust reqwest/hyper on tokio) behind the transport interface."""

    def __init__(self) -> None:
        if pyreqwest_client is None:
            raise Unavailable("pyreqwest is not installed (pip install pyreqwest)")
        self._clients: dict[tuple[float | None, bool], Any] = {}
        self.closers = _Closers()
        self.closed = False

    def _client(self, connect_timeout: float | None, verify: bool) -> Any:
        client = self._clients.get((connect_timeout, verify))
        if client is None:
            builder = (pyreqwest_client.ClientBuilder().follow_redirects(False).no_proxy().gzip(False)
                       .brotli(False).zstd(False).deflate(False).pool_idle_timeout(timedelta(seconds=15)))
            if connect_timeout is not None:
                builder = builder.connect_timeout(timedelta(seconds=connect_timeout))
            if not verify:
                builder = builder.danger_accept_invalid_certs(True)
            client = self._clients[(connect_timeout, verify)] = builder.build()
        return client

    async def send(self, request: UpstreamRequest, *, connect_timeout: float | None,
                   first_byte_timeout: float | None) -> Response:
        if request.impersonate:
            raise InvalidRequestError("pyreqwest cannot impersonate a browser")
        try:
            builder = self._client(connect_timeout, request.verify_ssl).request(request.method, str(request.url))
            # pyreqwest's default (64 KiB) holds the response back until that much body or its end
            # arrived: an SSE stream would reach nobody until then. 0: the head as soon as it is in.
            builder = builder.headers(_with_identity(request.headers)).streamed_read_buffer_limit(0)
            if request.body is not None:
                builder = builder.body_bytes(request.body)
            streamed = builder.build_streamed()
            response = await _head_within(streamed.__aenter__(), connect_timeout, first_byte_timeout)
        except pyreqwest_errors.PyreqwestError as exc:
            raise _pyreqwest_error(exc, head=False) from exc
        return PyreqwestResponse(self, streamed, response)

    async def close(self) -> None:
        self.closed = True
        await self.closers.drain()
        for client in self._clients.values():
            with contextlib.suppress(pyreqwest_errors.PyreqwestError):
                await client.close()
        self._clients.clear()


# --- curl_cffi AsyncSession ----------------------------------------------------------------------


def _curl_session_error(exc: curl_errors.RequestException, *, head: bool) -> TransportError:
    """Our transport exception for a curl_cffi.requests one (by type, and libcurl's error code, read
    with patchbay.net.curl's table). The session is only given a connect limit (its stream "read
    limit" is an hour), so a timeout before the head is a connect timeout."""
    code = getattr(exc, "code", None)
    if isinstance(exc, curl_errors.Timeout) and not head:
        return _chained(ConnectTimeoutError("connecting took longer than the limit"), exc)
    if isinstance(exc, curl_errors.InvalidURL):
        return _chained(InvalidRequestError("invalid URL"), exc)
    if code in CURL_MALFORMED:
        return _chained(MalformedResponse("malformed response"), exc)
    if isinstance(exc, curl_errors.ConnectionError) and code == CurlECode.COULDNT_CONNECT and not head:
        return _chained(ConnectError("cannot connect"), exc)
    return _chained(IncompleteResponse("the transfer ended early"), exc)


class CurlSessionResponse:
    """A streamed curl_cffi.requests Response as a :class:`~patchbay.net.transport.Response`."""

    def __init__(self, transport: CurlSessionTransport, response: Any) -> None:
        self._transport = transport
        self._response = response
        self.status = int(response.status_code)
        self.headers = Headers([(str(name), str(value)) for name, value in response.headers.multi_items()])
        self._chunks: AsyncIterator[bytes] = response.aiter_content()
        self._ended = False

    async def read_chunk(self) -> bytes:
        if self._ended:
            return b""
        try:
            return bytes(await self._chunks.__anext__())
        except StopAsyncIteration:
            self._ended = True
            return b""
        except curl_errors.RequestException as exc:
            self.release()
            raise _curl_session_error(exc, head=True) from exc
        except BaseException:  # a cancellation mid-body
            self.release()
            raise

    def buffered_chunk(self) -> bytes | None:
        return b"" if self._ended else None

    def release(self) -> None:
        if not self._ended:
            self._ended = True
        # curl_cffi's documented close; mid-body it waits for the transfer to end rather than abort it.
        self._transport.closers.spawn(self._response.aclose())


class CurlSessionTransport:
    """curl_cffi's AsyncSession (no impersonation) behind the transport interface, streaming."""

    def __init__(self) -> None:
        self._session: Any = AsyncSession(trust_env=False, allow_redirects=False, max_clients=100)
        self.closers = _Closers()
        self.closed = False

    async def send(self, request: UpstreamRequest, *, connect_timeout: float | None,
                   first_byte_timeout: float | None) -> Response:
        timeout = (connect_timeout if connect_timeout is not None else 300.0, STREAM_READ_LIMIT)
        sending = self._session.request(request.method, str(request.url), data=request.body,
                                        headers=dict(request.headers), stream=True, timeout=timeout,
                                        accept_encoding=None, verify=request.verify_ssl,
                                        impersonate=request.impersonate, default_headers=bool(request.impersonate))
        try:
            response = await _head_within(sending, connect_timeout, first_byte_timeout)
        except curl_errors.RequestException as exc:
            raise _curl_session_error(exc, head=False) from exc
        return CurlSessionResponse(self, response)

    async def close(self) -> None:
        self.closed = True
        await self.closers.drain()
        with contextlib.suppress(curl_errors.RequestException):
            await self._session.close()


# --- the candidates --------------------------------------------------------------------------------

#: Every candidate by name; each factory is called on the running event loop.
CANDIDATES: dict[str, Callable[[], Transport]] = {
    "pool": ConnectionPool,
    "curl": CurlTransport,
    "aiohttp": AiohttpTransport,
    "rnet": RnetTransport,
    "pyreqwest": PyreqwestTransport,
    "curl-session": CurlSessionTransport,
}

DESCRIPTIONS = {
    "pool": "patchbay.net.pool.ConnectionPool (hand-written, httptools)",
    "curl": "patchbay.net.curl.CurlTransport (curl_cffi AsyncCurl, one easy handle per request)",
    "aiohttp": "aiohttp ClientSession, keep-alive TCPConnector (adapter)",
    "rnet": "rnet async Client (Rust: wreq/hyper on tokio, BoringSSL; adapter)",
    "pyreqwest": "pyreqwest async Client, streamed requests with `streamed_read_buffer_limit(0)` (its default, "
                 "64 KiB, holds the response back until that much body arrived) (Rust: reqwest/hyper on tokio; "
                 "adapter)",
    "curl-session": "curl_cffi AsyncSession, stream=True (adapter)",
}


def unavailable_reason(name: str) -> str:
    """Why the named candidate cannot run here ('' when it can)."""
    if name == "rnet" and rnet is None:
        return "rnet is not installed (pip install '.[bench]')"
    if name == "pyreqwest" and pyreqwest_client is None:
        return "pyreqwest is not installed (pip install pyreqwest)"
    return ""


def make_transport(name: str) -> Transport:
    """A new instance of the named candidate (call it on the loop that will use it)."""
    try:
        factory = CANDIDATES[name]
    except KeyError:
        raise ValueError(f"unknown transport candidate {name!r}: choose from {', '.join(CANDIDATES)}") from None
    return factory()


def library_versions() -> dict[str, str]:
    """The installed version of every library a candidate rests on, plus libcurl's."""
    found = {}
    for name in ("patchbay", "httptools", "uvloop", "aiohttp", "curl_cffi", "rnet", "pyreqwest"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    from curl_cffi import Curl

    curl = Curl()
    try:
        found["libcurl"] = curl.version().decode().split()[0].removeprefix("libcurl/")
    finally:
        curl.close()
    return found
