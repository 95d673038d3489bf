"""The response cache (patchbay/server/cache.py): a repeated deterministic request is answered with
no upstream call, whole and streamed answers share one entry, and what must not be cached is not.

The gateway runs in this process over a real fake upstream on 127.0.0.1 (``chat_count`` counts
its calls); Redis is a real ``redis-server``, and the shared-cache test runs two real
``patchbay serve`` processes. Where a test shows that an answer came from the cache, the fake's
answer is changed after the first request: a hit still says what the first answer said.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis

from patchbay.chat.request import request_from_kwargs
from patchbay.errors import InvalidRequest
from patchbay.events import EventStream, Fallback, Finish, ProviderInfo, StreamEvent, TextDelta, Usage
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.requestlog import Exchange, RequestLog
from patchbay.server.app import Gateway
from patchbay.server.cache import (
    MemoryCacheStore,
    ResponseCache,
    build_cache,
    cache_key,
    decode_events,
    directives_of,
    encode_events,
)
from patchbay.settings import CacheSettings, RateLimits, RouterSettings, ServerSettings, Settings, load_settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient, Response
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_server import free_port

PRICES = {"input": 2.0, "output": 8.0}  # USD per million tokens: a miss costs something, a hit nothing
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
MEMORY = CacheSettings(enabled=True, backend="memory")
WAIT = 30.0  # seconds a polled condition may take on a busy machine


@pytest.fixture(autouse=True)
def _no_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_API_KEYS", raising=False)
    monkeypatch.delenv("PATCHBAY_REDIS_URL", raising=False)


def gateway(tmp_path: Path, fake: OpenAIFake, cache: CacheSettings = MEMORY) -> ASGIClient:
    settings = Settings(server=ServerSettings(web_ui=False, request_log=True,
                                              request_log_path=str(tmp_path / "logs.db")),
                        router=RouterSettings(retries=1),
                        providers={"fake": {"base_url": fake.api_base, "models": ["m"], "prices": PRICES}},
                        routes={"cached": ["fake/m"]}, cache=cache)
    return ASGIClient(Gateway(settings))


def body(stream: bool = False, **fields: Any) -> bytes:
    document: dict[str, Any] = {"model": "cached", "messages": MESSAGES, "temperature": 0, "stream": stream}
    if stream:
        document["stream_options"] = {"include_usage": True}
    return json.dumps({**document, **fields}).encode()


async def ask(client: ASGIClient, stream: bool = False, headers: dict[str, str] | None = None,
              **fields: Any) -> Response:
    response = await client.request("POST", "/v1/chat/completions", body(stream, **fields),
                                    [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()])
    assert response.status == 200, response.body
    return response


def cache_of(response: Response) -> str | None:
    value = response.headers.get(b"x-patchbay-cache")
    return None if value is None else value.decode()


def chunks(response: Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.body.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def text_of(response: Response) -> str:
    if response.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(response) if c["choices"])
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def usage_of(response: Response) -> dict[str, Any]:
    if response.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
        usage: dict[str, Any] = chunks(response)[-1]["usage"]
        return usage
    whole: dict[str, Any] = response.json()["usage"]
    return whole


def logged(tmp_path: Path) -> list[Exchange]:
    with RequestLog(tmp_path / "logs.db") as log:
        return list(reversed(log.latest(0)))


def metric(text: str, result: str) -> float:
    line = f'patchbay_cache_results_total{{result="{result}"}}'
    return sum(float(sample.rsplit(" ", 1)[1]) for sample in text.splitlines() if sample.startswith(line))


# -- the key, the directives, the stores ---------------------------------------------------------------


def test_the_key_changes_with_what_changes_the_answer_and_only_with_that() -> None:
    base = {"model": "m", "messages": MESSAGES, "temperature": 0}
    key = cache_key(["fake/m"], request_from_kwargs(base))
    same = [{"stream": True, "stream_options": {"include_usage": True}}, {"user": "u-1"}, {"metadata": {"a": "b"}},
            {"store": True}]
    for extra in same:
        assert cache_key(["fake/m"], request_from_kwargs({**base, **extra})) == key, extra
    different = [{"tools": TOOLS}, {"response_format": {"type": "json_object"}}, {"seed": 1}, {"temperature": 0.5},
                 {"max_tokens": 5}, {"stop": ["."]}, {"n": 2}, {"messages": [{"role": "user", "content": "Other"}]},
                 {"model": "n"}, {"logprobs": True}, {"extra_body": {"top_k": 3}}]
    keys = {cache_key(["fake/m"], request_from_kwargs({**base, **extra})) for extra in different}
    assert len(keys) == len(different) and key not in keys
    assert cache_key(["other/m"], request_from_kwargs(base)) != key
    assert cache_key(["fake/m", "backup/m"], request_from_kwargs(base)) != key


def test_cache_control_and_the_opt_in_header_are_read() -> None:
    assert directives_of(None, None) == directives_of(b"max-age=60", None)
    plain = directives_of(None, None)
    assert plain.read and plain.write and not plain.opt_in
    no_cache = directives_of(b"max-age=0, No-Cache", None)
    assert not no_cache.read and no_cache.write
    no_store = directives_of(b"no-store", None)
    assert not no_store.read and not no_store.write
    assert directives_of(None, b" Use ").opt_in
    with pytest.raises(InvalidRequest) as caught:
        directives_of(None, b"always")
    assert "x-patchbay-cache" in caught.value.message and "always" in caught.value.message


def test_an_entry_keeps_the_events_of_an_answer() -> None:
    events = [ProviderInfo("fake", "m"), TextDelta("Par"), TextDelta("is"), Finish("stop"), Usage(10, 2, cost=0.5)]
    assert decode_events(encode_events(events)) == events


async def test_the_memory_store_evicts_the_least_recently_used_beyond_its_bytes() -> None:
    entry = b"x" * 100
    key_size = len("a")
    store = MemoryCacheStore(max_bytes=2 * (len(entry) + key_size), ttl=60.0)
    await store.put("a", entry)
    await store.put("b", entry)
    assert await store.get("a") == entry  # a is now the most recently used
    await store.put("c", entry)
    assert "b" not in store and "a" in store and "c" in store
    assert store.stored_bytes == 2 * (len(entry) + key_size)
    await store.put("d", b"y" * 1000)  # bigger than the whole store: not kept, nothing evicted for it
    assert "d" not in store and len(store) == 2


async def test_the_memory_store_forgets_an_entry_after_its_ttl() -> None:
    now = [1000.0]
    store = MemoryCacheStore(max_bytes=10_000, ttl=5.0, clock=lambda: now[0])
    await store.put("a", b"entry")
    now[0] += 4.9
    assert await store.get("a") == b"entry"
    now[0] += 0.2
    assert await store.get("a") is None and store.stored_bytes == 0


class Named(AsyncGeneratorProvider):
    name = "Named"  # a provider that is not a router: its own route


async def kept(events: list[StreamEvent]) -> int:
    """How many entries a fresh cache holds after an answer made of ``events`` was read whole."""
    store = MemoryCacheStore(max_bytes=1 << 20, ttl=60.0)
    cache = ResponseCache(store)
    lookup = cache.consider(Named, request_from_kwargs({"model": "m", "messages": MESSAGES, "seed": 7}),
                            directives_of(None, None))

    async def source() -> AsyncIterator[StreamEvent]:
        for event in events:
            yield event

    stream = await cache.open(lookup, lambda: EventStream(source()))
    await stream.collect()
    await cache.keep(lookup, stream)
    return len(store)


@pytest.mark.parametrize(("finish", "fallback", "count"), [
    ("stop", None, 1), ("length", None, 1), ("tool_calls", None, 1), ("content_filter", None, 0),
    ("stop", Fallback("first", "m", "UpstreamError", "gone", delivered=0), 1),
    ("stop", Fallback("first", "m", "UpstreamError", "gone", delivered=3), 0),
])
async def test_only_a_clean_whole_answer_is_kept(finish: str, fallback: Fallback | None, count: int) -> None:
    events: list[StreamEvent] = [ProviderInfo("first", "m"), TextDelta("Par")]
    if fallback is not None:
        events += [fallback, ProviderInfo("second", "m")]
    events += [TextDelta("is"), Finish(finish), Usage(10, 2)]
    assert await kept(events) == count


def test_the_cache_table_is_read_and_its_mistakes_are_named(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[cache]\nenabled = true\nbackend = \"memory\"\nttl = 60\nmax_bytes = 1048576\n")
    settings = load_settings(config, environ={"PATCHBAY_CACHE_MAX_ENTRY_BYTES": "2048"})
    assert settings.cache == CacheSettings(enabled=True, backend="memory", ttl=60.0, max_bytes=1048576,
                                           max_entry_bytes=2048)
    assert load_settings(None, environ={}).cache.enabled is False
    for table, named in [("backend = \"disk\"", "cache.backend"), ("ttl = 0", "cache.ttl"),
                         ("max_bytes = 0", "cache.max_bytes"), ("size = 3", "size"),
                         ("enabled = \"yes\"", "cache.enabled")]:
        config.write_text(f"[cache]\n{table}\n")
        with pytest.raises(InvalidRequest) as caught:
            load_settings(config, environ={})
        assert named in caught.value.message, table
    with pytest.raises(InvalidRequest) as caught:
        build_cache(CacheSettings(enabled=True, backend="redis"), None)
    assert "PATCHBAY_REDIS_URL" in caught.value.message
    assert build_cache(CacheSettings(), "redis://127.0.0.1:1/0") is None


# -- through the gateway -------------------------------------------------------------------------------


async def test_a_repeat_is_answered_from_the_cache_at_no_cost(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        first = await ask(client)
        openai_fake.answer = "A different answer the cache must not give."
        second = await ask(client)
        metrics = (await client.request("GET", "/metrics")).body.decode()
    assert openai_fake.chat_count == 1
    assert (cache_of(first), cache_of(second)) == ("miss", "hit")
    assert text_of(second) == text_of(first) != openai_fake.answer
    assert usage_of(first)["cost"] > 0 and usage_of(second)["cost"] == 0
    assert usage_of(second)["total_tokens"] == usage_of(first)["total_tokens"]
    assert second.headers[b"x-patchbay-provider"] == b"fake"
    rows = logged(tmp_path)
    assert [(row.cache, row.status) for row in rows] == [("miss", 200), ("hit", 200)]
    assert rows[0].cost is not None and rows[0].cost > 0 and rows[1].cost == 0
    assert rows[1].response == rows[0].response
    assert (metric(metrics, "miss"), metric(metrics, "hit")) == (1, 1)


@pytest.mark.parametrize("first_streams", [False, True], ids=["whole-then-stream", "stream-then-whole"])
async def test_whole_and_streamed_answers_share_an_entry(openai_fake: OpenAIFake, tmp_path: Path,
                                                         first_streams: bool) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        first = await ask(client, stream=first_streams)
        openai_fake.answer = "Not this one."
        second = await ask(client, stream=not first_streams)
    assert openai_fake.chat_count == 1
    assert (cache_of(first), cache_of(second)) == ("miss", "hit")
    assert text_of(second) == text_of(first) and text_of(first)
    assert usage_of(second)["cost"] == 0
    streamed = second if first_streams is False else first
    assert streamed.headers[b"content-type"].startswith(b"text/event-stream")
    assert streamed.body.rstrip().endswith(b"data: [DONE]")
    if not first_streams:
        assert len([c for c in chunks(second) if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 1
        assert chunks(second)[-2]["choices"][0]["finish_reason"] == "stop"


async def test_a_request_that_differs_only_in_tools_misses(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        plain = await ask(client)
        with_tools = await ask(client, tools=TOOLS)
        again = await ask(client, tools=TOOLS, user="someone-else")  # user does not change the answer
    assert [cache_of(r) for r in (plain, with_tools, again)] == ["miss", "miss", "hit"]
    assert openai_fake.chat_count == 2


async def test_only_deterministic_requests_are_cached_unless_they_opt_in(openai_fake: OpenAIFake,
                                                                          tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        sampled = [await ask(client, temperature=0.7) for _ in range(2)]
        assert openai_fake.chat_count == 2
        unset = [await ask(client, temperature=None) for _ in range(2)]  # the upstream's default: sampled
        assert openai_fake.chat_count == 4
        seeded = [await ask(client, temperature=0.7, seed=42) for _ in range(2)]
        assert openai_fake.chat_count == 5
        opted = [await ask(client, temperature=0.9, headers={"x-patchbay-cache": "use"}) for _ in range(2)]
        assert openai_fake.chat_count == 6
        refused = await client.request("POST", "/v1/chat/completions", body(), [(b"x-patchbay-cache", b"sometimes")])
        metrics = (await client.request("GET", "/metrics")).body.decode()
    assert [cache_of(r) for r in sampled + unset] == ["miss"] * 4
    assert [cache_of(r) for r in seeded + opted] == ["miss", "hit", "miss", "hit"]
    assert refused.status == 400 and "x-patchbay-cache" in refused.json()["error"]["message"]
    assert openai_fake.chat_count == 6
    assert (metric(metrics, "bypass"), metric(metrics, "miss"), metric(metrics, "hit")) == (4, 2, 2)


async def test_no_store_neither_reads_nor_writes_and_no_cache_only_writes(openai_fake: OpenAIFake,
                                                                         tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        unstored = await ask(client, headers={"Cache-Control": "no-store"})
        assert openai_fake.chat_count == 1
        stored = await ask(client)  # no-store wrote nothing: this goes upstream, and is kept
        assert openai_fake.chat_count == 2
        not_read = await ask(client, headers={"Cache-Control": "no-store"})  # nor does no-store read
        assert openai_fake.chat_count == 3
        openai_fake.answer = "A fresher answer."
        fresh = await ask(client, headers={"Cache-Control": "no-cache"})  # not read, but written
        assert openai_fake.chat_count == 4
        hit = await ask(client)
    assert openai_fake.chat_count == 4
    assert [cache_of(r) for r in (unstored, stored, not_read, fresh, hit)] == ["miss"] * 4 + ["hit"]
    assert text_of(hit) == text_of(fresh) != text_of(stored)


async def test_errors_and_interrupted_answers_are_not_cached(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        openai_fake.fail_next, openai_fake.fail_status = 1, 400  # a 400 is not retried: the request fails
        failed = await client.request("POST", "/v1/chat/completions", body())
        assert failed.status >= 400 and cache_of(failed) is None  # errors carry the app's headers only
        openai_fake.scenario = "mid_stream_error"
        interrupted = await ask(client, stream=True)  # 200: the error came in-band after some text
        assert any("error" in c for c in chunks(interrupted))
        openai_fake.scenario = "normal"
        whole = await ask(client)
        assert openai_fake.chat_count == 3  # neither the error nor the broken stream was a hit
        streamed = await ask(client, stream=True)
    assert openai_fake.chat_count == 3
    assert (cache_of(whole), cache_of(streamed)) == ("miss", "hit")
    assert text_of(streamed) == text_of(whole)
    assert [row.cache for row in logged(tmp_path)] == ["miss", "miss", "miss", "hit"]


async def test_an_answer_whose_client_left_is_not_cached(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.scenario, openai_fake.first_byte_delay = "slow_first_byte", 5.0  # the client leaves before it
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]}
    pending = [{"type": "http.request", "body": body(), "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        deadline = time.monotonic() + WAIT
        while openai_fake.chat_count < 1:  # leave once the upstream request is under way
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)  # the next poll; bounded by WAIT
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async with gateway(tmp_path, openai_fake) as client:
        await asyncio.wait_for(client.app(scope, receive, send), WAIT)
        openai_fake.scenario = "normal"
        after = [await ask(client) for _ in range(2)]
    assert not sent  # nothing was said to a client that had gone
    assert [cache_of(r) for r in after] == ["miss", "hit"] and openai_fake.chat_count == 2
    assert [(row.status, row.cache) for row in logged(tmp_path)] == [(499, "miss"), (200, "miss"), (200, "hit")]


async def test_an_answer_bigger_than_max_entry_bytes_is_not_cached(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    small = CacheSettings(enabled=True, backend="memory", max_entry_bytes=64)
    async with gateway(tmp_path, openai_fake, small) as client:
        for _ in range(2):
            assert cache_of(await ask(client)) == "miss"
    assert openai_fake.chat_count == 2


async def test_the_anthropic_endpoint_shares_an_entry_with_chat(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        chat = await ask(client, max_tokens=50)
        openai_fake.answer = "Not this one."
        message = await client.request("POST", "/v1/messages", json.dumps(
            {"model": "cached", "max_tokens": 50, "temperature": 0, "messages": MESSAGES}).encode())
    assert message.status == 200 and cache_of(message) == "hit"
    assert openai_fake.chat_count == 1
    assert message.json()["content"][0]["text"] == text_of(chat)
    assert message.json()["usage"]["cost"] == 0


async def test_a_hit_within_rate_limits_spends_no_tokens(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.usage_extra = {"prompt_tokens": 600, "completion_tokens": 500, "total_tokens": 1100}
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False), router=RouterSettings(retries=1),
                        providers={"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": PRICES}},
                        routes={"cached": ["fake/m"]}, cache=MEMORY,
                        limits=RateLimits(requests_per_minute=100, tokens_per_minute=2000))
    async with ASGIClient(Gateway(settings)) as client:
        answers = [await ask(client, headers={"Cache-Control": "no-cache"} if i == 1 else None) for i in range(2)]
        # 2200 tokens spent by two misses: over the limit, so the next request is refused...
        refused = await client.request("POST", "/v1/chat/completions", body())
        assert refused.status == 429
    assert [cache_of(r) for r in answers] == ["miss", "miss"] and openai_fake.chat_count == 2
    settings = Settings(server=settings.server, router=settings.router, providers=settings.providers,
                        routes=settings.routes, cache=MEMORY, limits=RateLimits(tokens_per_minute=2000))
    async with ASGIClient(Gateway(settings)) as client:
        answers = [await ask(client) for _ in range(4)]  # ...while hits spend none: 1100 tokens in all
    assert [cache_of(r) for r in answers] == ["miss", "hit", "hit", "hit"] and openai_fake.chat_count == 3


async def test_the_cache_off_adds_no_header_and_logs_nothing(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake, CacheSettings()) as client:
        responses = [await ask(client) for _ in range(2)]
    assert openai_fake.chat_count == 2 and [cache_of(r) for r in responses] == [None, None]
    assert [row.cache for row in logged(tmp_path)] == [None, None]


async def test_several_legacy_prompts_in_one_request_are_not_cached(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway(tmp_path, openai_fake) as client:
        def completion(prompt: Any) -> bytes:
            return json.dumps({"model": "cached", "prompt": prompt, "temperature": 0}).encode()

        one = [await client.request("POST", "/v1/completions", completion("Say hi")) for _ in range(2)]
        several = [await client.request("POST", "/v1/completions", completion(["Say hi", "Say bye"]))
                   for _ in range(2)]
    assert [r.status for r in one + several] == [200] * 4
    assert [cache_of(r) for r in one + several] == ["miss", "hit", "miss", "miss"]
    assert len(openai_fake.completion_bodies) == 1 + 2 * 2
    assert one[1].json()["choices"][0]["text"] == one[0].json()["choices"][0]["text"]


# -- Redis -------------------------------------------------------------------------------------------------


def redis_gateway(tmp_path: Path, fake: OpenAIFake, ttl: float = 3600.0) -> ASGIClient:
    return gateway(tmp_path, fake, CacheSettings(enabled=True, ttl=ttl))  # auto: Redis, as the URL is set


async def test_an_entry_in_redis_expires_with_its_ttl(openai_fake: OpenAIFake, redis_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_REDIS_URL", redis_url)
    async with redis_gateway(tmp_path, openai_fake, ttl=1.0) as client:
        first = await ask(client)
        with redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True) as raw:
            keys = raw.keys("patchbay:default:cache:*")
            assert len(keys) == 1 and 0 < raw.pttl(keys[0]) <= 1000
            deadline = time.monotonic() + WAIT
            while raw.exists(keys[0]):
                assert time.monotonic() < deadline, "the entry did not expire"
                await asyncio.sleep(0.05)  # the next poll; bounded by WAIT
        calls = openai_fake.chat_count
        after = await ask(client)
    assert cache_of(first) == "miss" and cache_of(after) == "miss"
    assert openai_fake.chat_count == calls + 1


async def test_requests_are_answered_while_redis_is_down(openai_fake: OpenAIFake, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATCHBAY_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    caplog.set_level(logging.WARNING, logger="patchbay.server.cache")
    async with redis_gateway(tmp_path, openai_fake) as client:
        responses = [await ask(client, stream=stream) for stream in (False, False, True)]
    assert [cache_of(r) for r in responses] == ["miss"] * 3
    assert openai_fake.chat_count == 3
    assert len({text_of(r) for r in responses}) == 1
    warnings = [r for r in caplog.records if r.name == "patchbay.server.cache" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without the response cache" in warnings[0].getMessage()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.mark.process
async def test_two_gateways_share_hits_through_redis(openai_fake: OpenAIFake, redis_url: str, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    config = {
        "server": {"request_log": False},
        "router": {"retries": 1},
        "providers": {"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": PRICES}},
        "routes": {"cached": ["fake/m"]},
        "cache": {"enabled": True, "backend": "redis"},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {"PATCHBAY_REDIS_URL": redis_url}
    answers = []
    async with GatewayProcess(config, tmp_path / "a", env=env) as first, \
            GatewayProcess(config, tmp_path / "b", env=env) as second:
        for gateway_process, stream in ((first, False), (second, False), (second, True)):
            async with http.post(f"{gateway_process.api_base}/chat/completions",
                                 data=body(stream), headers={"content-type": "application/json"}) as response:
                assert response.status == 200
                answers.append((response.headers.get("x-patchbay-cache"), await response.read()))
            openai_fake.answer = "Not this one."
    assert [cache for cache, _ in answers] == ["miss", "hit", "hit"]
    assert openai_fake.chat_count == 1
    whole = json.loads(answers[1][1])
    assert whole["choices"][0]["message"]["content"] == json.loads(answers[0][1])["choices"][0]["message"]["content"]
    assert whole["usage"]["cost"] == 0
    streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in answers[2][1].decode().splitlines()
                       if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]

