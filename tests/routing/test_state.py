"""The router state stores: the protocol on both stores, Redis sharing and Redis degradation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

import pytest
import redis

from patchbay.redact import register_secret
from patchbay.redis_link import masked_url
from patchbay.routing.redis_state import RedisStateStore
from patchbay.routing.state import (
    ERROR_MAX_CHARS,
    Health,
    MemoryStateStore,
    StateStore,
    fingerprint,
)
from tests.support import redis_server as redis_fixtures
from tests.support.paths import ROOT
from tests.support.redis_server import free_port, start_redis

KEY = "Liaobots/gpt-4o-2024-08-06"
LOGGER = "patchbay.routing.state"


class FakeClock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[StateStore]:
    """Each store, on a controlled clock; the Redis one must never have fallen back."""
    if request.param == "memory":
        yield MemoryStateStore(clock=clock)
        return
    url: str = request.getfixturevalue("redis_url")
    shared = RedisStateStore(url, namespace="test", clock=clock, timeout=2.0)
    try:
        yield shared
        assert not shared.degraded, "the Redis store fell back to local state"
    finally:
        await shared.close()


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- the protocol, on both stores -------------------------------------------------------------


async def test_implements_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)


async def test_unknown_key_has_defaults(store: StateStore) -> None:
    assert await store.health(KEY) == Health()
    assert await store.cooldown_until(KEY) is None
    assert await store.all_health() == {}
    assert await store.banned_credentials("pool") == set()


async def test_success_updates_moving_averages(store: StateStore) -> None:
    await store.record_success(KEY, latency=1.0, ttft=0.5)
    health = await store.health(KEY)
    assert (health.successes, health.latency, health.ttft) == (1, 1.0, 0.5)

    await store.record_success(KEY, latency=2.0, ttft=None)
    health = await store.health(KEY)
    assert health.latency == pytest.approx(0.3 * 2.0 + 0.7 * 1.0)
    assert health.ttft == 0.5

    await store.record_success(KEY, latency=1.3, ttft=1.0)
    health = await store.health(KEY)
    assert health.successes == 3
    assert health.latency == pytest.approx(1.3)
    assert health.ttft == pytest.approx(0.3 * 1.0 + 0.7 * 0.5)
    assert health.success_rate == 1.0


async def test_ttft_unknown_until_measured(store: StateStore) -> None:
    await store.record_success(KEY, latency=0.4, ttft=None)
    assert (await store.health(KEY)).ttft is None


async def test_failures_counted_within_window(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    counts = []
    for _ in range(3):
        counts.append(await store.record_failure(KEY, error="UpstreamError: 502", window=10.0))
        clock.advance(1.0)
    assert counts == [1, 2, 3]

    clock.now = start + 11.5  # the failures at +0 and +1 are out of the window, +2 is in
    assert await store.record_failure(KEY, error="UpstreamError: 503", window=10.0) == 2
    clock.advance(100.0)
    assert await store.record_failure(KEY, error="UpstreamError: 504", window=10.0) == 1

    health = await store.health(KEY)
    assert health.failures == 5
    assert health.last_error == "UpstreamError: 504"
    assert health.last_error_at == clock.now
    await store.record_success(KEY, latency=1.0, ttft=None)
    assert (await store.health(KEY)).success_rate == pytest.approx(1 / 6)


async def test_failures_kept_apart_per_key(store: StateStore) -> None:
    assert await store.record_failure("a/x", error="e", window=60.0) == 1
    assert await store.record_failure("b/y", error="e", window=60.0) == 1
    assert await store.record_failure("a/x", error="e", window=60.0) == 2


async def test_last_error_is_short_and_redacted(store: StateStore) -> None:
    register_secret("sk-state-test-0123456789")
    await store.record_failure(KEY, error="AuthError: key sk-state-test-0123456789 " + "x" * 1000, window=1.0)
    error = (await store.health(KEY)).last_error
    assert error is not None
    assert len(error) == ERROR_MAX_CHARS
    assert error.startswith("AuthError: key [REDACTED] xxx")


async def test_cooldown_set_and_expire(store: StateStore, clock: FakeClock) -> None:
    until = clock.now + 30.0
    await store.set_cooldown(KEY, until)
    assert await store.cooldown_until(KEY) == until
    assert (await store.health(KEY)).cooldown_until == until

    clock.advance(29.0)
    assert await store.cooldown_until(KEY) == until
    clock.advance(1.0)
    assert await store.cooldown_until(KEY) is None
    assert (await store.health(KEY)).cooldown_until is None

    await store.set_cooldown(KEY, clock.now + 60.0)
    await store.set_cooldown(KEY, clock.now + 5.0)  # a later call replaces the cooldown
    assert await store.cooldown_until(KEY) == clock.now + 5.0
    await store.set_cooldown(KEY, clock.now - 1.0)  # one in the past clears it
    assert await store.cooldown_until(KEY) is None
    assert await store.cooldown_until("other/model") is None


async def test_in_flight_never_negative(store: StateStore) -> None:
    assert await store.add_in_flight(KEY, -1) == 0
    assert await store.add_in_flight(KEY, 2) == 2
    assert await store.add_in_flight(KEY, -5) == 0
    assert await store.add_in_flight(KEY, 1) == 1
    assert (await store.health(KEY)).in_flight == 1


async def test_in_flight_concurrent(store: StateStore) -> None:
    await asyncio.gather(*(store.add_in_flight(KEY, 1) for _ in range(50)))
    assert (await store.health(KEY)).in_flight == 50
    await asyncio.gather(*(store.add_in_flight(KEY, -1) for _ in range(60)))
    assert (await store.health(KEY)).in_flight == 0


async def test_credential_bans_expire(store: StateStore, clock: FakeClock) -> None:
    first, second = fingerprint("auth-code-1"), fingerprint("auth-code-2")
    await store.ban_credential("liaobots", first, clock.now + 10.0)
    await store.ban_credential("liaobots", second, clock.now + 100.0)
    assert await store.banned_credentials("liaobots") == {first, second}
    assert await store.banned_credentials("other") == set()

    clock.advance(50.0)
    assert await store.banned_credentials("liaobots") == {second}
    await store.ban_credential("liaobots", first, clock.now + 10.0)  # banned again
    assert await store.banned_credentials("liaobots") == {first, second}
    clock.advance(100.0)
    assert await store.banned_credentials("liaobots") == set()


async def test_counters(store: StateStore) -> None:
    assert await store.incr("requests") == 1
    assert await store.incr("requests", 5) == 6
    assert await store.incr("fallbacks") == 1
    assert await store.incr("requests", -2) == 4


async def test_all_health_lists_every_key(store: StateStore, clock: FakeClock) -> None:
    await store.record_success("a/1", latency=1.0, ttft=0.1)
    await store.record_failure("b/2", error="boom", window=5.0)
    await store.set_cooldown("c/3", clock.now + 5.0)
    await store.add_in_flight("d/4", 1)
    await store.incr("not-a-target")
    await store.ban_credential("pool", fingerprint("code"), clock.now + 5.0)

    everything = await store.all_health()
    assert set(everything) == {"a/1", "b/2", "c/3", "d/4"}
    for key, health in everything.items():
        assert health == await store.health(key)
    assert everything["c/3"].cooldown_until == clock.now + 5.0
    assert everything["d/4"].in_flight == 1


def test_health_success_rate() -> None:
    assert Health().success_rate is None
    assert Health(successes=3, failures=1).success_rate == 0.75
    assert Health(failures=2).success_rate == 0.0


def test_fingerprint() -> None:
    value = fingerprint("sk-abc")
    assert value == hashlib.sha256(b"sk-abc").hexdigest()[:16]
    assert len(value) == 16 and value == fingerprint("sk-abc") != fingerprint("sk-abd")
    assert "sk-abc" not in value


def test_memory_store_shared_by_threads() -> None:
    shared = MemoryStateStore()

    async def work() -> None:
        for _ in range(200):
            await shared.add_in_flight(KEY, 1)
            await shared.incr("n")
            await shared.record_failure(KEY, error="e", window=3600.0)

    threads = [threading.Thread(target=asyncio.run, args=(work(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    health = asyncio.run(shared.health(KEY))
    assert (health.in_flight, health.failures) == (800, 800)
    assert asyncio.run(shared.incr("n", 0)) == 800


def test_missing_redis_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_fixtures.shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_fixtures.os, "access", lambda path, mode: False)
    with pytest.raises(redis_fixtures.RedisServerError, match="apt-get install -y redis-server"), start_redis():
        pass


def test_masked_url() -> None:
    assert masked_url("redis://:pw-1234@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert masked_url("redis://user:p%40ss@host:1/2") == "redis://user:***@host:1/2"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert "xyz1" not in masked_url("unix:///tmp/redis.sock?db=0&password=xyz1")


# -- Redis specifics ----------------------------------------------------------------------------


async def test_redis_keys_are_namespaced_and_hold_no_secrets(redis_url: str) -> None:
    secret = "auth-code-do-not-store-42"
    first = RedisStateStore(redis_url, namespace="one")
    second = RedisStateStore(redis_url, namespace="two")
    try:
        until = time.time() + 60.0
        await first.set_cooldown(KEY, until)
        await first.ban_credential("liaobots", fingerprint(secret), until)
        await first.record_failure(KEY, error="AuthError", window=60.0)
        await first.record_success(KEY, latency=1.0, ttft=0.2)
        await first.incr("requests")
        assert await second.cooldown_until(KEY) is None
        assert await second.banned_credentials("liaobots") == set()
        assert await second.all_health() == {}
        assert not first.degraded and not second.degraded
    finally:
        await first.close()
        await second.close()

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        keys = client.keys("*")
        assert keys and all(key.startswith("patchbay:one:") for key in keys)
        assert 0 < client.pttl(f"patchbay:one:cooldown:{KEY}") <= 60_001
        assert client.pttl(f"patchbay:one:failures:{KEY}") > 0
        dumped = [str(client.dump(key)) for key in keys]
    assert not any(secret in text for text in dumped)


async def test_redis_stores_share_state(redis_url: str) -> None:
    first = RedisStateStore(redis_url)
    second = RedisStateStore(redis_url)
    try:
        await asyncio.gather(*(s.add_in_flight(KEY, 1) for s in (first, second) for _ in range(20)))
        assert await first.add_in_flight(KEY, 0) == 40
        assert await second.record_failure(KEY, error="x", window=60.0) == 1
        assert await first.record_failure(KEY, error="y", window=60.0) == 2
        assert (await second.health(KEY)).last_error == "y"
    finally:
        await first.close()
        await second.close()


def test_redis_store_used_from_several_event_loops(redis_url: str) -> None:
    shared = RedisStateStore(redis_url)

    async def count() -> int:
        try:
            return await shared.incr("loops")
        finally:
            await shared.close()

    assert [asyncio.run(count()) for _ in range(3)] == [1, 2, 3]
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(count())))
    thread.start()
    thread.join(timeout=30)
    assert results == [4]
    assert not shared.degraded


_WRITER = """
import asyncio, json, sys, time
from patchbay.routing.redis_state import RedisStateStore
from patchbay.routing.state import fingerprint

