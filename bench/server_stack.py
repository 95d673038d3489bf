"""How patchbay's server stack was chosen: each candidate measured in one run, speed and attacks.

    python -m bench.server_stack [--duration 5]

1. The ASGI server. Every candidate serves the same app, one worker
   (:func:`bench.stack_apps.static`: parse the body, answer a fixed JSON): uvicorn with httptools
   as shipped, uvicorn with httptools and its own limit options, uvicorn with h11, uvicorn with
   patchbay's :class:`~patchbay.server.protocol.LimitedHttpProtocol` (:mod:`bench.stack_limited`),
   granian and hypercorn (each with its limit options at patchbay's defaults). A candidate that is
   not installed gets a "not installed" row. For each: wrk throughput, then the attack matrix of
   issue 15 with raw sockets on 127.0.0.1 (:data:`ATTACKS`), while a probe client sends one plain
   request every 0.5 s during (a)-(c) and reports its worst latency.
2. The upstream client, with an app that forwards to the fixed fake upstream: one shared aiohttp
   ClientSession against patchbay's keep-alive pool (:mod:`patchbay.net.pool`).
3. JSON and validation of a chat request body, in-process: ``json.loads`` alone, pydantic's
   ``model_validate_json`` of an equivalent model, and msgspec decoding into
   :class:`patchbay.chat.response.ChatCompletionRequest` (parsing and checking in one step).

Throughput is wrk's (50 connections), so the numbers are comparable only within one run.
Writes the "server-stack" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import re
import resource
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import Unavailable, WrkResult, children_of, run_wrk
from bench.report import write_section
from bench.stack_apps import STREAM_PARTS
from bench.targets import Launch, Service, free_port

__all__ = [
    "ATTACKS", "BODY", "Candidate", "CANDIDATES", "Exchange", "Outcome", "ProbeStats", "StackRow",
    "chosen", "classify_head", "classify_host", "classify_http10", "classify_idle", "classify_slow",
    "classify_stall", "parse_response", "report",
]

log = logging.getLogger("bench.server_stack")

BODY = b'{"model":"fake","messages":[{"role":"user","content":"Say hello"}],"temperature":0.5}'
CHAT_PATH = "/v1/chat/completions"

# The attack matrix's sizes and bounds (issue 15's, scaled to one run of a few minutes).
HEAD_BYTES = 1 << 20  # (a) one request head of 1 MiB, in many headers
HEAD_RSS_BOUND_MB = 5.0  # (a) what the server may grow by while it rejects it
SLOW_CONNECTIONS = 200  # (b) connections that send one header byte per second
SLOW_SECONDS = 12.0  # (b) when they are counted
STALL_SECONDS = 35.0  # (c) how long a body that stopped after 8 of 1000 bytes may stay open
IDLE_CONNECTIONS = 1100  # (f) idle connections against patchbay's cap of 1,000
IDLE_SETTLE = 1.5  # (f) seconds given to the server to refuse the extra ones
PROBE_INTERVAL = 0.5  # the probe client: one request every 0.5 s during (a)-(c) ...
PROBE_MAX = 60  # ... at most this many
REQUEST_TIMEOUT = 5.0  # any single exchange (probe, (d), (e)); beyond: unanswered
CONNECT_TIMEOUT = 5.0

ATTACKS: tuple[tuple[str, str], ...] = (
    ("head", "(a) 1 MiB head"),
    ("slow", f"(b) {SLOW_CONNECTIONS} slow heads at {SLOW_SECONDS:g} s"),
    ("stall", f"(c) body stalls, {STALL_SECONDS:g} s"),
    ("host", "(d) no Host"),
    ("http10", "(e) HTTP/1.0 stream"),
    ("idle", f"(f) {IDLE_CONNECTIONS:,} idle"),
)


# --- outcomes and their classification (pure) ------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One attack against one candidate: passed or not, and what was observed."""

    passed: bool
    text: str

    def cell(self) -> str:
        return f"pass: {self.text}" if self.passed else f"**fail**: {self.text}"


