"""Per-target router state: cooldowns, health, in-flight counts, credential bans and counters.

The router decides where to send a request from what it has seen of each target (a string key
such as ``"Liaobots/gpt-4o-2024-08-06"``). That state lives behind :class:`StateStore` so that it
can be shared: :class:`MemoryStateStore` keeps it in this process, and
:class:`patchbay.routing.redis_state.RedisStateStore` keeps it in Redis, where several router
processes (or hosts) see each other's cooldowns and credential bans.

Times are wall-clock ``time.time()`` floats, because they are compared across processes. Every
store takes a ``clock`` so tests can move time without sleeping. Credentials are never stored,
only their :func:`fingerprint`.

Target keys come from request content (the ``"*"`` route passes the caller's model name through),
so the state must not grow with it. The rule, for both stores: a store remembers at most
``max_targets`` targets (:data:`MAX_TARGETS` by default) and forgets the least recently used one
first, never one with requests in flight. Every read or write of a target's record counts as a use.
A forgotten target reads as a fresh :class:`Health`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from patchbay.errors import InvalidRequest
from patchbay.redact import clip, fingerprint

__all__ = [
    "EMA_ALPHA",
    "ERROR_MAX_CHARS",
    "MAX_TARGETS",
    "Health",
    "MemoryStateStore",
    "StateStore",
    "ema",
    "fingerprint",
    "short_error",
]

EMA_ALPHA = 0.3
"""Weight of the newest sample in the latency and time-to-first-token moving averages."""

ERROR_MAX_CHARS = 300
"""``last_error`` is cut to this many characters."""

MAX_TARGETS = 10_000
"""How many targets a store remembers by default (see the module docstring for the rule)."""


@dataclass(frozen=True, slots=True)
class Health:
    """What a store knows about one target, as a snapshot."""

    successes: int = 0
    failures: int = 0
    latency: float | None = None  # seconds, moving average of the whole request
    ttft: float | None = None  # seconds, moving average of the time to first token
    last_error: str | None = None
    last_error_at: float | None = None
    in_flight: int = 0
    cooldown_until: float | None = None

    @property
    def success_rate(self) -> float | None:
        """Successes over all results, or ``None`` before the first result."""
        total = self.successes + self.failures
        return self.successes / total if total else None


@runtime_checkable
class StateStore(Protocol):
    """Shared router state. Every method is safe to call concurrently."""

    async def record_success(self, key: str, *, latency: float, ttft: float | None) -> None:
        """Count a success and fold ``latency`` and ``ttft`` (when known) into the averages."""
        ...

    async def record_failure(self, key: str, *, error: str, window: float) -> int:
        """Count a failure; return how many failures ``key`` had in the last ``window`` seconds."""
        ...

    async def set_cooldown(self, key: str, until: float) -> None:
        """Keep ``key`` out of rotation until ``until``; replaces any earlier cooldown."""
        ...

    async def cooldown_until(self, key: str) -> float | None:
        """The end of the cooldown of ``key``, or ``None`` when there is none in force."""
        ...

    async def add_in_flight(self, key: str, delta: int) -> int:
        """Add ``delta`` to the requests in flight to ``key``; return the new count (never below 0)."""
        ...

    async def health(self, key: str) -> Health:
        """A snapshot of ``key`` (all defaults for a key never seen)."""
        ...

    async def all_health(self) -> dict[str, Health]:
        """A snapshot of every key seen."""
        ...

    async def ban_credential(self, pool: str, fingerprint: str, until: float) -> None:
        """Ban the credential with ``fingerprint`` in ``pool`` until ``until``."""
        ...

    async def banned_credentials(self, pool: str) -> set[str]:
        """Fingerprints in ``pool`` whose ban has not expired."""
        ...

    async def incr(self, name: str, amount: int = 1) -> int:
        """Add ``amount`` to the counter ``name``; return its new value."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def ema(old: float | None, value: float) -> float:
    """The moving average after ``value``; the first sample is taken as is."""
    return value if old is None else EMA_ALPHA * value + (1 - EMA_ALPHA) * old


def short_error(error: str) -> str:
    """``error`` redacted (again, to be safe) and cut to :data:`ERROR_MAX_CHARS`."""
    return clip(error, ERROR_MAX_CHARS)


@dataclass(slots=True)
class _Target:
    successes: int = 0
    failures: int = 0
    latency: float | None = None
    ttft: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    in_flight: int = 0
    cooldown_until: float | None = None
    failure_times: deque[float] = field(default_factory=deque)


