"""Router state in Redis, shared by every router process that points at the same server.

Layout, under ``patchbay:{namespace}:``:

    recent               zset    target keys, scored by their last write (for
                                 :meth:`RedisStateStore.all_health`); at most ``max_targets``
                                 members, none older than ``state_ttl``
    health:{key}         hash    successes, failures, latency, ttft, last_error, last_error_at,
                                 in_flight; expires ``state_ttl`` after its last write (PX)
    failures:{key}       zset    one member per failure, scored by its time
    cooldown:{key}       string  the end of the cooldown, expiring with it (PX)
    bans:{pool}          hash    credential fingerprint -> end of its ban
    counter:{name}       string  a named counter

Times come from the store's clock and are compared on read, so the Redis expiries are only
housekeeping.

Target keys come from request content, so the state is bounded by the rule of
:mod:`patchbay.routing.state`, as far as Redis allows: every write to a target refreshes its place in
``recent`` and the expiry of its ``health`` hash (in the write's own transaction), and writes and
:meth:`~RedisStateStore.all_health` drop from ``recent`` the members last written more than
``state_ttl`` ago and all but the ``max_targets`` most recent. A target dropped from ``recent`` is
only left out of ``all_health``; its hash (with an in-flight count that may still be needed) lives
on until it expires. Deployments before this layout kept an ever-growing ``keys`` set; it is no
longer read or written (a new key name, so its type never clashes) and can be deleted.

The moving averages are read, computed here and written back: two processes recording a success
at the same moment may each miss the other's sample, which shifts an average a little and is
accepted. An in-flight count taken below zero is raised back by exactly the
amount this call overshot (a second command, so others' concurrent changes are kept), and expired
bans are deleted under WATCH. Everything else is one atomic command or a MULTI transaction.

Redis being unreachable never fails a request: every call is bounded by ``timeout``, and on a
Redis or socket error the store logs one warning, serves calls from a local
:class:`~patchbay.routing.state.MemoryStateStore` and tries Redis again after ``retry_after``
seconds. Changes made while degraded stay local and are not copied to Redis later.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from patchbay.errors import InvalidRequest
from patchbay.redis_link import RedisLink
from patchbay.routing.state import MAX_TARGETS, Health, MemoryStateStore, ema, short_error

__all__ = ["STATE_TTL", "RedisStateStore"]

logger = logging.getLogger("patchbay.routing.state")

STATE_TTL = 86_400.0
"""Seconds after its last write that a target's shared state is forgotten, by default."""


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: Any) -> int:
    try:
        return 0 if value is None else int(value)
    except ValueError:
        return 0


