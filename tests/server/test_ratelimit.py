"""Per-key rate limits: both limiters under an injected clock, the ``[limits]`` settings, and two
real ``patchbay serve`` processes sharing one real redis-server."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis

from patchbay.errors import BudgetExceeded, ClientRateLimited, InvalidRequest, error_info
from patchbay.redact import fingerprint
from patchbay.server.ratelimit import (
    BUDGET,
    DAY,
    DAY_BUCKET,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    clients,
    limiter_for,
    nanos,
)
from patchbay.settings import RateLimits, Settings, load_settings, parse_api_keys
from tests.replicas.openai_fake import OpenAIFake
from tests.server.test_ratelimit_degraded import Relay
from tests.support.gateway_process import GatewayProcess


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    shared = RedisRateLimiter(url, namespace="test", clock=clock, lease_seconds=10.0)
    yield shared
    assert not shared.degraded
    await shared.close()


async def refused(admit: Awaitable[object]) -> ClientRateLimited:
    with pytest.raises(ClientRateLimited) as caught:
        await admit
    return caught.value


# -- the limiters ---------------------------------------------------------------------------------------


async def test_requests_per_minute_roll_over_with_the_window(limiter: RateLimiter, clock: Clock) -> None:
    limits = RateLimits(requests_per_minute=3)
    for step in (0.0, 0.5, 10.0):
        clock.now = 1_000.0 + step
        await limiter.finish(await limiter.admit("a", limits), 0)
    clock.now = 1_020.0
    error = await refused(limiter.admit("a", limits))
    assert error.limit == "requests_per_minute" and error.status == 429
    assert error.retry_after == pytest.approx(40.0)  # the two requests of second 1000 leave at 1060
    assert "requests_per_minute (3)" in error.message
    clock.now = 1_059.9
    await refused(limiter.admit("a", limits))
    clock.now = 1_060.0
    await limiter.admit("a", limits)  # second 1000 has left the window: room for two again
    await limiter.admit("a", limits)
    error = await refused(limiter.admit("a", limits))
    assert error.retry_after == pytest.approx(10.0)  # then the one of second 1010 leaves, at 1070


async def test_refused_requests_do_not_count(limiter: RateLimiter, clock: Clock) -> None:
    limits = RateLimits(requests_per_minute=1)
    await limiter.admit("a", limits)
    for _ in range(5):
        await refused(limiter.admit("a", limits))
    clock.now += 60
    await limiter.admit("a", limits)


async def test_tokens_are_charged_after_the_request_and_admit_while_under(limiter: RateLimiter,
                                                                          clock: Clock) -> None:
    limits = RateLimits(tokens_per_minute=100)
    await limiter.finish(await limiter.admit("a", limits), 80)
    clock.now += 5
    first = await limiter.admit("a", limits)  # 80 < 100: admitted
    second = await limiter.admit("a", limits)  # nothing charged yet for the first: admitted too
    await limiter.finish(first, 30)
    await limiter.finish(second, 30)  # the window holds 140: over, by what admitted requests used
    error = await refused(limiter.admit("a", limits))
    assert error.limit == "tokens_per_minute"
    assert error.retry_after == pytest.approx(55.0)  # the 80 of second 1000 leave at 1060: 60 < 100
    clock.now = 1_060.0
    await limiter.admit("a", limits)


async def test_concurrent_requests_free_their_slot_when_they_end(limiter: RateLimiter) -> None:
    limits = RateLimits(concurrent_requests=2)
    first = await limiter.admit("a", limits)
    await limiter.admit("a", limits)
    error = await refused(limiter.admit("a", limits))
    assert error.limit == "concurrent_requests" and error.retry_after == pytest.approx(1.0)
    await limiter.finish(first, 0)
    await limiter.admit("a", limits)


async def test_clients_are_counted_apart(limiter: RateLimiter) -> None:
    limits = RateLimits(requests_per_minute=1, concurrent_requests=1)
    await limiter.admit("a", limits)
    await refused(limiter.admit("a", limits))
    await limiter.admit("b", limits)


async def test_a_refusal_names_every_limit_reached_and_the_longest_wait(limiter: RateLimiter,
                                                                         clock: Clock) -> None:
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=10, concurrent_requests=1)
    admission = await limiter.admit("a", limits)
    clock.now += 5
    error = await refused(limiter.admit("a", limits))
    assert error.limit == "concurrent_requests"
    assert "concurrent_requests (1), requests_per_minute (1)" in error.message
    assert error.retry_after == pytest.approx(55.0)
    await limiter.finish(admission, 50)
    error = await refused(limiter.admit("a", limits))
    assert "requests_per_minute (1), tokens_per_minute (10)" in error.message
    assert error.retry_after == pytest.approx(60.0)  # the tokens were charged at 1005


async def test_a_budget_admits_while_the_days_spend_is_under_it(limiter: RateLimiter, clock: Clock) -> None:
    limits = RateLimits(budget_usd_per_day=1.0)
    minute = (1_000 // DAY_BUCKET) * DAY_BUCKET  # 960: the minute of the first charges
    for step in range(10):  # ten charges of 0.1 in floats sum to 0.9999999999999999; in nano-dollars to 1.0
        clock.now = 1_000.0 + step * 30
        await limiter.finish(await limiter.admit("a", limits), 0, 0.1)
    error = await refused(limiter.admit("a", limits))  # 1.0 is not under 1.0
    assert isinstance(error, BudgetExceeded) and error.limit == BUDGET and error.status == 429
    assert error_info(type(error)).code == "budget_exceeded"
    assert "spend budget reached for budget_usd_per_day (1.0 USD)" in error.message
    # The charge of minute 960 leaves the window at 960 + 24 h, leaving 0.9 < 1.0.
    assert error.retry_after == pytest.approx(minute + DAY - clock.now)
    assert f"try again in {minute + DAY - 1_270} s (23 h 55 min)" in error.message
    clock.now = minute + DAY - 0.5
    await refused(limiter.admit("a", limits))
    clock.now = minute + DAY
    await limiter.finish(await limiter.admit("a", limits), 0, 0.25)  # 0.9 + 0.25: over again
    error = await refused(limiter.admit("a", limits))
    assert error.retry_after == pytest.approx(1_020 + DAY - clock.now)  # the next minute, 1020, holds 0.1 + 0.1
    await limiter.admit("b", limits)  # another client's budget is untouched


async def test_a_request_costing_nothing_is_not_charged_and_no_budget_charges_nothing(limiter: RateLimiter,
                                                                                      clock: Clock) -> None:
    limits = RateLimits(budget_usd_per_day=0.01)
    for _ in range(3):
        await limiter.finish(await limiter.admit("a", limits), 5, 0.0)
    await limiter.finish(await limiter.admit("a", limits), 5, 0.02)
    await refused(limiter.admit("a", limits))
    unlimited = RateLimits(requests_per_minute=100)
    await limiter.finish(await limiter.admit("b", unlimited), 5, 50.0)
    await limiter.finish(await limiter.admit("b", limits), 5, 0.0)  # b's 50 dollars were not counted
    await limiter.admit("b", limits)


async def test_a_refusal_over_the_budget_and_a_rate_limit_is_a_budget_refusal(limiter: RateLimiter,
                                                                               clock: Clock) -> None:
    limits = RateLimits(requests_per_minute=1, budget_usd_per_day=0.5)
    await limiter.finish(await limiter.admit("a", limits), 0, 0.75)
    clock.now += 10
    error = await refused(limiter.admit("a", limits))
    assert isinstance(error, BudgetExceeded) and error.limit == BUDGET
    assert "spend budget and rate limit reached for requests_per_minute (1), budget_usd_per_day (0.5 USD)" \
        in error.message
    assert error.retry_after == pytest.approx(960 + DAY - clock.now)  # the longest wait: the budget's
    clock.now += 50  # the request has left the minute's window; the spend has not
    error = await refused(limiter.admit("a", limits))
    assert isinstance(error, BudgetExceeded) and "rate limit" not in error.message


async def test_spend_is_kept_in_redis_as_nano_dollars_by_minute_and_expires(redis_url: str, clock: Clock) -> None:
    limiter = RedisRateLimiter(redis_url, namespace="ns", clock=clock)
    limits = RateLimits(budget_usd_per_day=5.0)
    await limiter.finish(await limiter.admit("name:alice", limits), 0, 0.1)
    await limiter.finish(await limiter.admit("name:alice", limits), 0, 0.2)
    clock.now += DAY_BUCKET
    await limiter.finish(await limiter.admit("name:alice", limits), 0, 1e-9 / 3)  # rounds to nothing
    key = "patchbay:ns:limits:{name:alice}:spend"
    minute = str(1_000 // DAY_BUCKET)
    with redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True) as raw:
        assert sorted(raw.keys("*")) == [key]
        total = str(nanos(0.1) + nanos(0.2))
        assert raw.hgetall(key) == {minute: total, "total": total, "since": minute}
        assert DAY < raw.ttl(key) <= DAY + 2 * DAY_BUCKET
    clock.now = 960 + DAY  # a check drops the buckets that left the window
    await limiter.admit("name:alice", limits)
    with redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True) as raw:
        assert raw.hgetall(key) == {"total": "0", "since": str(int(minute) + 1)}
    await limiter.close()


async def test_spend_left_untouched_for_days_is_gone(limiter: RateLimiter, clock: Clock) -> None:
    limits = RateLimits(budget_usd_per_day=1.0)
    for _ in range(3):
        await limiter.finish(await limiter.admit("a", limits), 0, 0.4)
    clock.now += 3 * DAY  # (Redis's key expiry follows the real clock: the hash is still there)
    await limiter.finish(await limiter.admit("a", limits), 0, 0.6)
    clock.now += 7_200
    await limiter.finish(await limiter.admit("a", limits), 0, 0.6)  # 0.6 < 1.0: the 1.2 of before is gone
    error = await refused(limiter.admit("a", limits))
    assert error.retry_after == pytest.approx(DAY - 7_200 - 40)  # the 0.6 of minute 960 + 3 days


async def test_both_limiters_agree_on_a_long_day(redis_url: str, clock: Clock) -> None:
    """Hundreds of requests of random costs over two days: the same admissions and waits in memory
    and through Redis, every wait ending at a minute's end plus 24 hours."""
    shared = RedisRateLimiter(redis_url, clock=clock)
    memory = MemoryRateLimiter(clock=clock)
    limits = RateLimits(budget_usd_per_day=0.5)
    rng = random.Random(16)
    outcomes: dict[str, list[float]] = {"memory": [], "redis": []}
    for _ in range(600):
        clock.now += rng.choice([1.0, 7.5, 59.0, 300.0, 1_800.0, 5_000.0])
        cost = rng.choice([0.0, 1e-7, 0.003, 0.01, 0.07])
        for name, limiter in (("memory", memory), ("redis", shared)):
            try:
                admission = await limiter.admit("a", limits)
            except BudgetExceeded as error:
                assert error.retry_after is not None
                outcomes[name].append(error.retry_after)
                assert (clock.now + error.retry_after) % DAY_BUCKET == pytest.approx(0, abs=1e-6)
            else:
                outcomes[name].append(0.0)
                await limiter.finish(admission, 0, cost)
    assert outcomes["memory"] == pytest.approx(outcomes["redis"])
    assert 100 < outcomes["memory"].count(0.0) < 500  # both admissions and refusals were tested
    await shared.close()