@dataclass(frozen=True)
class Exchange:
    """What one raw request got back: status (None: no answer), headers (lower-case), body, time."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed: float = 0.0  # seconds
    closed: bool = False  # the server closed the connection (EOF or reset) within the bound


def parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Status, headers (lower-case names, last value wins) and body of raw response bytes;
    (None, {}, b"") when they hold no complete status line and head."""
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/\d\.\d (\d{3})", head)
    if not sep or not match:
        return None, {}, b""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(match.group(1)), headers, body


def _status(status: int | None) -> str:
    return str(status) if status is not None else "closed, no answer"


def classify_head(status: int | None, growth_mb: float) -> Outcome:
    """(a) Pass: rejected (a 4xx, or closed without an answer) and RSS grew by at most a few MB."""
    rejected = status is None or 400 <= status < 500
    passed = rejected and growth_mb <= HEAD_RSS_BOUND_MB
    return Outcome(passed, f"{_status(status)}, RSS {growth_mb:+.1f} MB")


def classify_slow(opened: int, still_open: int, first_close: float | None) -> Outcome:
    """(b) Pass: every slow connection was closed by the server before the count."""
    if opened == 0:
        return Outcome(False, "no connection opened")
    if still_open == 0:
        first = f", first at {first_close:.1f} s" if first_close is not None else ""
        return Outcome(True, f"closed {opened}/{opened}{first}")
    return Outcome(False, f"held {still_open}/{opened}")


def classify_stall(closed_after: float | None, status: int | None) -> Outcome:
    """(c) Pass: the connection whose body stopped was closed within the bound."""
    if closed_after is None:
        return Outcome(False, f"open after {STALL_SECONDS:g} s")
    answer = f" ({status})" if status is not None else ""
    return Outcome(True, f"closed at {closed_after:.1f} s{answer}")


def classify_host(status: int | None) -> Outcome:
    """(d) Pass: an HTTP/1.1 request without Host is answered 400."""
    return Outcome(status == 400, _status(status))


def classify_http10(status: int | None, headers: dict[str, str], body: bytes) -> Outcome:
    """(e) Pass: an HTTP/1.0 client gets the streamed parts as they are, never chunked."""
    if status is None:
        return Outcome(False, "no answer")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    framing = "chunked" if chunked else ("content-length" if "content-length" in headers else "close-delimited")
    intact = body == b"".join(STREAM_PARTS)
    passed = status == 200 and not chunked and intact
    return Outcome(passed, f"{status}, {framing}" + ("" if intact or chunked else ", body differs"))


def classify_idle(opened: int, refused: int, probe: Exchange) -> Outcome:
    """(f) Pass: there is a cap (extra connections or the probe answered 503) and the probe gets
    an answer; without a cap the text says whether the probe was still answered."""
    answer = (f"probe {probe.status} in {probe.elapsed * 1000:.0f} ms" if probe.status is not None
              else f"probe unanswered in {REQUEST_TIMEOUT:g} s")
    capped = refused > 0 or probe.status == 503
    if capped:
        return Outcome(probe.status is not None, f"cap: {refused} of {opened:,} refused; {answer}")
    return Outcome(False, f"no cap: {opened:,} held; {answer}")