async def main():
    store = RedisStateStore(sys.argv[1], namespace="shared", timeout=5.0)
    until = time.time() + 600.0
    await store.set_cooldown(sys.argv[2], until)
    await store.ban_credential("liaobots", fingerprint("auth-code-of-A"), until)
    await store.record_failure(sys.argv[2], error="RateLimited: slow down", window=60.0)
    await store.add_in_flight(sys.argv[2], 1)
    print(json.dumps({"until": until, "degraded": store.degraded}), flush=True)
    sys.stdin.readline()  # stay alive, connection open, until the reader has run
    await store.add_in_flight(sys.argv[2], -1)
    await store.close()

asyncio.run(main())
"""

_READER = """
import asyncio, json, sys
from patchbay.routing.redis_state import RedisStateStore

async def main():
    store = RedisStateStore(sys.argv[1], namespace="shared", timeout=5.0)
    health = await store.health(sys.argv[2])
    print(json.dumps({
        "cooldown": await store.cooldown_until(sys.argv[2]),
        "banned": sorted(await store.banned_credentials("liaobots")),
        "failures": health.failures,
        "last_error": health.last_error,
        "in_flight": health.in_flight,
        "keys": sorted(await store.all_health()),
        "degraded": store.degraded,
    }))
    await store.close()