async def test_the_budget_is_shared_out_while_redis_is_down(unused_tcp_port: int, clock: Clock) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{unused_tcp_port}/0", timeout=0.2, processes=2, clock=clock)
    limits = RateLimits(budget_usd_per_day=1.0)  # 0.5 in each of the two processes
    admitted = 0
    async with asyncio.timeout(5):
        for _ in range(5):
            try:
                admission = await limiter.admit("a", limits)
            except BudgetExceeded as error:
                assert "budget_usd_per_day (1.0 USD)" in error.message  # the configured budget, not the share
                assert error.retry_after == pytest.approx(960 + DAY - clock.now)
                continue
            admitted += 1
            await limiter.finish(admission, 0, 0.2)
    assert limiter.degraded and admitted == 3  # 0, 0.2 and 0.4 are under 0.5
    memory = MemoryRateLimiter(clock=clock)
    memory.finish_now(memory.admit_now("b", RateLimits(budget_usd_per_day=1e-9), processes=4), 0, 1e-9)
    with pytest.raises(BudgetExceeded):  # a share is at least one nano-dollar
        memory.admit_now("b", RateLimits(budget_usd_per_day=1e-9), processes=4)
    await limiter.close()


async def test_a_request_ending_while_redis_is_down_is_charged_to_the_local_share(redis_url: str,
                                                                                 clock: Clock) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    relay = Relay(port)
    await relay.up()
    limiter = RedisRateLimiter(relay.url, processes=2, timeout=2.0, retry_after=600.0, probe_interval=0.0,
                               clock=clock)
    limits = RateLimits(budget_usd_per_day=1.0)
    try:
        admission = await limiter.admit("a", limits)
        assert not admission.local
        await relay.down()
        await limiter.finish(admission, 0, 0.6)  # Redis cannot take it: the local counts do
        assert limiter.degraded
        await refused(limiter.admit("a", limits))  # 0.6 is over this process's 0.5
        await relay.up()
        back = await limiter.admit("a", limits)  # Redis, which never saw the 0.6, decides again
        assert not back.local and not limiter.degraded
    finally:
        await limiter.close()
        await relay.down()