@dataclass
class ProbeStats:
    """The probe client's requests during (a)-(c): latencies (s) of answered ones, failures."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies) + self.failures

    def cell(self) -> str:
        if not self.count:
            return "-"
        worst = f"{max(self.latencies) * 1000:,.0f} ms" if self.latencies else "-"
        failed = f", **{self.failures} of {self.count} unanswered**" if self.failures else f" ({self.count} probes)"
        return worst + failed


# --- candidates ------------------------------------------------------------------------------------


def _uvicorn(app: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"bench.stack_apps:{app}", "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--no-access-log", "--log-level", "warning", *extra]


# uvicorn's own limit options at patchbay's defaults (ServerSettings): the connection cap and keep-alive.
UVICORN_LIMITS = ("--limit-concurrency", "1000", "--timeout-keep-alive", "5")
GRANIAN_LIMITS = ("--http1-buffer-size", "65536", "--http1-header-read-timeout", "10000", "--backpressure", "1000")
HYPERCORN_CONFIG = ("h11_max_incomplete_size = 65536\nkeep_alive_timeout = 5.0\nread_timeout = 30\n"
                    'loglevel = "WARNING"\n')


@dataclass(frozen=True)
class Candidate:
    """One server stack: the distributions it needs, how to start it on a port, its limit options."""

    label: str
    distributions: tuple[str, ...]
    command: Callable[[int, Path], list[str]]
    options: str


def _hypercorn(port: int, scratch: Path) -> list[str]:
    config = scratch / "hypercorn.toml"
    config.write_text(HYPERCORN_CONFIG, encoding="utf-8")
    return [sys.executable, "-m", "hypercorn", "-k", "uvloop", "-w", "1", "-b", f"127.0.0.1:{port}",
            "-c", str(config), "bench.stack_apps:static"]


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("uvicorn + httptools (stock)", ("uvicorn", "httptools"),
              lambda port, _: _uvicorn("static", port, "--http", "httptools"), "none"),
    Candidate("uvicorn + httptools, uvicorn's options", ("uvicorn", "httptools"),
              lambda port, _: _uvicorn("static", port, "--http", "httptools", *UVICORN_LIMITS),
              " ".join(UVICORN_LIMITS)),
    Candidate("uvicorn + h11", ("uvicorn", "h11"),
              lambda port, _: _uvicorn("static", port, "--http", "h11", "--h11-max-incomplete-event-size", "65536",
                                       *UVICORN_LIMITS),
              "--h11-max-incomplete-event-size 65536 " + " ".join(UVICORN_LIMITS)),
    Candidate("uvicorn + LimitedHttpProtocol (patchbay)", ("uvicorn", "httptools"),
              lambda port, _: [sys.executable, "-m", "bench.stack_limited", "--port", str(port)],
              "`ServerSettings()` defaults: 64 KiB head, 100 headers, 8 KiB URL, head 10 s, body gap 30 s, "
              "keep-alive 5 s, 1,000 connections"),
    Candidate("granian", ("granian",),
              lambda port, _: [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-ws", "--http", "1",
                               *GRANIAN_LIMITS, "bench.stack_apps:static"],
              "--http 1 " + " ".join(GRANIAN_LIMITS)),
    Candidate("hypercorn", ("hypercorn",), _hypercorn,
              "-k uvloop; config " + ", ".join(HYPERCORN_CONFIG.strip().splitlines()[:3])),
)


def installed_version(distribution: str) -> str:
    """The installed version of a distribution (its module has the same name), '' if it is missing."""
    if importlib.util.find_spec(distribution) is None:
        return ""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


@dataclass
class StackRow:
    """Everything measured for one candidate (or why it could not be)."""

    candidate: Candidate
    version: str = ""
    unavailable: str = ""
    runs: list[WrkResult] = field(default_factory=list)  # wrk runs, one per round
    attacks: dict[str, Outcome] = field(default_factory=dict)
    probe: ProbeStats = field(default_factory=ProbeStats)

    @property
    def wrk(self) -> WrkResult | None:
        """The best of the wrk rounds (the one least disturbed by the machine's other load)."""
        return max(self.runs, key=lambda run: run.requests_per_second, default=None)

    @property
    def passed_all(self) -> bool:
        return not self.unavailable and len(self.attacks) == len(ATTACKS) and all(
            outcome.passed for outcome in self.attacks.values())


# --- raw-socket clients (127.0.0.1 only, every wait bounded) ------------------------------------


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(port: int) -> Stream | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), CONNECT_TIMEOUT)
    except (OSError, TimeoutError):
        return None


def _close(stream: Stream | None) -> None:
    if stream is not None:
        stream[1].transport.abort()


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float, limit: int = 1 << 16) -> tuple[bytes, bool]:
    """What arrives until EOF (at most ``limit`` bytes kept), and whether EOF or a reset came in time."""
    parts: list[bytes] = []
    kept = 0
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return b"".join(parts), False
        except OSError:
            return b"".join(parts), True
        if not chunk:
            return b"".join(parts), True
        if kept < limit:
            parts.append(chunk[: limit - kept])
            kept += len(parts[-1])
    return b"".join(parts), False


