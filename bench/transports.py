"""Upstream transports measured against each other: patchbay's two and the libraries it could use instead.

    python -m bench.transports                      # the full run; writes docs/benchmarks.md
    python -m bench.transports --rounds 1 --requests 200 --no-write   # a quick look

Candidates (bench/transport_candidates.py): patchbay's hand-written httptools pool, patchbay's
libcurl transport (curl_cffi AsyncCurl), aiohttp's ClientSession, rnet's async Client (Rust) and
curl_cffi's high-level AsyncSession, every one behind patchbay's transport interface and driven by
the same code, in the same run, on uvloop:

1. client throughput: non-streaming POSTs to the fake upstream (bench/upstream.py, in its own
   process) from this process with N concurrent tasks on kept-alive connections; requests/s and
   this process's CPU seconds per 1,000 requests (all its threads: rnet's tokio threads count);
2. per-chunk streaming cost: one answer of many small SSE events, each written on its own by the
   upstream, back to back ("burst") or paced so that each arrives alone ("paced"); CPU µs per event;
3. forwarding through ``patchbay serve`` (wrk, 50 connections) with each transport the gateway
   can be told to use (``PATCHBAY_UPSTREAM_TRANSPORT``), and the server's CPU per 1,000 requests;
4. the fault matrix: the same broken or slow servers (a raw asyncio TCP server on 127.0.0.1)
   against every candidate, and what each made of them.

Rounds alternate the candidates; each figure is the median of the rounds, each ratio the median of
the per-round ratios against the pool (the machine is shared, so only same-round ratios compare).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from bench.measure import HEADERS, ROOT, Unavailable, children_of, request_body, run_async, run_wrk
from bench.report import write_section
from bench.targets import CHAT_PATH, NGINX_CONFIG, PEERS, Context, Launch, Service, free_port, launch_patchbay
from bench.transport_candidates import CANDIDATES, DESCRIPTIONS, library_versions, make_transport, unavailable_reason
from bench.upstream import DONE_EVENT, SSE_HEADERS, STREAM_EVENTS, make_app
from patchbay.net.transport import Headers, Transport, TransportError, UpstreamRequest
from tests.support.raw_server import OK, RawServer, answer_first_request_only, port_that_never_connects

__all__ = [
    "SCENARIOS", "TLS_ROWS", "FaultOutcome", "Options", "RawServer", "Results", "Sample", "conclusion",
    "fault_matrix", "gateway_transports", "main", "miss_notes", "parse_args", "read_all", "render", "run",
    "serve_upstream", "tls_front",
]

log = logging.getLogger("bench.transports")

STREAM_PATH = "/bench/stream"
STATS_PATH = "/bench/stats"
EVENT = STREAM_EVENTS[0]  # one small chat.completion.chunk SSE event (about 150 bytes)
MEASURE_TIMEOUT = 300.0  # seconds any one measurement may take
CONNECT, FIRST_BYTE, IDLE = 1.0, 10.0, 10.0  # limits for the measured (healthy) requests
ENV_VAR = "PATCHBAY_UPSTREAM_TRANSPORT"
SECTION = "upstream-transports"


# --- the upstream: bench/upstream.py plus one streaming route ------------------------------------


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``POST /bench/stream?events=N&gap_us=G``: N copies of one SSE event, each written on its own
    (G µs apart when G > 0, so that each arrives alone), then ``data: [DONE]``."""
    await request.read()
    events = min(int(request.query.get("events", "2000")), 100_000)
    gap = min(float(request.query.get("gap_us", "0")), 100_000.0) / 1e6
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    for _ in range(events):
        await response.write(EVENT)
        if gap:
            await asyncio.sleep(gap)
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


class ConnectionCount:
    """Counts the connections and requests the upstream served, for ``GET /bench/stats``: shows
    whether a client kept its connections alive (a POST per fresh connection shows here)."""

    def __init__(self) -> None:
        self.seen: weakref.WeakSet[Any] = weakref.WeakSet()
        self.connections = self.requests = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != STATS_PATH:
            self.requests += 1
            if request.transport is not None and request.transport not in self.seen:
                self.seen.add(request.transport)
                self.connections += 1
        response: web.StreamResponse = await handler(request)
        return response

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"connections": self.connections, "requests": self.requests})


def serve_upstream(port: int) -> None:
    """Run bench/upstream.py's app with the streaming and stats routes on 127.0.0.1 (uvloop), until killed."""
    import uvloop

    app = make_app()
    count = ConnectionCount()
    app.middlewares.append(count.middleware)
    app.router.add_post(STREAM_PATH, stream_events)
    app.router.add_get(STATS_PATH, count.stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop(),
                handler_cancellation=True)


# --- driving one transport ----------------------------------------------------------------------


async def read_all(transport: Transport, request: UpstreamRequest, *, connect: float = CONNECT,
                   first_byte: float = FIRST_BYTE, idle: float = IDLE,
                   seen: Callable[[Headers], None] | None = None) -> tuple[int, int, int]:
    """Send ``request`` and read its body as HTTPSession does (a timer only when nothing is at hand):
    (status, body bytes, reads that returned data). ``seen`` is shown the response headers."""
    response = await transport.send(request, connect_timeout=connect, first_byte_timeout=first_byte)
    if seen is not None:
        seen(response.headers)
    size = reads = 0
    try:
        while True:
            chunk = response.buffered_chunk()
            if chunk is None:
                async with asyncio.timeout(idle):
                    chunk = await response.read_chunk()
            if not chunk:
                return response.status, size, reads
            size += len(chunk)
            reads += 1
    finally:
        response.release()


@contextlib.asynccontextmanager
async def opened(name: str) -> Any:
    transport = make_transport(name)
    try:
        yield transport
    finally:
        async with asyncio.timeout(10):
            await transport.close()


@dataclass
class Sample:
    """One measurement of one candidate in one round."""

    rate: float = 0.0  # requests (or events) per second of wall time
    cpu: float = 0.0  # CPU seconds per 1,000 requests, or µs per event
    reads: float = 0.0  # reads that returned data per stream
    errors: int = 0
    connections: float = 0.0  # connections opened per 1,000 requests
    protocol: str = ""  # the HTTP version the server saw (the TLS rows)
    p50: float = 0.0  # ms (the gateway rows)
    p99: float = 0.0


