"""Soak benchmark: many requests through one ``patchbay serve``, watching its memory, its open files and
its request log; then 1,000 streams open at once through the same server.

One server (one worker, request log on, its home in a temporary folder) fronts bench/upstream.py. A
lean asyncio client (bench/http1.py, keep-alive connections, ``--concurrency`` at a time) sends a fixed
mix, by request number modulo 10:

- 5 in 10 non-streaming: the answer must be the upstream's whole text;
- 4 in 10 streamed and read to the end: the chunks must carry the whole text, then ``[DONE]``;
- 1 in 10 streamed from the upstream's held model (bench/upstream.py ``fake-held``: its stream waits
  after the first chunk), the client closing the connection after that first chunk. The server
  must notice, cancel the upstream request and log the request as 499.

The server's resident memory (VmRSS) and open file descriptors (/proc/<pid>/fd, sockets told apart
by port through /proc/<pid>/net/tcp) are sampled at the start, after warm-up and every few percent.
Then 1,000 held streams are opened at once; once every one has its first chunk the upstream is told
to release them, and each must complete. After the load, the figures must settle back: no client
connection left, no request in flight (/metrics), the other descriptors as at the start and the
kept-alive upstream connections within the pool's idle cap (then none, once the upstream is
stopped). The server is stopped with SIGTERM, which flushes its request log, and every request
must be in it exactly once with the status it should have. Results go into docs/benchmarks.md
(section "soak").

    python -m bench.soak                                  # 100,000 requests, 64 at a time
    python -m bench.soak --requests 2000 --no-write       # a quick look

The exit status is 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import resource
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.http1 import REQUEST_TIMEOUT, HTTPConnection, fetch
from bench.measure import API_KEY, ROOT, run_async
from bench.report import write_section
from bench.request_log import serve, thread_cpu, upstream_service
from bench.targets import Service
from bench.upstream import CHUNKS, HELD_MODEL, MODEL, TEXT
from patchbay.net.pool import MAX_IDLE_PER_HOST

__all__ = ["KINDS", "FdCount", "Options", "Sample", "SoakResult", "main", "run_soak"]

log = logging.getLogger("bench.soak")

SECTION = "soak"
KINDS = ("whole", "stream", "whole", "stream", "whole", "stream", "whole", "stream", "whole", "cancel")
SETTLE_TIMEOUT = 30.0  # seconds for the server's figures to settle once the load stopped
POLL = 0.1  # seconds between polls of a settling figure
MEMORY_GOAL = 10.0  # percent of RSS growth after warm-up
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass
class Options:
    """What to run (from the command line)."""

    requests: int = 100_000
    concurrency: int = 64
    burst: int = 1000  # streams open at once in the second phase
    warmup: float = 0.1  # fraction of the requests before the warm-up sample
    samples: int = 20  # periodic samples during the load

    @property
    def load_timeout(self) -> float:
        """A bound on the whole soak phase: generous, but not forever."""
        return max(300.0, self.requests * 0.05)


# --- the server's process, from /proc -------------------------------------------------------------


@dataclass(frozen=True)
class FdCount:
    """The server's open file descriptors, its TCP sockets told apart by port."""

    total: int
    clients: int  # connections accepted from clients
    upstream: int  # connections to the upstream (in use, or kept alive in the pool)

    @property
    def other(self) -> int:
        """Everything else: the listening socket, the log database, pipes, the event loop's own."""
        return self.total - self.clients - self.upstream

    def __str__(self) -> str:
        return f"{self.total} ({self.clients} client, {self.upstream} upstream, {self.other} other)"


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state), from the process's /proc/net/tcp{,6}."""
    table = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                table[int(fields[9])] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                                         fields[3])
    return table


def count_fds(pid: int, port: int, upstream_port: int) -> FdCount:
    """Open descriptors of ``pid``: sockets of connections to ``port`` (clients) and to the upstream."""
    table = _tcp_table(pid)
    total = clients = upstream = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        total += 1
        if target.startswith("socket:["):
            local, remote, state = table.get(int(target[8:-1]), (0, 0, ""))
            if remote == upstream_port:
                upstream += 1
            elif local == port and state != LISTEN:
                clients += 1
    return FdCount(total, clients, upstream)


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class Sample:
    """The server's memory and descriptors at one moment."""

    label: str
    done: int  # soak requests finished by then
    rss_kib: int
    fds: FdCount


