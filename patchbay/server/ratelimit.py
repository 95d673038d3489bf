"""Per-client limits of the gateway: requests and tokens per minute, concurrent requests, spend per day.

A client is one API key, or every key given the same name in the keys variable (``alice=sk-...``;
several keys under one name share its limits, which helps rotating a key). Before a chat request
is routed, :meth:`RateLimiter.admit` checks every limit the client has, and either counts the
request in or raises :class:`~patchbay.errors.ClientRateLimited` (429, with ``retry_after``;
:class:`~patchbay.errors.BudgetExceeded`, code ``budget_exceeded``, when the spend budget is among
the limits reached); when the request ends, :meth:`RateLimiter.finish` frees its concurrency slot
and charges its tokens and its cost. The gateway holds back the last part of each answer until
then, so a client's next request, to any process, finds the one before counted.

Semantics, the same for both implementations:

- **Windows** of the per-minute limits are the last 60 seconds, counted in one-second buckets: a
  request or a token charge counts until 60 to 61 seconds after the second it happened in. The
  budget's window is the last 24 hours, in one-minute buckets (below).
- **requests_per_minute**: a request is admitted while fewer than the limit were admitted in the
  window. Every admitted request counts, whatever its outcome; refused ones do not.
- **tokens_per_minute**: a request is admitted while the tokens charged in the window are under
  the limit; when it ends it is charged its prompt + completion tokens (the provider's usage, or
  an estimate, see :mod:`patchbay.chat.context`). A request is never cut short, so one that is admitted
  just under the limit may take the window over it; later requests wait until enough tokens age
  out of the window.
- **concurrent_requests**: at most that many requests of the client in flight at once.
- **budget_usd_per_day**: a request is admitted while the US dollars charged in the last 24 hours
  are under the budget; when it ends it is charged its cost (every upstream attempt it made, at
  the provider's prices: :mod:`patchbay.providers.pricing`). As with tokens, the last request
  admitted may take the spend over the budget. The day is counted in one-minute buckets (1,440):
  a charge counts until 24 hours after the start of the minute it was made in (the minutes of
  the clock, ``floor(time / 60)``), so between 23 h 59 min and 24 h after it was made, and spend
  ages out a minute at a time.
  Spend is counted in whole nano-dollars (``round(cost * 1e9)``), exact integers in both
  implementations, so they agree to the last request.
- **Retry-After** is the time until the window has room again (for tokens and spend: until
  enough of what was charged ages out for the rest to be under the limit; for the budget that
  can be hours); 1 second for a concurrency refusal, whose slot frees whenever a request ends.
  A refusal naming several limits waits for the longest.

:class:`MemoryRateLimiter` keeps the counts in this process. :class:`RedisRateLimiter` keeps them
in Redis, shared by every process using the same server and namespace (the router's)::

    patchbay:{namespace}:limits:{<client>}:requests   hash   second -> requests admitted in it
    patchbay:{namespace}:limits:{<client>}:tokens     hash   second -> tokens charged in it
    patchbay:{namespace}:limits:{<client>}:leases     zset   one member per request in flight,
                                                             scored by when its lease expires
    patchbay:{namespace}:limits:{<client>}:spend      hash   minute -> nano-dollars charged in it,
                                                             total -> their sum, since -> no
                                                             minute before it is held

Every key expires a little after its window (the spend hash 24 hours and 2 minutes after its
last charge), and each check deletes the buckets that have left the window. A budget check
reads the spend hash's total and deletes only the minutes that left the window since the last
check (a full day of minutes costs no more than an empty one); a refusal reads the minutes from
the oldest on until enough would have aged out.

``<client>`` is ``name:<name>`` for a named key and ``key:<fingerprint>`` (16 hex digits of its
SHA-256) for a plain one: never the key. Each check and each finish is one Lua script, so
processes never interleave inside one. A concurrency lease lasts ``lease_seconds`` and the process
holding it renews it while the request runs, so a process that dies frees its slots within that
time. Redis being unreachable never fails or holds up a request: every call is bounded by
``timeout``, and on an error the limiter logs one warning and enforces the limits in this process
alone (fail open to local limits) until Redis answers again, tried after ``retry_after`` seconds.

While Redis is unreachable each of the ``processes`` sharing it (``[router] instances`` times
``[server] workers``) enforces its share of every limit: the limit divided by ``processes``,
rounded down but at least 1, so together they stay within the limit (within ``processes`` for a
limit smaller than that); the budget is shared the same way, in nano-dollars. A request admitted
through Redis that ends while Redis is unreachable is charged to the local counts. These local
counts start empty when Redis fails and are dropped when it
answers again: they are never added to Redis's. A request its local share refuses asks Redis
first, even inside the ``retry_after`` back-off (at most once every ``probe_interval`` seconds), so
exhausted local counts stop refusing requests within ``probe_interval`` of Redis being back. A
window spanning the moment Redis failed may hold both what Redis counted before and the local
shares.
Times come from the processes' clocks, so hosts sharing a Redis need synchronised clocks (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from weakref import WeakKeyDictionary

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from patchbay.errors import BudgetExceeded, ClientRateLimited, InvalidRequest
from patchbay.redact import fingerprint
from patchbay.redis_link import RedisLink
from patchbay.settings import RateLimits, Settings

__all__ = ["ANONYMOUS", "BUDGET", "DAY", "DAY_BUCKET", "NANO", "WINDOW", "Admission", "Client", "MemoryRateLimiter",
           "RateLimiter", "RedisRateLimiter", "clients", "limiter_for", "nanos", "refusal", "share"]


logger = logging.getLogger("patchbay.server.ratelimit")

WINDOW = 60  # seconds, in one-second buckets
DAY = 86_400  # seconds of the budget's window...
DAY_BUCKET = 60  # ...in buckets of this many seconds (1,440 of them)
NANO = 1_000_000_000  # spend is counted in nano-dollars: integers, no float drift
BUDGET = "budget_usd_per_day"
CONCURRENCY_RETRY = 1.0  # Retry-After of a concurrency refusal: a slot frees when any request ends


def nanos(dollars: float) -> int:
    """``dollars`` as whole nano-dollars, the unit spend is counted in."""
    return round(dollars * NANO)


@dataclass(frozen=True, slots=True)
class Client:
    """Whom a request counts against: ``id`` keys the counters, ``name`` labels the metrics."""

    id: str  # "name:<name>", "key:<fingerprint>", or "anonymous" when the server has no keys
    name: str  # the key's name, "unnamed" or "anonymous": never the key
    limits: RateLimits


ANONYMOUS = "anonymous"


def clients(settings: Settings, keys: list[tuple[str | None, str]]) -> list[Client]:
    """The client of each ``(name, key)`` in ``keys``, in order; warns about ``[limits.<name>]``
    tables that no key is given."""
    for name in sorted(set(settings.key_limits) - {name for name, _ in keys}):
        logger.warning("[limits.%s] applies to no key: no key named %s in %s", name, name,
                       settings.server.api_keys_env)
    return [Client(f"name:{name}", name, settings.limits_for(name)) if name is not None
            else Client(f"key:{fingerprint(key)}", "unnamed", settings.limits) for name, key in keys]


def limiter_for(settings: Settings) -> RateLimiter | None:
    """The limiter the settings call for: none without limits, Redis when the router has a Redis
    URL (limits shared by every process), else this process's memory."""
    if settings.limits.unlimited and all(limits.unlimited for limits in settings.key_limits.values()):
        return None
    url = settings.router.redis_url()
    if not url:
        return MemoryRateLimiter()
    return RedisRateLimiter(url, namespace=settings.router.namespace,
                            processes=settings.router.instances * settings.server.workers)