async def _requests(transport: Transport, request: UpstreamRequest, count: int, concurrency: int,
                    expected_size: int, seen: Callable[[Headers], None] | None = None) -> int:
    """``count`` requests over ``concurrency`` tasks; the number that failed or answered wrongly."""
    left = count
    errors = 0

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            try:
                status, size, _ = await read_all(transport, request, seen=seen)
            except (TransportError, TimeoutError):
                errors += 1
                continue
            if status != 200 or size != expected_size:
                errors += 1

    async with asyncio.timeout(MEASURE_TIMEOUT):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def throughput(name: str, base: str, requests: int, concurrency: int, expected_size: int) -> Sample:
    """Requests/s and CPU s per 1,000 requests of this process, after a warm-up on the same connections."""
    request = UpstreamRequest("POST", URL(base + CHAT_PATH), HEADERS, request_body())
    port = URL(base).port
    assert port is not None
    async with opened(name) as transport:
        await _requests(transport, request, max(concurrency * 4, requests // 10), concurrency, expected_size)
        before = upstream_stats(port)["connections"]
        cpu, wall = time.process_time(), time.perf_counter()
        errors = await _requests(transport, request, requests, concurrency, expected_size)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        connections = upstream_stats(port)["connections"] - before
    return Sample(rate=requests / wall, cpu=cpu / requests * 1000, errors=errors,
                  connections=connections / requests * 1000)


async def tls_throughput(name: str, base: str, requests: int, concurrency: int, expected_size: int,
                         impersonate: str | None) -> Sample:
    """As :func:`throughput`, over TLS to the nginx front: the HTTP version and the client
    connections come from the front's ``X-Proto`` and ``X-Conn`` response headers."""
    request = UpstreamRequest("POST", URL(base + CHAT_PATH), HEADERS, request_body(), verify_ssl=False,
                              impersonate=impersonate)
    protocols: collections.Counter[str] = collections.Counter()
    connections: set[str] = set()

    def seen(headers: Headers) -> None:
        protocols[headers.get("x-proto", "?")] += 1
        connections.add(headers.get("x-conn", "?"))

    async with opened(name) as transport:
        await _requests(transport, request, max(concurrency * 2, requests // 10), concurrency, expected_size)
        cpu, wall = time.process_time(), time.perf_counter()
        errors = await _requests(transport, request, requests, concurrency, expected_size, seen)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    protocol = protocols.most_common(1)[0][0] if protocols else "?"
    return Sample(rate=requests / wall, cpu=cpu / requests * 1000, errors=errors,
                  connections=len(connections) / requests * 1000, protocol=protocol)


async def streaming(name: str, base: str, events: int, gap_us: float, streams: int) -> Sample:
    """CPU µs per SSE event read, over ``streams`` sequential streamed answers (after one warm-up)."""
    url = URL(base + STREAM_PATH).with_query(events=events, gap_us=f"{gap_us:g}")
    request = UpstreamRequest("POST", url, HEADERS, request_body())
    expected = events * len(EVENT) + len(DONE_EVENT)
    errors = 0
    reads: list[int] = []
    async with opened(name) as transport, asyncio.timeout(MEASURE_TIMEOUT):
        await read_all(transport, request)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(streams):
            try:
                status, size, count = await read_all(transport, request)
            except (TransportError, TimeoutError):
                errors += 1
                continue
            reads.append(count)
            errors += status != 200 or size != expected
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    total = events * streams
    return Sample(rate=total / wall, cpu=cpu / total * 1e6, reads=statistics.mean(reads) if reads else 0.0,
                  errors=errors)


# --- through patchbay serve -------------------------------------------------------------------------


def gateway_transports() -> list[str]:
    """The transports ``patchbay serve`` can be told to use: pool and curl once patchbay reads
    PATCHBAY_UPSTREAM_TRANSPORT, else only its default (the pool)."""
    package = ROOT / "patchbay"
    for path in package.rglob("*.py"):
        with contextlib.suppress(OSError):
            if ENV_VAR in path.read_text(encoding="utf-8"):
                return ["pool", "curl"]
    return ["pool"]


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    total, pending, seen = 0.0, [pid], set[int]()
    ticks = os.sysconf("SC_CLK_TCK")
    while pending and len(seen) < 1000:
        current = pending.pop()
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        pending.extend(child for child in children_of(current) if child not in seen)
    return total


def upstream_stats(port: int) -> dict[str, int]:
    """The upstream's connection and request counts so far (``GET /bench/stats``)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    with opener.open(f"http://127.0.0.1:{port}{STATS_PATH}", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def gateway_round(ctx: Context, transport: str, env_known: bool, duration: float) -> Sample:
    """Start patchbay serve with ``transport``, warm it up, one wrk run: req/s, latency, server CPU
    and upstream connections per 1,000 requests."""
    launch = launch_patchbay(ctx)
    if env_known:
        launch.env = {**(launch.env or {}), ENV_VAR: transport}
    with Service(f"patchbay-{transport}", launch, ctx.logs) as service:
        run_wrk(launch.url, 50, 1)
        cpu, before = _tree_cpu(service.pid), upstream_stats(ctx.upstream_port)
        result = run_wrk(launch.url, 50, duration)
        cpu, after = _tree_cpu(service.pid) - cpu, upstream_stats(ctx.upstream_port)
    per_1000 = 1000 / max(result.requests, 1)
    return Sample(rate=result.requests_per_second, cpu=cpu * per_1000, errors=result.errors,
                  connections=(after["connections"] - before["connections"]) * per_1000,
                  p50=result.p50, p99=result.p99)


# --- TLS, HTTP/2 and browser impersonation, through an nginx front ---------------------------------

#: (row, candidate, browser profile) measured over TLS: every candidate as it is, and the three
#: that can impersonate a browser doing so.
TLS_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("pool", "pool", None), ("aiohttp", "aiohttp", None), ("curl", "curl", None), ("curl, chrome", "curl", "chrome"),
    ("curl-session", "curl-session", None), ("curl-session, chrome", "curl-session", "chrome"),
    ("rnet", "rnet", None), ("rnet, chrome", "rnet", "chrome"), ("pyreqwest", "pyreqwest", None),
)
_LISTEN = "        listen 127.0.0.1:{port};\n"
_TLS_LISTEN = ("        listen 127.0.0.1:{tls_port} ssl http2;\n        ssl_certificate {cert};\n"
               "        ssl_certificate_key {key};\n        add_header X-Proto $server_protocol always;\n"
               "        add_header X-Conn $connection always;\n")


def tls_front(scratch: Path, upstream_port: int) -> tuple[Launch, int]:
    """bench.targets' nginx (one worker, kept-alive connections to the fake upstream) with a TLS
    listener offering HTTP/2 and HTTP/1.1 (ALPN) and a self-signed certificate, beside its plain
    one (which the readiness probe uses). The launch and the TLS port."""
    if not shutil.which("nginx") or not shutil.which("openssl"):
        raise Unavailable("nginx and openssl are needed (apt-get install nginx openssl)")
    if _LISTEN not in NGINX_CONFIG:
        raise Unavailable("bench.targets.NGINX_CONFIG changed shape; update bench.transports.tls_front")
    tmp = scratch / "nginx-tls"
    tmp.mkdir(exist_ok=True)
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    plain, tls = free_port(), free_port()
    template = NGINX_CONFIG.replace(_LISTEN, _LISTEN + _TLS_LISTEN).replace(
        "    access_log off;\n", "    access_log off;\n    keepalive_requests 1000000;\n")
    config = tmp / "nginx.conf"
    config.write_text(template.format(tmp=tmp, upstream=upstream_port, port=plain, tls_port=tls, cert=cert, key=key),
                      encoding="utf-8")
    return Launch(["nginx", "-c", str(config), "-p", str(tmp), "-e", str(tmp / "error.log")], plain), tls


async def _tls_round(results: Results, rows: list[tuple[str, str, str | None]], base: str, opts: Options,
                     expected_size: int) -> None:
    for label, name, impersonate in rows:
        for concurrency in opts.concurrency:
            sample = await tls_throughput(name, base, opts.tls_requests, concurrency, expected_size, impersonate)
            results.add(f"tls-c{concurrency}", label, sample)
            log.info("  %-20s c=%-3d %8.0f req/s  %.3f CPU s/1000  %s  %.1f conn/1000  errors %d", label,
                     concurrency, sample.rate, sample.cpu, sample.protocol, sample.connections, sample.errors)


def _tls(results: Results, names: list[str], opts: Options, ctx: Context) -> None:
    rows = [row for row in TLS_ROWS if row[1] in names]
    try:
        launch, tls_port = tls_front(ctx.scratch, ctx.upstream_port)
        with Service("nginx-tls", launch, ctx.logs):
            base = f"https://127.0.0.1:{tls_port}"
            for index in range(opts.rounds):
                log.info("round %d of %d: over TLS", index + 1, opts.rounds)
                order = rows[index % len(rows):] + rows[:index % len(rows)]
                run_async(functools.partial(_tls_round, results, order, base, opts, results.expected_size))
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        results.tls_note = f"not measured: {exc}"


# --- the fault matrix -------------------------------------------------------------------------------

WAIT = 3.0  # seconds the raw server (and the client) wait for anything in a fault scenario
F_CONNECT, F_FIRST_BYTE, F_IDLE = 1.0, 0.3, 0.3  # the limits in the fault scenarios (rnet's connect: whole s)


async def _reached(server: RawServer, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
    """Whether ``predicate`` came true within ``timeout`` (the server's own bound by default)."""
    try:
        await server.wait_until(predicate, timeout)
    except TimeoutError:
        return False
    return True


class IdleTimeout(Exception):
    """The runner's own idle limit between body chunks ran out (as HTTPSession's would)."""


@dataclass
class FaultOutcome:
    """What one candidate made of one scenario."""

    outcome: str  # "ok", a transport exception class, "idle timeout", or "unmapped <type>"
    cause: str = ""  # the library's own exception type, when the adapter translated one
    sent: int | None = None  # how often the server received the request in question
    seconds: float = 0.0
    note: str = ""
    correct: bool = False
    show_sent: bool = True  # say "received N times" in the cell

    @property
    def cell(self) -> str:
        mark = "✓" if self.correct else "✗"
        text = f"{mark} {self.outcome}"
        if self.sent is not None and self.show_sent:
            text += f", received {times(self.sent)}"
        if self.note:
            text += f", {self.note}"
        if self.cause:
            text += f" ({self.cause})"
        return text


def times(count: int) -> str:
    """"once", "twice", "3 times"."""
    return {0: "never", 1: "once", 2: "twice"}.get(count, f"{count} times")


def _classify(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "ok", ""
    if isinstance(exc, IdleTimeout):
        return "idle timeout", ""
    cause = exc.__cause__
    cause_name = f"{type(cause).__module__.split('.')[0]}.{type(cause).__name__}" if cause is not None else ""
    if isinstance(exc, TransportError):
        return type(exc).__name__, "" if cause_name.startswith(("patchbay", "builtins", "asyncio")) else cause_name
    return f"unmapped {type(exc).__module__.split('.')[0]}.{type(exc).__name__}", ""


async def _attempt(transport: Transport, method: str, url: str, *, body: bytes | None = b"{}",
                   stop_after: int | None = None) -> tuple[BaseException | None, int]:
    """One request with the fault limits, read as HTTPSession reads (idle limit between chunks);
    ``stop_after``: release after that many chunks (an abandoning client). (exception, chunks)."""
    chunks = 0
    try:
        async with asyncio.timeout(WAIT * 2):
            response = await transport.send(UpstreamRequest(method, URL(url), {"Content-Type": "application/json"},
                                                            body if method != "GET" else None),
                                            connect_timeout=F_CONNECT, first_byte_timeout=F_FIRST_BYTE)
            try:
                while True:
                    if stop_after is not None and chunks >= stop_after:
                        return None, chunks
                    chunk = response.buffered_chunk()
                    if chunk is None:
                        try:
                            async with asyncio.timeout(F_IDLE):
                                chunk = await response.read_chunk()
                        except TimeoutError:
                            raise IdleTimeout from None
                    if not chunk:
                        return None, chunks
                    chunks += 1
            finally:
                response.release()
    except (Exception, TimeoutError) as exc:  # what the candidate raised is the measurement
        return exc, chunks


Handler = Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _one_shot(name: str, handler: Handler, *, method: str = "GET",
                    count_sent: bool = False) -> FaultOutcome:
    async with RawServer(handler, wait=WAIT) as server, opened(name) as transport:
        started = time.perf_counter()
        exc, _ = await _attempt(transport, method, server.url)
        seconds = time.perf_counter() - started
        await asyncio.sleep(0)
    outcome, cause = _classify(exc)
    return FaultOutcome(outcome, cause, server.requests if count_sent else None, seconds)


async def truncated_chunked(name: str) -> FaultOutcome:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")  # no last chunk
    return await _one_shot(name, handler)


async def truncated_sized(name: str) -> FaultOutcome:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    return await _one_shot(name, handler)


async def malformed_status(name: str) -> FaultOutcome:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 TWO-HUNDRED OK\r\nContent-Length: 0\r\n\r\n")
        await server.wait_for_hangup(reader)
    return await _one_shot(name, handler)


async def refused(name: str) -> FaultOutcome:
    port = free_port()  # nothing listens there (the OS just handed it out and it was closed)
    async with opened(name) as transport:
        started = time.perf_counter()
        exc, _ = await _attempt(transport, "GET", f"http://127.0.0.1:{port}/")
        seconds = time.perf_counter() - started
    return FaultOutcome(*_classify(exc), seconds=seconds)


async def connect_timeout(name: str) -> FaultOutcome:
    with port_that_never_connects() as port:
        async with opened(name) as transport:
            started = time.perf_counter()
            exc, _ = await _attempt(transport, "GET", f"http://127.0.0.1:{port}/")
            seconds = time.perf_counter() - started
    return FaultOutcome(*_classify(exc), seconds=seconds, note=f"after {seconds:.1f} s")


async def first_byte_timeout(name: str) -> FaultOutcome:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await server.wait_for_hangup(reader)
    result = await _one_shot(name, handler, method="POST", count_sent=True)
    result.note = f"after {result.seconds:.1f} s"
    return result


async def idle_gap(name: str) -> FaultOutcome:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await server.wait_for_hangup(reader)
    return await _one_shot(name, handler)


async def _warm_then(name: str, then: str, method: str) -> FaultOutcome:
    """A GET answered (the connection is warm), then ``method`` on it: the server drops or holds it."""
    async with RawServer(answer_first_request_only(then), wait=WAIT) as server, opened(name) as transport:
        warm, _ = await _attempt(transport, "GET", server.url)
        if warm is not None:
            return FaultOutcome(f"warm-up failed: {_classify(warm)[0]}")
        started = time.perf_counter()
        exc, _ = await _attempt(transport, method, server.url)
        seconds = time.perf_counter() - started
        if then == "hold":
            await _reached(server, lambda: server.hangups >= 1, timeout=1.0)
        # Anything the candidate sends again comes within a moment: give it that moment.
        await _reached(server, lambda: server.requests > 2, timeout=0.5)
    outcome, cause = _classify(exc)
    note = f"after {seconds:.1f} s" if then == "hold" else ""
    return FaultOutcome(outcome, cause, server.requests - 1, seconds, note)


async def warm_late_post(name: str) -> FaultOutcome:
    return await _warm_then(name, "hold", "POST")


async def warm_late_get(name: str) -> FaultOutcome:
    return await _warm_then(name, "hold", "GET")


async def warm_post_dropped(name: str) -> FaultOutcome:
    return await _warm_then(name, "drop", "POST")


async def idle_closed(name: str) -> FaultOutcome:
    """The server closes each kept-alive connection after answering; three POSTs in a row."""
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader) is None:
            return
        writer.write(OK)
        await writer.drain()
        writer.close()
        server.event.set()

    ok = 0
    async with RawServer(handler, wait=WAIT) as server, opened(name) as transport:
        started = time.perf_counter()
        for _ in range(3):
            server.event.clear()
            exc, _ = await _attempt(transport, "POST", server.url)
            ok += exc is None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    await server.event.wait()
        seconds = time.perf_counter() - started
    outcome = "ok" if ok == 3 else f"{3 - ok} of 3 failed"
    return FaultOutcome(outcome, sent=server.requests, seconds=seconds, show_sent=False,
                        note=f"{server.requests} received for 3 requests")


async def abandoned(name: str) -> FaultOutcome:
    """The client reads one chunk of a stream and lets go: does the server see the connection close?"""
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await server.wait_for_hangup(reader)

    async with RawServer(handler, wait=WAIT) as server, opened(name) as transport:
        started = time.perf_counter()
        exc, _ = await _attempt(transport, "GET", server.url, stop_after=1)
        closed = await _reached(server, lambda: server.hangups >= 1)
        seconds = time.perf_counter() - started
    if exc is not None:
        return FaultOutcome(*_classify(exc), seconds=seconds)
    outcome = "server saw the close" if closed else f"still open after {WAIT:g} s"
    return FaultOutcome(outcome, seconds=seconds, note=f"after {seconds * 1000:.0f} ms" if closed else "")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    run: Callable[[str], Awaitable[FaultOutcome]]
    expected: str  # the correct outcome, as the table says it
    check: Callable[[FaultOutcome], bool]


def _is(outcome: str, sent: int | None = None) -> Callable[[FaultOutcome], bool]:
    return lambda result: result.outcome == outcome and (sent is None or result.sent == sent)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("truncated-chunked", "truncated chunked body (no last chunk, then close)", truncated_chunked,
             "IncompleteResponse", _is("IncompleteResponse")),
    Scenario("truncated-sized", "truncated sized body (10 of 100 bytes, then close)", truncated_sized,
             "IncompleteResponse", _is("IncompleteResponse")),
    Scenario("malformed-status", "malformed status line", malformed_status,
             "MalformedResponse", _is("MalformedResponse")),
    Scenario("refused", "connection refused", refused, "ConnectError", _is("ConnectError")),
    Scenario("connect-timeout", f"connect timeout (listen backlog full; limit {F_CONNECT:g} s)", connect_timeout,
             "ConnectTimeoutError", lambda r: r.outcome == "ConnectTimeoutError" and r.seconds < F_CONNECT + 0.5),
    Scenario("first-byte-timeout", f"first-byte timeout (POST never answered; limit {F_FIRST_BYTE:g} s)",
             first_byte_timeout, "FirstByteTimeoutError, received once", _is("FirstByteTimeoutError", 1)),
    Scenario("idle-gap", f"idle gap mid-body (one chunk, then silence; idle limit {F_IDLE:g} s)", idle_gap,
             "idle timeout", _is("idle timeout")),
    Scenario("warm-late-post", "warm connection, POST answered late (past the first-byte limit)", warm_late_post,
             "FirstByteTimeoutError, received once", _is("FirstByteTimeoutError", 1)),
    Scenario("warm-late-get", "warm connection, GET answered late (past the first-byte limit)", warm_late_get,
             "FirstByteTimeoutError, received once", _is("FirstByteTimeoutError", 1)),
    Scenario("warm-post-dropped", "warm connection dropped by the server after reading a POST", warm_post_dropped,
             "IncompleteResponse, received once (never re-sent)", _is("IncompleteResponse", 1)),
    Scenario("idle-closed", "server closed the idle connection before the next request (3 POSTs)", idle_closed,
             "ok, 3 received for 3 requests", _is("ok", 3)),
    Scenario("abandoned", "abandoned stream (client stops reading after one chunk)", abandoned,
             "server saw the close", _is("server saw the close")),
)


async def fault_matrix(names: list[str], only: list[str] | None = None) -> dict[str, dict[str, FaultOutcome]]:
    """Every scenario (or the ``only`` keys) against every named candidate: {scenario: {candidate: outcome}}."""
    matrix: dict[str, dict[str, FaultOutcome]] = {}
    for scenario in SCENARIOS:
        if only and scenario.key not in only:
            continue
        row = matrix[scenario.key] = {}
        for name in names:
            try:
                async with asyncio.timeout(WAIT * 4):
                    result = await scenario.run(name)
            except TimeoutError:
                result = FaultOutcome("the scenario hung")
            result.correct = scenario.check(result)
            row[name] = result
            log.info("  fault %-20s %-13s %s", scenario.key, name, result.cell)
    return matrix


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Options:
    """How much to measure (from the command line)."""

    rounds: int = 5
    requests: int = 3000
    concurrency: tuple[int, ...] = (1, 50)
    events: int = 2000
    paced_events: int = 500
    gap_us: float = 1000.0
    streams: int = 3
    gateway_duration: float = 5.0
    tls_requests: int = 1000
    candidates: tuple[str, ...] = tuple(CANDIDATES)
    gateway: bool = True
    faults: bool = True
    tls: bool = True


@dataclass
class Results:
    """Everything one run measured: per metric, candidate -> one Sample per round."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    gateway: dict[str, list[Sample]] = field(default_factory=dict)
    gateway_note: str = ""
    tls_note: str = ""
    expected_size: int = 0
    faults: dict[str, dict[str, FaultOutcome]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    load: float = 0.0
    seconds: float = 0.0

    def add(self, metric: str, name: str, sample: Sample) -> None:
        self.samples.setdefault(metric, {}).setdefault(name, []).append(sample)


def _metrics(opts: Options) -> list[tuple[str, str]]:
    """(key, label) of every client-side metric, in table order."""
    rows = [(f"c{c}", f"{c} concurrent task{'s' if c > 1 else ''}") for c in opts.concurrency]
    return [*rows, ("burst", f"{opts.events} events, back to back"),
            ("paced", f"{opts.paced_events} events, {opts.gap_us:g} µs apart")]


async def _client_round(results: Results, names: list[str], base: str, opts: Options, expected_size: int) -> None:
    for name in names:
        for concurrency in opts.concurrency:
            sample = await throughput(name, base, opts.requests, concurrency, expected_size)
            results.add(f"c{concurrency}", name, sample)
            log.info("  %-13s c=%-3d %8.0f req/s  %.3f CPU s/1000  errors %d", name, concurrency, sample.rate,
                     sample.cpu, sample.errors)
        for metric, events, gap in (("burst", opts.events, 0.0), ("paced", opts.paced_events, opts.gap_us)):
            sample = await streaming(name, base, events, gap, opts.streams)
            results.add(metric, name, sample)
            log.info("  %-13s %-5s %6.2f CPU µs/event  %.0f reads/stream  errors %d", name, metric, sample.cpu,
                     sample.reads, sample.errors)


def _expected_size(base: str) -> int:
    """The fake upstream's non-streaming answer size, to check every measured answer against."""
    async def once() -> int:
        async with opened("pool") as transport:
            status, size, _ = await read_all(transport, UpstreamRequest("POST", URL(base + CHAT_PATH), HEADERS,
                                                                        request_body()))
        if status != 200:
            raise Unavailable(f"the fake upstream answered {status}")
        return size
    result: int = run_async(once)
    return result


def run(opts: Options) -> Results:
    """Measure everything ``opts`` asks for (see the module docstring)."""
    started = time.perf_counter()
    results = Results(versions=library_versions(), load=os.getloadavg()[0])
    names = []
    for name in opts.candidates:
        reason = unavailable_reason(name)
        if reason:
            results.unavailable[name] = reason
        else:
            names.append(name)
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        upstream = Launch([sys.executable, "-m", "bench.transports", "--serve-upstream", str(port)], port)
        with Service("upstream", upstream, scratch):
            base = f"http://127.0.0.1:{port}"
            expected = results.expected_size = _expected_size(base)
            for index in range(opts.rounds):
                log.info("round %d of %d: client side", index + 1, opts.rounds)
                order = names[index % len(names):] + names[:index % len(names)]  # who goes first rotates
                run_async(functools.partial(_client_round, results, order, base, opts, expected))
            ctx = Context(port, scratch, PEERS, scratch)
            if opts.tls:
                _tls(results, names, opts, ctx)
            if opts.gateway:
                _gateway(results, opts, ctx)
        if opts.faults:
            log.info("fault matrix")
            results.faults = run_async(lambda: fault_matrix(names))
    results.seconds = time.perf_counter() - started
    return results


def _gateway(results: Results, opts: Options, ctx: Context) -> None:
    if not shutil.which("wrk"):
        results.gateway_note = "not measured: wrk is not installed (apt-get install wrk)"
        return
    transports = gateway_transports()
    env_known = transports != ["pool"]
    if not env_known:
        results.gateway_note = (f"only the pool: patchbay does not read {ENV_VAR} yet, so `patchbay serve` "
                                "cannot be told to forward with curl")
    for index in range(opts.rounds):
        for transport in transports[index % len(transports):] + transports[:index % len(transports)]:
            log.info("round %d of %d: patchbay serve with %s", index + 1, opts.rounds, transport)
            try:
                sample = gateway_round(ctx, transport, env_known, opts.gateway_duration)
            except Unavailable as exc:
                results.gateway_note = f"not measured: {exc}"
                return
            results.gateway.setdefault(transport, []).append(sample)
            log.info("  patchbay serve (%s): %.0f req/s, %.3f server CPU s/1000, errors %d", transport,
                     sample.rate, sample.cpu, sample.errors)


# --- the report -------------------------------------------------------------------------------------


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples) if samples else float("nan")


def _ratio(by_name: dict[str, list[Sample]], name: str, attr: str) -> float:
    """The median over rounds of (candidate / pool) for ``attr``, from the same rounds."""
    pool, mine = by_name.get("pool", []), by_name.get(name, [])
    ratios = [getattr(m, attr) / getattr(p, attr) for p, m in zip(pool, mine, strict=False) if getattr(p, attr)]
    return statistics.median(ratios) if ratios else float("nan")


def _errors(samples: list[Sample]) -> int:
    return sum(s.errors for s in samples)


def render(results: Results, opts: Options, command: str) -> str:
    """The "Upstream transports" section of docs/benchmarks.md."""
    names = [n for n in opts.candidates if n not in results.unavailable]
    versions = results.versions
    lines = ["## Upstream transports: the hand-written pool against the libraries", "",
             f"Command: `{command}` (from the repository root). "
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{results.seconds / 60:.1f} minutes. Machine: {os.cpu_count()} cores, "
             f"{platform.system()} {platform.release()}; load average {results.load:.2f} at the start (the machine is "
             f"shared: compare the ratios, each the median over {opts.rounds} rounds of the same-round ratio to the "
             "pool, more than the absolute numbers).", "",
             "Candidates, each behind patchbay's transport interface (`patchbay/net/transport.py`; the adapters are "
             "in `bench/transport_candidates.py`) and driven by the same code, on uvloop:", ""]
    lines += [f"- `{name}`: {DESCRIPTIONS[name]}" for name in opts.candidates]
    for name, reason in results.unavailable.items():
        lines.append(f"- `{name}` was not measured: {reason}")
    lines += ["", "Versions: Python " + platform.python_version() + "; "
              + "; ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]

    lines += ["### Client side: one process against the fake upstream", "",
              f"Non-streaming `POST /v1/chat/completions` (`bench/wrk/post.lua`'s body) to the fake upstream "
              f"(`bench/upstream.py` in its own process, one worker), {opts.requests} requests per measurement after a "
              "warm-up on the same kept-alive connections; every answer checked (status and size). CPU is this "
              "process's (`time.process_time()`: all threads, so rnet's tokio threads count).", "",
              "| candidate | " + " | ".join(f"req/s, {c} task{'s' if c > 1 else ''}" for c in opts.concurrency)
              + " | " + " | ".join(f"CPU s per 1,000, {c}" for c in opts.concurrency)
              + " | upstream connections per 1,000 | errors |",
              "|---|" + "---:|" * (2 * len(opts.concurrency)) + "---:|---:|"]
    for name in names:
        cells = []
        for attr in ("rate", "cpu"):
            for c in opts.concurrency:
                by_name = results.samples.get(f"c{c}", {})
                value = _median(by_name.get(name, []), attr)
                text = f"{value:,.0f}" if attr == "rate" else f"{value:.3f}"
                if name != "pool":
                    text += f" ({_ratio(by_name, name, attr):.2f}x)"
                cells.append(text)
        errors = sum(_errors(results.samples.get(f"c{c}", {}).get(name, [])) for c in opts.concurrency)
        connections = max(_median(results.samples.get(f"c{c}", {}).get(name, []), "connections")
                          for c in opts.concurrency)
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {connections:,.1f} | {errors} |")

    lines += _tls_table(results, opts)
    lines += ["", "### Per-chunk streaming cost", "",
              f"One streamed answer of small SSE events (`{len(EVENT)}`-byte `chat.completion.chunk` events, each "
              "written on its own by the upstream: `POST /bench/stream`, served by `bench/transports.py` next to "
              f"bench/upstream.py's routes), {opts.streams} sequential streams per measurement after one warm-up; "
              "CPU of the client process per event; reads = reads that returned data per stream (below the event "
              "count where the client found several events at once). Burst: written back to back; paced: "
              f"{opts.gap_us:g} µs apart, so each arrives alone, as tokens from a model do.", "",
              f"| candidate | burst: CPU µs per event | burst: reads per {opts.events} | paced: CPU µs per event | "
              f"paced: reads per {opts.paced_events} | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        cells = []
        for metric in ("burst", "paced"):
            by_name = results.samples.get(metric, {})
            cpu = f"{_median(by_name.get(name, []), 'cpu'):.2f}"
            if name != "pool":
                cpu += f" ({_ratio(by_name, name, 'cpu'):.2f}x)"
            cells += [cpu, f"{_median(by_name.get(name, []), 'reads'):,.0f}"]
        errors = sum(_errors(results.samples.get(m, {}).get(name, [])) for m in ("burst", "paced"))
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {errors} |")

    lines += ["", "### Forwarding through `patchbay serve`", "",
              f"`patchbay serve` (one worker) routing `fake` to the fake upstream, loaded with "
              f"`wrk -t1 -c50 -d{opts.gateway_duration:g}s -s bench/wrk/post.lua` after a 1 s warm-up, started anew "
              f"for each of {opts.rounds} rounds; server CPU = user + system seconds of its process tree per 1,000 "
              "requests. aiohttp, rnet and curl_cffi's AsyncSession cannot be put under the gateway without an "
              "adapter inside patchbay, so they have no row here (the client-side tables measure them).", ""]
    if results.gateway_note:
        lines += [f"Note: {results.gateway_note}.", ""]
    if results.gateway:
        lines += ["| transport under the gateway | req/s | p50 | p99 | server CPU s per 1,000 | "
                  "upstream connections per 1,000 | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, samples in results.gateway.items():
            rate, cpu = f"{_median(samples, 'rate'):,.0f}", f"{_median(samples, 'cpu'):.3f}"
            if name != "pool":
                rate += f" ({_ratio(results.gateway, name, 'rate'):.2f}x)"
                cpu += f" ({_ratio(results.gateway, name, 'cpu'):.2f}x)"
            lines.append(f"| `{name}` | {rate} | {_median(samples, 'p50'):.2f} ms | {_median(samples, 'p99'):.2f} ms "
                         f"| {cpu} | {_median(samples, 'connections'):,.1f} | {_errors(samples)} |")

    if results.faults:
        lines += ["", "### Fault matrix", "",
                  "Each scenario against a fresh instance of each candidate, served by a raw asyncio TCP server on "
                  "127.0.0.1 that counts the requests it read (\"received once\": how often the request in question "
                  f"reached it). Limits: connect {F_CONNECT:g} s, first byte {F_FIRST_BYTE:g} s, idle gap "
                  f"{F_IDLE:g} s (the runner's own, as HTTPSession's). The adapters' first-byte timer runs from the "
                  "call for the connect plus the first-byte limit (the libraries do not say when the request went "
                  "out), hence their later first-byte timeouts. The correct outcome is in its own column, and ✓ "
                  "marks each candidate that had it; the library's own exception, where an adapter translated one, "
                  "is in parentheses.", "",
                  "| scenario | correct | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for scenario in SCENARIOS:
            row = results.faults.get(scenario.key)
            if row is None:
                continue
            lines.append(f"| {scenario.label} | {scenario.expected} | "
                         + " | ".join(row[n].cell if n in row else "" for n in names) + " |")
        correct = {n: sum(row[n].correct for row in results.faults.values() if n in row) for n in names}
        lines.append("| **correct** | | " + " | ".join(f"**{correct[n]} of {len(results.faults)}**" for n in names)
                     + " |")
        notes = miss_notes(results, names)
        if notes:
            lines += ["", "What each ✗ means:", "", *notes]
    lines += ["", "### Conclusion", "", conclusion(results, opts)]
    return "\n".join(lines)


def _miss_note(results: Results, key: str, name: str) -> str:
    """One sentence on what a wrong outcome means for a caller."""
    result = results.faults[key][name]
    raised = f"{result.outcome}" + (f" ({result.cause})" if result.cause else "")
    refused = results.faults.get("refused", {}).get(name)
    if key == "warm-post-dropped" and result.sent == 1:
        return (f"reported as {raised} although the server had read the POST: a caller that takes a connect "
                "failure to mean nothing was sent, and tries again, sends it twice")
    if key == "warm-post-dropped":
        return (f"the POST reached the server {times(result.sent or 0)}: the candidate sent it again on a new "
                "connection after the kept-alive one broke, which may bill a chat request twice")
    if key == "idle-closed":
        return (f"{result.outcome}: it wrote a request on a kept-alive connection the server had already closed, "
                "and that request failed although the server never saw it")
    if key == "abandoned":
        return ("the connection stayed open after the client let go of the stream: the upstream is never told, "
                "and goes on generating an answer nobody reads")
    if key == "connect-timeout":
        same = (refused is not None and refused.cause == result.cause and result.cause != "")
        return (f"a connect timeout is reported as {raised}" + (", the class it raises for a refused connection "
                "too, so no adapter can tell them apart by type (patchbay would say ConnectionFailed, not "
                "ConnectTimeout)" if same else ""))
    if key == "malformed-status":
        dropped = results.faults.get("warm-post-dropped", {}).get(name)
        same = dropped is not None and dropped.cause == result.cause and result.cause != ""
        return (f"a malformed status line is reported as {raised}" + (", the class it raises for a dropped "
                "connection too, so no adapter can tell them apart by type (patchbay would say ConnectionFailed, "
                "not ProtocolError)" if same else ""))
    return result.cell.removeprefix("✗ ")


def miss_notes(results: Results, names: list[str]) -> list[str]:
    """A bullet per candidate that got some fault scenarios wrong: what each wrong outcome means."""
    notes = []
    for name in names:
        misses = _misses(results, name)
        if misses:
            notes.append(f"- `{name}`: " + "; ".join(f"`{key}`: {_miss_note(results, key, name)}" for key in misses)
                         + ".")
    return notes


CLEAR_WIN = 1.25  # a library needing this many times the pool's CPU per request, or more, loses clearly


def _misses(results: Results, name: str) -> list[str]:
    return [key for key, row in results.faults.items() if name in row and not row[name].correct]


def _fault_summary(results: Results, name: str) -> str:
    misses = _misses(results, name)
    total = sum(name in row for row in results.faults.values())
    if not misses:
        return f"{total} of {total} right"
    return f"{total - len(misses)} of {total} right (wrong: {', '.join(f'`{key}`' for key in misses)})"


def _tls_table(results: Results, opts: Options) -> list[str]:
    lines = ["", "### Over TLS: HTTP/2 and browser impersonation", "",
             "The same requests over TLS (a self-signed certificate, not verified) to nginx in front of the fake "
             "upstream (`bench/targets.py`'s nginx, one worker, kept-alive connections to the upstream, plus a TLS "
             "listener offering HTTP/2 and HTTP/1.1), "
             f"{opts.tls_requests} requests per measurement. \"chrome\": the candidate impersonating Chrome "
             "(curl_cffi's and rnet's newest Chrome profile: its TLS hello, HTTP/2 settings and headers). The "
             "protocol is what nginx saw (`$server_protocol`), the client connections per 1,000 requests count its "
             f"distinct `$connection` serial numbers (with {max(opts.concurrency)} tasks).", ""]
    if results.tls_note:
        return [*lines, f"Note: {results.tls_note}."]
    keys = [f"tls-c{c}" for c in opts.concurrency]
    if not any(results.samples.get(key) for key in keys):
        return []
    lines += ["| candidate | protocol | "
              + " | ".join(f"req/s, {c} task{'s' if c > 1 else ''}" for c in opts.concurrency) + " | "
              + " | ".join(f"CPU s per 1,000, {c}" for c in opts.concurrency)
              + " | client connections per 1,000 | errors |",
              "|---|---|" + "---:|" * (2 * len(opts.concurrency)) + "---:|---:|"]
    loaded = results.samples.get(keys[-1], {})
    for label, _, _ in TLS_ROWS:
        if label not in loaded:
            continue
        cells = []
        for attr in ("rate", "cpu"):
            for key in keys:
                by_label = results.samples.get(key, {})
                value = _median(by_label.get(label, []), attr)
                text = f"{value:,.0f}" if attr == "rate" else f"{value:.3f}"
                if label != "pool":
                    text += f" ({_ratio(by_label, label, attr):.2f}x)"
                cells.append(text)
        protocol = loaded[label][-1].protocol
        errors = sum(_errors(results.samples.get(key, {}).get(label, [])) for key in keys)
        lines.append(f"| `{label}` | {protocol} | " + " | ".join(cells)
                     + f" | {_median(loaded[label], 'connections'):,.1f} | {errors} |")
    return lines


def conclusion(results: Results, opts: Options) -> str:
    """The decision the numbers support, stated with them: the pool stays for direct requests only
    if every library needs clearly more CPU per request (CLEAR_WIN) and none is faster, with a
    clean fault matrix; proxies and impersonation go to the libcurl candidate with fewer faults."""
    measured = {name for by_name in results.samples.values() for name in by_name}
    libraries = [n for n in ("aiohttp", "rnet", "pyreqwest", "curl-session") if n in measured]
    loaded = f"c{max(opts.concurrency)}"
    by_load = results.samples.get(loaded, {})
    paced = results.samples.get("paced", {})
    parts = []
    if libraries and by_load and "pool" in by_load:
        cheapest = min(libraries, key=lambda n: _ratio(by_load, n, "cpu"))
        fastest = max(libraries, key=lambda n: _ratio(by_load, n, "rate"))
        cpu_ratio, rate_ratio = _ratio(by_load, cheapest, "cpu"), _ratio(by_load, fastest, "rate")
        chunk_best = min(libraries, key=lambda n: _ratio(paced, n, "cpu")) if paced else cheapest
        clean = not results.faults or not _misses(results, "pool")
        wins = cpu_ratio >= CLEAR_WIN and rate_ratio <= 1.0 and clean
        text = (f"**Direct requests: {'keep the pool' if wins else 'use a library'}.** With "
                f"{max(opts.concurrency)} tasks the pool needs {_median(by_load['pool'], 'cpu'):.3f} CPU s per "
                f"1,000 requests; the cheapest library, `{cheapest}`, needs {cpu_ratio:.2f}x that, and the "
                f"fastest, `{fastest}`, reaches {rate_ratio:.2f}x the pool's {_median(by_load['pool'], 'rate'):,.0f} "
                "requests/s.")
        if paced:
            text += (f" A streamed chunk that arrives alone costs the pool {_median(paced['pool'], 'cpu'):.1f} µs of "
                     f"CPU; the cheapest library there, `{chunk_best}`, {_ratio(paced, chunk_best, 'cpu'):.2f}x that"
                     + (f", and rnet {_ratio(paced, 'rnet', 'cpu'):.2f}x" if "rnet" in paced and chunk_best != "rnet"
                        else "") + ".")
            if _ratio(paced, chunk_best, "cpu") < CLEAR_WIN:
                text += " (Per chunk arriving alone, the pool's lead is small.)"
        tls = results.samples.get(f"tls-{loaded}", {})
        tls_libraries = [n for n in libraries if n in tls]
        if "pool" in tls and tls_libraries:
            tls_best = min(tls_libraries, key=lambda n: _ratio(tls, n, "cpu"))
            tls_fastest = max(tls_libraries, key=lambda n: _ratio(tls, n, "rate"))
            text += (f" Over TLS the cheapest library, `{tls_best}`, needs {_ratio(tls, tls_best, 'cpu'):.2f}x the "
                     f"pool's CPU per request ({_median(tls['pool'], 'cpu'):.3f} s per 1,000), and the fastest, "
                     f"`{tls_fastest}`, reaches {_ratio(tls, tls_fastest, 'rate'):.2f}x its requests/s.")
        gateway = results.gateway
        if "pool" in gateway and "curl" in gateway:
            text += (f" Through `patchbay serve` the pool forwards {_median(gateway['pool'], 'rate'):,.0f} req/s, "
                     f"{1 / _ratio(gateway, 'curl', 'rate'):.2f}x libcurl's, and libcurl needs "
                     f"{_ratio(gateway, 'curl', 'cpu'):.2f}x the pool's server CPU per request.")
        if "pool" in gateway:
            extra = _median(by_load[cheapest], "cpu") - _median(by_load["pool"], "cpu")
            whole = _median(gateway["pool"], "cpu")
            text += (f" In the gateway, where a forwarded request costs {whole:.3f} CPU s per 1,000 in all, "
                     f"`{cheapest}`'s extra {extra:.3f} s would be {extra / whole:.0%} more CPU per request.")
        if results.faults:
            text += (f" Fault matrix: the pool {_fault_summary(results, 'pool')}; "
                     + "; ".join(f"`{n}` {_fault_summary(results, n)}" for n in libraries) + ".")
        text += (" The hand-written pool wins clearly, so it stays for direct requests." if wins else
                 " The pool does not win clearly by this benchmark's rule (a library at "
                 f"{CLEAR_WIN:g}x its CPU per request or better, or faster, or a pool fault): switch direct "
                 "requests to the library.")
        parts.append(text)
    if "curl" in measured and results.faults:
        others = [n for n in ("curl-session", "rnet") if n in measured]
        text = (f"**Proxies and browser impersonation: libcurl through patchbay's `curl` transport.** It got "
                f"{_fault_summary(results, 'curl')}; "
                + "; ".join(f"`{n}` {_fault_summary(results, n)}" for n in others) + ".")
        tls = results.samples.get(f"tls-c{max(opts.concurrency)}", {})
        mine, theirs = "curl, chrome", [label for label in ("curl-session, chrome", "rnet, chrome") if label in tls]
        if mine in tls and theirs:
            cpu = _median(tls[mine], "cpu")
            text += (f" The price of never sending a POST twice: over TLS, impersonating Chrome with "
                     f"{max(opts.concurrency)} tasks, `curl` needs {cpu:.3f} CPU s per 1,000 requests, "
                     + ", ".join(f"{cpu / _median(tls[label], 'cpu'):.2f}x `{label.split(',')[0]}`'s"
                                 for label in theirs)
                     + f", because it opens a connection with its own TLS handshake for every POST "
                     f"({_median(tls[mine], 'connections'):,.0f} per 1,000 requests, where the others multiplex "
                     "one HTTP/2 connection); on a real network that is also a TCP and a TLS round trip more per "
                     "chat request.")
        elif "curl-session" in by_load:
            session_cpu = _ratio(by_load, "curl-session", "cpu") / _ratio(by_load, "curl", "cpu")
            text += (f" curl_cffi's AsyncSession, on the same libcurl, needs {session_cpu:.2f}x the CPU per request "
                     f"of patchbay's `curl` transport with {max(opts.concurrency)} tasks; `curl` opens a fresh "
                     f"connection for each POST ({_median(by_load['curl'], 'connections'):,.0f} per 1,000 requests).")
        if "rnet" in measured:
            text += (" rnet can use proxies and impersonate browsers too, but its fingerprints are not the ones "
                     "tests/replicas/test_tls_hello.py checks against published browser JA4s (curl_cffi's are)")
            if paced and "rnet" in paced:
                text += f", and a chunk arriving alone costs it {_ratio(paced, 'rnet', 'cpu'):.2f}x the pool's CPU"
                if "curl" in paced:
                    text += f" (`curl`: {_ratio(paced, 'curl', 'cpu'):.2f}x)"
            text += "."
        parts.append(text)
    return "\n\n".join(parts)


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds of every measurement (median)")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="requests per throughput measurement")
    parser.add_argument("--concurrency", default=",".join(map(str, defaults.concurrency)),
                        help="comma-separated concurrent task counts (default 1,50)")
    parser.add_argument("--events", type=int, default=defaults.events, help="SSE events of a burst stream")
    parser.add_argument("--paced-events", type=int, default=defaults.paced_events, help="SSE events of a paced stream")
    parser.add_argument("--gap-us", type=float, default=defaults.gap_us, help="µs between paced events")
    parser.add_argument("--streams", type=int, default=defaults.streams, help="streams per streaming measurement")
    parser.add_argument("--gateway-duration", type=float, default=defaults.gateway_duration,
                        help="seconds of wrk through patchbay serve per round")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CANDIDATES)} (must include "
                                                   "pool, the baseline); implies --no-write")
    parser.add_argument("--tls-requests", type=int, default=defaults.tls_requests,
                        help="requests per measurement over TLS")
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS / HTTP/2 / impersonation measurement")
    parser.add_argument("--no-gateway", action="store_true", help="skip the patchbay serve measurement")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault matrix")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    candidates = tuple(n.strip() for n in args.only.split(",") if n.strip()) or tuple(CANDIDATES)
    unknown = set(candidates) - set(CANDIDATES)
    if unknown or "pool" not in candidates:
        parser.error(f"--only takes names among {','.join(CANDIDATES)} and must include pool")
    try:
        concurrency = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        parser.error("--concurrency takes comma-separated integers")
    if min(args.rounds, args.requests, args.tls_requests, args.events, args.paced_events, args.streams,
           *concurrency) < 1 \
            or args.gap_us < 0 or args.gateway_duration <= 0:
        parser.error("counts must be positive")
    opts = Options(args.rounds, args.requests, concurrency, args.events, args.paced_events, args.gap_us,
                   args.streams, args.gateway_duration, args.tls_requests, candidates, not args.no_gateway,
                   not args.no_faults, not args.no_tls)
    return opts, args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    opts, args = parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    results = run(opts)
    text = render(results, opts, shlex.join(["python", "-m", "bench.transports", *argv]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=1, default=str), encoding="utf-8")
    if args.no_write or args.only:
        log.info("not writing docs/ (--no-write or --only)")
    else:
        write_section(SECTION, text)
        log.info("wrote the %s section of docs/benchmarks.md", SECTION)


if __name__ == "__main__":
    main()
