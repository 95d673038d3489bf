"""How the gateway benchmark measures one running target: wrk, streaming first byte, peak RSS, import time.

Everything here is independent of which target is measured: it gets a URL and a process id. The
request itself is defined once, in bench/wrk/post.lua, so wrk and the Python client send the same bytes.
``measure_target`` runs the whole per-target sequence and returns a ``Result``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.upstream import TEXT

if TYPE_CHECKING:
    from bench.streamed import StreamedResult

__all__ = [
    "ROOT", "LUA", "API_KEY", "HEADERS", "STREAM_WARMUP", "Unavailable", "request_body", "stream_body",
    "children_of", "MemoryWatch", "WrkResult", "parse_wrk", "wrk_command", "run_wrk", "wrk_version", "first_line",
    "StreamResult", "percentile", "timed_stream", "stream_ttfb", "run_async",
    "ImportTime", "measure_import", "Options", "Result", "measure_target",
]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk" / "post.lua"
API_KEY = "sk-bench-local"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
STREAM_WARMUP = 10  # streaming requests before the timed ones


class Unavailable(Exception):
    """A target that cannot run here (not installed yet, failed to start); reported, not fatal."""


# --- the request -------------------------------------------------------------------------------


def request_body() -> bytes:
    """The one request body, read from bench/wrk/post.lua so wrk and the Python client agree."""
    match = re.search(r"^wrk\.body\s*=\s*'(.*)'\s*$", LUA.read_text(encoding="utf-8"), re.M)
    if not match:
        raise SystemExit(f"no wrk.body = '...' line in {LUA}")
    return match.group(1).encode()


def stream_body() -> bytes:
    """The same request with ``"stream": true``, for the time-to-first-byte client."""
    return json.dumps({**json.loads(request_body()), "stream": True}, separators=(",", ":")).encode()


# --- peak memory ---------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc/*/stat (no psutil needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _hwm_kib(pid: int) -> int | None:
    """The process's peak resident set size (VmHWM) in KiB, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else None


class MemoryWatch:
    """Peak RSS of a process and its descendants: VmHWM per process, sampled once a second, summed.

    Keeping each pid's highest value means children that exit before the end still count.
    """

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Walk the process tree once, raising each pid's recorded peak."""
        pending, seen = [self.pid], set[int]()
        while pending and len(seen) < 1000:
            pid = pending.pop()
            seen.add(pid)
            kib = _hwm_kib(pid)
            if kib is not None:
                self.peaks[pid] = max(kib, self.peaks.get(pid, 0))
                pending.extend(child for child in children_of(pid) if child not in seen)

    @property
    def peak_mib(self) -> float:
        return sum(self.peaks.values()) / 1024


# --- wrk -----------------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    """What one wrk run printed: throughput, latency percentiles (ms) and the errors it counted."""

    connections: int
    requests: int
    requests_per_second: float
    percentiles: dict[int, float]
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return self.percentiles[50]

    @property
    def p99(self) -> float:
        return self.percentiles[99]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(output: str, connections: int) -> WrkResult:
    """Parse ``wrk --latency`` output; raise ValueError if it has no throughput line."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if not rate or not total:
        raise ValueError(f"unexpected wrk output:\n{output}")
    percentiles = {int(p): float(value) * UNITS_MS[unit]
                   for p, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True)) \
        if sockets else {}
    return WrkResult(connections, int(total.group(1)), float(rate.group(1)), percentiles,
                     int(non_2xx.group(1)) if non_2xx else 0, socket_errors)


def wrk_command(url: str, connections: int, seconds: float) -> list[str]:
    """The wrk command line (one thread, the shared Lua request); also quoted in the report."""
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
            "-s", str(LUA.relative_to(ROOT)), url]


def run_wrk(url: str, connections: int, seconds: float) -> WrkResult:
    """Run wrk once (bounded by its duration plus a margin) and parse what it printed."""
    cmd = wrk_command(url, connections, seconds)
    log.info("  %s", shlex.join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise Unavailable(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout, connections)


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (stdout, else stderr); '' if it cannot run or prints nothing."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0] if (done.stdout or done.stderr) else ""


def wrk_version() -> str:
    """The installed wrk's version ('' if unknown), for the report."""
    match = re.match(r"wrk (\S+)", first_line(["wrk", "-v"]))
    return match.group(1) if match else ""


# --- streaming time to first byte ------------------------------------------------------------


@dataclass
class StreamResult:
    """Time to the first SSE ``data:`` line (ms) of each correct streamed answer, and the failures."""

    times: list[float]
    failures: int
    first_failure: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.times, 99)


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile (inclusive method); the value itself for one sample, NaN for none."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _delta_text(line: bytes) -> str:
    """The content delta carried by one SSE ``data:`` line ('' for [DONE], usage or non-JSON)."""
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return ""
    try:
        chunk = json.loads(payload)
        return "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or [])
    except (ValueError, AttributeError, TypeError):
        return ""