@dataclass(slots=True)
class Admission:
    """A request let in: what :meth:`RateLimiter.finish` needs to free its slot and charge it."""

    client: str
    limits: RateLimits
    lease: str | None = None  # the concurrency lease, when the client has that limit
    local: bool = False  # admitted by the local fallback while Redis was unavailable


class RateLimiter(Protocol):
    """Admits or refuses a client's requests; see the module docstring for the semantics."""

    async def admit(self, client: str, limits: RateLimits) -> Admission:
        """Count a request in, or raise :class:`~patchbay.errors.ClientRateLimited`."""
        ...

    async def finish(self, admission: Admission, tokens: int, cost: float = 0.0) -> None:
        """The request ended: free its concurrency slot and charge its ``tokens`` and its ``cost``
        (US dollars)."""
        ...

    async def close(self) -> None:
        ...


def refusal(exceeded: list[str], retry_after: float, limits: RateLimits) -> ClientRateLimited:
    """The 429 for a refused request: names the limits (never the key) and when to come back;
    a :class:`~patchbay.errors.BudgetExceeded` when the budget is one of them."""
    over_budget = BUDGET in exceeded
    shown = ", ".join(f"{name} ({limits.budget_usd_per_day!r} USD)" if name == BUDGET
                      else f"{name} ({getattr(limits, name)})" for name in exceeded)
    # Never past the window: buckets stamped by another process's clock can be a little ahead.
    retry_after = max(min(retry_after, DAY if over_budget else WINDOW), 0.001)
    when = f"try again in {_duration(max(1, math.ceil(retry_after)))}"
    if not over_budget:
        return ClientRateLimited(f"rate limit reached for {shown}; {when}", limit=exceeded[0],
                                 retry_after=retry_after)
    what = "spend budget" if exceeded == [BUDGET] else "spend budget and rate limit"
    return BudgetExceeded(f"{what} reached for {shown}; {when}", limit=BUDGET, retry_after=retry_after)