class RedisStateStore:
    """:class:`~patchbay.routing.state.StateStore` in Redis, falling back to local state.

    Redis connections belong to an event loop, so the store keeps one client per loop that uses
    it; :meth:`close` closes the calling loop's client, so call it in each loop before that loop
    ends (clients of loops already closed are dropped).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "default",
        timeout: float = 0.5,
        retry_after: float = 5.0,
        max_targets: int = MAX_TARGETS,
        state_ttl: float = STATE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(state_ttl, bool) or not isinstance(state_ttl, int | float) or not 0 < state_ttl < float("inf"):
            raise InvalidRequest(f"state_ttl must be a positive number of seconds, got {state_ttl!r}")
        self._local = MemoryStateStore(max_targets=max_targets, clock=clock)  # checks max_targets
        self._link = RedisLink(url, timeout=timeout, retry_after=retry_after, logger=logger,
                               fallback="using local state", restored="using shared state")
        self.url = self._link.url
        self.namespace = namespace
        self.timeout = timeout
        self.retry_after = retry_after
        self._clock = clock
        self.max_targets = max_targets
        self.state_ttl = float(state_ttl)
        self._prefix = f"patchbay:{namespace}:"

    @property
    def degraded(self) -> bool:
        """Whether calls are currently served from local state because Redis is unavailable."""
        return self._link.degraded

    @property
    def _client(self) -> Redis:
        """The Redis client of the running event loop."""
        return self._link.client()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    def _trim(self, pipe: Pipeline, now: float) -> None:
        """Queue dropping the ``recent`` members that are stale or beyond the newest ``max_targets``."""
        recent = self._key("recent")
        pipe.zremrangebyscore(recent, "-inf", f"({now - self.state_ttl!r}")
        pipe.zremrangebyrank(recent, 0, -self.max_targets - 1)

    def _touch(self, pipe: Pipeline, key: str) -> None:
        """Queue the bookkeeping of a write to ``key``: its expiry, its place in ``recent``, the trim."""
        now = self._clock()
        ttl_ms = max(1, int(self.state_ttl * 1000))
        recent = self._key("recent")
        pipe.pexpire(self._key("health", key), ttl_ms)
        pipe.zadd(recent, {key: now})
        self._trim(pipe, now)
        pipe.pexpire(recent, ttl_ms)

    # -- the StateStore protocol ------------------------------------------------------------

    async def record_success(self, key: str, *, latency: float, ttft: float | None) -> None:
        async def remote() -> None:
            health = self._key("health", key)
            old_latency, old_ttft = await self._client.hmget(health, ["latency", "ttft"])
            values: dict[FieldT, EncodableT] = {"latency": repr(ema(_float(old_latency), latency))}
            if ttft is not None:
                values["ttft"] = repr(ema(_float(old_ttft), ttft))
            pipe = self._client.pipeline(transaction=True)
            pipe.hincrby(health, "successes", 1)
            pipe.hset(health, mapping=values)
            self._touch(pipe, key)
            await pipe.execute()

        await self._link.run(remote, lambda: self._local.record_success(key, latency=latency, ttft=ttft))

    async def record_failure(self, key: str, *, error: str, window: float) -> int:
        message = short_error(error)

        async def remote() -> int:
            now = self._clock()
            failures = self._key("failures", key)
            health = self._key("health", key)
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(failures, {f"{now!r}/{uuid.uuid4().hex}": now})
            pipe.zremrangebyscore(failures, "-inf", f"({now - window!r}")
            pipe.zcard(failures)
            pipe.pexpire(failures, max(1, int(window * 1000) + 1000))
            pipe.hincrby(health, "failures", 1)
            pipe.hset(health, mapping={"last_error": message, "last_error_at": repr(now)})
            self._touch(pipe, key)
            results = await pipe.execute()
            return int(results[2])

        return await self._link.run(remote, lambda: self._local.record_failure(key, error=message, window=window))

    async def set_cooldown(self, key: str, until: float) -> None:
        async def remote() -> None:
            cooldown = self._key("cooldown", key)
            remaining_ms = int((until - self._clock()) * 1000)
            pipe = self._client.pipeline(transaction=True)
            if remaining_ms > 0:
                pipe.set(cooldown, repr(until), px=remaining_ms + 1)
            else:
                pipe.delete(cooldown)
            self._touch(pipe, key)
            await pipe.execute()

        await self._link.run(remote, lambda: self._local.set_cooldown(key, until))

    def _live(self, until: Any) -> float | None:
        value = _float(until)
        return value if value is not None and value > self._clock() else None

    async def cooldown_until(self, key: str) -> float | None:
        async def remote() -> float | None:
            return self._live(await self._client.get(self._key("cooldown", key)))

        return await self._link.run(remote, lambda: self._local.cooldown_until(key))

    async def add_in_flight(self, key: str, delta: int) -> int:
        async def remote() -> int:
            health = self._key("health", key)
            pipe = self._client.pipeline(transaction=True)
            pipe.hincrby(health, "in_flight", delta)
            self._touch(pipe, key)
            count = int((await pipe.execute())[0])
            if count < 0 and delta < 0:
                # Add back only what this call took below zero (not "set 0"), so increments and
                # decrements made by others in between are neither lost nor compensated twice.
                await self._client.hincrby(health, "in_flight", min(-count, -delta))
            return max(0, count)

        return await self._link.run(remote, lambda: self._local.add_in_flight(key, delta))

    def _health(self, fields: dict[str, str], cooldown: Any) -> Health:
        return Health(
            successes=_int(fields.get("successes")),
            failures=_int(fields.get("failures")),
            latency=_float(fields.get("latency")),
            ttft=_float(fields.get("ttft")),
            last_error=fields.get("last_error"),
            last_error_at=_float(fields.get("last_error_at")),
            in_flight=max(0, _int(fields.get("in_flight"))),
            cooldown_until=self._live(cooldown),
        )

    async def _fetch_health(self, keys: list[str]) -> dict[str, Health]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._key("health", key))
            pipe.get(self._key("cooldown", key))
        results = await pipe.execute()
        return {key: self._health(results[2 * i], results[2 * i + 1]) for i, key in enumerate(keys)}

    async def health(self, key: str) -> Health:
        async def remote() -> Health:
            return (await self._fetch_health([key]))[key]

        return await self._link.run(remote, lambda: self._local.health(key))

    async def all_health(self) -> dict[str, Health]:
        async def remote() -> dict[str, Health]:
            pipe = self._client.pipeline(transaction=True)
            self._trim(pipe, self._clock())
            pipe.zrange(self._key("recent"), 0, -1)
            keys = sorted(_text(member) for member in (await pipe.execute())[-1])
            return await self._fetch_health(keys) if keys else {}

        return await self._link.run(remote, lambda: self._local.all_health())

    async def ban_credential(self, pool: str, fingerprint: str, until: float) -> None:
        async def remote() -> None:
            await self._client.hset(self._key("bans", pool), fingerprint, repr(until))

        await self._link.run(remote, lambda: self._local.ban_credential(pool, fingerprint, until))

    async def banned_credentials(self, pool: str) -> set[str]:
        async def remote() -> set[str]:
            bans = self._key("bans", pool)
            async with self._client.pipeline(transaction=True) as pipe:
                # WATCH, so an expired ban renewed by another process meanwhile is not deleted.
                await pipe.watch(bans)
                entries = await pipe.hgetall(bans)
                live = {_text(fp) for fp, until in entries.items() if self._live(until) is not None}
                expired = [fp for fp in entries if _text(fp) not in live]
                if expired:
                    pipe.multi()
                    pipe.hdel(bans, *expired)
                    with contextlib.suppress(WatchError):  # cleaned up on a later read
                        await pipe.execute()
            return live

        return await self._link.run(remote, lambda: self._local.banned_credentials(pool))

    async def incr(self, name: str, amount: int = 1) -> int:
        async def remote() -> int:
            return int(await self._client.incrby(self._key("counter", name), amount))

        return await self._link.run(remote, lambda: self._local.incr(name, amount))

    async def close(self) -> None:
        """Close the running event loop's Redis client and its connections."""
        await self._link.close()
        await self._local.close()

    def __repr__(self) -> str:
        state = ", degraded" if self.degraded else ""
        return f"RedisStateStore({self.url!r}, namespace={self.namespace!r}{state})"
