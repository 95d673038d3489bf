"""A link to one Redis server that never fails a caller: its clients, timeout and back-off.

:class:`RedisLink` is what the shared router state and the shared rate limits have in common: a
Redis client per event loop (connections belong to a loop), every call bounded by ``timeout``
with no retries, and after a Redis or socket error a ``retry_after`` window in which callers are
sent to their local fallback at once. The URL's passwords are registered as secrets, so they are
redacted from logs and errors, and only the masked URL is ever shown.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from patchbay.redact import redact, register_secret

__all__ = ["RedisLink", "masked_url"]

T = TypeVar("T")

_UNAVAILABLE = (RedisError, OSError, TimeoutError)  # Redis cannot be used now (not a bug of the caller)


def _passwords(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [value for name, value in parse_qsl(parts.query) if name == "password"]
    if parts.password is not None:
        found += [parts.password, unquote(parts.password)]
    return found


def masked_url(url: str) -> str:
    """``url`` with its password (in the authority or the query) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostport}")
    if "password=" in parts.query:
        query = [(name, "***" if name == "password" else value) for name, value in parse_qsl(parts.query)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


class RedisLink:
    """One Redis URL: a client per event loop, calls under a timeout, and a back-off window after
    a failure during which callers use their local fallback.

    ``logger`` gets one warning when Redis becomes unavailable (``"..., {fallback}: {reason}"``),
    debug lines while it stays so, and one info line when it answers again
    (``"..., {restored}"``). :meth:`close` closes the calling loop's client, so call it in each
    loop before that loop ends (clients of loops already closed are dropped).
    """

    def __init__(self, url: str, *, timeout: float, retry_after: float, logger: logging.Logger,
                 fallback: str, restored: str) -> None:
        for password in _passwords(url):
            register_secret(password)
        self.url = masked_url(url)
        self.timeout = timeout
        self.retry_after = retry_after
        self._logger = logger
        self._fallback = fallback
        self._restored = restored
        self.__url = url  # with the password: only ever given to the Redis client
        self._clients: dict[asyncio.AbstractEventLoop, Redis] = {}
        self._lock = threading.Lock()
        self._degraded = False
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """Whether Redis failed last time it was tried, so callers are using their fallback."""
        return self._degraded

    def client(self) -> Redis:
        """The Redis client of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                self._forget_closed_loops()
                client = self._clients[loop] = Redis.from_url(
                    self.__url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),  # no retries: fall back at once
                    decode_responses=True,
                )
            return client

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._clients if loop.is_closed()]:
            del self._clients[loop]

    async def run(self, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]], *,
                  probe: bool = False) -> T:
        """``remote()`` within the timeout, or ``local()`` when Redis is unavailable (failing now,
        or within ``retry_after`` of its last failure; with ``probe``, Redis is tried even then)."""
        if self._degraded and time.monotonic() < self._retry_at and not probe:
            return await local()
        try:
            async with asyncio.timeout(self.timeout):
                result = await remote()
        except _UNAVAILABLE as exc:
            self._mark_down(exc)
            return await local()
        self._mark_up()
        return result

    async def attempt(self, remote: Callable[[], Awaitable[object]]) -> None:
        """``remote()`` within the timeout, even while degraded, for work with no local fallback
        that only Redis can do (such as releasing what was taken there); a failure is logged."""
        try:
            async with asyncio.timeout(self.timeout):
                await remote()
        except _UNAVAILABLE as exc:
            self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_after
            was_degraded, self._degraded = self._degraded, True
        reason = redact(str(exc) or type(exc).__name__)
        if was_degraded:
            self._logger.debug("Redis at %s still unavailable: %s", self.url, reason)
        else:
            self._logger.warning("Redis at %s unavailable, %s: %s", self.url, self._fallback, reason)

    def _mark_up(self) -> None:
        if not self._degraded:
            return
        with self._lock:
            was_degraded, self._degraded = self._degraded, False
        if was_degraded:
            self._logger.info("Redis at %s available again, %s", self.url, self._restored)

    async def close(self) -> None:
        """Close the running event loop's Redis client and its connections."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
            self._forget_closed_loops()
        if client is not None:
            await client.aclose()