asyncio.run(main())
"""


def test_two_processes_share_cooldowns_and_bans(redis_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-W", "error", "-c"]
    writer = subprocess.Popen(
        [*command, _WRITER, redis_url, KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        line = writer.stdout.readline()
        assert line, f"the writer process failed: {writer.communicate(timeout=10)[1]}"
        written = json.loads(line)
        reader = subprocess.run(
            [*command, _READER, redis_url, KEY], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30
        )
        assert reader.returncode == 0, reader.stderr
        writer.stdin.write("done\n")
        writer.stdin.flush()
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, errors
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()

    seen = json.loads(reader.stdout)
    assert written["degraded"] is False and seen["degraded"] is False
    assert seen["cooldown"] == written["until"]
    assert seen["banned"] == [fingerprint("auth-code-of-A")]
    assert (seen["failures"], seen["last_error"], seen["in_flight"]) == (1, "RateLimited: slow down", 1)
    assert seen["keys"] == [KEY]


# -- degradation ----------------------------------------------------------------------------------


async def exercise(store: StateStore, now: float) -> None:
    """Every operation once, checking the answers local state gives."""
    await store.record_success(KEY, latency=1.0, ttft=0.5)
    assert await store.record_failure(KEY, error="UpstreamError", window=60.0) == 1
    await store.set_cooldown(KEY, now + 30.0)
    assert await store.cooldown_until(KEY) == now + 30.0
    assert await store.add_in_flight(KEY, -1) == 0
    assert await store.add_in_flight(KEY, 2) == 2
    await store.ban_credential("pool", "f" * 16, now + 30.0)
    assert await store.banned_credentials("pool") == {"f" * 16}
    assert await store.incr("requests", 3) == 3
    health = await store.health(KEY)
    assert (health.successes, health.failures, health.in_flight) == (1, 1, 2)
    assert set(await store.all_health()) == {KEY}


@pytest.mark.parametrize("retry_after", [5.0, 0.0])
async def test_unreachable_redis_degrades_to_local_state(
    caplog: pytest.LogCaptureFixture, clock: FakeClock, retry_after: float
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    store = RedisStateStore(url, namespace="down", retry_after=retry_after, clock=clock)
    try:
        started = time.monotonic()
        await exercise(store, clock.now)
        assert store.degraded
        assert time.monotonic() - started < 5.0
    finally:
        await store.close()

    warnings = warnings_logged(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert message.startswith(f"Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]} unavailable, using local")
    assert "s3cret-pass" not in caplog.text
    assert all("s3cret-pass" not in record.getMessage() for record in caplog.records)
    assert "s3cret-pass" not in repr(store)


async def test_unresponsive_redis_is_bounded_by_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    # A socket that accepts connections (into its backlog) but never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = RedisStateStore(url, timeout=0.2)
        try:
            started = time.monotonic()
            assert await store.incr("n") == 1
            assert time.monotonic() - started < 2.0
            assert store.degraded
            assert await store.incr("n") == 2
        finally:
            await store.close()
    assert len(warnings_logged(caplog)) == 1


@pytest.mark.redis
async def test_redis_stopping_mid_test_keeps_answering(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with start_redis() as server:
        store = RedisStateStore(server.url, namespace="flaky", retry_after=0.0)
        try:
            now = time.time()
            await store.set_cooldown("shared/one", now + 60.0)
            assert await store.cooldown_until("shared/one") == now + 60.0
            assert not store.degraded

            server.stop()
            await exercise(store, now)
            assert store.degraded
            assert await store.incr("requests") == 4  # local state goes on counting

            with start_redis(server.port):
                assert await store.incr("requests") == 1  # a fresh, empty Redis
                assert not store.degraded
                assert await store.cooldown_until(KEY) is None
        finally:
            await store.close()

    assert len(warnings_logged(caplog)) == 1
    infos = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert infos == [f"Redis at {server.url} available again, using shared state"]