class MemoryStateStore:
    """:class:`StateStore` in plain dictionaries, for one process.

    A lock guards every change (and is never held across an ``await``), so one store can be
    shared by several event loops or threads.

    At most ``max_targets`` target records are kept: creating one more forgets the least recently
    used record that has nothing in flight. Records with requests in flight are never forgotten
    (their counts must stay right), so when every record has some the store grows past the cap
    until they finish. Idle and busy records live in separate dictionaries so that every access,
    eviction included, is O(1).
    """

    def __init__(self, *, max_targets: int = MAX_TARGETS, clock: Callable[[], float] = time.time) -> None:
        if isinstance(max_targets, bool) or not isinstance(max_targets, int) or max_targets < 1:
            raise InvalidRequest(f"max_targets must be a whole number of at least 1, got {max_targets!r}")
        self.max_targets = max_targets
        self._clock = clock
        self._lock = threading.Lock()
        # Nothing in flight, least recently used first: the records that may be forgotten.
        self._idle: OrderedDict[str, _Target] = OrderedDict()
        # Requests in flight: never forgotten, moved back to the idle end when the count is 0.
        self._busy: dict[str, _Target] = {}
        self._bans: dict[str, dict[str, float]] = {}
        self._counters: dict[str, int] = {}

    def _find(self, key: str) -> _Target | None:
        """The record of ``key`` (marked most recently used), or ``None``; call under the lock."""
        target = self._busy.get(key)
        if target is None:
            target = self._idle.get(key)
            if target is not None:
                self._idle.move_to_end(key)
        return target

    def _target(self, key: str) -> _Target:
        """The record of ``key``, created (forgetting the least recently used) when new."""
        target = self._find(key)
        if target is None:
            while self._idle and len(self._idle) + len(self._busy) >= self.max_targets:
                self._idle.popitem(last=False)
            target = self._idle[key] = _Target()
        return target

    def _snapshot(self, target: _Target, now: float) -> Health:
        until = target.cooldown_until
        return Health(
            successes=target.successes,
            failures=target.failures,
            latency=target.latency,
            ttft=target.ttft,
            last_error=target.last_error,
            last_error_at=target.last_error_at,
            in_flight=target.in_flight,
            cooldown_until=until if until is not None and until > now else None,
        )

    async def record_success(self, key: str, *, latency: float, ttft: float | None) -> None:
        with self._lock:
            target = self._target(key)
            target.successes += 1
            target.latency = ema(target.latency, latency)
            if ttft is not None:
                target.ttft = ema(target.ttft, ttft)

    async def record_failure(self, key: str, *, error: str, window: float) -> int:
        message = short_error(error)
        with self._lock:
            now = self._clock()
            target = self._target(key)
            target.failures += 1
            target.last_error = message
            target.last_error_at = now
            times = target.failure_times
            times.append(now)
            cutoff = now - window
            while times and times[0] < cutoff:
                times.popleft()
            return len(times)

    async def set_cooldown(self, key: str, until: float) -> None:
        with self._lock:
            self._target(key).cooldown_until = until

    async def cooldown_until(self, key: str) -> float | None:
        with self._lock:
            target = self._find(key)
            if target is None or target.cooldown_until is None:
                return None
            if target.cooldown_until <= self._clock():
                target.cooldown_until = None
                return None
            return target.cooldown_until

    async def add_in_flight(self, key: str, delta: int) -> int:
        with self._lock:
            target = self._busy.get(key)
            if target is not None:
                target.in_flight = max(0, target.in_flight + delta)
                if not target.in_flight:
                    self._idle[key] = self._busy.pop(key)  # at the most recently used end
                return target.in_flight
            target = self._target(key)
            target.in_flight = max(0, target.in_flight + delta)
            if target.in_flight:
                self._busy[key] = self._idle.pop(key)
            return target.in_flight

    async def health(self, key: str) -> Health:
        with self._lock:
            target = self._find(key)
            return Health() if target is None else self._snapshot(target, self._clock())

    async def all_health(self) -> dict[str, Health]:
        with self._lock:
            now = self._clock()
            return {key: self._snapshot(target, now)
                    for records in (self._idle, self._busy) for key, target in records.items()}

    async def ban_credential(self, pool: str, fingerprint: str, until: float) -> None:
        with self._lock:
            self._bans.setdefault(pool, {})[fingerprint] = until

    async def banned_credentials(self, pool: str) -> set[str]:
        with self._lock:
            bans = self._bans.get(pool)
            if not bans:
                return set()
            now = self._clock()
            for expired in [fp for fp, until in bans.items() if until <= now]:
                del bans[expired]
            return set(bans)

    async def incr(self, name: str, amount: int = 1) -> int:
        with self._lock:
            value = self._counters[name] = self._counters.get(name, 0) + amount
            return value

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"MemoryStateStore({len(self._idle) + len(self._busy)} targets, max {self.max_targets})"