async def exchange(port: int, data: bytes, timeout: float = REQUEST_TIMEOUT) -> Exchange:
    """Send raw bytes on a new connection and read the answer until the server closes it."""
    started = time.monotonic()
    stream = await _connect(port)
    if stream is None:
        return Exchange(None, elapsed=time.monotonic() - started)
    reader, writer = stream
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), timeout)
        raw, closed = await _read_until_closed(reader, max(0.1, timeout - (time.monotonic() - started)))
    except (OSError, TimeoutError):
        raw, closed = b"", True
    finally:
        _close(stream)
    status, headers, body = parse_response(raw)
    return Exchange(status, headers, body, time.monotonic() - started, closed)


def chat_request(*, host: bool = True, extra: bytes = b"") -> bytes:
    """The bench's chat request as raw HTTP/1.1 bytes, closing the connection after the answer."""
    return b"".join([
        b"POST %s HTTP/1.1\r\n" % CHAT_PATH.encode(),
        b"Host: 127.0.0.1\r\n" if host else b"",
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % len(BODY),
        extra, b"\r\n", BODY,
    ])


async def probe_client(port: int, stop: asyncio.Event, stats: ProbeStats) -> None:
    """One plain request every PROBE_INTERVAL until ``stop`` (at most PROBE_MAX of them)."""
    started = time.monotonic()
    for index in range(PROBE_MAX):
        if stop.is_set():
            return
        answer = await exchange(port, chat_request())
        if answer.status == 200:
            stats.latencies.append(answer.elapsed)
        else:
            stats.failures += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, started + (index + 1) * PROBE_INTERVAL - time.monotonic()))


def _rss_mb(pids: list[int]) -> float:
    """The summed VmRSS of these processes, in MB (1e6 bytes)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            total += int(match.group(1)) if match else 0
    return total * 1024 / 1e6


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (bounded walk)."""
    found: list[int] = []
    pending = [pid]
    while pending and len(found) < 100:
        current = pending.pop()
        found.append(current)
        pending.extend(children_of(current))
    return found


async def attack_head(port: int, pids: list[int]) -> Outcome:
    """(a) One request whose head is 1 MiB of small headers; RSS sampled while it is sent and after."""
    line = b"X-Pad-%05d: " + b"a" * 80 + b"\r\n"
    head = [chat_request(extra=b"").split(b"\r\n\r\n", 1)[0] + b"\r\n"]
    size, index = len(head[0]), 0
    while size < HEAD_BYTES:
        head.append(line % index)
        size += len(head[-1])
        index += 1
    data = b"".join(head) + b"\r\n" + BODY
    before = _rss_mb(pids)
    peak = before
    stream = await _connect(port)
    if stream is None:
        return Outcome(False, "could not connect")
    reader, writer = stream
    raw = b""
    try:
        for start in range(0, len(data), 64 * 1024):
            writer.write(data[start:start + 64 * 1024])
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
            peak = max(peak, _rss_mb(pids))
        reading = asyncio.ensure_future(_read_until_closed(reader, REQUEST_TIMEOUT))
        while not reading.done():
            peak = max(peak, _rss_mb(pids))
            await asyncio.wait([reading], timeout=0.05)
        raw, _ = reading.result()
    except (OSError, TimeoutError):
        with contextlib.suppress(OSError, TimeoutError):
            raw, _ = await _read_until_closed(reader, 1.0)
    finally:
        _close(stream)
    await asyncio.sleep(0.5)  # let the server drop what it held; the reading below is what stays
    peak = max(peak, _rss_mb(pids))
    return classify_head(parse_response(raw)[0], peak - before)