async def test_a_lease_of_a_process_that_died_expires(redis_url: str, clock: Clock) -> None:
    limits = RateLimits(concurrent_requests=1)
    dead = RedisRateLimiter(redis_url, clock=clock, lease_seconds=10.0)
    await dead.admit("a", limits)  # never finished: the process "crashed"
    await dead.close()
    alive = RedisRateLimiter(redis_url, clock=clock, lease_seconds=10.0)
    await refused(alive.admit("a", limits))
    clock.now += 10.0
    await alive.admit("a", limits)
    await alive.close()


async def test_leases_are_renewed_while_the_request_runs(redis_url: str, clock: Clock) -> None:
    limits = RateLimits(concurrent_requests=1)
    running = RedisRateLimiter(redis_url, clock=clock, lease_seconds=10.0)
    admission = await running.admit("a", limits)
    clock.now += 8.0
    await running.renew()  # what the process does every lease_seconds / 3
    clock.now += 8.0
    other = RedisRateLimiter(redis_url, clock=clock, lease_seconds=10.0)
    await refused(other.admit("a", limits))  # 16 s after the admission, the lease still holds
    await running.finish(admission, 0)
    await other.admit("a", limits)
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        assert client.zcard("patchbay:default:limits:{a}:leases") == 1  # other's; running's is gone
        assert 0 < client.ttl("patchbay:default:limits:{a}:leases") <= 11
    await running.close()
    await other.close()


