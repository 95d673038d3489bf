"""Held streams: many concurrent open streams through one ``patchbay serve`` worker, and its memory.

The fake upstream's held model (bench/upstream.py ``fake-held``) sends the first chunk of each
stream and then waits for ``POST /control/release``. One asyncio client (this process, uvloop,
bench/http1.py connections; at most ``OPENING`` streams being opened at a time) opens N streams;
once every one has its first chunk and the upstream counts N held (``GET /control/held``, polled,
bounded), the server's VmRSS and VmHWM are read from /proc, the streams are released and each
must then complete correctly (status 200, the whole text, ``data: [DONE]``). The idle baseline is
the server's VmRSS after a warm-up round of ``WARMUP`` held streams, so RSS per stream is
(RSS with all held - baseline) / N.

The server runs with its request log on (the default), ``[server] max_connections`` above N and
``[router] idle_timeout`` longer than the hold. Each stream takes two descriptors in the server
(the client's connection and its own to the upstream), so N is capped to what the open-file hard
limit leaves; the result says when it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from bench.http1 import HTTPConnection, fetch
from bench.measure import API_KEY, run_async
from bench.soak import chat_request, check_stream
from bench.targets import Context, Service, launch_patchbay
from bench.upstream import HELD_MODEL, HOLD_TIMEOUT, raise_fd_limit

__all__ = ["HeldResult", "fitting_streams", "memory_kib", "hold_streams", "run_held"]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

WARMUP = 100  # held streams opened, released and completed before the idle baseline is read
OPENING = 256  # streams being opened (connected, request sent, first chunk awaited) at a time
FD_MARGIN = 64  # descriptors kept free in the server beyond two per stream and what it has open idle
OPEN_TIMEOUT = HOLD_TIMEOUT - 20  # seconds for every stream to be held (the upstream lets go by itself later)
FINISH_TIMEOUT = 120.0  # seconds for every released stream to complete
POLL = 0.2  # seconds between polls of the upstream's held count


@dataclass
class HeldResult:
    """One held-streams run: how many were asked for, opened, held and completed, and the memory."""

    requested: int
    streams: int = 0  # opened in the measured round (requested, or what the descriptor limit let fit)
    fd_limit: int = 0
    first_chunk: int = 0  # streams that got their first chunk
    held: int = 0  # the upstream's held count when the memory was read
    released: int = 0
    completed: int = 0  # complete and correct after the release
    failed: int = 0
    first_failure: str = ""
    baseline_kib: int = 0  # VmRSS after the warm-up round, before the measured one
    held_rss_kib: int = 0  # VmRSS with every stream held
    peak_kib: int = 0  # VmHWM once every stream finished (the peak of the whole run)
    open_seconds: float = 0.0  # from the first connect until every stream was held
    version: str = ""
    unavailable: str = ""

    @property
    def capped(self) -> bool:
        return 0 < self.streams < self.requested

    @property
    def per_stream_kib(self) -> float:
        return (self.held_rss_kib - self.baseline_kib) / self.streams if self.streams else float("nan")

    @property
    def all_completed(self) -> bool:
        return self.streams > 0 and self.completed == self.streams and not self.failed

    def peak_at(self, streams: int) -> float:
        """Peak RSS (KiB) extrapolated to ``streams`` (the measured peak plus RSS per stream for the rest)."""
        return self.peak_kib + max(0, streams - self.streams) * max(0.0, self.per_stream_kib)


def fitting_streams(limit: int, open_fds: int, margin: int = FD_MARGIN) -> int:
    """Streams a server with ``open_fds`` descriptors open can take within ``limit``: two descriptors each."""
    return max(0, (limit - open_fds - margin) // 2)


def memory_kib(status: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from the text of a /proc/<pid>/status."""
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    if len(found) != 2:
        raise ValueError("no VmRSS/VmHWM in the status text")
    return int(found["VmRSS"]), int(found["VmHWM"])


def _memory(pid: int) -> tuple[int, int]:
    return memory_kib(Path(f"/proc/{pid}/status").read_text())


