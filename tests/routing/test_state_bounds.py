"""The router state stays bounded however many distinct target keys requests make up.

A ``"*"`` route turns every model name a caller sends into a state key, so both stores keep at most
``max_targets`` of them (least recently used first to go, never one with requests in flight) and
the Redis store lets a target's state expire ``state_ttl`` after its last write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from patchbay.errors import InvalidRequest
from patchbay.routing.redis_state import STATE_TTL, RedisStateStore
from patchbay.routing.state import MAX_TARGETS, Health, MemoryStateStore
from tests.routing.test_state import FakeClock

CAP = 50


def made_up(i: int) -> str:
    return f"Fake/made-up-model-{i}"


# -- MemoryStateStore ---------------------------------------------------------------------------


async def test_memory_store_defaults_to_the_documented_cap() -> None:
    assert MemoryStateStore().max_targets == MAX_TARGETS == 10_000


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_memory_store_rejects_a_bad_cap(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="max_targets"):
        MemoryStateStore(max_targets=bad)  # type: ignore[arg-type]


async def test_memory_store_never_holds_more_than_the_cap() -> None:
    store = MemoryStateStore(max_targets=CAP)
    for i in range(10_000 + 7):
        await store.record_success(made_up(i), latency=0.1, ttft=None)
        if i % 997 == 0:
            assert len(await store.all_health()) <= CAP
    kept = await store.all_health()
    assert len(kept) == CAP
    assert set(kept) == {made_up(i) for i in range(10_007 - CAP, 10_007)}  # the newest survive


async def test_memory_store_default_cap_holds_against_10000_plus_names() -> None:
    store = MemoryStateStore()
    for i in range(MAX_TARGETS + 500):
        await store.record_failure(made_up(i), error="boom", window=60.0)
    kept = await store.all_health()
    assert len(kept) == MAX_TARGETS
    assert made_up(0) not in kept and made_up(MAX_TARGETS + 499) in kept


@pytest.mark.parametrize("use", ["record_success", "record_failure", "set_cooldown", "cooldown_until",
                                 "add_in_flight", "health"])
async def test_every_access_marks_a_target_recently_used(use: str) -> None:
    clock = FakeClock()
    store = MemoryStateStore(max_targets=3, clock=clock)
    await store.set_cooldown("A/a", clock.now + 60)
    for key in ("B/b", "C/c"):
        await store.record_success(key, latency=0.1, ttft=None)
    # "A/a" is the least recently used now; touching it makes "B/b" the one to go.
    if use == "record_success":
        await store.record_success("A/a", latency=0.1, ttft=None)
    elif use == "record_failure":
        await store.record_failure("A/a", error="boom", window=60.0)
    elif use == "set_cooldown":
        await store.set_cooldown("A/a", clock.now + 30)
    elif use == "cooldown_until":
        assert await store.cooldown_until("A/a") == clock.now + 60
    elif use == "add_in_flight":
        await store.add_in_flight("A/a", 1)
        await store.add_in_flight("A/a", -1)
    else:
        assert (await store.health("A/a")).cooldown_until == clock.now + 60
    await store.record_success("D/d", latency=0.1, ttft=None)
    assert sorted(await store.all_health()) == ["A/a", "C/c", "D/d"]


async def test_reading_an_unknown_key_creates_nothing() -> None:
    store = MemoryStateStore(max_targets=2)
    await store.record_success("A/a", latency=0.1, ttft=None)
    await store.record_success("B/b", latency=0.1, ttft=None)
    for i in range(10):
        assert await store.health(made_up(i)) == Health()
        assert await store.cooldown_until(made_up(i)) is None
    assert sorted(await store.all_health()) == ["A/a", "B/b"]


async def test_an_evicted_target_reads_as_fresh() -> None:
    clock = FakeClock()
    store = MemoryStateStore(max_targets=CAP, clock=clock)
    await store.record_failure("Victim/m", error="boom", window=60.0)
    await store.set_cooldown("Victim/m", clock.now + 600)
    for i in range(CAP):
        await store.record_success(made_up(i), latency=0.1, ttft=None)
    assert "Victim/m" not in await store.all_health()
    assert await store.health("Victim/m") == Health()
    assert await store.cooldown_until("Victim/m") is None
    # A failure counted afresh: the window starts empty again.
    assert await store.record_failure("Victim/m", error="again", window=60.0) == 1


async def test_a_target_with_requests_in_flight_is_never_evicted() -> None:
    store = MemoryStateStore(max_targets=CAP)
    assert await store.add_in_flight("Busy/m", 2) == 2
    for i in range(10 * CAP):
        await store.record_success(made_up(i), latency=0.1, ttft=None)
    kept = await store.all_health()
    assert len(kept) == CAP and kept["Busy/m"].in_flight == 2
    # Once idle it is the most recently used, then ages out like any other.
    assert await store.add_in_flight("Busy/m", -2) == 0
    await store.record_success(made_up(-1), latency=0.1, ttft=None)
    assert "Busy/m" in await store.all_health()
    for i in range(CAP):
        await store.record_success(f"Later/{i}", latency=0.1, ttft=None)
    assert "Busy/m" not in await store.all_health()


async def test_when_every_target_is_in_flight_the_store_grows_rather_than_lose_counts() -> None:
    store = MemoryStateStore(max_targets=3)
    for i in range(5):
        await store.add_in_flight(made_up(i), 1)
    health = await store.all_health()
    assert len(health) == 5 and all(h.in_flight == 1 for h in health.values())
    for i in range(5):
        assert await store.add_in_flight(made_up(i), -1) == 0
    # The next new record brings it back under the cap, forgetting the least recently used.
    await store.record_success("New/m", latency=0.1, ttft=None)
    assert sorted(await store.all_health()) == sorted([made_up(3), made_up(4), "New/m"])


# -- RedisStateStore ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's database, to look at what the store wrote."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def shared(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisStateStore]:
    """A Redis store capped at :data:`CAP` targets; it must never have fallen back."""
    store = RedisStateStore(redis_url, namespace="bounds", clock=clock, timeout=2.0, max_targets=CAP,
                            state_ttl=3600.0)
    try:
        yield store
        assert not store.degraded, "the Redis store fell back to local state"
    finally:
        await store.close()


def test_redis_store_defaults_and_bad_values() -> None:
    store = RedisStateStore()
    assert (store.max_targets, store.state_ttl) == (MAX_TARGETS, STATE_TTL)
    with pytest.raises(InvalidRequest, match="max_targets"):
        RedisStateStore(max_targets=0)
    for bad in (0, -5.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequest, match="state_ttl"):
            RedisStateStore(state_ttl=bad)


@pytest.mark.redis
async def test_redis_health_hashes_expire_and_every_write_renews_them(
        shared: RedisStateStore, raw: aioredis.Redis) -> None:
    key = "Fake/model"
    health = "patchbay:bounds:health:Fake/model"
    await shared.record_success(key, latency=0.1, ttft=None)
    first = await raw.pttl(health)
    assert 0 < first <= 3_600_000
    await raw.pexpire(health, 1000)
    for write in (shared.record_failure(key, error="boom", window=60.0), shared.add_in_flight(key, 1),
                  shared.set_cooldown(key, shared._clock() + 60), shared.add_in_flight(key, -1)):
        await write
        assert await raw.pttl(health) > 1000
        await raw.pexpire(health, 1000)
    assert await raw.zscore("patchbay:bounds:recent", key) == shared._clock()
    assert 0 < await raw.pttl("patchbay:bounds:recent") <= 3_600_000


@pytest.mark.redis
async def test_redis_recent_set_is_trimmed_to_the_cap(shared: RedisStateStore, raw: aioredis.Redis,
                                                        clock: FakeClock) -> None:
    for i in range(3 * CAP):
        clock.advance(1)
        await shared.record_success(made_up(i), latency=0.1, ttft=None)
    # A burst of members written behind the store's back is trimmed by all_health too.
    await raw.zadd("patchbay:bounds:recent", {f"Planted/{i}": clock.now - 1000 - i for i in range(500)})
    kept = await shared.all_health()
    assert sorted(kept) == sorted(made_up(i) for i in range(2 * CAP, 3 * CAP))
    assert await raw.zcard("patchbay:bounds:recent") == CAP
    assert kept[made_up(3 * CAP - 1)].successes == 1


@pytest.mark.redis
async def test_redis_writes_keep_the_recent_set_bounded_without_all_health(
        shared: RedisStateStore, raw: aioredis.Redis) -> None:
    for i in range(4 * CAP):
        await shared.add_in_flight(made_up(i), 1)
    assert await raw.zcard("patchbay:bounds:recent") == CAP


@pytest.mark.redis
async def test_redis_stale_members_are_dropped(shared: RedisStateStore, raw: aioredis.Redis,
                                               clock: FakeClock) -> None:
    await shared.record_failure("Old/model", error="boom", window=60.0)
    clock.advance(3000)
    await shared.record_success("Young/model", latency=0.1, ttft=None)
    assert sorted(await shared.all_health()) == ["Old/model", "Young/model"]
    clock.advance(601)  # "Old/model" was last written 3601 s ago, past the 3600 s state_ttl
    assert sorted(await shared.all_health()) == ["Young/model"]
    assert await raw.zrange("patchbay:bounds:recent", 0, -1) == ["Young/model"]
    await shared.set_cooldown("Old/model", clock.now + 60)  # a new write brings it back
    assert sorted(await shared.all_health()) == ["Old/model", "Young/model"]


@pytest.mark.redis
async def test_an_old_deployments_keys_set_breaks_nothing(shared: RedisStateStore, raw: aioredis.Redis) -> None:
    await raw.sadd("patchbay:bounds:keys", "Legacy/model", "Fake/model")
    await shared.record_success("Fake/model", latency=0.2, ttft=0.1)
    await shared.record_failure("Fake/model", error="boom", window=60.0)
    await shared.add_in_flight("Fake/model", 1)
    await shared.set_cooldown("Fake/model", shared._clock() + 60)
    health = await shared.all_health()
    assert sorted(health) == ["Fake/model"]
    assert (health["Fake/model"].successes, health["Fake/model"].failures, health["Fake/model"].in_flight) == (1, 1, 1)
    assert await raw.type("patchbay:bounds:keys") == "set"  # left alone, for a deployment still using it
    assert await raw.scard("patchbay:bounds:keys") == 2


@pytest.mark.redis
async def test_a_busy_target_trimmed_from_recent_keeps_its_count(shared: RedisStateStore,
                                                                  clock: FakeClock) -> None:
    assert await shared.add_in_flight("Busy/model", 1) == 1
    for i in range(2 * CAP):
        clock.advance(1)
        await shared.record_success(made_up(i), latency=0.1, ttft=None)
    clock.advance(1)
    assert "Busy/model" not in await shared.all_health()
    assert (await shared.health("Busy/model")).in_flight == 1
    assert await shared.add_in_flight("Busy/model", -1) == 0
    assert "Busy/model" in await shared.all_health()


async def test_the_local_fallback_has_the_same_cap(unused_tcp_port: int, clock: FakeClock) -> None:
    store = RedisStateStore(f"redis://127.0.0.1:{unused_tcp_port}/0", max_targets=CAP, clock=clock, timeout=0.2)
    try:
        for i in range(3 * CAP):
            await store.record_success(made_up(i), latency=0.1, ttft=None)
        assert store.degraded
        kept = await store.all_health()
        assert sorted(kept) == sorted(made_up(i) for i in range(2 * CAP, 3 * CAP))
    finally:
        await store.close()
