"""Gateway benchmark: patchbay serve vs LiteLLM, g4f and nginx, all in front of one fake upstream.

One run measures, one target at a time (each alone on the machine, one worker each), in front of
the same fixed upstream (bench/upstream.py):

1. the upstream directly;
2. ``patchbay serve``;
3. the LiteLLM proxy (pinned, installed into bench/.peers/litellm on first run);
4. the g4f API server (pinned, installed into bench/.peers/g4f on first run);
5. nginx ``proxy_pass`` with upstream keep-alive: the ceiling for one extra hop.

Per target: throughput and p50/p99 latency under 50 connections (wrk), single-client latency
(wrk, one connection), streaming time to the first SSE ``data:`` line (N sequential requests
on one keep-alive connection) and peak RSS. Ratios against the goals are computed from the same
run. Results go into docs/benchmarks.md (section "gateway") and docs/gateway.png.

    python -m bench.gateway                                   # the full run
    python -m bench.gateway --duration 3 --only patchbay,nginx   # a quick look (--only: docs/ untouched)

Needs wrk and nginx on PATH; the chart needs matplotlib (pip install matplotlib, or '.[bench]').
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
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import write_section
from bench.upstream import TEXT

log = logging.getLogger("bench.gateway")

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk" / "post.lua"
CHART = ROOT / "docs" / "gateway.png"
PEERS = ROOT / "bench" / ".peers"
API_KEY = "sk-bench-local"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
CHAT_PATH = "/v1/chat/completions"
TARGETS = ("direct", "patchbay", "litellm", "g4f", "nginx")
LABELS = {"direct": "fake upstream, direct", "patchbay": "patchbay serve", "litellm": "LiteLLM proxy",
          "g4f": "g4f API server", "nginx": "nginx proxy_pass (keep-alive)"}
PINS = {"litellm": "litellm[proxy]==1.106.2", "g4f": "g4f[api]==8.8.6"}
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
INSTALL_TIMEOUT = 1800.0
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
    return json.dumps({**json.loads(request_body()), "stream": True}, separators=(",", ":")).encode()


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launch:
    """How to start one target and where it answers."""

    cmd: list[str]
    port: int
    env: dict[str, str] | None = None
    ready_timeout: float = 30.0
    version: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


def probe(url: str, timeout: float) -> bool:
    """One non-streaming request: does the target answer 200 with the fake upstream's text?"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    request = urllib.request.Request(url, data=request_body(), headers=HEADERS, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status == 200 and TEXT in response.read().decode("utf-8", "replace")
    except OSError:  # refused, reset, timed out, HTTP error statuses
        return False


class Service:
    """A target's process group: started, polled until it answers, stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, launch: Launch, log_dir: Path) -> None:
        self.name = name
        self.launch = launch
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Service:
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        env.update(self.launch.env or {})
        log.info("starting %s: %s", self.name, shlex.join(self.launch.cmd))
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(self.launch.cmd, stdout=output, stderr=subprocess.STDOUT, env=env,
                                            cwd=ROOT, start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            log.warning("%s's output ends with:\n%s", self.name, self.log_tail())
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        """Poll the chat endpoint until it answers correctly; bounded by the launch's timeout."""
        started = time.monotonic()
        deadline = started + self.launch.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise Unavailable(f"{self.name} exited with {self.process.returncode}: {self.log_tail(1)}")
            if probe(self.launch.url, timeout=max(0.5, min(10.0, deadline - time.monotonic()))):
                log.info("%s ready after %.1f s", self.name, time.monotonic() - started)
                return
            time.sleep(0.1)  # between polls only
        raise Unavailable(f"{self.name} not ready after {self.launch.ready_timeout:.0f} s: {self.log_tail(1)}")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if still there after STOP_TIMEOUT; reap the leader."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session made the leader's pid the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # the leader, if still there, and any child it left behind
        self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# --- peak memory ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
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
        pending, seen = [self.pid], set[int]()
        while pending and len(seen) < 1000:
            pid = pending.pop()
            seen.add(pid)
            kib = _hwm_kib(pid)
            if kib is not None:
                self.peaks[pid] = max(kib, self.peaks.get(pid, 0))
                pending.extend(child for child in _children(pid) if child not in seen)

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


