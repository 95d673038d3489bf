"""Shared machinery of the replica servers: a real aiohttp server that records and checks requests.

Each replica imitates one remote chat service closely enough for provider tests: it checks the
shape of every request (a failed check is answered 400 and listed in ``violations``), and answers
according to a named fault scenario.  The transport-level faults (slow first byte, stalls, dropped
connections, resets, truncated chunked encoding, pathological chunking, invalid UTF-8) live here so
that every replica misbehaves the same way.  "Connection refused" needs no replica at all: point
the client at :func:`refused_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

#: Upper bound of every sleep a replica does, so a test can never hang on a replica forever.
MAX_SLEEP = 60.0

#: Default answer: ASCII, Cyrillic (2-byte UTF-8), CJK (3-byte) and an emoji (4-byte).
DEFAULT_ANSWER = "Hello! Привет, 世界 🌍. The answer is 42."

#: Scenarios implemented by :meth:`ReplicaServer.send` for any replica that lists them.
TRANSPORT_SCENARIOS = frozenset(
    {
        "one_byte",
        "split_multibyte",
        "slow_first_byte",
        "stall",
        "disconnect",
        "reset_before_headers",
        "truncated_chunked",
        "invalid_utf8",
    }
)

#: Scenarios of a site behind bot protection, handled by the middleware for any replica that
#: lists them: ``challenge`` answers every request with Cloudflare's challenge page;
#: ``cookie_gated`` does so unless the request carries the clearance cookie (and the user-agent
#: it was issued to, when ``clearance_user_agent`` is set), as a browser that solved it would.
BROWSER_CHECK_SCENARIOS = frozenset({"challenge", "cookie_gated"})

#: Cloudflare's interstitial as a non-browser client sees it (trimmed; the markers are real).
CHALLENGE_PAGE = (
    "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>"
    "<meta http-equiv=\"refresh\" content=\"390\"></head><body><div class=\"main-wrapper\">"
    "<noscript>Enable JavaScript and cookies to continue</noscript></div>"
    "<script src=\"/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray=8f1e2d3c4b5a6978\"></script>"
    "</body></html>"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ShapeError(Exception):
    """Raised by a handler when a request does not have the shape the real service expects."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RecordedRequest:
    """One request as the replica received it (header names are lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON, non-ASCII characters left raw (UTF-8)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def split_deltas(text: str, parts: int = 5) -> list[str]:
    """Split ``text`` into about ``parts`` non-empty consecutive pieces (whole characters)."""
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def split_bytes(data: bytes, size: int) -> list[bytes]:
    """Fixed-size byte pieces (the last one may be shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def split_inside_multibyte(data: bytes) -> list[bytes]:
    """Cut ``data`` right after the lead byte of every multi-byte UTF-8 character.

    Every piece but the last ends in the middle of a character, so a client that decodes each
    piece on its own breaks.  Data without multi-byte characters falls back to 7-byte pieces.
    """
    cuts = [i + 1 for i, byte in enumerate(data) if byte >= 0xC0 and i + 1 < len(data)]
    if not cuts:
        return split_bytes(data, 7)
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def corrupt_utf8(data: bytes) -> bytes:
    """``data`` with every 4-byte UTF-8 character made invalid: a stray 0xFF, then the character
    without its last byte.  A lenient decoder reads each one as two U+FFFD."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] >= 0xF0 and i + 4 <= len(data):
            out += b"\xff" + data[i : i + 3]
            i += 4
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def refused_url() -> str:
    """``http://127.0.0.1:PORT`` of a port nothing listens on (bound, then closed): connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _parse_form(body: bytes) -> dict[str, str] | None:
    try:
        return dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        return None


RECORDED_KEY = web.RequestKey("recorded", RecordedRequest)


class ReplicaServer:
    """Base class: lifecycle, request recording, shape-check plumbing and transport faults.

    Subclasses list their scenario names in ``SCENARIOS`` and their endpoints in :meth:`routes`.
    Handlers call :meth:`check` (or raise :class:`ShapeError`); the middleware turns a failed check
    into a 400 answer carrying the reason and appends ``"<METHOD> <path>: <reason>"`` to
    ``violations``.
    """

    SCENARIOS: ClassVar[frozenset[str]] = frozenset({"normal"})
    #: Seconds aiohttp waits for in-flight handlers on stop before cancelling them.
    SHUTDOWN_TIMEOUT: ClassVar[float] = 0.25

    def __init__(self, scenario: str = "normal") -> None:
        self.scenario = scenario
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        #: Responses being written by :meth:`send` (including ones still waiting out a slow first byte).
        self.open_streams = 0
        #: Streams the *client* abandoned (write failed, or the handler was cancelled mid-stream).
        self.disconnects = 0
        #: Streams the replica itself cut off (the "disconnect" scenario).
        self.dropped = 0
        #: Byte pieces written by the latest :meth:`send` call, one write each.
        self.last_chunks: list[bytes] = []
        self.first_byte_delay = 2.0
        self.stall_seconds = 30.0
        self.delay_per_chunk = 0.0
        #: Seconds the server keeps an idle keep-alive connection open (aiohttp's own default is an hour).
        self.keepalive_timeout = 75.0
        #: The cookie that gets a request past the ``cookie_gated`` check, and the user-agent it
        #: is bound to (None: any); ``challenged`` counts the challenge pages served.
        self.clearance_cookie = ("cf_clearance", "clr-" + "7Qx2" * 10)
        self.clearance_user_agent: str | None = None
        self.challenged = 0
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None

    # ----------------------------------------------------------------- configuration

    @property
    def scenario(self) -> str:
        """The active fault scenario; may be changed at any time, unknown names are refused."""
        return self._scenario

    @scenario.setter
    def scenario(self, name: str) -> None:
        if name not in self.SCENARIOS:
            raise ValueError(f"unknown scenario {name!r} for {type(self).__name__}: {sorted(self.SCENARIOS)}")
        self._scenario = name

    def routes(self) -> list[web.RouteDef]:
        """The endpoints of the replicated service."""
        raise NotImplementedError

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = ephemeral) and return the base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._runner is not None:
            raise RuntimeError("replica already started")
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self.routes())
        # handler_cancellation: a client that goes away mid-stream cancels the handler, which is
        # how a stalled stream learns about the disconnect.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=self.SHUTDOWN_TIMEOUT,
            access_log=None,
            keepalive_timeout=self.keepalive_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; in-flight handlers (stalls, slow answers) are cancelled, not awaited."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        try:
            pending = [task for task in self._tasks if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await runner.cleanup()
        finally:
            self._stopping = False
            self.base_url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on the running replica."""
        if self.base_url is None:
            raise RuntimeError("replica not started")
        return self.base_url + path

    # ----------------------------------------------------------------- observation

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (event-driven, no polling) until ``predicate()`` holds; TimeoutError after ``timeout``.

        The predicate is re-evaluated whenever a request arrives, a stream opens or closes, or a
        disconnect is noticed, e.g. ``await replica.wait_until(lambda: replica.disconnects == 1)``.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path is ``path``."""
        return [r for r in self.requests if r.path == path]

    # ----------------------------------------------------------------- request plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            body = await request.read()
            recorded = RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                cookies=dict(request.cookies),
            )
            ctype = request.content_type
            if "json" in ctype:
                with contextlib.suppress(ValueError):
                    recorded.json = json.loads(body)
            elif ctype == "application/x-www-form-urlencoded":
                recorded.form = _parse_form(body)
            request[RECORDED_KEY] = recorded
            self.requests.append(recorded)
            self._notify()
            if self._challenges(recorded):
                self.challenged += 1
                return web.Response(status=403, text=CHALLENGE_PAGE, content_type="text/html",
                                    headers={"cf-mitigated": "challenge", "Server": "cloudflare"})
            try:
                return await handler(request)
            except ShapeError as err:
                self.violations.append(f"{request.method} {request.path}: {err.reason}")
                self._notify()
                return self.violation_response(err.reason)
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _challenges(self, request: RecordedRequest) -> bool:
        if self.scenario == "challenge":
            return True
        if self.scenario != "cookie_gated":
            return False
        name, value = self.clearance_cookie
        agent_ok = self.clearance_user_agent is None or request.headers.get("user-agent") == self.clearance_user_agent
        return request.cookies.get(name) != value or not agent_ok

    def violation_response(self, reason: str) -> web.StreamResponse:
        """The 400 answer to a request that failed a shape check (plain text reason)."""
        return web.Response(status=400, text=f"replica shape check failed: {reason}")

    @staticmethod
    def check(condition: object, reason: str) -> None:
        """Raise :class:`ShapeError` with ``reason`` unless ``condition`` is true."""
        if not condition:
            raise ShapeError(reason)

    @staticmethod
    def recorded(request: web.Request) -> RecordedRequest:
        """The :class:`RecordedRequest` of ``request``."""
        return request[RECORDED_KEY]

    def json_body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object body, checking the content type and that it parses to an object."""
        rec = self.recorded(request)
        self.check(request.content_type == "application/json", f"content-type is {request.content_type!r}")
        self.check(isinstance(rec.json, dict), f"body is not a JSON object: {rec.text[:80]!r}")
        body: dict[str, Any] = rec.json
        return body

    # ----------------------------------------------------------------- answering

    async def sleep(self, seconds: float) -> None:
        """Sleep at most :data:`MAX_SLEEP` seconds."""
        await asyncio.sleep(min(max(seconds, 0.0), MAX_SLEEP))

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), not an orderly close."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _note_disconnect(self) -> None:
        self.disconnects += 1
        self._notify()

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Count a response as open while the block writes it; a client that left meanwhile is
        counted in :attr:`disconnects` (not when the replica itself is stopping)."""
        self.open_streams += 1
        self._notify()
        try:
            yield
        except ConnectionError:
            self._note_disconnect()
        except asyncio.CancelledError:
            if not self._stopping:
                self._note_disconnect()
            raise
        finally:
            self.open_streams -= 1
            self._notify()

    def shape_pieces(self, pieces: Iterable[bytes]) -> list[bytes]:
        """Re-cut (or corrupt) the answer's byte pieces for one_byte, split_multibyte and invalid_utf8."""
        pieces = [p for p in pieces if p]
        if self.scenario == "invalid_utf8":
            return [corrupt_utf8(p) for p in pieces]
        if self.scenario == "one_byte":
            return [bytes([b]) for piece in pieces for b in piece]
        if self.scenario == "split_multibyte":
            return split_inside_multibyte(b"".join(pieces))
        return pieces

    async def send(
        self,
        request: web.Request,
        pieces: Sequence[bytes],
        *,
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
        sized: bool = False,
    ) -> web.StreamResponse:
        """Write an answer piece by piece, applying the transport scenarios of :data:`TRANSPORT_SCENARIOS`.

        ``slow_first_byte`` sleeps ``first_byte_delay`` before the headers; ``stall`` writes the first
        half of the pieces and sleeps ``stall_seconds`` (then finishes); ``disconnect`` writes the
        first half and closes the connection; ``reset_before_headers`` resets the connection (TCP RST)
        without a byte of answer; ``truncated_chunked`` writes the first half in chunked encoding,
        then a chunk shorter than its declared size, and closes; ``one_byte``/``split_multibyte``
        re-cut the pieces; ``invalid_utf8`` corrupts every 4-byte character (:func:`corrupt_utf8`).
        ``sized`` sends a Content-Length instead of chunked encoding (not with ``truncated_chunked``).
        """
        scenario = self.scenario
        pieces = self.shape_pieces(pieces)
        cut = len(pieces)
        if scenario == "reset_before_headers":
            self.dropped += 1
            self._notify()
            self._reset(request)
            return web.Response(status=500)  # never sent: the connection is gone
        if scenario == "truncated_chunked":
            sized = False
        if scenario in ("stall", "disconnect", "truncated_chunked"):
            if len(pieces) == 1 and len(pieces[0]) > 1:
                half = len(pieces[0]) // 2
                pieces = [pieces[0][:half], pieces[0][half:]]
            cut = max(1, len(pieces) // 2)
        self.last_chunks = []
        resp = web.StreamResponse(status=status, headers=headers)
        resp.headers["Content-Type"] = content_type
        if sized:
            resp.content_length = sum(len(p) for p in pieces)
        with self.streaming():
            if scenario == "slow_first_byte":
                await self.sleep(self.first_byte_delay)
            await resp.prepare(request)
            for index, piece in enumerate(pieces):
                if index == cut and scenario == "stall":
                    await self.sleep(self.stall_seconds)
                elif index == cut and scenario == "disconnect":
                    self.dropped += 1
                    if request.transport is not None:
                        request.transport.close()
                    # aiohttp's own write_eof then meets the closed transport and gives up quietly.
                    return resp
                elif index == cut and scenario == "truncated_chunked":
                    self.dropped += 1
                    if request.transport is not None:
                        # A chunk that promises more bytes than ever come, written past aiohttp's framing.
                        request.transport.write(b"%x\r\n" % (len(piece) + 64) + piece)
                        request.transport.close()
                    return resp
                await resp.write(piece)
                self.last_chunks.append(piece)
                # Yield (or pause) between writes so the pieces leave as separate segments.
                await asyncio.sleep(min(self.delay_per_chunk, MAX_SLEEP))
            await resp.write_eof()
        return resp
