"""Spend budgets across two real ``patchbay serve`` processes sharing one real redis-server: a fake
upstream reports fixed usage, the provider's prices make each request cost a known amount, and
exactly as many requests are admitted as fit under the budget (``[limits]`` and ``[limits.alice]``)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis

from patchbay.providers.catalog import Prices
from patchbay.server.ratelimit import DAY, DAY_BUCKET, nanos
from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.process

PROMPT_TOKENS = COMPLETION_TOKENS = 1000
PRICES = {"input": 2.5, "output": 10.0}  # USD per million tokens
BUDGET = 0.05  # [limits]: bob, who has no table of his own
ALICE_BUDGET = 0.03  # [limits.alice]
KEYS = {"alice": "sk-alice-budget-3f9a1c", "bob": "sk-bob-budget-8e27d4", "ops": "sk-ops-budget-51b0aa"}


def cost() -> float:
    """What one request costs: the fake's fixed usage at PRICES."""
    return Prices.of(PRICES, "prices").cost(PROMPT_TOKENS, COMPLETION_TOKENS)


def fitting(budget: float) -> int:
    """How many requests are admitted: each while the spend before it, n * cost, is under the budget."""
    return -(-nanos(budget) // nanos(cost()))


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[OpenAIFake]:
    async with OpenAIFake() as fake:
        fake.usage_extra = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
        yield fake


@pytest_asyncio.fixture
async def pair(upstream: OpenAIFake, redis_url: str, tmp_path: Path) -> AsyncIterator[list[GatewayProcess]]:
    """Two gateways sharing one Redis; bob has the default budget, alice her own, ops none."""
    config = {
        "server": {"request_log": False},
        "router": {"retries": 1, "first_byte_timeout": 30.0, "timeout": 60.0},
        "providers": {"fake": {"base_url": upstream.api_base, "models": ["fake-small"], "prices": PRICES}},
        "routes": {"small": ["fake/fake-small"]},
        "limits": {"budget_usd_per_day": BUDGET, "alice": {"budget_usd_per_day": ALICE_BUDGET},
                   "ops": {"budget_usd_per_day": 0}},
    }
    env = {"PATCHBAY_REDIS_URL": redis_url,
           "PATCHBAY_API_KEYS": ",".join(f"{name}={key}" for name, key in KEYS.items())}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with GatewayProcess(config, tmp_path / "a", env=env) as first, \
            GatewayProcess(config, tmp_path / "b", env=env) as second:
        yield [first, second]
    for gateway in (first, second):
        for key in KEYS.values():
            assert key not in gateway.log_text


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


Answer = tuple[int, dict[str, Any], dict[str, str]]


async def chat(http: aiohttp.ClientSession, gateway: GatewayProcess, key: str, text: str) -> Answer:
    body = {"model": "small", "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{gateway.api_base}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, await response.json(), dict(response.headers)


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, line: str) -> float:
    async with http.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {KEYS['ops']}"}) as r:
        text = await r.text()
    return sum(float(sample.rsplit(" ", 1)[1]) for sample in text.splitlines() if sample.startswith(line + " "))


@pytest.mark.parametrize(("name", "budget"), [("bob", BUDGET), ("alice", ALICE_BUDGET)])
async def test_exactly_the_requests_that_fit_the_budget_are_admitted_across_two_servers(
        pair: list[GatewayProcess], http: aiohttp.ClientSession, redis_url: str, name: str, budget: float) -> None:
    expected = fitting(budget)
    assert fitting(BUDGET) != fitting(ALICE_BUDGET)  # the named key's table is what decides for alice
    started = time.time()
    answers = [await chat(http, pair[i % 2], KEYS[name], f"request {i}") for i in range(expected + 3)]
    finished = time.time()
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * expected + [429] * 3
    for _, body, _ in answers[:expected]:
        assert body["usage"]["cost"] == pytest.approx(cost())
    for _, body, headers in answers[expected:]:
        error = body["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
        assert f"budget_usd_per_day ({budget!r} USD)" in error["message"]
        assert KEYS[name] not in error["message"]
        # The first charge's minute leaves the window 24 hours after it began.
        first_minute = math.floor(started / DAY_BUCKET) * DAY_BUCKET
        assert first_minute + DAY - finished <= int(headers["Retry-After"]) <= DAY
    with redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True) as raw:
        spend = raw.hgetall(f"patchbay:default:limits:{{name:{name}}}:spend")
    total = spend.pop("total")
    spend.pop("since")
    assert sum(int(amount) for amount in spend.values()) == int(total) == expected * nanos(cost())  # each once
    refusals = [await metric(http, gateway, f'patchbay_rate_limited_total{{key="{name}",limit="budget_usd_per_day"}}')
                for gateway in pair]
    assert sum(refusals) == 3
    for gateway in pair:  # a key without a budget is unaffected
        status, _, _ = await chat(http, gateway, KEYS["ops"], "unlimited")
        assert status == 200