def ensure_fd_limit(needed: int) -> int:
    """Raise this process's soft descriptor limit towards ``needed`` (children inherit it); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- the requests -----------------------------------------------------------------------------------


def chat_request(port: int, model: str, prompt: str, *, stream: bool) -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream},
                      separators=(",", ":")).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def sse_data(body: bytes) -> list[bytes]:
    """The payloads of the ``data:`` events of an SSE body (comments skipped)."""
    return [event[6:] for event in body.split(b"\n\n") if event.startswith(b"data: ")]


def delta_text(payload: bytes) -> str:
    chunk = json.loads(payload)
    return "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk["choices"])


def check_whole(conn: HTTPConnection) -> str:
    """What is wrong with a non-streamed answer ('' when nothing)."""
    if conn.status != 200:
        return f"status {conn.status}: {bytes(conn.body[:200])!r}"
    content = json.loads(conn.body)["choices"][0]["message"]["content"]
    return "" if content == TEXT else f"content {content!r}"


def check_stream(conn: HTTPConnection) -> str:
    """What is wrong with a streamed answer read to the end ('' when nothing)."""
    if conn.status != 200:
        return f"status {conn.status}: {bytes(conn.body[:200])!r}"
    events = sse_data(bytes(conn.body))
    if not events or events[-1] != b"[DONE]" or not conn.body.endswith(b"\n\n"):
        return f"the stream does not end with [DONE]: {bytes(conn.body[-200:])!r}"
    text = "".join(delta_text(event) for event in events[:-1])
    return "" if text == TEXT else f"streamed text {text!r}"


def check_first_chunk(conn: HTTPConnection) -> str:
    """What is wrong with the first event of a stream ('' when nothing)."""
    if conn.status != 200:
        return f"status {conn.status}: {bytes(conn.body[:200])!r}"
    events = sse_data(bytes(conn.body))
    if not events:
        return "no data event"
    text = delta_text(events[0])
    return "" if text == CHUNKS[0] else f"first chunk {text!r}"


@dataclass
class Tally:
    """Requests sent and answered correctly, per kind, and what went wrong."""

    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # the first few, for the report

    def add(self, kind: str, problem: str) -> None:
        self.sent[kind] += 1
        if not problem:
            self.ok[kind] += 1
        elif len(self.problems) < 5:
            self.problems.append(f"{kind}: {problem}")

    @property
    def failures(self) -> int:
        return sum(self.sent.values()) - sum(self.ok.values())


async def one_request(conn: HTTPConnection, port: int, index: int) -> str:
    """Request number ``index`` of the soak on ``conn``; what was wrong with its answer ('' when nothing)."""
    kind = KINDS[index % len(KINDS)]
    prompt = f"soak {index}"
    if kind == "whole":
        conn.request(chat_request(port, MODEL, prompt, stream=False))
        await conn.response()
        return check_whole(conn)
    if kind == "stream":
        conn.request(chat_request(port, MODEL, prompt, stream=True))
        await conn.response()
        return check_stream(conn)
    conn.request(chat_request(port, HELD_MODEL, prompt, stream=True))
    await conn.first_event()
    conn.close()  # cancelled mid-stream: the rest is held back by the upstream
    return check_first_chunk(conn)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Burst:
    """The phase of many streams open at once."""

    streams: int = 0
    open_at_once: int = 0  # streams past their first chunk and not finished, when the last got its first
    released: int = 0  # streams the upstream held and released
    tally: Tally = field(default_factory=Tally)
    peak: Sample | None = None  # the server with every stream open
    seconds: float = 0.0


@dataclass
class Rows:
    """The request log, counted after the server stopped."""

    total: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status) -> rows
    missing: int = 0  # requests with no row
    duplicated: int = 0  # rows beyond one per request
    wrong_text: int = 0  # rows whose logged answer is not what the client was sent
    probes: int = 0  # the readiness probes' rows (not soak requests)

    @staticmethod
    def expected(options: Options) -> Counter[str]:
        """Requests sent, per kind."""
        expected = Counter(KINDS[index % len(KINDS)] for index in range(options.requests))
        expected["burst"] = options.burst
        return expected


@dataclass
class SoakResult:
    """Everything one run measured; ``goals()`` judges it."""

    options: Options
    started: str = ""
    load_average: float = 0.0  # the machine's, over the minute before the run
    seconds: float = 0.0  # wall time of the soak phase
    tally: Tally = field(default_factory=Tally)
    samples: list[Sample] = field(default_factory=list)
    burst: Burst = field(default_factory=Burst)
    in_flight_after: float | None = None  # /metrics' requests in flight once the load stopped
    rows: Rows = field(default_factory=Rows)
    cpu: dict[str, float] = field(default_factory=dict)  # seconds during the soak phase, per process
    server_log_problems: list[str] = field(default_factory=list)
    fd_limit: int = 0

    def sample(self, label: str) -> Sample:
        return next(sample for sample in self.samples if sample.label == label)

    @property
    def throughput(self) -> float:
        return self.options.requests / self.seconds if self.seconds else 0.0

    def memory_growth(self) -> tuple[float, float]:
        """RSS growth after warm-up in percent: at the end of the load, and at the highest sample."""
        warm = self.sample("warm").rss_kib
        during = [sample.rss_kib for sample in self.samples if sample.done >= self.sample("warm").done
                  and sample.label not in ("burst peak", "after burst", "upstream stopped")]
        return ((self.sample("end of load").rss_kib - warm) / warm * 100, (max(during) - warm) / warm * 100)

    def goals(self) -> list[tuple[str, bool, str]]:
        """(goal, met, the figures behind it) for each goal of the soak."""
        base, settled, final = self.sample("baseline"), self.sample("after burst"), self.sample("upstream stopped")
        growth, peak = self.memory_growth()
        expected = self.rows.expected(self.options)
        right_status = (sum(count for (kind, status), count in self.rows.statuses.items()
                            if status == 200 or (kind == "cancel" and status == 499)))
        accounted = (self.rows.missing == 0 and self.rows.duplicated == 0 and self.rows.wrong_text == 0
                     and right_status == sum(expected.values()))
        fds_back = (settled.fds.clients == 0 and settled.fds.other == base.fds.other
                    and settled.fds.upstream <= MAX_IDLE_PER_HOST and final.fds.upstream == 0
                    and final.fds.total == base.fds.total - base.fds.upstream and self.in_flight_after == 0)
        burst = self.burst
        return [
            (f"RSS growth after warm-up < {MEMORY_GOAL:g}%", growth < MEMORY_GOAL,
             f"{growth:+.1f}% at the end of the load ({peak:+.1f}% at the highest sample)"),
            ("open fds back to the baseline", fds_back,
             f"{base.fds.total - base.fds.upstream} without upstream connections at the start, "
             f"{final.fds.total} at the end; {settled.fds.upstream} kept-alive upstream connections after the "
             f"load (cap {MAX_IDLE_PER_HOST}), {final.fds.upstream} once the upstream stopped; "
             f"{_number(self.in_flight_after)} requests in flight"),
            ("every request accounted for in the request log", accounted,
             f"{sum(expected.values()):,} requests, {right_status:,} rows with the expected status, "
             f"{self.rows.missing} missing, {self.rows.duplicated} duplicated, {self.rows.wrong_text} with the "
             "wrong answer"),
            (f"{burst.streams:,} concurrent streams complete correctly",
             burst.open_at_once == burst.streams == burst.tally.ok["burst"] == burst.released == self.options.burst,
             f"{burst.open_at_once:,} open at once, {burst.tally.ok['burst']:,} correct, "
             f"{burst.tally.failures} failed; the upstream released {burst.released:,} held requests"),
            ("every answer correct, no errors logged", self.tally.failures == 0 and not self.server_log_problems,
             f"{self.tally.failures} wrong answers or errors, {len(self.server_log_problems)} warnings in the "
             "server's log"),
        ]

    @property
    def passed(self) -> bool:
        return all(met for _, met, _ in self.goals())


class Soak:
    """Drives the load and samples the server while it runs."""

    def __init__(self, options: Options, result: SoakResult, pids: dict[str, int], port: int,
                 upstream_port: int) -> None:
        self.options = options
        self.result = result
        self.pids = pids  # server and upstream
        self.pid = pids["server"]
        self.port = port
        self.upstream_port = upstream_port
        self.next_index = 0
        self.done = 0
        step = max(1, options.requests // max(1, options.samples))
        self.milestones = {done: f"{done / options.requests:.0%}" for done in range(step, options.requests, step)}
        self.milestones[min(options.requests - 1, max(1, round(options.requests * options.warmup)))] = "warm"
        self.milestones[options.requests] = "end of load"

    def take(self, label: str) -> Sample:
        sample = Sample(label, self.done, rss_kib(self.pid), count_fds(self.pid, self.port, self.upstream_port))
        self.result.samples.append(sample)
        return sample

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the server, the upstream and this client."""
        spent = {name: sum(thread_cpu(pid).values()) for name, pid in self.pids.items()}
        return {**spent, "client": time.process_time()}

    async def run(self) -> None:
        self.take("baseline")
        workers = [asyncio.ensure_future(self.worker()) for _ in range(self.options.concurrency)]
        started, cpu = time.perf_counter(), self.cpu()
        try:
            async with asyncio.timeout(self.options.load_timeout):
                await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        self.result.seconds = time.perf_counter() - started
        self.result.cpu = {name: seconds - cpu[name] for name, seconds in self.cpu().items()}
        await self.settle("after load")
        await self.burst()
        await self.settle("after burst")

    async def worker(self) -> None:
        conn: HTTPConnection | None = None
        try:
            while self.next_index < self.options.requests:
                index = self.next_index
                self.next_index += 1
                try:
                    if conn is None or not conn.usable:
                        conn = await HTTPConnection.open(self.port)
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        problem = await one_request(conn, self.port, index)
                except (OSError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if conn is not None and (problem or not conn.keep_alive or not conn.usable):
                    conn.close()
                    conn = None
                self.result.tally.add(KINDS[index % len(KINDS)], problem)
                self.done += 1
                label = self.milestones.get(self.done)
                if label is not None:
                    sample = self.take(label)
                    log.info("%s: %d requests, RSS %.1f MiB, fds %s", label, self.done, sample.rss_kib / 1024,
                             sample.fds)
        finally:
            if conn is not None:
                conn.close()

    async def in_flight(self) -> float | None:
        status, body = await fetch(self.port, "GET", "/metrics", API_KEY)
        for line in body.decode().splitlines():
            if status == 200 and line.startswith("patchbay_requests_in_flight "):
                return float(line.split()[1])
        return None

    async def settle(self, label: str, *, until: str = "idle") -> Sample:
        """Poll (bounded) until nothing is in flight and no client connection is left, or with
        ``until="no upstream"`` until no upstream connection is left; then sample."""
        if until == "idle":
            self.result.in_flight_after = None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            if until == "idle":
                if self.result.in_flight_after != 0:
                    self.result.in_flight_after = await self.in_flight()
                # polled until /metrics' own connection is gone too
                fds = count_fds(self.pid, self.port, self.upstream_port)
                settled = (self.result.in_flight_after == 0 and fds.clients == 0
                           and fds.other == self.result.sample("baseline").fds.other)
            else:
                settled = count_fds(self.pid, self.port, self.upstream_port).upstream == 0
            if settled or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        sample = self.take(label)
        log.info("%s: RSS %.1f MiB, fds %s", label, sample.rss_kib / 1024, sample.fds)
        return sample

    async def burst(self) -> None:
        """``options.burst`` held streams at once; released when every one has its first chunk."""
        burst = self.result.burst
        burst.streams = self.options.burst
        arrived = 0  # streams with their first chunk (or failed before it)
        finished = 0
        everyone = asyncio.Event()

        def arrive() -> None:
            nonlocal arrived
            arrived += 1
            if arrived == burst.streams:
                everyone.set()

        async def stream(index: int) -> None:
            nonlocal finished
            conn: HTTPConnection | None = None
            problem = ""
            first = False
            try:
                conn = await HTTPConnection.open(self.port)
                conn.request(chat_request(self.port, HELD_MODEL, f"burst {index}", stream=True))
                async with asyncio.timeout(REQUEST_TIMEOUT * 2):
                    await conn.first_event()
                    first = True
                    arrive()
                    await conn.response()
                problem = check_stream(conn)
            except (OSError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                if conn is not None:
                    conn.close()
                if not first:
                    arrive()
                finished += 1
                burst.tally.add("burst", problem)

        started = time.perf_counter()
        streams = [asyncio.ensure_future(stream(index)) for index in range(burst.streams)]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT * 2):
                    await everyone.wait()
            burst.open_at_once = arrived - finished
            burst.peak = self.take("burst peak")
            log.info("burst: %d streams open at once; server fds %s", burst.open_at_once, burst.peak.fds)
            status, body = await fetch(self.upstream_port, "POST", "/control/release", API_KEY)
            burst.released = json.loads(body)["released"] if status == 200 else -1
            async with asyncio.timeout(REQUEST_TIMEOUT * 2):
                await asyncio.gather(*streams)
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
        burst.seconds = time.perf_counter() - started


def _wait_for_first_row(path: Path, timeout: float = SETTLE_TIMEOUT) -> None:
    """Poll (bounded) until the probe's row is in the log: the writer thread has its database open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            if path.exists() and count_rows(path) > 0:
                return
        time.sleep(POLL)  # between polls only
    raise RuntimeError(f"the request log {path} got no row within {timeout:.0f} s")


def count_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM exchanges").fetchone()[0])


def account(path: Path, options: Options) -> Rows:
    """Match every row of the request log to the request it records."""
    rows = Rows()
    seen = {"soak": bytearray(options.requests), "burst": bytearray(options.burst)}
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        for prompt, status, response in db.execute("SELECT prompt, status, response FROM exchanges"):
            rows.total += 1
            name, _, number = prompt.partition(" ")
            if name not in seen or not number.isdigit() or int(number) >= len(seen[name]):
                rows.probes += 1
                continue
            index = int(number)
            seen[name][index] = min(255, seen[name][index] + 1)
            kind = KINDS[index % len(KINDS)] if name == "soak" else name
            rows.statuses[kind, status] += 1
            if response != (CHUNKS[0] if status == 499 else TEXT):
                rows.wrong_text += 1
    for counts in seen.values():
        rows.missing += counts.count(0)
        rows.duplicated += sum(count - 1 for count in counts if count > 1)
    return rows


def log_problems(service: Service) -> list[str]:
    """Warnings, errors and tracebacks in a process's output."""
    text = service.log_path.read_text(encoding="utf-8", errors="replace") if service.log_path.exists() else ""
    return [line for line in text.splitlines() if any(word in line for word in ("WARNING", "ERROR", "Traceback"))]


def run_soak(options: Options, scratch: Path) -> SoakResult:
    """Start the upstream and one server in ``scratch``, run both phases, stop them, count the log."""
    result = SoakResult(options, started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                        load_average=os.getloadavg()[0])
    result.fd_limit = ensure_fd_limit(3 * options.burst + 2 * options.concurrency + 256)
    with upstream_service(scratch) as upstream:
        server = Service("patchbay", serve(scratch, upstream.launch.port, logging_on=True,
                                           models=(MODEL, HELD_MODEL)), scratch)
        with server:
            database = scratch / "on" / "logs.db"
            _wait_for_first_row(database)
            pids = {"server": server.pid, "upstream": upstream.pid}
            soak = Soak(options, result, pids, server.launch.port, upstream.launch.port)
            run_async(soak.run)
            upstream.stop()  # its kept-alive connections close; the server's pool lets them go
            run_async(lambda: soak.settle("upstream stopped", until="no upstream"))
        # Stopped with SIGTERM: the server flushed its request log on the way out.
        result.rows = account(database, options)
        result.server_log_problems = log_problems(server)
    return result


# --- the report -------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(result: SoakResult, command: str) -> str:
    options, tally, burst, rows = result.options, result.tally, result.burst, result.rows
    base, warm, end = result.sample("baseline"), result.sample("warm"), result.sample("end of load")
    settled, final = result.sample("after burst"), result.sample("upstream stopped")
    growth, peak = result.memory_growth()
    peak_fds = f"fds {burst.peak.fds}" if burst.peak else "-"
    peak_rss = _mib(burst.peak.rss_kib) if burst.peak else "-"
    per_request = {name: seconds / options.requests * 1e6 for name, seconds in result.cpu.items()}
    statuses = ", ".join(f"{kind} {status}: {count:,}" for (kind, status), count in sorted(rows.statuses.items()))
    lines = [
        f"## Soak: {options.requests:,} requests, then {options.burst:,} concurrent streams, through one server",
        "",
        f"Command: `{command}` ({result.started}). `patchbay serve` (one worker, request log on) in front of "
        f"bench/upstream.py; Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs "
        "shared by the client, the server, the upstream and other work on the machine (the throughput is "
        "that of a busy machine; the goals are ratios and counts): load average "
        f"{result.load_average:.1f} before the run. Descriptor limit {result.fd_limit:,}.",
        "",
        f"The mix, by request number: 5 in 10 non-streaming, 4 in 10 streamed to the end, 1 in 10 streamed "
        f"and closed by the client after the first chunk (the upstream holds the rest back, so these are "
        f"certainly cancelled mid-stream); {options.concurrency} at a time on keep-alive connections.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| requests (non-streaming / streamed / cancelled) | {tally.sent['whole']:,} / {tally.sent['stream']:,} / "
        f"{tally.sent['cancel']:,} |",
        f"| wall time, throughput | {result.seconds:.1f} s, {result.throughput:,.0f} requests/s |",
        f"| wrong answers or errors | {tally.failures} |",
        f"| CPU per request: server / upstream / client | {per_request['server']:.0f} / "
        f"{per_request['upstream']:.0f} / {per_request['client']:.0f} µs |",
        f"| RSS at start / after warm-up ({warm.done:,}) / end of load | {_mib(base.rss_kib)} / "
        f"{_mib(warm.rss_kib)} / {_mib(end.rss_kib)} |",
        f"| RSS growth after warm-up: end / highest sample | {growth:+.1f}% / {peak:+.1f}% |",
        f"| open fds at start | {base.fds} |",
        f"| open fds at the end of the load | {end.fds} |",
        f"| open fds after the load settled | {settled.fds} |",
        f"| open fds once the upstream stopped | {final.fds} |",
        f"| requests in flight after the load (/metrics) | {_number(result.in_flight_after)} |",
        f"| request-log rows | {rows.total:,} ({rows.probes} readiness probe); {statuses} |",
        f"| {burst.streams:,} concurrent streams | {burst.open_at_once:,} open at once, "
        f"{burst.tally.ok['burst']:,} correct, {burst.seconds:.1f} s; server then: {peak_fds}, RSS {peak_rss} |",
        "",
        "| goal | result | |",
        "|---|---|---|",
    ]
    lines += [f"| {goal} | {detail} | {'pass' if met else '**FAIL**'} |" for goal, met, detail in result.goals()]
    load = [sample for sample in result.samples if sample.label not in ("burst peak", "after burst",
                                                                         "upstream stopped", "after load")]
    lines += [
        "",
        "RSS (MiB) as the load went on: "
        + ", ".join(f"{sample.label} {sample.rss_kib / 1024:.1f}" for sample in load) + ".",
        "",
        "A cancelled request is logged with status 499 when the server noticed the client leave before the "
        "answer ended. Here the upstream holds each cancelled stream after its first chunk, so every one "
        "must be a 499 whose logged answer is that first chunk; with an upstream that answers at once, a "
        "client closing after the first chunk can find the whole answer already sent, and that request is "
        "rightly logged as a 200. The upstream counts the requests it holds: releasing exactly the "
        "concurrent streams shows that the server ended the upstream request of every cancelled stream "
        "too. The fds at the start include the readiness probe's kept-alive upstream "
        "connection; after the load the pool keeps at most "
        f"{MAX_IDLE_PER_HOST} idle upstream connections, which close when the upstream goes away.",
    ]
    if tally.problems or burst.tally.problems or result.server_log_problems:
        lines += ["", "First problems: " + "; ".join(
            [*tally.problems, *burst.tally.problems, *result.server_log_problems[:5]])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=Options.requests)
    parser.add_argument("--concurrency", type=int, default=Options.concurrency)
    parser.add_argument("--burst", type=int, default=Options.burst, help="streams open at once in the second phase")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/ alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    options = Options(requests=args.requests, concurrency=args.concurrency, burst=args.burst)
    command = " ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as directory:
        result = run_soak(options, Path(directory))
    body = report(result, command)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
        log.info("wrote section %r of %s", SECTION, ROOT / "docs" / "benchmarks.md")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