def _process_limit(pid: int) -> int:
    """The soft open-file limit of another process, from /proc/<pid>/limits."""
    match = re.search(r"^Max open files\s+(\d+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    return int(match.group(1)) if match else resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _upstream_held(upstream_port: int) -> int:
    status, body = await fetch(upstream_port, "GET", "/control/held", API_KEY)
    return int(json.loads(body)["held"]) if status == 200 else -1


@dataclass
class _Round:
    first_chunk: int = 0
    arrived: int = 0  # streams with their first chunk, or failed before it
    completed: int = 0
    failed: int = 0
    first_failure: str = ""
    held: int = 0
    released: int = 0
    held_rss_kib: int = 0
    open_seconds: float = 0.0


async def hold_streams(port: int, upstream_port: int, pid: int, count: int, label: str) -> _Round:
    """Open ``count`` held streams through the server on ``port``; once all are held, read the server's
    memory, release them and check each one's whole answer."""
    state = _Round()
    opening = asyncio.Semaphore(OPENING)
    everyone = asyncio.Event()

    def arrive() -> None:
        state.arrived += 1
        if state.arrived == count:
            everyone.set()

    async def stream(index: int) -> None:
        conn: HTTPConnection | None = None
        arrived = False
        problem = ""
        try:
            async with opening:
                conn = await HTTPConnection.open(port)
                conn.request(chat_request(port, HELD_MODEL, f"{label} {index}", stream=True))
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await conn.first_event()
            state.first_chunk += 1
            arrived = True
            arrive()
            async with asyncio.timeout(OPEN_TIMEOUT + FINISH_TIMEOUT):
                await conn.response()
            problem = check_stream(conn)
        except (OSError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                conn.close()
            if not arrived:
                arrive()
        if problem:
            state.failed += 1
            state.first_failure = state.first_failure or problem[:200]
        else:
            state.completed += 1

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(stream(index)) for index in range(count)]
    try:
        deadline = time.monotonic() + OPEN_TIMEOUT
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OPEN_TIMEOUT):
                await everyone.wait()
        while True:  # the upstream's own count, until it matches (bounded)
            state.held = await _upstream_held(upstream_port)
            if state.held >= state.first_chunk or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        state.open_seconds = time.perf_counter() - started
        state.held_rss_kib = _memory(pid)[0]
        log.info("  %s: %d of %d streams have their first chunk, the upstream holds %d; server VmRSS %.0f MiB "
                 "(%.1f s)", label, state.first_chunk, count, state.held, state.held_rss_kib / 1024,
                 state.open_seconds)
        status, body = await fetch(upstream_port, "POST", "/control/release", API_KEY)
        state.released = int(json.loads(body)["released"]) if status == 200 else -1
        _, pending = await asyncio.wait(tasks, timeout=FINISH_TIMEOUT + OPEN_TIMEOUT)
        if pending:
            state.failed += len(pending)
            state.first_failure = state.first_failure or f"{len(pending)} streams did not finish in time"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return state


async def _settle(upstream_port: int) -> None:
    """Wait (bounded) until the upstream holds no stream: the previous round is over."""
    deadline = time.monotonic() + FINISH_TIMEOUT
    while time.monotonic() < deadline and await _upstream_held(upstream_port) != 0:
        await asyncio.sleep(POLL)


def run_held(ctx: Context, requested: int) -> HeldResult:
    """Start a patchbay serve for ``requested`` held streams, warm it up, measure one round, stop it."""
    result = HeldResult(requested)
    upstream_port = ctx.upstream_port
    raise_fd_limit()
    launch = launch_patchbay(ctx, name="patchbay-held", server={"max_connections": requested + 1000},
                             router={"idle_timeout": HOLD_TIMEOUT + FINISH_TIMEOUT})
    result.version = launch.version
    with Service("patchbay-held", launch, ctx.logs) as service:
        pid = service.pid
        warm = run_async(lambda: hold_streams(launch.port, upstream_port, pid, min(WARMUP, requested), "warm-up"))
        if warm.failed:
            log.warning("held streams warm-up: %d failed (%s)", warm.failed, warm.first_failure)
        run_async(lambda: _settle(upstream_port))
        result.baseline_kib = _memory(pid)[0]
        result.fd_limit = _process_limit(pid)
        fit = fitting_streams(result.fd_limit, len(os.listdir(f"/proc/{pid}/fd")))
        result.streams = min(requested, fit)
        if result.capped:
            log.warning("held streams: %d requested, %d fit the server's open-file limit %d (two descriptors "
                        "per stream)", requested, result.streams, result.fd_limit)
        log.info("  held streams: %d at once, server VmRSS %.0f MiB idle", result.streams, result.baseline_kib / 1024)
        state = run_async(lambda: hold_streams(launch.port, upstream_port, pid, result.streams, "held"))
        result.peak_kib = _memory(pid)[1]
    for name in ("first_chunk", "held", "released", "completed", "failed", "first_failure", "held_rss_kib",
                 "open_seconds"):
        setattr(result, name, getattr(state, name))
    log.info("held streams: %d completed, %d failed; VmRSS held %.0f MiB, peak %.0f MiB, %.1f KiB per stream",
             result.completed, result.failed, result.held_rss_kib / 1024, result.peak_kib / 1024,
             result.per_stream_kib)
    return result