async def attack_slow(port: int) -> Outcome:
    """(b) SLOW_CONNECTIONS connections send a request line and Host, then one header byte a second;
    after SLOW_SECONDS, how many does the server still hold?"""
    opened = [s for s in await asyncio.gather(*(_connect(port) for _ in range(SLOW_CONNECTIONS))) if s is not None]
    started = time.monotonic()
    closed_at: dict[int, float] = {}

    async def watch(index: int, reader: asyncio.StreamReader) -> None:
        _, closed = await _read_until_closed(reader, SLOW_SECONDS + 1)
        if closed:
            closed_at[index] = time.monotonic() - started

    watchers = [asyncio.ensure_future(watch(i, reader)) for i, (reader, _) in enumerate(opened)]
    trickle = b"X-Slow-Header: " + b"a" * 64
    try:
        for _, writer in opened:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for second in range(int(SLOW_SECONDS)):
            await asyncio.sleep(max(0.0, started + second + 1 - time.monotonic()))  # pacing, one byte a second
            for index, (_, writer) in enumerate(opened):
                if index not in closed_at and not writer.is_closing():
                    with contextlib.suppress(OSError):
                        writer.write(trickle[second:second + 1])
        await asyncio.sleep(max(0.0, started + SLOW_SECONDS - time.monotonic()))
        still_open = sum(1 for index in range(len(opened)) if index not in closed_at)
    finally:
        for stream in opened:
            _close(stream)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return classify_slow(len(opened), still_open, min(closed_at.values()) if closed_at else None)


async def attack_stall(port: int) -> Outcome:
    """(c) ``Content-Length: 1000`` and 8 bytes of it, then silence: closed within STALL_SECONDS?"""
    stream = await _connect(port)
    if stream is None:
        return Outcome(False, "could not connect")
    reader, writer = stream
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\"" % CHAT_PATH.encode())
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        started = time.monotonic()
        raw, closed = await _read_until_closed(reader, STALL_SECONDS)
        elapsed = time.monotonic() - started
    except (OSError, TimeoutError):
        return Outcome(False, "could not send")
    finally:
        _close(stream)
    return classify_stall(elapsed if closed else None, parse_response(raw)[0])


async def attack_idle(port: int) -> Outcome:
    """(f) IDLE_CONNECTIONS connections that send nothing; then a probe request on a new one."""
    opened: list[Stream] = []
    for _ in range(0, IDLE_CONNECTIONS, 100):  # in batches, so a short accept backlog is not the test
        batch = await asyncio.gather(*(_connect(port) for _ in range(min(100, IDLE_CONNECTIONS - len(opened)))))
        opened += [s for s in batch if s is not None]
    refused: set[int] = set()

    async def watch(index: int, reader: asyncio.StreamReader) -> None:
        _, closed = await _read_until_closed(reader, IDLE_SETTLE + REQUEST_TIMEOUT, limit=256)
        if closed:
            refused.add(index)

    watchers = [asyncio.ensure_future(watch(i, reader)) for i, (reader, _) in enumerate(opened)]
    try:
        await asyncio.sleep(IDLE_SETTLE)  # the server's chance to refuse the extra connections
        early = len(refused)
        probe = await exchange(port, chat_request())
    finally:
        for stream in opened:
            _close(stream)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return classify_idle(len(opened), early, probe)


async def attack_matrix(port: int, pid: int) -> tuple[dict[str, Outcome], ProbeStats]:
    """All attacks against one running candidate: (c) from the start, the probe during (a)-(b)."""
    pids = process_tree(pid)
    stats = ProbeStats()
    stop = asyncio.Event()
    stall = asyncio.ensure_future(attack_stall(port))
    probing = asyncio.ensure_future(probe_client(port, stop, stats))
    outcomes = {"head": await attack_head(port, pids)}
    log.info("  (a) %s", outcomes["head"].cell())
    outcomes["slow"] = await attack_slow(port)
    log.info("  (b) %s", outcomes["slow"].cell())
    stop.set()
    await probing
    answer = await exchange(port, chat_request(host=False))
    outcomes["host"] = classify_host(answer.status)
    answer = await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")
    outcomes["http10"] = classify_http10(answer.status, answer.headers, answer.body)
    outcomes["idle"] = await attack_idle(port)
    log.info("  (d) %s (e) %s (f) %s", outcomes["host"].cell(), outcomes["http10"].cell(), outcomes["idle"].cell())
    outcomes["stall"] = await stall
    log.info("  (c) %s; probe %s", outcomes["stall"].cell(), stats.cell())
    return {key: outcomes[key] for key, _ in ATTACKS}, stats


# --- the runs --------------------------------------------------------------------------------------


