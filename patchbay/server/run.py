"""Running the gateway: bind checks, logging, and uvicorn with one or more worker processes.

The listening socket is bound here, before anything is announced, so a port in use is one clear
error and never a "serving on" line followed by uvicorn's complaint. Workers are separate
processes sharing that socket (uvicorn's supervisor). Each builds its app from the config file and
environment (:func:`worker_app`), which is why command-line flags are handed down as the
environment variables that every option also has.

Stopping: SIGTERM (what an orchestrator sends) first makes ``/ready`` answer 503 for
``[server] shutdown_delay`` seconds while everything is still served, so a load balancer takes the
instance out before its socket closes; then uvicorn stops accepting and lets requests in flight
finish. SIGINT (Ctrl-C) skips the delay.

Metrics with workers: the supervisor makes a fresh private directory for prometheus-client's
multiprocess files and names it in ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts (a worker
is a new interpreter, so the library sees it when first imported there); any worker then answers
``/metrics`` for all of them (:mod:`patchbay.server.metrics`). A worker that dies or is replaced is
marked dead (its live gauges go, its counts stay); the directory is removed when the server stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from patchbay.errors import InvalidRequest
from patchbay.redact import RedactingFilter
from patchbay.server.app import Gateway, create_app
from patchbay.server.asgi import REQUEST_ID
from patchbay.server.metrics import MULTIPROC_DIR_ENV
from patchbay.settings import Settings

__all__ = ["LOG_FORMAT", "RequestIdFilter", "ShutdownDelay", "check_bind", "configure_logging", "is_loopback",
           "listen", "serve", "worker_app"]

log = logging.getLogger("patchbay.server")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond this machine without API keys, unless explicitly allowed."""
    server = settings.server
    if is_loopback(server.host) or server.api_keys() or server.insecure_no_auth:
        return
    raise InvalidRequest(
        f"refusing to listen on {server.host} without API keys: set {server.api_keys_env} "
        "(comma-separated keys clients must send), or pass --insecure-no-auth"
    )