async def test_redis_down_falls_back_to_local_limits_quickly(unused_tcp_port: int,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter(f"redis://:hunter2-secret@127.0.0.1:{unused_tcp_port}/0", timeout=0.2)
    limits = RateLimits(requests_per_minute=2, concurrent_requests=5)
    async with asyncio.timeout(5):
        admission = await limiter.admit("a", limits)
        await limiter.admit("a", limits)
        await refused(limiter.admit("a", limits))  # enforced in this process meanwhile
        await limiter.finish(admission, 10)
    assert limiter.degraded and admission.local
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "in this process alone" in warnings[0].getMessage()
    assert "hunter2-secret" not in caplog.text
    await limiter.close()


async def test_redis_keys_hold_no_api_key(redis_url: str) -> None:
    settings = Settings(limits=RateLimits(requests_per_minute=5, concurrent_requests=2, tokens_per_minute=9),
                        key_limits={"alice": RateLimits(requests_per_minute=1)})
    plain, named = clients(settings, [(None, "sk-plain-secret-1"), ("alice", "sk-alice-secret-2")])
    assert plain.id == f"key:{fingerprint('sk-plain-secret-1')}" and plain.name == "unnamed"
    assert named.id == "name:alice" and named.limits == RateLimits(requests_per_minute=1)
    limiter = RedisRateLimiter(redis_url, namespace="ns")
    for client in (plain, named):
        await limiter.finish(await limiter.admit(client.id, client.limits), 7)
    with redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True) as raw:
        keys = sorted(raw.keys("*"))
        dump = repr([(key, raw.dump(key)) for key in keys])
    assert keys == [f"patchbay:ns:limits:{{key:{fingerprint('sk-plain-secret-1')}}}:{kind}"
                    for kind in ("requests", "tokens")] + ["patchbay:ns:limits:{name:alice}:requests"]
    assert "sk-plain-secret-1" not in dump and "sk-alice-secret-2" not in dump
    await limiter.close()