def _raise_open_files(wanted: int) -> None:
    """Room for the attack's connections in this process (and the servers, which inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                        hard))


def measure_candidate(candidate: Candidate, duration: float, scratch: Path) -> StackRow:
    """Start one candidate, measure throughput, run the attack matrix, stop it."""
    versions = {name: installed_version(name) for name in candidate.distributions}
    row = StackRow(candidate, ", ".join(f"{name} {version}" for name, version in versions.items() if version))
    missing = [name for name, version in versions.items() if not version]
    if missing:
        row.unavailable = f"not installed (pip install {' '.join(missing)})"
        return row
    port = free_port()
    launch = Launch(candidate.command(port, scratch), port)
    try:
        with Service(re.sub(r"\W+", "-", candidate.label).strip("-"), launch, scratch) as service:
            run_wrk(launch.url, 50, 1)  # warm-up
            row.runs.append(run_wrk(launch.url, 50, duration))
            log.info("%s: %.0f req/s, p50 %.2f ms; attacks", candidate.label, row.runs[0].requests_per_second,
                     row.runs[0].p50)
            row.attacks, row.probe = asyncio.run(attack_matrix(port, service.pid))
    except Unavailable as error:
        row.unavailable = f"failed: {error}"
    return row


def remeasure_throughput(row: StackRow, duration: float, scratch: Path) -> None:
    """A second wrk round for a measured candidate (fresh process), so that the report's best-of-two
    is less at the mercy of what else the shared machine ran at the time of the first."""
    port = free_port()
    launch = Launch(row.candidate.command(port, scratch), port)
    try:
        with Service(re.sub(r"\W+", "-", row.candidate.label).strip("-") + "-2", launch, scratch):
            run_wrk(launch.url, 50, 1)  # warm-up
            row.runs.append(run_wrk(launch.url, 50, duration))
    except Unavailable as error:
        log.warning("%s: second round failed: %s", row.candidate.label, error)


def measure_forwarding(duration: float, scratch: Path) -> list[tuple[str, float, float]]:
    """(label, req/s, p50 ms) for the upstream alone and each forwarding app (uvicorn + httptools)."""
    results = []
    upstream_port = free_port()
    upstream = Launch([sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)], upstream_port)
    with Service("upstream", upstream, scratch):
        direct = run_wrk(upstream.url, 50, duration)
        results.append(("fake upstream, direct", direct.requests_per_second, direct.p50))
        env = {"STACK_UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
        for label, app in (("uvicorn + forward, aiohttp ClientSession", "forward_aiohttp"),
                           ("uvicorn + forward, patchbay ConnectionPool", "forward_pool")):
            port = free_port()
            launch = Launch(_uvicorn(app, port, "--http", "httptools"), port, env=env)
            with Service(app, launch, scratch):
                run_wrk(launch.url, 50, 1)  # warm-up
                result = run_wrk(launch.url, 50, duration)
            results.append((label, result.requests_per_second, result.p50))
    return results


def measure_json(rounds: int = 20_000) -> list[tuple[str, float]]:
    """(label, microseconds per body) for each way of reading a request body."""
    from patchbay.chat.request import decode_request

    rows = [("json.loads (no checks)", lambda: json.loads(BODY)),
            ("msgspec into ChatCompletionRequest (parse + validate)", lambda: decode_request(BODY))]
    try:
        from typing import Annotated, Literal

        import pydantic

        class Message(pydantic.BaseModel):
            role: Literal["system", "developer", "user", "assistant", "tool"]
            content: str | list[dict[str, object]] | None = None

        class Request(pydantic.BaseModel):
            model: str
            messages: list[Message]
            temperature: Annotated[float, pydantic.Field(ge=0, le=2)] | None = None

        rows.insert(1, (f"pydantic {pydantic.VERSION} model_validate_json (parse + validate)",
                        lambda: Request.model_validate_json(BODY)))
    except ImportError:
        pass
    return [(label, min(timeit.repeat(run, number=rounds, repeat=3)) / rounds * 1e6) for label, run in rows]


# --- the report (pure) -----------------------------------------------------------------------------

SHIPPED = "uvicorn + LimitedHttpProtocol (patchbay)"
STOCK = "uvicorn + httptools (stock)"


def _name(row: StackRow) -> str:
    return f"{row.candidate.label} ({row.version})" if row.version else row.candidate.label


def spread_of(row: StackRow) -> float:
    """How far apart a candidate's wrk rounds were: best over worst req/s, minus one (0 for one round)."""
    rates = [run.requests_per_second for run in row.runs]
    return max(rates) / min(rates) - 1 if len(rates) > 1 and min(rates) > 0 else 0.0


