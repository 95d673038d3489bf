"""The gateway benchmark's targets: how each is installed, configured, started, polled until ready, stopped.

Every target fronts the same fake upstream (bench/upstream.py). The peers (LiteLLM, g4f) are pinned and
installed into their own virtualenvs under bench/.peers on first use, so they never touch this one.
A launcher turns a ``Context`` into a ``Launch`` (command, port, environment); a ``Service`` runs it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import API_KEY, HEADERS, ROOT, Unavailable, first_line, request_body
from bench.upstream import HELD_MODEL, LONG_MODEL, MODEL, TEXT

__all__ = [
    "PEERS", "CHAT_PATH", "TARGETS", "LABELS", "PINS", "free_port", "Launch", "probe", "Service", "Context",
    "peer_python", "package_version", "ensure_peer", "patchbay_config", "launch_patchbay", "launch_patchbay_nolog",
    "launch_litellm", "launch_g4f", "launch_nginx", "nginx_version", "LAUNCHERS", "MODELS",
]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

PEERS = ROOT / "bench" / ".peers"
CHAT_PATH = "/v1/chat/completions"
TARGETS = ("direct", "patchbay", "patchbay-nolog", "litellm", "g4f", "nginx")
LABELS = {"direct": "fake upstream, direct", "patchbay": "patchbay serve",
          "patchbay-nolog": "patchbay serve, request log off", "litellm": "LiteLLM proxy",
          "g4f": "g4f API server", "nginx": "nginx proxy_pass (keep-alive)"}
MODELS = (MODEL, LONG_MODEL, HELD_MODEL)  # every model the targets route to the upstream
PINS = {"litellm": "litellm[proxy]==1.106.2", "g4f": "g4f[api]==8.8.6"}
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
INSTALL_TIMEOUT = 1800.0


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
        """The last lines of the process's output, for error messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# --- installing and configuring the targets --------------------------------------------------------


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
    """The interpreter of a peer's virtualenv."""
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


def patchbay_config(upstream_base: str, log_file: Path, server: dict[str, object] | None = None,
                    router: dict[str, object] | None = None) -> str:
    """patchbay's TOML config: each of ``MODELS`` routed to the same model of the upstream, the request
    log in ``log_file``, no shutdown delay (a benchmark stops it at once), plus any ``[server]`` and
    ``[router]`` options given."""
    server_options = {"shutdown_delay": 0, "request_log_path": str(log_file), **(server or {})}
    lines = ["[server]", *(f"{key} = {json.dumps(value)}" for key, value in server_options.items()), ""]
    if router:
        lines += ["[router]", *(f"{key} = {json.dumps(value)}" for key, value in router.items()), ""]
    lines += ["[providers.upstream]", f"base_url = {json.dumps(upstream_base)}", f"models = {json.dumps(MODELS)}",
              "", "[routes]", *(f'{model} = ["upstream/{model}"]' for model in MODELS)]
    return "\n".join(lines) + "\n"


def launch_patchbay(ctx: Context, *, request_log: bool = True, name: str = "patchbay",
                    server: dict[str, object] | None = None, router: dict[str, object] | None = None) -> Launch:
    """``patchbay serve`` (the executable next to this interpreter, or ``python -m patchbay``) routing the
    upstream's models, with its home and request log in a scratch folder of its own; ``--no-log``
    when ``request_log`` is False."""
    exe = Path(sys.executable).with_name("patchbay")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "patchbay"]
    helped = subprocess.run([*base, "serve", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if helped.returncode != 0:
        raise Unavailable(f"`patchbay serve` is not available: {(helped.stderr or helped.stdout).strip()[-200:]}")
    home = ctx.scratch / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "patchbay.toml"
    config.write_text(patchbay_config(ctx.upstream_base, home / "logs.db", server, router), encoding="utf-8")
    port = free_port()
    cmd = [*base, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if "--workers" in helped.stdout:
        cmd += ["--workers", "1"]
    if not request_log:
        cmd.append("--no-log")
    # PATCHBAY_API_KEYS: check the client's key, as LiteLLM checks its master key
    env = {"PATCHBAY_API_KEYS": API_KEY, "PATCHBAY_HOME": str(home)}
    return Launch(cmd, port, env, version=package_version(sys.executable, "patchbay"))


def launch_patchbay_nolog(ctx: Context) -> Launch:
    """``patchbay serve --no-log``: the same server with its request log off."""
    return launch_patchbay(ctx, request_log=False, name="patchbay-nolog")


def launch_litellm(ctx: Context) -> Launch:
    """The LiteLLM proxy with the config and environment from shared/peers.md (no network fetches)."""
    venv = ensure_peer(ctx, "litellm")
    config = ctx.scratch / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(f"  - model_name: {model}\n"
                  f"    litellm_params: {{model: openai/{model}, api_base: {ctx.upstream_base}, api_key: x}}\n"
                  for model in MODELS) +
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


def nginx_version() -> str:
    """The installed nginx's version ('' if unknown)."""
    return first_line(["nginx", "-v"]).removeprefix("nginx version: nginx/")


LAUNCHERS: dict[str, Callable[[Context], Launch]] = {
    "patchbay": launch_patchbay, "patchbay-nolog": launch_patchbay_nolog, "litellm": launch_litellm,
    "g4f": launch_g4f, "nginx": launch_nginx,
}
