"""The one upstream transport interface, and the exceptions every implementation raises.

A :class:`Transport` sends one HTTP request and returns its :class:`Response` once the response
head arrived; the body is read chunk by chunk. Everything else (redirects, cookies, the total
deadline and the idle gap between chunks, turning these exceptions into patchbay's errors) is
done once, above the transports, by :class:`~patchbay.net.session.HTTPSession`. Implementations:

- :class:`~patchbay.net.pool.ConnectionPool`: the hand-written keep-alive HTTP/1.1 pool
  (``httptools``), for direct requests: the measured winner against aiohttp, curl_cffi, rnet and
  pyreqwest (docs/benchmarks.md, "Upstream transports").
- :class:`~patchbay.net.curl.CurlTransport`: libcurl through ``curl_cffi``, for requests through a
  proxy (http, https, socks4, socks5) and for browser impersonation (TLS and HTTP/2 fingerprint).

Each implementation translates its own library's failures into the classes below, so exactly one
table (:data:`patchbay.net.session.TRANSPORT_ERRORS`) says what each failure means to a caller.
"""

from __future__ import annotations

import json as jsonlib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from yarl import URL

__all__ = [
    "ConnectError",
    "ConnectTimeoutError",
    "FirstByteTimeoutError",
    "Headers",
    "IDEMPOTENT_METHODS",
    "IncompleteResponse",
    "InvalidRequestError",
    "MalformedResponse",
    "READ_HIGH_WATER",
    "Response",
    "Transport",
    "TransportError",
    "UpstreamRequest",
    "encode_body",
]

#: Methods RFC 9110 §9.2.2 calls idempotent: the only ones a transport may send again after a
#: failure that leaves open whether the server received them (RFC 9112 §9.3.1).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

#: Buffered body bytes at which a transport stops reading from the upstream until the reader
#: catches up, so a slow consumer never makes a whole answer pile up in memory.
READ_HIGH_WATER = 256 * 1024


class TransportError(Exception):
    """A request failed below HTTP semantics: connecting, sending, or reading the response."""


class ConnectTimeoutError(TransportError, TimeoutError):
    """Opening the connection (TCP, proxy handshake and TLS) took longer than the connect limit."""


class FirstByteTimeoutError(TransportError, TimeoutError):
    """The response head did not arrive within the first-byte limit after the request went out."""


class ConnectError(TransportError):
    """The connection could not be opened (refused, unreachable, unknown host, TLS or proxy refused)."""


class IncompleteResponse(TransportError):
    """The connection ended (closed or reset) before the response was complete."""


class MalformedResponse(TransportError):
    """The server's bytes are not a valid HTTP response."""


class InvalidRequestError(TransportError, ValueError):
    """The request cannot be sent as given (a URL without host, a line break in a header)."""


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive lookup; a repeated header reads as its values joined by ", "."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw  # (name, value) as received, in order
        merged: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._map = merged

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)  # lower-case names

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, one per line received (``Set-Cookie`` cannot be comma-joined)."""
        key = name.lower()
        return [value for raw_name, value in self.raw if raw_name.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request as a transport sends it: the headers are final (the session merged them)."""

    method: str
    url: URL
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    verify_ssl: bool = True
    proxy: str | None = None
    impersonate: str | None = None  # a browser profile name (curl_cffi's), e.g. "chrome"

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


class Response(Protocol):
    """A response whose head arrived; the body is read with :meth:`read_chunk` until ``b""``.

    The caller must :meth:`release` it: a transport keeps a connection only when the body was read
    to the end, and closes one released mid-body (which tells the upstream the client went away).
    """

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Headers: ...

    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive; ``b""`` at the end of the body."""
        ...

    def buffered_chunk(self) -> bytes | None:
        """The next body bytes if already at hand (``b""`` at the end), else ``None``.

        Lets a reader with a time limit skip arming a timer for data it has; an implementation
        that cannot tell may always answer ``None``."""
        ...

    def release(self) -> None: ...


class Transport(Protocol):
    """Sends requests; one instance serves one event loop."""

    async def send(
        self, request: UpstreamRequest, *, connect_timeout: float | None, first_byte_timeout: float | None
    ) -> Response:
        """Send ``request``; its response once the head arrived.

        ``connect_timeout`` bounds opening a connection, ``first_byte_timeout`` the wait for the
        response head once the request went out. A request is sent again on a new connection only
        when the failure proves the server cannot have received it, or, for an idempotent method,
        when a reused connection turned out closed before any response byte; never after a timeout.
        """
        ...

    async def close(self) -> None: ...


def encode_body(*, json: Any = None, data: bytes | str | Mapping[str, Any] | None = None
                ) -> tuple[bytes | None, str | None]:
    """A request body and its default content type from ``json=`` (compact JSON, via msgspec) or
    ``data=`` (bytes, text, or a mapping sent form-urlencoded)."""
    if json is not None:
        if data is not None:
            raise InvalidRequestError("pass json= or data=, not both")
        try:
            return msgspec.json.encode(json), "application/json"
        except (TypeError, msgspec.EncodeError):
            # json.dumps takes a few things msgspec refuses, such as None or bool dict keys.
            return jsonlib.dumps(json, separators=(",", ":")).encode(), "application/json"
    if data is None:
        return None, None
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), "application/octet-stream"
    if isinstance(data, str):
        return data.encode("utf-8"), "text/plain; charset=utf-8"
    return urllib.parse.urlencode(data, doseq=True).encode(), "application/x-www-form-urlencoded"