def chosen(rows: list[StackRow]) -> str:
    """The "Chosen:" sentences for the server, derived from the rows: which candidates pass every
    attack, the fastest of them, and how the shipped stack compares with it and with stock uvicorn."""
    measured = [row for row in rows if row.wrk is not None and not row.unavailable]
    if not measured:
        return "Chosen: nothing was measured in this run."
    passing = [row for row in measured if row.passed_all]
    by_label = {row.candidate.label: row for row in measured}
    shipped, stock = by_label.get(SHIPPED), by_label.get(STOCK)
    sentences = []
    if passing:
        names = ", ".join(_name(row) for row in passing)
        sentences.append(f"Only {names} passed all {len(ATTACKS)} attacks." if len(passing) < len(measured)
                         else f"Every candidate passed all {len(ATTACKS)} attacks.")
    else:
        sentences.append(f"No candidate passed all {len(ATTACKS)} attacks.")
    for row in measured:
        if row in passing:
            continue
        failed = [label.split(" ", 1)[0] for key, label in ATTACKS
                  if key not in row.attacks or not row.attacks[key].passed]
        sentences.append(f"{_name(row)} failed {' '.join(failed)}.")
    if shipped is not None and shipped.wrk is not None:
        if stock is not None and stock.wrk is not None:
            ratio = shipped.wrk.requests_per_second / stock.wrk.requests_per_second
            sentences.append(f"The limits cost the shipped stack {max(0.0, 1 - ratio):.0%} of stock uvicorn's "
                             f"throughput with this trivial app ({shipped.wrk.requests_per_second:,.0f} against "
                             f"{stock.wrk.requests_per_second:,.0f} req/s)" if ratio < 1 else
                             f"The shipped stack was as fast as stock uvicorn with this trivial app "
                             f"({shipped.wrk.requests_per_second:,.0f} against "
                             f"{stock.wrk.requests_per_second:,.0f} req/s)")
            sentences[-1] += "."
        spread = max((spread_of(row) for row in measured), default=0.0)
        if spread > 0:
            sentences.append(f"That figure is one run's on a shared 2-core machine: the two rounds of one "
                             f"candidate differed by up to {spread:.0%} here.")
        best = max(passing, key=lambda row: row.wrk.requests_per_second if row.wrk else 0.0, default=None)
        if shipped in passing and best is shipped:
            which = "the only stack" if len(passing) == 1 else "the fastest stack"
            sentences.append(f"So the numbers choose what patchbay ships: {SHIPPED}, {which} that holds every "
                             "limit.")
        elif shipped in passing and best is not None and best.wrk is not None:
            gap = best.wrk.requests_per_second / shipped.wrk.requests_per_second - 1
            sentences.append(f"{_name(best)} holds every limit too and was {gap:.0%} faster here; patchbay keeps "
                             f"{SHIPPED}" + (" because the gap is within the run-to-run spread of this trivial "
                                             "app (about 20%) and uvicorn keeps multi-worker support and one "
                                             "protocol to maintain." if gap <= 0.2 else
                                             ", which the numbers do not support: the faster stack should be "
                                             "considered."))
        else:
            sentences.append(f"The shipped {SHIPPED} did not hold every limit in this run: the numbers "
                             "contradict the choice.")
    return "Chosen: " + " ".join(sentences)