# --- targets ---------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every launcher needs: the upstream's port, a scratch folder, the peers' folder."""

    upstream_port: int
    scratch: Path
    peers: Path
    logs: Path  # each process's output, <name>.log

    @property
    def upstream_base(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/v1"


def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def package_version(python: Path | str, name: str) -> str:
    """A distribution's version as seen by the given interpreter ('' if missing)."""
    code = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    done = subprocess.run([str(python), "-c", code, name], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def ensure_peer(ctx: Context, name: str) -> Path:
    """The peer's virtualenv, created with the pinned package on first use and reused afterwards."""
    venv = ctx.peers / name
    marker = venv / ".bench-installed"
    pin = PINS[name]
    if marker.exists() and marker.read_text().strip() == pin and peer_python(venv).exists():
        return venv
    log.info("installing %s into %s (first run only; can take a few minutes)", pin, venv)
    commands = [[sys.executable, "-m", "venv", str(venv)],
                [str(peer_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q", pin]]
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
        if done.returncode != 0:
            raise Unavailable(f"install failed: {shlex.join(cmd)}: {done.stderr.strip()[-500:]}")
    marker.write_text(pin + "\n")
    return venv


def launch_patchbay(ctx: Context) -> Launch:
    """``patchbay serve`` (the executable next to this interpreter) routing "fake" to the upstream."""
    exe = Path(sys.executable).with_name("patchbay")
    if not exe.exists():
        raise Unavailable(f"no {exe} (pip install -e . in this virtualenv)")
    helped = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if helped.returncode != 0:
        raise Unavailable("`patchbay serve` is not available yet")
    config = ctx.scratch / "patchbay.toml"
    config.write_text(f'[providers.upstream]\nbase_url = "{ctx.upstream_base}"\nmodels = ["fake"]\n\n'
                      '[routes]\nfake = ["upstream/fake"]\n', encoding="utf-8")
    port = free_port()
    cmd = [str(exe), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if "--workers" in helped.stdout:
        cmd += ["--workers", "1"]
    env = {"PATCHBAY_API_KEYS": API_KEY}  # check the client's key, as LiteLLM checks its master key
    return Launch(cmd, port, env, version=package_version(sys.executable, "patchbay"))


def launch_litellm(ctx: Context) -> Launch:
    """The LiteLLM proxy with the config and environment from shared/peers.md (no network fetches)."""
    venv = ensure_peer(ctx, "litellm")
    config = ctx.scratch / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake\n"
        f"    litellm_params: {{model: openai/fake, api_base: {ctx.upstream_base}, api_key: x}}\n"
        "litellm_settings: {telemetry: false}\n"
        f"general_settings: {{master_key: {API_KEY}}}\n", encoding="utf-8")
    port = free_port()
    cmd = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return Launch(cmd, port, env, ready_timeout=120.0, version=package_version(peer_python(venv), "litellm"))


def launch_g4f(ctx: Context) -> Launch:
    """The g4f API server forwarding to the upstream, started offline with a cached provider list."""
    venv = ensure_peer(ctx, "g4f")
    home = ctx.scratch / "g4f-home"
    cache = home / "cache"
    # g4f reads today's cached provider list and fetches it from the internet when the file is missing or
    # empty ("{}" counts as empty); its built-in "default" provider must be listed. Point it at the upstream.
    listing = json.dumps({"providers": {"default": {"baseUrl": ctx.upstream_base}}, "defaultModels": {}})
    for day in {dt.date.today(), dt.datetime.now(dt.UTC).date()}:
        providers = cache / ".models" / day.isoformat() / "providers.json"
        providers.parent.mkdir(parents=True, exist_ok=True)
        providers.write_text(listing, encoding="utf-8")
    port = free_port()
    cmd = [str(venv / "bin" / "g4f"), "api", "--bind", f"127.0.0.1:{port}", "--no-gui",
           "--disable-pa-auto-download", "--provider", ctx.upstream_base, "--model", "fake"]
    env = {"HOME": str(home), "G4F_CACHE_DIR": str(cache)}
    return Launch(cmd, port, env, ready_timeout=60.0, version=package_version(peer_python(venv), "g4f"))


NGINX_CONFIG = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream fake {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def launch_nginx(ctx: Context) -> Launch:
    """nginx, one worker, proxying everything to the upstream over kept-alive connections."""
    if not shutil.which("nginx"):
        raise Unavailable("nginx is not installed (apt-get install nginx)")
    tmp = ctx.scratch / "nginx"
    tmp.mkdir(exist_ok=True)
    port = free_port()
    config = tmp / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(tmp=tmp, upstream=ctx.upstream_port, port=port), encoding="utf-8")
    cmd = ["nginx", "-c", str(config), "-p", str(tmp), "-e", str(tmp / "error.log")]
    return Launch(cmd, port, version=nginx_version())


LAUNCHERS: dict[str, Callable[[Context], Launch]] = {
    "patchbay": launch_patchbay, "litellm": launch_litellm, "g4f": launch_g4f, "nginx": launch_nginx,
}


# --- one target --------------------------------------------------------------------------------


@dataclass
class Result:
    """Everything measured for one target (or why it could not be)."""

    key: str
    version: str = ""
    unavailable: str = ""
    loaded: WrkResult | None = None
    single: WrkResult | None = None
    stream: StreamResult | None = None
    peak_rss_mib: float | None = None

    @property
    def errors(self) -> int:
        runs = sum(run.errors for run in (self.loaded, self.single) if run)
        return runs + (self.stream.failures if self.stream else 0)

    @property
    def measured(self) -> bool:
        return not self.unavailable and self.loaded is not None


@dataclass
class Options:
    duration: float
    single_duration: float
    connections: int
    warmup: float
    streams: int


def measure(key: str, url: str, pid: int, opts: Options, version: str) -> Result:
    """Warm up, then the loaded run, the single-client run and the streaming run, watching memory."""
    result = Result(key, version)
    with MemoryWatch(pid) as memory:
        run_wrk(url, opts.connections, opts.warmup)
        result.loaded = run_wrk(url, opts.connections, opts.duration)
        result.single = run_wrk(url, 1, opts.single_duration)
        log.info("  %d sequential streaming requests", opts.streams)
        result.stream = run_async(lambda: stream_ttfb(url, opts.streams))
    result.peak_rss_mib = memory.peak_mib
    log.info("%s: %.0f req/s, p50 %.2f ms, one client p50 %.3f ms, stream p50 %.2f ms, %d errors, %.0f MiB",
             key, result.loaded.requests_per_second, result.loaded.p50, result.single.p50, result.stream.p50,
             result.errors, result.peak_rss_mib)
    return result


def bench_target(key: str, ctx: Context, upstream: Service, opts: Options) -> Result:
    """Start the target alone, measure it, stop it; an unavailable target becomes a noted row."""
    if key == "direct":
        version = f"aiohttp {package_version(sys.executable, 'aiohttp')}"
        return measure(key, upstream.launch.url, upstream.pid, opts, version)
    try:
        launch = LAUNCHERS[key](ctx)
        with Service(key, launch, ctx.logs) as service:
            return measure(key, launch.url, service.pid, opts, launch.version)
    except Unavailable as exc:
        log.warning("%s: not available: %s", key, exc)
        return Result(key, unavailable=" ".join(str(exc).split())[:200] or "failed")


# --- import time, versions, machine ---------------------------------------------------------------


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


def _first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0] if (done.stdout or done.stderr) else ""


def nginx_version() -> str:
    return _first_line(["nginx", "-v"]).removeprefix("nginx version: nginx/")


def wrk_version() -> str:
    match = re.match(r"wrk (\S+)", _first_line(["wrk", "-v"]))
    return match.group(1) if match else ""


def patchbay_changed() -> bool:
    """Whether patchbay/ differs from the commit (read-only: GIT_OPTIONAL_LOCKS=0 keeps git from writing)."""
    done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "patchbay"], capture_output=True,
                          text=True, timeout=30, check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    return bool(done.stdout.strip())


def versions(ctx: Context, results: list[Result]) -> dict[str, str]:
    """Versions of everything in the measurement path, for the report."""
    found = {"Python": platform.python_version()}
    for name in ("patchbay", "aiohttp", "uvicorn", "uvloop", "httptools", "msgspec"):
        found[name] = package_version(sys.executable, name) or "not installed"
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit:
        found["patchbay"] += f" (commit {commit}{' + uncommitted changes' if patchbay_changed() else ''})"
    for peer, label in (("litellm", "LiteLLM"), ("g4f", "g4f")):
        python = peer_python(ctx.peers / peer)
        if python.exists():
            found[label] = f"{package_version(python, peer)} (with uvicorn {package_version(python, 'uvicorn')})"
    found["nginx"] = nginx_version()
    found["wrk"] = wrk_version()
    return found


def machine() -> str:
    """nproc, CPU model, memory and OS, in one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    memory = f"{int(total.group(1)) / 1024 / 1024:.1f} GiB RAM, " if total else ""
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores (nproc), {model.group(1).strip() if model else platform.processor()}, {memory}" \
           f"{platform.system()} {platform.release()} {platform.machine()}"


# --- goals ---------------------------------------------------------------------------------------


@dataclass
class Goal:
    """One goal: patchbay's value, the target it must reach, and whether it did (None: not measured)."""

    name: str
    value: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def status(self) -> str:
        text = "n/a" if self.met is None else "met" if self.met else "**missed**"
        return f"{text} ({self.note})" if self.note else text


def _error_note(*results: Result) -> str:
    flagged = [LABELS[r.key] for r in results if r.errors]
    return f"errors in {', '.join(flagged)}" if flagged else ""


def throughput_goal(patchbay: Result | None, key: str, peer: Result | None, minimum: float) -> Goal:
    name = f"throughput vs {LABELS[key]}"
    if not (patchbay and peer and patchbay.measured and peer.measured):
        return Goal(name, "not measured", f">= {minimum:g}x", None)
    assert patchbay.loaded and peer.loaded
    ratio = patchbay.loaded.requests_per_second / peer.loaded.requests_per_second
    met = ratio >= minimum and not patchbay.errors
    return Goal(name, f"{ratio:.2f}x", f">= {minimum:g}x", met, _error_note(patchbay, peer))


def added_goal(name: str, patchbay: Result | None, direct: Result | None, pick: Callable[[Result], float],
               maximum: float) -> Goal:
    if not (patchbay and direct and patchbay.measured and direct.measured):
        return Goal(name, "not measured", f"<= {maximum:g} ms", None)
    added = pick(patchbay) - pick(direct)
    return Goal(name, f"{added:+.3f} ms", f"<= {maximum:g} ms", added <= maximum and not patchbay.errors,
                _error_note(patchbay, direct))


def goals(results: dict[str, Result], imports: ImportTime | None) -> list[Goal]:
    """The issue's goals, all computed from this run."""
    patchbay, direct = results.get("patchbay"), results.get("direct")
    table = [throughput_goal(patchbay, peer, results.get(peer), minimum)
             for peer, minimum in (("g4f", 10), ("litellm", 25), ("nginx", 0.5))]
    table.append(added_goal("one client p50, added over direct", patchbay, direct,
                            lambda r: r.single.p50 if r.single else float("nan"), 0.5))
    table.append(added_goal("streaming first byte p50, added over direct", patchbay, direct,
                            lambda r: r.stream.p50 if r.stream else float("nan"), 1.0))
    if imports:
        table.append(Goal('`import patchbay` (wall time minus `python -c "pass"`)', f"{imports.added:.0f} ms",
                          "< 150 ms", imports.added < 150))
    else:
        table.append(Goal("`import patchbay`", "not measured", "< 150 ms", None))
    return table


# --- report ----------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """A latency for the table: two significant decimals below 10 ms, seconds from 1 s."""
    if value is None or value != value:  # None or NaN
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def error_cell(result: Result) -> str:
    """'0', or the count in bold with where the errors came from (so they are never hidden)."""
    if not result.errors:
        return "0"
    parts = []
    for label, run in (("load", result.loaded), ("one client", result.single)):
        if run and run.errors:
            sockets = ", ".join(f"{kind} {n}" for kind, n in run.socket_errors.items() if n)
            parts.append(f"{label}: {run.non_2xx} non-2xx" + (f", socket {sockets}" if sockets else ""))
    if result.stream and result.stream.failures:
        parts.append(f"stream: {result.stream.failures} failed ({result.stream.first_failure[:60]})")
    return f"**{result.errors}** ({'; '.join(parts)})"


def results_table(results: list[Result]) -> str:
    rows = ["| target | version | req/s | p50 | p99 | errors | one client p50 / p99 | "
            "streaming first byte p50 / p99 | peak RSS |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in results:
        name = LABELS[r.key] + (" ⚠" if r.errors else "")
        if not r.measured or not (r.loaded and r.single and r.stream):
            rows.append(f"| {name} | {r.version or '-'} | not available: {r.unavailable} | | | | | | |")
            continue
        rows.append(f"| {name} | {r.version} | {r.loaded.requests_per_second:,.0f} | {ms(r.loaded.p50)} | "
                    f"{ms(r.loaded.p99)} | {error_cell(r)} | {ms(r.single.p50)} / {ms(r.single.p99)} | "
                    f"{ms(r.stream.p50)} / {ms(r.stream.p99)} | {r.peak_rss_mib or 0:.0f} MiB |")
    return "\n".join(rows)


def goals_table(table: list[Goal]) -> str:
    rows = ["| goal | patchbay | target | result |", "|---|---:|---:|---|"]
    rows += [f"| {g.name} | {g.value} | {g.target} | {g.status} |" for g in table]
    return "\n".join(rows)


def render(command: str, opts: Options, results: list[Result], table: list[Goal], imports: ImportTime | None,
           found_versions: dict[str, str], chart: bool, load: float) -> str:
    """The whole docs/benchmarks.md section."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Gateways: patchbay serve vs LiteLLM, g4f and nginx, in front of one fake upstream",
        "",
        f"Command: `{command}` (from the repository root). Date: {now}.",
        f"Machine: {machine()}; load average {load:.2f} at the start (other work on the machine skews results).",
        "",
        "Every target fronts the same fixed fake upstream (`bench/upstream.py`: precomputed tiny answers, one "
        "aiohttp worker on uvloop) on 127.0.0.1, and runs alone (started, polled until it answers, measured, "
        "stopped) with one worker, so targets never compete for the cores. Requests: "
        f"`{request_body().decode()}` with `Authorization: Bearer {API_KEY}` (LiteLLM's master key; the others "
        "ignore it). Load: `" + shlex.join(wrk_command("URL", opts.connections, opts.duration)) + f"` after a "
        f"{opts.warmup:g} s warm-up; one client: the same with `-c1 -d{opts.single_duration:g}s`. Streaming: "
        f"{opts.streams} sequential `\"stream\": true` requests on one keep-alive connection (aiohttp client), "
        "time from sending the request to the first SSE `data:` line, every answer checked for the upstream's "
        "text. Peak RSS: VmHWM summed over the target's processes (for the direct row, the upstream's). "
        "Errors (non-2xx answers, socket errors, failed or wrong streams) are counted, never hidden: a ⚠ row "
        "had some. LiteLLM and g4f start as their documentation says, offline, with their default logging; "
        "patchbay checks the client's key (`PATCHBAY_API_KEYS`) as LiteLLM checks its master key.",
        "",
        results_table(results),
        "",
        "Goals (patchbay against the others, same run):",
        "",
        goals_table(table),
        "",
    ]
    if imports:
        lines += [f'`python -c "import patchbay"`: {imports.with_import:.0f} ms; `python -c "pass"`: '
                  f"{imports.bare:.0f} ms (best of the runs each).", ""]
    if chart:
        lines += ["![Throughput and latency per target](gateway.png)", ""]
    lines.append("Versions: " + "; ".join(f"{name} {version or '?'}" for name, version in found_versions.items())
                 + ".")
    return "\n".join(lines)


def write_chart(results: list[Result], path: Path) -> bool:
    """Throughput bars and latency bars (log scales) per measured target; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no chart: matplotlib is not installed (pip install matplotlib, or pip install -e '.[bench]')")
        return False
    measured = [r for r in results if r.measured and r.loaded and r.single and r.stream]
    names = [LABELS[r.key].replace(" (keep-alive)", "").replace(", direct", "\n(direct)") for r in measured]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    rates = [r.loaded.requests_per_second for r in measured if r.loaded]
    bars = left.bar(names, rates, color="#4477aa")
    left.bar_label(bars, labels=[f"{rate:,.0f}" for rate in rates], fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("requests per second (log scale)")
    left.set_title("Throughput, 50 connections, non-streaming")
    series = {"p50, 50 connections": [r.loaded.p50 for r in measured if r.loaded],
              "p99, 50 connections": [r.loaded.p99 for r in measured if r.loaded],
              "p50, one client": [r.single.p50 for r in measured if r.single],
              "streaming first byte p50": [r.stream.p50 for r in measured if r.stream]}
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series.items()):
        right.bar([i + (index - (len(series) - 1) / 2) * width for i in range(len(measured))], values, width,
                  label=label)
    right.set_xticks(range(len(measured)), names)
    right.set_yscale("log")
    right.set_ylabel("milliseconds (log scale)")
    right.set_title("Latency")
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="y", which="both", alpha=0.3)
    figure.suptitle("Gateways in front of one fake upstream (one worker each, same run)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of wrk under load (default 10)")
    parser.add_argument("--single-duration", type=float, default=5, help="seconds of wrk with one client")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections under load (default 50)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of wrk before measuring (default 1)")
    parser.add_argument("--streams", type=int, default=300, help="streaming requests per target (default 300)")
    parser.add_argument("--import-runs", type=int, default=10, help="runs of `import patchbay` (best kept)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(TARGETS)}; "
                                                   "implies --no-write")
    parser.add_argument("--peers", type=Path, default=PEERS, help="where the peers' virtualenvs live")
    parser.add_argument("--logs", type=Path, help="keep each process's output in this folder (default: discarded)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.only.split(",") if t.strip()] or list(TARGETS)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if args.duration <= 0 or args.single_duration <= 0 or args.warmup <= 0 or args.streams < 1 \
            or args.connections < 1 or args.import_runs < 1:
        parser.error("durations, connections, streams and runs must be positive")
    return args


def run(args: argparse.Namespace) -> tuple[list[Result], ImportTime | None, dict[str, str]]:
    """Measure import time, then start the upstream and bench each selected target in turn."""
    opts = Options(args.duration, args.single_duration, args.connections, args.warmup, args.streams)
    imports = measure_import(args.import_runs) if "patchbay" in args.targets else None
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        ctx = Context(free_port(), Path(tmp), args.peers.resolve(), (args.logs or Path(tmp)).resolve())
        ctx.peers.mkdir(parents=True, exist_ok=True)
        ctx.logs.mkdir(parents=True, exist_ok=True)
        upstream = Launch([sys.executable, "-m", "bench.upstream", "--port", str(ctx.upstream_port)],
                          ctx.upstream_port)
        with Service("upstream", upstream, ctx.logs) as service:
            results = [bench_target(key, ctx, service, opts) for key in args.targets]
        return results, imports, versions(ctx, results)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    load = os.getloadavg()[0]
    if load > 0.5:
        log.warning("load average %.2f: something else is running; the numbers will be noisier", load)
    results, imports, found_versions = run(args)
    by_key = {r.key: r for r in results}
    table = goals(by_key, imports)
    write = not (args.no_write or args.only)
    chart = write_chart(results, CHART) if write else False
    opts = Options(args.duration, args.single_duration, args.connections, args.warmup, args.streams)
    section = render(shlex.join(["python", "-m", "bench.gateway", *argv]), opts, results, table, imports,
                     found_versions, chart, load)
    print(results_table(results), goals_table(table), sep="\n\n")
    if write:
        write_section("gateway", section)
        log.info("wrote the gateway section of docs/benchmarks.md%s", " and docs/gateway.png" if chart else "")
    else:
        log.info("not writing docs/ (--no-write or --only)")


if __name__ == "__main__":
    main()
