"""A real ``redis-server`` for tests: started on a free local port, stopped afterwards.

:func:`start_redis` works anywhere (``with start_redis() as server: server.url``); the pytest
fixtures build on it. ``redis_server`` is one server for the whole session and ``redis_url``
gives each test that server's URL with the database emptied. Enable them for the suite with
``pytest_plugins = ["tests.support.redis_server"]`` in the root conftest.

A missing ``redis-server`` fails the tests (it never skips them): install it with
``apt-get install redis-server``.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

__all__ = ["RedisProcess", "RedisServerError", "free_port", "redis_server", "redis_url", "start_redis"]

READY_LINE = "Ready to accept connections"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class RedisServerError(RuntimeError):
    """``redis-server`` is missing or did not start."""


def redis_server_binary() -> str:
    """The path of ``redis-server``; raises :class:`RedisServerError` when it is not installed."""
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(path, os.X_OK):
        raise RedisServerError("redis-server is not installed; install it with `apt-get install -y redis-server`")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A running ``redis-server`` child process and everything it has logged."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"redis-server:{port}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Drain stdout for the whole life of the process so the pipe never fills up.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the server logs that it accepts connections, or raise with its log."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RedisServerError(f"redis-server on port {self.port} not ready in {timeout} s:\n{self.output}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait()
                raise RedisServerError(f"redis-server on port {self.port} exited with {code}:\n{self.output}")
            if READY_LINE in line:
                return

    @property
    def output(self) -> str:
        return "\n".join(self.log)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit in time) and close its pipe."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def flush(self) -> None:
        """Empty the database (a short-lived synchronous client)."""
        with redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5) as client:
            client.flushdb()


def _spawn(binary: str, port: int) -> RedisProcess:
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--daemonize", "no", "--loglevel", "notice"]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return RedisProcess(process, port)


@contextmanager
def start_redis(port: int | None = None, *, attempts: int = 3) -> Iterator[RedisProcess]:
    """Run ``redis-server`` on ``port`` (a free one by default) until the block ends.

    With a free port chosen here, a port taken by someone else in between is retried.
    """
    binary = redis_server_binary()
    for attempt in range(1, attempts + 1):
        server = _spawn(binary, port or free_port())
        try:
            server.wait_ready()
        except RedisServerError:
            server.stop()
            if port is not None or attempt == attempts or "Address already in use" not in server.output:
                raise
            continue
        break
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One running ``redis-server`` for the whole test session (``.url``, ``.port``)."""
    try:
        with start_redis() as server:
            yield server
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The session server's URL, with its database emptied for this test."""
    if not redis_server.running:
        pytest.fail(f"the session redis-server has exited:\n{redis_server.output}", pytrace=False)
    redis_server.flush()
    return redis_server.url
