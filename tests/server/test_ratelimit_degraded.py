"""Rate limits while Redis is down: each of N processes enforces limit // N, and once Redis answers
again its counts alone decide (the local ones are dropped, never added to Redis's, never a 429).

Redis "goes down" through a relay on the test's event loop in front of the real redis-server:
cutting the relay refuses connections at once, restoring it reopens the same port, and Redis keeps
what it counted before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from patchbay.errors import ClientRateLimited, InvalidRequest
from patchbay.server.ratelimit import Admission, MemoryRateLimiter, RedisRateLimiter, limiter_for, share
from patchbay.settings import RateLimits, RouterSettings, ServerSettings, Settings, load_settings
from tests.support.redis_server import free_port


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Relay:
    """A TCP relay on a fixed local port to a Redis server, which the test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Stop listening (connections are refused) and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):  # each end then reads end-of-file, and its relay task ends
            writer.close()
        await asyncio.gather(*self._tasks)
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


@pytest_asyncio.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    relay = Relay(port)
    await relay.up()
    try:
        yield relay
    finally:
        await relay.down()


@pytest.fixture
def clock() -> Clock:
    return Clock()


LIMITS = RateLimits(requests_per_minute=60)


async def admit_all(limiter: RedisRateLimiter | MemoryRateLimiter, attempts: int,
                    limits: RateLimits = LIMITS) -> tuple[list[Admission], list[ClientRateLimited]]:
    """``attempts`` admissions of client "a": the ones let in and the refusals."""
    admitted: list[Admission] = []
    refused: list[ClientRateLimited] = []
    for _ in range(attempts):
        try:
            admitted.append(await limiter.admit("a", limits))
        except ClientRateLimited as error:
            refused.append(error)
    return admitted, refused


def test_a_share_is_the_limit_divided_rounded_down_but_never_nothing() -> None:
    assert share(60, 2) == 30 and share(61, 2) == 30 and share(60, 1) == 60
    assert share(1, 3) == 1  # a process still serves a client whose limit is below N
    assert share(0, 4) == 0  # unlimited stays unlimited


async def test_the_memory_limiter_enforces_a_share_and_names_the_configured_limit(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    limits = RateLimits(requests_per_minute=60, concurrent_requests=4)
    for _ in range(2):
        limiter.admit_now("a", limits, processes=2)
    with pytest.raises(ClientRateLimited) as caught:
        limiter.admit_now("a", limits, processes=2)
    assert caught.value.limit == "concurrent_requests" and "concurrent_requests (4)" in caught.value.message
    tokens = RateLimits(tokens_per_minute=100)
    limiter.finish_now(limiter.admit_now("b", tokens, processes=4), 25)  # the share is 25: now used up
    with pytest.raises(ClientRateLimited) as caught:
        limiter.admit_now("b", tokens, processes=4)
    assert "tokens_per_minute (100)" in caught.value.message


async def test_two_instances_split_the_limit_while_redis_is_down_and_redis_decides_once_back(
        relay: Relay, clock: Clock) -> None:
    # A long back-off: what lets requests in after Redis returns is the probe, not the back-off ending.
    first, second = (RedisRateLimiter(relay.url, namespace="t", processes=2, timeout=2.0, retry_after=600.0,
                                      probe_interval=0.0, clock=clock) for _ in range(2))
    try:
        for limiter in (first, second):  # Redis counts 20 of the 60
            admitted, refused = await admit_all(limiter, 10)
            assert len(admitted) == 10 and not refused and not any(a.local for a in admitted)

        await relay.down()
        clock.now += 1
        degraded: list[Admission] = []
        for limiter in (first, second):
            admitted, refused = await admit_all(limiter, 40)
            assert limiter.degraded and all(a.local for a in admitted)
            assert len(admitted) == 30 and len(refused) == 10  # 60 // 2 each: together within 60
            assert all("requests_per_minute (60)" in error.message for error in refused)
            assert all(error.retry_after is not None and 0 < error.retry_after <= 60 for error in refused)
            degraded += admitted
        clock.now += 30  # later in the same window: the shares are still used up
        for limiter in (first, second):
            admitted, refused = await admit_all(limiter, 3)
            assert not admitted and len(refused) == 3

        await relay.up()
        back: list[Admission] = []
        refusals: list[ClientRateLimited] = []
        for _ in range(30):
            for limiter in (first, second):
                admitted, refused = await admit_all(limiter, 1)
                back += admitted
                refusals += refused
        # Redis held 20: exactly 40 more, none of them refused by the exhausted local shares, and the
        # 60 admitted locally were never added to Redis's count.
        assert len(back) == 40 and not any(a.local for a in back)
        assert refusals and all("requests_per_minute (60)" in error.message for error in refusals)
        assert not first.degraded and not second.degraded
        for i, admission in enumerate(degraded):  # requests admitted while degraded end after Redis is back
            await (first if i < 30 else second).finish(admission, 5)

        await relay.down()  # down again in the same window: the local counts start from nothing
        admitted, refused = await admit_all(first, 31)
        assert len(admitted) == 30 and len(refused) == 1 and all(a.local for a in admitted)
    finally:
        await first.close()
        await second.close()


async def test_concurrency_slots_are_shared_out_while_redis_is_down(relay: Relay, clock: Clock) -> None:
    limiter = RedisRateLimiter(relay.url, processes=3, timeout=2.0, retry_after=600.0, probe_interval=0.0,
                               clock=clock)
    limits = RateLimits(concurrent_requests=7)  # 7 // 3 = 2 slots in this process
    try:
        await relay.down()
        admitted, refused = await admit_all(limiter, 3, limits)
        assert len(admitted) == 2 and len(refused) == 1 and refused[0].limit == "concurrent_requests"
        await limiter.finish(admitted[0], 0)
        again, _ = await admit_all(limiter, 1, limits)
        assert len(again) == 1 and again[0].local
    finally:
        await limiter.close()


def test_instances_come_from_the_router_table_and_multiply_with_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "patchbay.toml"
    path.write_text("[router]\ninstances = 3\n", encoding="utf-8")
    assert load_settings(path, environ={}).router.instances == 3
    assert load_settings(path, environ={"PATCHBAY_ROUTER_INSTANCES": "2"}).router.instances == 2
    assert RouterSettings().instances == 1
    path.write_text("[router]\ninstances = 0\n", encoding="utf-8")
    with pytest.raises(InvalidRequest) as caught:
        load_settings(path, environ={})
    assert "router.instances must be at least 1" in caught.value.message
    monkeypatch.setenv("PATCHBAY_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = Settings(server=ServerSettings(workers=2), router=RouterSettings(instances=3), limits=LIMITS)
    limiter = limiter_for(settings)
    assert isinstance(limiter, RedisRateLimiter) and limiter.processes == 6
    with pytest.raises(InvalidRequest):
        RedisRateLimiter("redis://127.0.0.1:1/0", processes=0)