def listen(settings: Settings) -> socket.socket:
    """The server's socket, bound to its host and port (as uvicorn binds it: SO_REUSEADDR, so a
    port whose old connections linger in TIME_WAIT is free); a port in use, or an address this
    machine does not have, is InvalidRequest saying which."""
    server = settings.server
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((server.host.strip("[]"), server.port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise InvalidRequest(f"cannot listen on {server.host}:{server.port}: {reason}") from None
    sock.set_inheritable(True)  # the workers of --workers N share it
    return sock


def _environment(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker load exactly these settings."""
    server = settings.server
    env = {
        "PATCHBAY_HOST": server.host, "PATCHBAY_PORT": str(server.port), "PATCHBAY_WORKERS": str(server.workers),
        "PATCHBAY_INSECURE_NO_AUTH": "true" if server.insecure_no_auth else "false",
        "PATCHBAY_LOG_LEVEL": server.log_level, "PATCHBAY_REQUEST_LOG": "true" if server.request_log else "false",
    }
    if settings.source is not None:
        env["PATCHBAY_CONFIG"] = str(settings.source.resolve())
    return env


def _raise_descriptor_limit(connections: int, reserve: int) -> None:
    """Raise the soft limit on open files towards the hard one so that ``connections`` sockets
    and ``reserve`` more fit (workers inherit it); what still does not fit lowers the cap
    (:meth:`patchbay.server.protocol.Limits.from_settings`)."""
    wanted = connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class ShutdownDelay:
    """Hold back the process's SIGTERM handling for ``seconds``, calling ``begin`` at once.

    Installed over uvicorn's own handler (which stops the server): the first SIGTERM calls
    ``begin`` (the gateway then reports not ready) and hands the signal on only when the delay has
    passed; more SIGTERMs meanwhile change nothing (a supervisor and a process-group kill may each
    send one). SIGINT hands on at once, ending the delay early.
    """

    def __init__(self, seconds: float, begin: Callable[[], None]) -> None:
        self.seconds = seconds
        self.begin = begin
        self._stop: Any = None  # the handler that stops the server
        self._timer: threading.Timer | None = None

    def install(self) -> bool:
        """Wrap the current SIGTERM and SIGINT handlers; False (nothing changed) when they are
        not functions, i.e. nobody would stop the server on them anyway."""
        stop, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        if not callable(stop) or not callable(interrupt):
            return False
        self._stop = stop

        def on_interrupt(sig: int, frame: FrameType | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            interrupt(sig, frame)

        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, on_interrupt)
        return True

    def _on_term(self, sig: int, frame: FrameType | None) -> None:
        if self._timer is not None:
            return
        self.begin()
        log.info("stopping in %g s; /ready answers 503 until then", self.seconds)
        self._timer = threading.Timer(self.seconds, self._stop, (sig, None))
        self._timer.daemon = True
        self._timer.start()


class RequestIdFilter(logging.Filter):
    """Gives each record a ``request`` field: `` [<x-request-id>]`` for a line logged while a
    request is served (the log format shows it after the logger's name), else empty."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request = f" [{request_id}]" if request_id is not None else ""
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"


def configure_logging(level: str) -> None:
    """patchbay's log lines at ``level`` on stderr, with secrets redacted and the id of the request
    they are about (once per process: the supervisor and each worker process)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
        for handler in root.handlers:
            handler.addFilter(RedactingFilter())
            handler.addFilter(RequestIdFilter())


def worker_app() -> Gateway:
    """The app of one server process (uvicorn's factory), with the :class:`ShutdownDelay` of its
    settings installed. uvicorn calls this once its signal handlers are in place."""
    app = create_app()
    configure_logging(app.settings.server.log_level)
    delay = app.settings.server.shutdown_delay
    if delay > 0 and threading.current_thread() is threading.main_thread():
        ShutdownDelay(delay, app.begin_shutdown).install()
    return app


def _supervisor(config: Any, sock: socket.socket, metrics_dir: str) -> Any:
    """uvicorn's worker supervisor, which also tells prometheus-client about every worker it has
    seen go (died and restarted, retired by SIGHUP or SIGTTOU)."""
    from prometheus_client.multiprocess import mark_process_dead
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def keep_subprocess_alive(self) -> None:
            self._forgetting(super().keep_subprocess_alive)

        def handle_signals(self) -> None:
            self._forgetting(super().handle_signals)

        def _forgetting(self, step: Callable[[], None]) -> None:
            before = {process.pid for process in self.processes}
            step()
            for pid in before - {process.pid for process in self.processes}:
                if pid is not None:
                    mark_process_dead(pid, metrics_dir)

    return Supervisor(config, sockets=[sock])


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    """Serve on ``sock`` (bound by :func:`listen` when not given) until interrupted (blocks).
    Exits with status 1 when the server could not start."""
    import uvicorn

    from patchbay.server.protocol import DESCRIPTOR_RESERVE, LimitedHttpProtocol, Limits

    check_bind(settings)
    _raise_descriptor_limit(settings.server.max_connections, DESCRIPTOR_RESERVE)
    LimitedHttpProtocol.limits = Limits.from_settings(settings.server)
    sock = sock if sock is not None else listen(settings)
    os.environ.update(_environment(settings))
    server = settings.server
    configure_logging(server.log_level)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        "patchbay.server.run:worker_app", factory=True, host=server.host, port=server.port,
        workers=server.workers, loop=loop, http=LimitedHttpProtocol, lifespan="on", access_log=False,
        log_level=server.log_level, server_header=False, date_header=False, proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("patchbay running on http://%s:%d with %d worker(s)%s", shown, port, server.workers,
             "; the chat page is at /" if server.web_ui else "")
    started = True
    metrics_dir = tempfile.mkdtemp(prefix="patchbay-metrics-") if server.workers > 1 else None
    if metrics_dir is not None:
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir  # before the workers start: they inherit it
    try:
        if metrics_dir is not None:
            _supervisor(config, sock, metrics_dir).run()
        else:
            single = uvicorn.Server(config)
            single.run(sockets=[sock])
            started = single.started
    except KeyboardInterrupt:
        pass
    except SystemExit as exit_:  # uvicorn's own startup failure (status 3): patchbay's runtime status
        started = exit_.code in (0, None)
    finally:
        sock.close()
        if metrics_dir is not None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if not started:
        sys.exit(1)