def report(rows: list[StackRow], forward_rows: list[tuple[str, float, float]], json_rows: list[tuple[str, float]],
           duration: float) -> str:
    """The "server-stack" section: candidates x (speed, attacks, probe), then the other choices."""
    header = ["server stack", "req/s", "p50", *(label for _, label in ATTACKS), "probe worst"]
    lines = [
        "## Server stack: how it was chosen", "",
        f"Command: `python -m bench.server_stack --duration {duration:g}`. Each candidate runs alone, one "
        f"worker, serving `bench.stack_apps:static`; wrk `-t1 -c50 -d{duration:g}s` (req/s and p50: the better of two "
        "rounds, each in a fresh process, the second in reverse order; the other round's req/s in brackets), "
        "then the attacks of issue "
        "15 with raw sockets on 127.0.0.1: (a) one request head of 1 MiB in about 11,000 headers of 95 bytes, rejected "
        f"(4xx or closed) with server RSS (VmRSS, whole process tree) growing at most {HEAD_RSS_BOUND_MB:g} MB; "
        f"(b) {SLOW_CONNECTIONS} connections sending a request line, then one header byte per second, all closed "
        f"by the server at {SLOW_SECONDS:g} s; (c) `Content-Length: 1000` with 8 bytes, then silence, closed "
        f"within {STALL_SECONDS:g} s (it runs alongside (a), (b) and the rest); (d) HTTP/1.1 without `Host` "
        "answered 400; (e) HTTP/1.0 `GET /stream` (a response without a length) not chunked; "
        f"(f) {IDLE_CONNECTIONS:,} idle connections against a cap of 1,000: extra connections or a probe "
        f"answered 503, never a hang. \"probe worst\": one plain request every {PROBE_INTERVAL:g} s during (a) "
        f"and (b), its slowest answer (a request counts as unanswered after {REQUEST_TIMEOUT:g} s).", "",
        "| " + " | ".join(header) + " |",
        "|---|---:|---:|" + "---|" * (len(ATTACKS) + 1),
    ]
    for row in rows:
        if row.unavailable or row.wrk is None:
            lines.append(f"| {_name(row)} | {row.unavailable or 'not measured'} |" + " |" * (len(header) - 2))
            continue
        cells = [row.attacks[key].cell() if key in row.attacks else "-" for key, _ in ATTACKS]
        others = ", ".join(f"{run.requests_per_second:,.0f}" for run in row.runs if run is not row.wrk)
        rate = f"{row.wrk.requests_per_second:,.0f}" + (f" ({others})" if others else "")
        lines.append(f"| {_name(row)} | {rate} | {row.wrk.p50:.2f} ms | "
                     + " | ".join(cells) + f" | {row.probe.cell()} |")
    lines += ["", "Options given to each candidate (patchbay's defaults where it has an equivalent):", ""]
    lines += [f"- {row.candidate.label}: {row.candidate.options}" for row in rows]
    lines += ["", chosen(rows), "",
              "| upstream client (uvicorn + httptools, in front of the fixed fake upstream) | req/s | p50 |",
              "|---|---:|---:|"]
    lines += [f"| {label} | {rate:,.0f} | {p50:.2f} ms |" for label, rate, p50 in forward_rows]
    lines += ["", "| reading a chat request body | µs per body |", "|---|---:|"]
    lines += [f"| {label} | {micros:.2f} |" for label, micros in json_rows]
    lines += ["", "For upstream requests, patchbay's own keep-alive pool: the aiohttp session caps a forwarding app "
              "below it. For bodies, msgspec: it parses and validates in one step faster than `json.loads` parses "
              "alone, and the JSON Schema of /openapi.json comes from the same type."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per candidate")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--only", action="append", default=[], help="measure only candidates whose label "
                        "contains this text (repeatable; for trying the bench out, not for the report)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _raise_open_files(IDLE_CONNECTIONS + SLOW_CONNECTIONS + 1024)
    started = time.monotonic()
    candidates = [c for c in CANDIDATES if not args.only or any(text in c.label for text in args.only)]
    with tempfile.TemporaryDirectory(prefix="patchbay-stack-") as scratch:
        rows = [measure_candidate(candidate, args.duration, Path(scratch)) for candidate in candidates]
        for row in reversed(rows):  # the second throughput round, in the opposite order
            if row.runs:
                remeasure_throughput(row, args.duration, Path(scratch))
        forward_rows = measure_forwarding(args.duration, Path(scratch))
    text = report(rows, forward_rows, measure_json(), args.duration)
    log.info("measured in %.0f s", time.monotonic() - started)
    print(text)
    if not args.no_write and not args.only:
        write_section("server-stack", text)


if __name__ == "__main__":
    main()