def test_the_limiter_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_REDIS_URL", raising=False)
    assert limiter_for(Settings()) is None
    assert isinstance(limiter_for(Settings(key_limits={"a": RateLimits(concurrent_requests=1)})),
                      MemoryRateLimiter)
    assert isinstance(limiter_for(Settings(limits=RateLimits(budget_usd_per_day=0.5))), MemoryRateLimiter)
    monkeypatch.setenv("PATCHBAY_REDIS_URL", "redis://127.0.0.1:1/0")
    assert isinstance(limiter_for(Settings(limits=RateLimits(requests_per_minute=1))), RedisRateLimiter)


# -- settings -------------------------------------------------------------------------------------------


def test_keys_may_carry_names() -> None:
    assert parse_api_keys(" alice=sk-1 , sk-2,,bob.b-2=x=y, abc==, sk-3= ") == [
        ("alice", "sk-1"), (None, "sk-2"), ("bob.b-2", "x=y"), (None, "abc=="), (None, "sk-3=")]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patchbay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_limits_defaults_and_named_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nrequests_per_minute = 60\ntokens_per_minute = 1000\n\n"
                           "[limits.alice]\nrequests_per_minute = 5\n\n[limits.bob]\ntokens_per_minute = 0\n")
    settings = load_settings(path, environ={"PATCHBAY_LIMITS_CONCURRENT_REQUESTS": "4"})
    assert settings.limits == RateLimits(60, 1000, 4)
    assert settings.limits_for("alice") == RateLimits(5, 1000, 4)
    assert settings.limits_for("bob") == RateLimits(60, 0, 4)
    assert settings.limits_for("carol") == settings.limits_for(None) == settings.limits
    assert load_settings(write(tmp_path, ""), environ={}).limits.unlimited


def test_budgets_default_per_name_and_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nbudget_usd_per_day = 2.5\n\n[limits.alice]\nbudget_usd_per_day = 10\n\n"
                           "[limits.bob]\nbudget_usd_per_day = 0\n")
    settings = load_settings(path, environ={})
    assert settings.limits.budget_usd_per_day == 2.5 and not settings.limits.unlimited
    assert settings.limits_for("alice").budget_usd_per_day == 10.0
    assert settings.limits_for("bob").unlimited  # 0: no budget
    override = load_settings(path, environ={"PATCHBAY_LIMITS_BUDGET_USD_PER_DAY": "0.75"})
    assert override.limits.budget_usd_per_day == 0.75 and override.limits_for("alice").budget_usd_per_day == 10.0


@pytest.mark.parametrize(("text", "message"), [
    ("[limits]\nrequests_per_minute = -1\n", "limits.requests_per_minute must be 0 (unlimited) or more"),
    ("[limits]\nrequests_per_hour = 1\n", "limits: unknown options ['requests_per_hour']"),
    ("[limits.alice]\ntokens_per_minute = 1.5\n", "limits.alice.tokens_per_minute must be an integer"),
    ("[limits.alice]\nburst = 3\n", "limits.alice: unknown options ['burst']"),
    ("[limits.alice]\nconcurrent_requests = -2\n", "limits.alice.concurrent_requests must be 0"),
    ('[limits."a b"]\nconcurrent_requests = 2\n', "limits.a b: a key name is letters"),
    ("limits = 3\n", "limits must be a table"),
    ("[limits]\nbudget_usd_per_day = -0.5\n", "limits.budget_usd_per_day must be a finite number of US dollars"),
    ("[limits.alice]\nbudget_usd_per_day = inf\n", "limits.alice.budget_usd_per_day must be a finite number"),
    ("[limits.alice]\nbudget_usd_per_day = nan\n", "limits.alice.budget_usd_per_day must be a finite number"),
    ('[limits.alice]\nbudget_usd_per_day = "5"\n', "limits.alice.budget_usd_per_day must be a number"),
])
def test_limit_mistakes_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidRequest) as caught:
        load_settings(path, environ={})
    assert str(path) in caught.value.message and message in caught.value.message


