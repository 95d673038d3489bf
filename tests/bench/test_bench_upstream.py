"""The gateway benchmark's fixed fake upstream (bench/upstream.py) answers in valid OpenAI shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.upstream import CHUNKS, HELD_MODEL, LONG_MODEL, MODEL, TEXT, Gate, long_events, long_text, make_app

BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    """The upstream served in-process on an ephemeral port."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def post(base_url: str, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session, session.post(f"{base_url}/chat/completions", json=body) as resp:
        return resp, await resp.read()


def sse_payloads(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking each event ends with a blank line."""
    events = raw.decode().split("\n\n")
    assert events[-1] == "", "the stream must end with a complete event"
    payloads = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event.removeprefix("data: "))
    return payloads


async def test_completion(base_url: str) -> None:
    resp, raw = await post(base_url, BODY)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    answer = json.loads(raw)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    assert isinstance(answer["id"], str) and isinstance(answer["created"], int)
    [choice] = answer["choices"]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream(base_url: str, include_usage: bool) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": include_usage}}
    resp, raw = await post(base_url, body)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    content = [chunk for chunk in chunks if chunk["choices"]]
    assert len(content) == 2
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in content) == TEXT
    assert [chunk["choices"][0]["finish_reason"] for chunk in content] == [None, "stop"]
    usage = [chunk for chunk in chunks if not chunk["choices"]]
    if include_usage:
        assert chunks[-1] is usage[0] and usage[0]["usage"]["total_tokens"] > 0
    else:
        assert usage == [] and all("usage" not in chunk for chunk in chunks)


async def test_models(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/models") as resp:
        assert resp.status == 200
        listing = await resp.json()
    assert listing["object"] == "list"
    assert [(model["id"], model["object"]) for model in listing["data"]] == [(MODEL, "model")]


async def test_stream_false_is_a_completion(base_url: str) -> None:
    resp, raw = await post(base_url, {**BODY, "stream": False})
    assert resp.status == 200 and json.loads(raw)["object"] == "chat.completion"


async def test_held_stream_waits_for_a_release(base_url: str) -> None:
    """The held model sends its first chunk, then nothing until /control/release."""
    body = {**BODY, "model": HELD_MODEL, "stream": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
            session.post(f"{base_url}/chat/completions", json=body) as resp:
        first = await resp.content.readuntil(b"\n\n")
        assert json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]["content"] == CHUNKS[0]
        root = base_url.removesuffix("/v1")
        async with session.post(f"{root}/control/release") as released:
            assert await released.json() == {"released": 1}
        payloads = sse_payloads(first + await resp.read())
    assert payloads[-1] == "[DONE]"
    assert "".join(json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:-1]) == TEXT


async def _until_held(gate: Gate, count: int) -> None:
    """Let the loop run until ``count`` streams wait at ``gate`` (bounded: 1,000 loop steps)."""
    for _ in range(1000):
        if gate.held == count:
            return
        await asyncio.sleep(0)  # one loop step, then the condition again
    raise AssertionError(f"{gate.held} streams wait, not {count}")


async def test_a_release_lets_only_the_streams_waiting_then_go() -> None:
    gate = Gate()
    waiting = asyncio.ensure_future(gate.wait())
    await _until_held(gate, 1)
    assert gate.release() == 1
    await asyncio.wait_for(waiting, 10)
    later = asyncio.ensure_future(gate.wait())
    await _until_held(gate, 1)
    assert not later.done()
    assert gate.release() == 1
    await asyncio.wait_for(later, 10)


def contents(payloads: list[str]) -> list[str]:
    """The content deltas of the chunks of a stream's payloads ([DONE] and usage chunks skipped)."""
    chunks = [json.loads(payload) for payload in payloads if payload != "[DONE]"]
    return [chunk["choices"][0]["delta"]["content"] for chunk in chunks if chunk["choices"]]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_long_stream_has_max_tokens_chunks_in_order(base_url: str, include_usage: bool) -> None:
    body = {**BODY, "model": LONG_MODEL, "stream": True, "max_tokens": 7,
            "stream_options": {"include_usage": include_usage}}
    resp, raw = await post(base_url, body)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    assert contents(payloads) == [f"t{index} " for index in range(7)]
    assert "".join(contents(payloads)) == long_text(7)
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    content = [chunk for chunk in chunks if chunk["choices"]]
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [chunk["choices"][0]["finish_reason"] for chunk in content] == [None] * 6 + ["stop"]
    usage = [chunk for chunk in chunks if not chunk["choices"]]
    assert [chunk["usage"]["completion_tokens"] for chunk in usage] == ([7] if include_usage else [])


def test_long_events_are_one_event_each() -> None:
    """Each of the long answer's events is one whole SSE event (written on its own by the handler)."""
    events = long_events(5)
    assert len(events) == 5
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
               for event in events)
    assert [json.loads(event[6:])["choices"][0]["delta"]["content"] for event in events] == \
        [f"t{index} " for index in range(5)]


@pytest.fixture
async def short_long_url() -> AsyncIterator[str]:
    """An upstream whose long answers default to 12 chunks."""
    runner = web.AppRunner(make_app(long_chunks=12), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_long_stream_without_max_tokens_has_the_default_length(short_long_url: str) -> None:
    _, raw = await post(short_long_url, {**BODY, "model": LONG_MODEL, "stream": True})
    assert "".join(contents(sse_payloads(raw))) == long_text(12)
    _, raw = await post(short_long_url, {**BODY, "model": LONG_MODEL, "stream": True, "max_tokens": True})
    assert len(contents(sse_payloads(raw))) == 12  # a bool is no token count


async def test_long_model_not_streamed_is_one_completion(base_url: str) -> None:
    resp, raw = await post(base_url, {**BODY, "model": LONG_MODEL, "max_tokens": 4})
    answer = json.loads(raw)
    assert resp.status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == long_text(4)


async def test_held_count(base_url: str) -> None:
    """GET /control/held counts the streams waiting now: one while held, none after the release."""
    root = base_url.removesuffix("/v1")
    body = {**BODY, "model": HELD_MODEL, "stream": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def held() -> int:
            async with session.get(f"{root}/control/held") as resp:
                return int((await resp.json())["held"])

        assert await held() == 0
        async with session.post(f"{base_url}/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")  # the first chunk: the handler is at (or just before) its wait
            async with asyncio.timeout(10):
                while await held() != 1:
                    await asyncio.sleep(0.01)  # polling a condition, bounded above
            async with session.post(f"{root}/control/release") as released:
                assert await released.json() == {"released": 1}
            assert sse_payloads(await resp.read())[-1] == "[DONE]"
        assert await held() == 0
