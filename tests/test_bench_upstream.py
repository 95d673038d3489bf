"""The gateway benchmark's fixed fake upstream (bench/upstream.py) answers in valid OpenAI shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.upstream import CHUNKS, HELD_MODEL, MODEL, TEXT, Gate, make_app

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


async def test_a_release_lets_only_the_streams_waiting_then_go() -> None:
    gate = Gate()
    waiting = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)  # one loop step: the task runs up to its wait
    assert gate.release() == 1
    await asyncio.wait_for(waiting, 10)
    later = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    assert gate.held == 1 and not later.done()
    assert gate.release() == 1
    await asyncio.wait_for(later, 10)