async def timed_stream(session: aiohttp.ClientSession, url: str) -> float:
    """One streaming request: ms from sending it to its first ``data:`` line; checks the whole answer."""
    started = time.perf_counter()
    first = 0.0
    text = []
    async with session.post(url, data=stream_body(), headers=HEADERS) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                first = first or time.perf_counter()
                text.append(_delta_text(line))
        if response.status != 200:
            raise ValueError(f"status {response.status}")
    if not first:
        raise ValueError("no SSE data line")
    if TEXT not in "".join(text):
        raise ValueError(f"streamed text {''.join(text)[:80]!r} lacks the upstream's answer")
    return (first - started) * 1000


async def stream_ttfb(url: str, count: int, timeout: float = 30.0) -> StreamResult:
    """``count`` sequential streaming requests on one keep-alive connection, after a short warm-up."""
    result = StreamResult([], 0)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for index in range(STREAM_WARMUP + count):
            try:
                elapsed = await timed_stream(session, url)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if index >= STREAM_WARMUP:
                    result.failures += 1
                    result.first_failure = result.first_failure or f"{type(exc).__name__}: {exc}"
                continue
            if index >= STREAM_WARMUP:
                result.times.append(elapsed)
    return result


def run_async(coroutine_factory: Callable[[], Any]) -> Any:
    """Run a coroutine on uvloop when importable (a lighter client), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine_factory())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine_factory())


# --- import time -----------------------------------------------------------------------------------


@dataclass
class ImportTime:
    """Best-of-N wall times (ms) of ``python -c "import patchbay"`` and of ``python -c "pass"``."""

    with_import: float
    bare: float

    @property
    def added(self) -> float:
        return self.with_import - self.bare


def measure_import(runs: int) -> ImportTime:
    """Alternate the two commands ``runs`` times each, keep each one's fastest wall time."""
    best = {"import patchbay": float("inf"), "pass": float("inf")}
    for _ in range(runs):
        for code in best:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
            best[code] = min(best[code], (time.perf_counter() - started) * 1000)
    return ImportTime(best["import patchbay"], best["pass"])


# --- one target ------------------------------------------------------------------------------------


@dataclass
class Options:
    """How long and how hard to measure each target (from the command line)."""

    duration: float
    single_duration: float
    connections: int
    warmup: float
    streams: int
    stream_clients: int = 20  # the streamed relay measurement (bench/streamed.py): concurrent clients,
    stream_chunks: int = 500  # content chunks per answer,
    stream_duration: float = 10.0  # seconds of wrk (0: not measured)


@dataclass
class Result:
    """Everything measured for one target (or why it could not be)."""

    key: str
    version: str = ""
    unavailable: str = ""
    loaded: WrkResult | None = None
    single: WrkResult | None = None
    stream: StreamResult | None = None
    streamed: StreamedResult | None = None
    streamed_unavailable: str = ""
    peak_rss_mib: float | None = None

    @property
    def errors(self) -> int:
        """Errors of the non-streaming runs and the first-byte streams (the streamed run counts its own)."""
        runs = sum(run.errors for run in (self.loaded, self.single) if run)
        return runs + (self.stream.failures if self.stream else 0)

    @property
    def measured(self) -> bool:
        return not self.unavailable and self.loaded is not None


def measure_target(key: str, url: str, pid: int, opts: Options, version: str) -> Result:
    """Warm up, then the loaded run, the single-client run, the first-byte streams and the streamed relay
    run (bench/streamed.py), watching memory."""
    from bench.streamed import run_streamed  # imported here: bench.streamed imports this module

    result = Result(key, version)
    with MemoryWatch(pid) as memory:
        run_wrk(url, opts.connections, opts.warmup)
        result.loaded = run_wrk(url, opts.connections, opts.duration)
        result.single = run_wrk(url, 1, opts.single_duration)
        log.info("  %d sequential streaming requests", opts.streams)
        result.stream = run_async(lambda: stream_ttfb(url, opts.streams))
        if opts.stream_duration > 0:
            log.info("  streamed relay: %d clients, %d-chunk answers", opts.stream_clients, opts.stream_chunks)
            try:
                result.streamed = run_streamed(url, pid, opts.stream_clients, opts.stream_chunks,
                                               opts.stream_duration, opts.warmup)
            except (Unavailable, ValueError, subprocess.TimeoutExpired) as exc:
                log.warning("%s: streamed relay not measured: %s", key, exc)
                result.streamed_unavailable = " ".join(str(exc).split())[:200] or "failed"
    result.peak_rss_mib = memory.peak_mib
    log.info("%s: %.0f req/s, p50 %.2f ms, one client p50 %.3f ms, stream p50 %.2f ms, %d errors, %.0f MiB",
             key, result.loaded.requests_per_second, result.loaded.p50, result.single.p50, result.stream.p50,
             result.errors, result.peak_rss_mib)
    if result.streamed:
        streamed = result.streamed
        log.info("%s streamed: %.0f chunks/s (%.1f answers/s), %.3f CPU s per 1,000 chunks (wrk %.3f), %d errors%s",
                 key, streamed.chunks_per_second, streamed.answers_per_second, streamed.target_cpu_per_thousand,
                 streamed.client_cpu_per_thousand, streamed.errors,
                 f" ({streamed.first_bad})" if streamed.first_bad else "")
    return result