def test_limit_environment_variables_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="PATCHBAY_LIMITS_TOKENS_PER_MINUTE must be an integer"):
        load_settings(None, environ={"PATCHBAY_CONFIG": "", "PATCHBAY_LIMITS_TOKENS_PER_MINUTE": "lots"})
    with pytest.raises(InvalidRequest, match="PATCHBAY_LIMITS_BUDGET_USD_PER_DAY must be a number"):
        load_settings(None, environ={"PATCHBAY_CONFIG": "", "PATCHBAY_LIMITS_BUDGET_USD_PER_DAY": "lots"})
    with pytest.raises(InvalidRequest, match=r"limits\.budget_usd_per_day must be a finite number"):
        load_settings(None, environ={"PATCHBAY_CONFIG": "", "PATCHBAY_LIMITS_BUDGET_USD_PER_DAY": "nan"})


def test_a_limits_table_for_no_key_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        clients(Settings(key_limits={"ghost": RateLimits(1)}), [("alice", "sk-alice-secret")])
    assert "[limits.ghost] applies to no key" in caplog.text and "sk-alice-secret" not in caplog.text


# -- two real servers, one real redis-server -----------------------------------------------------------

KEYS = {"rpm": "sk-rpm-5c1d9e", "conc": "sk-conc-77ab02", "tpm": "sk-tpm-e4f310", "other": "sk-other-9a8b7c"}