def _duration(seconds: int) -> str:
    """``seconds`` for a person: "40 s", or "7260 s (2 h 1 min)" when that is long."""
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(-(-seconds // 60), 60)
    return f"{seconds} s ({hours} h {minutes} min)" if hours else f"{seconds} s ({minutes} min)"


def share(limit: int, processes: int) -> int:
    """One process's part of ``limit`` while Redis is down: ``limit // processes``, at least 1
    (0, unlimited, stays 0), so ``processes`` of them together stay within the limit."""
    return max(1, limit // processes) if limit else 0


def _wait(buckets: dict[int, int], used: int, limit: int, now: float) -> float:
    """Seconds until the oldest buckets age out far enough that ``used`` is under ``limit``."""
    for second in sorted(buckets):
        used -= buckets[second]
        if used < limit:
            return second + WINDOW - now
    return 0.0


class _Spend:
    """One client's spend in the day's window: ``[minute, nano-dollars]`` buckets, oldest first,
    and their total, so a check only drops the minutes that have left the window."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        oldest = int(now // DAY_BUCKET) - DAY // DAY_BUCKET + 1
        while self.buckets and self.buckets[0][0] < oldest:
            self.total -= self.buckets.popleft()[1]
        return self.total

    def add(self, now: float, amount: int) -> None:
        minute = int(now // DAY_BUCKET)
        if self.buckets and self.buckets[-1][0] >= minute:  # the same minute (or a clock set back)
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([minute, amount])
        self.total += amount

    def wait(self, limit: int, now: float) -> float:
        """Seconds until enough of the oldest minutes age out for the rest to be under ``limit``."""
        used = self.total
        for minute, amount in self.buckets:
            used -= amount
            if used < limit:
                return minute * DAY_BUCKET + DAY - now
        return 0.0


class MemoryRateLimiter:
    """Limits kept in this process (one server process, or Redis unavailable). Each call runs
    without awaiting, so requests of one event loop cannot interleave inside a check."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._requests: dict[str, dict[int, int]] = {}
        self._tokens: dict[str, dict[int, int]] = {}
        self._spend: dict[str, _Spend] = {}
        self._leases: dict[str, set[str]] = {}

    def _used(self, counts: dict[str, dict[int, int]], client: str, now: float) -> tuple[int, dict[int, int]]:
        oldest = int(now // 1) - WINDOW + 1
        buckets = {second: n for second, n in counts.get(client, {}).items() if second >= oldest}
        counts[client] = buckets
        return sum(buckets.values()), buckets

    async def admit(self, client: str, limits: RateLimits) -> Admission:
        return self.admit_now(client, limits)

    def admit_now(self, client: str, limits: RateLimits, *, processes: int = 1) -> Admission:
        """:meth:`admit`, synchronously; with ``processes`` above 1, enforcing only this process's
        :func:`share` of each limit (a refusal still names the configured limits)."""
        now = self._clock()
        exceeded: list[str] = []
        longest = 0.0
        leases = self._leases.setdefault(client, set())
        if limits.concurrent_requests and len(leases) >= share(limits.concurrent_requests, processes):
            exceeded.append("concurrent_requests")
            longest = CONCURRENCY_RETRY
        for name, counts in (("requests_per_minute", self._requests), ("tokens_per_minute", self._tokens)):
            limit = share(getattr(limits, name), processes)
            if limit:
                used, buckets = self._used(counts, client, now)
                if used >= limit:
                    exceeded.append(name)
                    longest = max(longest, _wait(buckets, used, limit, now))
        budget = share(nanos(limits.budget_usd_per_day), processes)
        if budget:
            spend = self._spend.setdefault(client, _Spend())
            if spend.used(now) >= budget:
                exceeded.append(BUDGET)
                longest = max(longest, spend.wait(budget, now))
        if exceeded:
            raise refusal(exceeded, longest, limits)
        if limits.requests_per_minute:
            buckets = self._requests[client]
            buckets[int(now // 1)] = buckets.get(int(now // 1), 0) + 1
        admission = Admission(client, limits, local=True)
        if limits.concurrent_requests:
            admission.lease = uuid.uuid4().hex
            leases.add(admission.lease)
        return admission

    async def finish(self, admission: Admission, tokens: int, cost: float = 0.0) -> None:
        self.finish_now(admission, tokens, cost)

    def finish_now(self, admission: Admission, tokens: int, cost: float = 0.0) -> None:
        """:meth:`finish`, synchronously."""
        if admission.lease is not None:
            self._leases.get(admission.client, set()).discard(admission.lease)
        now = self._clock()
        if admission.limits.tokens_per_minute and tokens > 0:
            second = int(now // 1)
            buckets = self._tokens.setdefault(admission.client, {})
            buckets[second] = buckets.get(second, 0) + tokens
        charge = nanos(cost)
        if admission.limits.budget_usd_per_day and charge > 0:
            self._spend.setdefault(admission.client, _Spend()).add(now, charge)

    async def close(self) -> None:
        return None


# KEYS: requests hash, tokens hash, leases zset, spend hash.
# ARGV: now, requests_per_minute, tokens_per_minute, concurrent_requests, lease id, lease expiry, window,
#       budget (nano-dollars), day, day bucket (seconds).
ADMIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[7])
local oldest = math.floor(now) - window + 1

local function used(key)
  local flat = redis.call('HGETALL', key)
  local total, live, dead = 0, {}, {}
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second < oldest then
      dead[#dead + 1] = flat[i]
    else
      local amount = tonumber(flat[i + 1])
      total = total + amount
      live[#live + 1] = {second, amount}
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return total, live
end

local function wait(live, total, limit)
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, bucket in ipairs(live) do
    total = total - bucket[2]
    if total < limit then return bucket[1] + window - now end
  end
  return 0
end

local function minutes(first, last)
  local names = {}
  for minute = first, last do names[#names + 1] = string.format('%d', minute) end
  return names
end

-- The spend hash holds minute -> nano-dollars, 'total' (their sum) and 'since' (no minute before
-- it is held): a check drops only the minutes that left the window since the one before.
local function spent(key, day, size)
  local first = math.floor(now / size) - day / size + 1
  local meta = redis.call('HMGET', key, 'total', 'since')
  local total, since = tonumber(meta[1]) or 0, tonumber(meta[2])
  if since == nil or since >= first then return total, since or first end
  if first - since <= day / size then
    local dead = minutes(since, first - 1)
    for _, amount in ipairs(redis.call('HMGET', key, unpack(dead))) do total = total - (tonumber(amount) or 0) end
    redis.call('HDEL', key, unpack(dead))
  else  -- untouched for over a day (the key outlives its charges): count what is left
    local flat = redis.call('HGETALL', key)
    local dead = {}
    total = 0
    for i = 1, #flat, 2 do
      local minute = tonumber(flat[i])
      if minute ~= nil and minute < first then dead[#dead + 1] = flat[i]
      elseif minute ~= nil then total = total + tonumber(flat[i + 1]) end
    end
    if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  end
  redis.call('HSET', key, 'total', string.format('%.0f', total), 'since', string.format('%d', first))
  return total, first
end

-- Seconds until enough of the oldest minutes age out for the spend to be under the budget (read
-- an hour at a time, from 'since' to a little past this minute: another host's clock may be ahead).
-- 'since' moves up to the oldest minute found, so the next refusal starts there.
local function spend_wait(key, total, budget, since, day, size)
  local last = math.floor(now / size) + 60
  local start, found = since, false
  while start <= last do
    local amounts = redis.call('HMGET', key, unpack(minutes(start, math.min(start + 59, last))))
    for i, amount in ipairs(amounts) do
      local minute = start + i - 1
      if amount and not found then
        found = true
        if minute > since then redis.call('HSET', key, 'since', string.format('%d', minute)) end
      end
      total = total - (tonumber(amount) or 0)
      if total < budget then return minute * size + day - now end
    end
    start = start + 60
  end
  return 0
end

local exceeded, longest = {}, 0
local concurrent = tonumber(ARGV[4])
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[3]) >= concurrent then
    exceeded[#exceeded + 1] = 'concurrent_requests'
    longest = 1
  end
end
local names = {'requests_per_minute', 'tokens_per_minute'}
for i = 1, 2 do
  local limit = tonumber(ARGV[1 + i])
  if limit > 0 then
    local total, live = used(KEYS[i])
    if total >= limit then
      exceeded[#exceeded + 1] = names[i]
      longest = math.max(longest, wait(live, total, limit))
    end
  end
end
local budget = tonumber(ARGV[8])
if budget > 0 then
  local day, size = tonumber(ARGV[9]), tonumber(ARGV[10])
  local total, since = spent(KEYS[4], day, size)
  if total >= budget then
    exceeded[#exceeded + 1] = 'budget_usd_per_day'
    longest = math.max(longest, spend_wait(KEYS[4], total, budget, since, day, size))
  end
end
if #exceeded > 0 then
  return {0, table.concat(exceeded, ','), tostring(longest)}
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[1], string.format('%d', math.floor(now)), 1)
  redis.call('EXPIRE', KEYS[1], window + 1)
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[6]) - now) + 1)
end
return {1}
"""

# KEYS: tokens hash, leases zset, spend hash.
# ARGV: now, tokens, lease id ('' for none), window, spend (nano-dollars), day, day bucket (seconds).
FINISH = """
local now = tonumber(ARGV[1])
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[1], string.format('%d', math.floor(now)), ARGV[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]) + 1)
end
if tonumber(ARGV[5]) > 0 then
  local size = tonumber(ARGV[7])
  local minute = math.floor(now / size)
  redis.call('HINCRBY', KEYS[3], string.format('%d', minute), ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'total', ARGV[5])
  local since = tonumber(redis.call('HGET', KEYS[3], 'since'))
  if since == nil or minute < since then redis.call('HSET', KEYS[3], 'since', string.format('%d', minute)) end
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]) + 2 * size)
end
return 1
"""


class RedisRateLimiter:
    """Limits shared through Redis by every process using the same server and namespace.

    ``processes`` is how many processes share these limits through Redis: while it is down, each
    enforces its :func:`share` of every limit. Redis clients belong to an event loop (the
    server's); call :meth:`close` in the loop that used the limiter.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, namespace: str = "default", timeout: float = 0.5,
                 retry_after: float = 5.0, lease_seconds: float = 60.0, processes: int = 1,
                 probe_interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        if processes < 1:
            raise InvalidRequest(f"processes must be at least 1, got {processes}", param="processes")
        self.processes = processes
        self.probe_interval = probe_interval
        part = f" (1/{processes} of each limit)" if processes > 1 else ""
        self._link = RedisLink(url, timeout=timeout, retry_after=retry_after, logger=logger,
                                 fallback=f"enforcing rate limits in this process alone{part}",
                                 restored="rate limits shared")
        self.url = self._link.url
        self.namespace = namespace
        self.timeout = timeout
        self.retry_after = retry_after
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._scripts: WeakKeyDictionary[Redis, tuple[AsyncScript, AsyncScript]] = WeakKeyDictionary()
        self._local = MemoryRateLimiter(clock=clock)  # counts while Redis is down, dropped when it is back
        self._local_used = False
        self._tried_at = -math.inf  # time.monotonic() of the last call to Redis's ADMIT
        self._held: dict[str, str] = {}  # lease id -> its zset, renewed while the request runs
        self._renewer: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        """Whether limits are currently enforced in this process alone because Redis is unavailable."""
        return self._link.degraded

    def _loop_scripts(self) -> tuple[AsyncScript, AsyncScript]:
        """ADMIT and FINISH on the running loop's client, registered once per client."""
        redis = self._link.client()
        scripts = self._scripts.get(redis)
        if scripts is None:
            scripts = self._scripts[redis] = (redis.register_script(ADMIT), redis.register_script(FINISH))
        return scripts

    def _keys(self, client: str) -> tuple[str, str, str, str]:
        base = f"patchbay:{self.namespace}:limits:{{{client}}}:"  # one hash slot per client (Redis Cluster)
        return base + "requests", base + "tokens", base + "leases", base + "spend"

    async def admit(self, client: str, limits: RateLimits) -> Admission:
        async def remote() -> Admission | ClientRateLimited:
            self._tried_at = time.monotonic()
            now = self._clock()
            lease = uuid.uuid4().hex if limits.concurrent_requests else None
            args: list[EncodableT] = [repr(now), limits.requests_per_minute, limits.tokens_per_minute,
                                      limits.concurrent_requests, lease or "", repr(now + self.lease_seconds), WINDOW,
                                      nanos(limits.budget_usd_per_day), DAY, DAY_BUCKET]
            admit, _ = self._loop_scripts()
            result = await admit(keys=list(self._keys(client)), args=args)
            if int(result[0]) != 1:  # returned, not raised: Redis did answer
                return refusal(str(result[1]).split(","), float(result[2]), limits)
            return Admission(client, limits, lease)

        async def local() -> Admission | ClientRateLimited:
            self._local_used = True
            try:
                return self._local.admit_now(client, limits, processes=self.processes)
            except ClientRateLimited as error:
                return error

        outcome = await self._link.run(remote, local)
        if (isinstance(outcome, ClientRateLimited) and self._link.degraded
                and time.monotonic() - self._tried_at >= self.probe_interval):
            # Refused by the local share: Redis may be back within the back-off, and then it decides.
            outcome = await self._link.run(remote, local, probe=True)
        if not self._link.degraded and self._local_used:  # Redis answered: it is the truth again
            self._local = MemoryRateLimiter(clock=self._clock)
            self._local_used = False
        if isinstance(outcome, ClientRateLimited):
            raise outcome
        if outcome.lease is not None and not outcome.local:
            self._held[outcome.lease] = self._keys(client)[2]
            self._start_renewing()
        return outcome

    async def finish(self, admission: Admission, tokens: int, cost: float = 0.0) -> None:
        if admission.local:
            if self._link.degraded:  # else its counts were dropped with the rest when Redis came back
                self._local.finish_now(admission, tokens, cost)
            return
        if admission.lease is not None:
            self._held.pop(admission.lease, None)
        charge = tokens if admission.limits.tokens_per_minute and tokens > 0 else 0
        spend = max(nanos(cost), 0) if admission.limits.budget_usd_per_day else 0
        if admission.lease is None and not charge and not spend:
            return
        _, tokens_key, leases, spend_key = self._keys(admission.client)

        charged = False

        async def remote() -> None:
            nonlocal charged
            _, finish = self._loop_scripts()
            await finish(keys=[tokens_key, leases, spend_key],
                         args=[repr(self._clock()), charge, admission.lease or "", WINDOW, spend, DAY, DAY_BUCKET])
            charged = True

        await self._link.attempt(remote)
        if not charged and (charge or spend):
            # Redis failed: the lease expires by itself; the charges go to the counts enforced meanwhile.
            self._local_used = True
            self._local.finish_now(Admission(admission.client, admission.limits, local=True), charge, cost)

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while self._held:
            await asyncio.sleep(self.lease_seconds / 3)  # a period, not a synchronisation
            await self.renew()

    async def renew(self) -> None:
        """Push the expiry of this process's leases a full ``lease_seconds`` forward (done every
        third of that while requests run)."""
        held = list(self._held.items())
        if not held:
            return
        expiry = self._clock() + self.lease_seconds

        async def remote() -> None:
            pipe = self._link.client().pipeline(transaction=False)
            for lease, key in held:
                pipe.zadd(key, {lease: expiry}, xx=True)
            for key in {key for _, key in held}:  # the set itself outlives its last lease
                pipe.expire(key, math.ceil(self.lease_seconds) + 1)
            await pipe.execute()

        await self._link.attempt(remote)

    async def close(self) -> None:
        """Stop renewing leases and close the Redis connections."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._link.close()

    def __repr__(self) -> str:
        state = ", degraded" if self.degraded else ""
        return f"RedisRateLimiter({self.url!r}, namespace={self.namespace!r}, processes={self.processes}{state})"