class GatedFake(OpenAIFake):
    """The OpenAI fake holding chat requests that say "hold" until ``gate`` opens; ``held`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = 0

    async def completions(self, request: Any) -> Any:
        if self.json_body(request)["messages"][-1]["content"] == "hold":
            self.held += 1
            self._notify()
            await self.gate.wait()
        return await super().completions(request)


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[GatedFake]:
    async with GatedFake() as fake:
        yield fake


@pytest_asyncio.fixture
async def pair(upstream: GatedFake, redis_url: str, tmp_path: Path) -> AsyncIterator[list[GatewayProcess]]:
    """Two gateways sharing one Redis, with limits for the keys named rpm, conc and tpm."""
    config = {
        "server": {"request_log": False},
        "router": {"retries": 1, "first_byte_timeout": 30.0, "timeout": 60.0},
        "providers": {"fake": {"base_url": upstream.api_base, "models": ["fake-small"]}},
        "routes": {"small": ["fake/fake-small"]},
        "limits": {"rpm": {"requests_per_minute": 10}, "conc": {"concurrent_requests": 3},
                   "tpm": {"tokens_per_minute": 25}},
    }
    named = ",".join(f"{name}={key}" for name, key in KEYS.items() if name != "other")
    env = {"PATCHBAY_REDIS_URL": redis_url, "PATCHBAY_API_KEYS": f"{named},{KEYS['other']}"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with GatewayProcess(config, tmp_path / "a", env=env) as first, \
            GatewayProcess(config, tmp_path / "b", env=env) as second:
        yield [first, second]
    for gateway in (first, second):
        for key in KEYS.values():
            assert key not in gateway.log_text


Answer = tuple[int, dict[str, Any], dict[str, str]]


def chat(http: aiohttp.ClientSession, gateway: GatewayProcess, key: str,
         text: str = "Hello") -> Callable[[], Awaitable[Answer]]:
    async def call() -> Answer:
        body = {"model": "small", "messages": [{"role": "user", "content": text}]}
        async with http.post(f"{gateway.api_base}/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as response:
            return response.status, await response.json(), dict(response.headers)
    return call


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, line: str) -> float:
    async with http.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {KEYS['other']}"}) as r:
        text = await r.text()
    values = [float(sample.rsplit(" ", 1)[1]) for sample in text.splitlines() if sample.startswith(line + " ")]
    return sum(values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_requests_per_minute_hold_across_two_servers(pair: list[GatewayProcess],
                                                          http: aiohttp.ClientSession) -> None:
    calls = [chat(http, pair[i % 2], KEYS["rpm"]) for i in range(40)]
    answers = await asyncio.gather(*(call() for call in calls))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 30  # the sum over both stays within 10
    for status, body, headers in answers:
        if status == 429:
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert body["error"]["type"] == "rate_limit_error"
            assert "requests_per_minute (10)" in body["error"]["message"]
            assert KEYS["rpm"] not in body["error"]["message"]
    for gateway in pair:  # a different key is unaffected
        status, _, _ = await chat(http, gateway, KEYS["other"])()
        assert status == 200
    refusals = [await metric(http, gateway, 'patchbay_rate_limited_total{key="rpm",limit="requests_per_minute"}')
                for gateway in pair]
    assert sum(refusals) == 30


async def test_concurrent_requests_hold_across_two_servers(pair: list[GatewayProcess], upstream: GatedFake,
                                                          http: aiohttp.ClientSession) -> None:
    tasks = [asyncio.ensure_future(chat(http, pair[i % 2], KEYS["conc"], "hold")()) for i in range(12)]
    try:
        done: list[Answer] = []
        async with asyncio.timeout(30):
            for next_done in asyncio.as_completed(tasks):
                done.append(await next_done)
                if len(done) == 9:
                    break
        assert [status for status, _, _ in done] == [429] * 9
        assert all(headers["Retry-After"] == "1" for _, _, headers in done)
        assert all("concurrent_requests (3)" in body["error"]["message"] for _, body, _ in done)
        await upstream.wait_until(lambda: upstream.held == 3, timeout=30)
        for gateway in pair:  # the slots are conc's alone: another key passes meanwhile
            status, _, _ = await chat(http, gateway, KEYS["other"])()
            assert status == 200
    finally:
        upstream.gate.set()
    assert [status for status, _, _ in await asyncio.gather(*tasks)].count(200) == 3
    assert upstream.held == 3
    for gateway in pair:  # every slot was freed
        status, _, _ = await chat(http, gateway, KEYS["conc"])()
        assert status == 200


async def test_tokens_per_minute_hold_across_two_servers(pair: list[GatewayProcess],
                                                         http: aiohttp.ClientSession) -> None:
    # The fake's usage counts words: "echo: a b c d e" is 6 prompt and 5 completion tokens.
    statuses = []
    for i in range(5):
        status, body, headers = await chat(http, pair[i % 2], KEYS["tpm"], "echo: a b c d e")()
        statuses.append(status)
        if status == 429:
            assert "tokens_per_minute (25)" in body["error"]["message"]
            assert 1 <= int(headers["Retry-After"]) <= 60
    assert statuses == [200, 200, 200, 429, 429]  # 0, 11, 22 are under 25; 33 is not
    status, _, _ = await chat(http, pair[1], KEYS["other"], "echo: a b c d e")()
    assert status == 200


def test_config_show_writes_the_limits_back(tmp_path: Path) -> None:
    from patchbay.cli.config import _plain
    from patchbay.settings import to_toml

    settings = load_settings(write(tmp_path, "[limits]\nconcurrent_requests = 2\n\n[limits.alice]\n"
                                             "requests_per_minute = 5\nbudget_usd_per_day = 0.3\n"), environ={})
    again = load_settings(write(tmp_path, to_toml({"limits": _plain(settings)["limits"]})), environ={})
    assert again.limits == settings.limits and again.key_limits == settings.key_limits


@pytest.mark.process
async def test_without_keys_or_redis_one_process_limits_every_request(upstream: GatedFake, tmp_path: Path,
                                                                      http: aiohttp.ClientSession) -> None:
    config = {"server": {"request_log": False}, "limits": {"requests_per_minute": 2},
              "providers": {"fake": {"base_url": upstream.api_base, "models": ["fake-small"]}},
              "routes": {"small": ["fake/fake-small"]}}
    async with GatewayProcess(config, tmp_path) as gateway:
        answers = [await chat(http, gateway, "unused")() for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert "requests_per_minute (2)" in answers[2][1]["error"]["message"]
