"""The replica servers themselves, driven by a plain aiohttp client (no patchbay code).

Shows that a correct request sequence gets the answer, that malformed requests are answered 400
and recorded as violations, and that the fault scenarios behave as documented.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.replicas import (
    CAPTCHA_PAGE,
    DEFAULT_ANSWER,
    LEGACY_MODELS,
    AiChatOnlineReplica,
    LiaobotsLegacyReplica,
    LiaobotsReplica,
    OpenAIFake,
    fixtures,
)
from tests.replicas.__main__ import main as replicas_main

# pytest finds fixtures by name in the module namespace (the root conftest may instead declare
# pytest_plugins = ["tests.replicas.fixtures"]).
liaobots_replica = fixtures.liaobots_replica
liaobots_legacy_replica = fixtures.liaobots_legacy_replica
aichatonline_replica = fixtures.aichatonline_replica
openai_fake = fixtures.openai_fake

ALNUM = string.ascii_lowercase + string.digits
MODEL_RECORD = {
    "id": "gpt-4o-2024-08-06",
    "name": "GPT-4o",
    "model": "ChatGPT",
    "provider": "OpenAI",
    "maxLength": 260000,
    "tokenLimit": 126000,
    "context": "128K",
}
MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: aiohttp's default jar refuses cookies from IP-address hosts like 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        yield client


def rand(n: int = 10) -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(n))


async def read_chunks(resp: aiohttp.ClientResponse) -> list[bytes]:
    return [chunk async for chunk in resp.content.iter_any()]


def decode_incrementally(chunks: list[bytes]) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    return "".join(decoder.decode(c) for c in chunks) + decoder.decode(b"", final=True)


def sse_payloads(raw: str) -> list[Any]:
    """Tolerantly parse SSE: JSON payloads of ``data:`` lines, skipping what does not parse."""
    out = []
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        try:
            out.append(json.loads(line.removeprefix("data: ")))
        except ValueError:
            continue
    return out


def liaobots_text(raw: str) -> str:
    return "".join(
        p["content"] for p in sse_payloads(raw) if isinstance(p, dict) and isinstance(p.get("content"), str)
    )


def aichat_text(raw: str) -> str:
    out = []
    for line in raw.splitlines():
        try:
            obj = json.loads(line)
            out.append(obj["data"]["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return "".join(out)


# --------------------------------------------------------------------------- Liaobots (current)


def chat_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "conversationId": str(uuid.uuid4()),
        "model": MODEL_RECORD,
        "messages": MESSAGES,
        "key": "",
        "prompt": "You are a helpful assistant.",
    }
    body.update(overrides)
    return body


async def liaobots_auth(replica: LiaobotsReplica, session: aiohttp.ClientSession, cached: str = "") -> str:
    async with session.post(replica.url("/recaptcha/api/login"), data={"token": "x" * 20}) as resp:
        assert resp.status == 200
    async with session.post(replica.url("/api/user"), json={"authcode": cached}) as resp:
        assert resp.status == 200
        return json.loads(await resp.text())["authCode"]


async def liaobots_chat(
    replica: LiaobotsReplica, session: aiohttp.ClientSession, code: str
) -> tuple[int, str, list[bytes]]:
    async with session.post(
        replica.url("/api/chat"), json=chat_body(), headers={"x-auth-code": code}
    ) as resp:
        chunks = await read_chunks(resp)
        return resp.status, decode_incrementally(chunks), chunks


async def test_liaobots_full_flow(liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    assert code in liaobots_replica.issued_codes
    status, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert status == 200
    assert liaobots_text(raw) == liaobots_replica.answer == DEFAULT_ANSWER
    assert raw.startswith('data: {"content": ')
    assert liaobots_replica.violations == []
    assert (liaobots_replica.login_count, liaobots_replica.user_count, liaobots_replica.chat_count) == (
        1,
        1,
        1,
    )
    # A cached code that is still good is handed back unchanged.
    assert await liaobots_auth(liaobots_replica, session, cached=code) == code


async def test_liaobots_user_reply_is_not_labelled_json(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    await session.post(liaobots_replica.url("/recaptcha/api/login"), data={"token": "y" * 20})
    async with session.post(liaobots_replica.url("/api/user"), json={"authcode": ""}) as resp:
        assert resp.content_type == "text/html"
        with pytest.raises(aiohttp.ContentTypeError):
            await resp.json()


async def test_liaobots_login_accepts_json_labelled_form_body(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "application/json"}
    login = liaobots_replica.url("/recaptcha/api/login")
    async with session.post(login, data=b"token=" + b"z" * 20, headers=headers) as resp:
        assert resp.status == 200
    async with session.post(login, data={"token": "short"}) as resp:
        assert resp.status == 400
    assert len(liaobots_replica.violations) == 1
    assert "20 characters" in liaobots_replica.violations[0]


async def test_liaobots_user_needs_session_cookie(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    async with session.post(liaobots_replica.url("/api/user"), json={"authcode": ""}) as resp:
        assert resp.status == 400
        assert "session cookie" in await resp.text()
    assert liaobots_replica.violations == ["POST /api/user: no session cookie from /recaptcha/api/login"]


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, chat_body(), "missing x-auth-code"),
        ({"x-auth-code": "never-issued"}, chat_body(), "never issued"),
        (None, chat_body(conversationId="1234"), "uuid4"),
        (None, chat_body(model={"id": "gpt-4o"}), "model keys"),
        (None, chat_body(key="sk-123"), "key must be empty"),
        (None, chat_body(messages=[{"role": "user"}]), "messages[0]"),
        (None, chat_body(prompt=None), "prompt"),
    ],
)
async def test_liaobots_chat_shape_violations(
    liaobots_replica: LiaobotsReplica,
    session: aiohttp.ClientSession,
    headers: dict[str, str] | None,
    body: dict[str, Any],
    reason: str,
) -> None:
    liaobots_replica.valid_codes.add("user-code")
    sent_headers = {"x-auth-code": "user-code"} if headers is None else headers
    async with session.post(liaobots_replica.url("/api/chat"), json=body, headers=sent_headers) as resp:
        assert resp.status == 400
    assert len(liaobots_replica.violations) == 1
    assert reason in liaobots_replica.violations[0]


@pytest.mark.parametrize(
    ("scenario", "status", "text"),
    [
        ("user_401", 401, '{"message":"401 Unauthorized"}'),
        ("user_402", 402, "Error"),
        ("empty_authcode", 200, '{"authCode": ""}'),
        ("user_captcha", 200, CAPTCHA_PAGE),
    ],
)
async def test_liaobots_user_faults(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession, scenario: str, status: int, text: str
) -> None:
    liaobots_replica.scenario = scenario
    await session.post(liaobots_replica.url("/recaptcha/api/login"), data={"token": "x" * 20})
    async with session.post(liaobots_replica.url("/api/user"), json={"authcode": ""}) as resp:
        assert (resp.status, await resp.text()) == (status, text)
    assert liaobots_replica.violations == []


@pytest.mark.parametrize(
    ("scenario", "status", "body_start"),
    [
        ("captcha", 200, "<!DOCTYPE html><html coupert-item="),
        ("error_body", 200, "Error"),
        ("chat_401", 401, '{"message":"401 Unauthorized"}'),
        ("chat_402", 402, "Error"),
        ("chat_500", 500, "Error"),
    ],
)
async def test_liaobots_chat_faults(
    liaobots_replica: LiaobotsReplica,
    session: aiohttp.ClientSession,
    scenario: str,
    status: int,
    body_start: str,
) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    liaobots_replica.scenario = scenario
    got_status, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert got_status == status
    assert raw.startswith(body_start)
    assert liaobots_replica.violations == []


async def test_liaobots_one_byte(liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    _, normal_raw, _ = await liaobots_chat(liaobots_replica, session, code)
    liaobots_replica.scenario = "one_byte"
    _, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert raw == normal_raw
    assert all(len(chunk) == 1 for chunk in liaobots_replica.last_chunks)
    assert len(liaobots_replica.last_chunks) == len(raw.encode())


async def test_liaobots_split_multibyte(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    liaobots_replica.scenario = "split_multibyte"
    _, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert liaobots_text(raw) == DEFAULT_ANSWER
    written = liaobots_replica.last_chunks
    assert len(written) > 5
    for chunk in written[:-1]:  # every boundary falls inside a character
        with pytest.raises(UnicodeDecodeError):
            chunk.decode("utf-8")


async def test_liaobots_malformed_stream_still_spells_answer(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    liaobots_replica.scenario = "malformed"
    _, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert "data: {not json" in raw and '{"other": 1}' in raw
    assert liaobots_text(raw) == DEFAULT_ANSWER


async def test_liaobots_code_rotation_controls(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    replica = liaobots_replica
    replica.valid_codes = {"good", "bad"}
    replica.rejected_codes = {"bad"}
    assert (await liaobots_chat(replica, session, "bad"))[0] == 401
    assert (await liaobots_chat(replica, session, "good"))[0] == 200
    replica.fail_chats = 1
    assert (await liaobots_chat(replica, session, "good"))[0] == 401
    assert (await liaobots_chat(replica, session, "good"))[0] == 200
    replica.free_messages = 3
    assert (await liaobots_chat(replica, session, "good"))[0] == 200
    assert (await liaobots_chat(replica, session, "good"))[0] == 401  # 3 messages used
    # The exhausted code is not handed back by /api/user: a fresh one is issued.
    fresh = await liaobots_auth(replica, session, cached="good")
    assert fresh != "good" and fresh in replica.issued_codes
    assert replica.violations == []


async def test_liaobots_stall_and_client_disconnect(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    replica = liaobots_replica
    code = await liaobots_auth(replica, session)
    replica.scenario = "stall"
    resp = await session.post(replica.url("/api/chat"), json=chat_body(), headers={"x-auth-code": code})
    try:
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b'data: {"content": ')
        await replica.wait_until(lambda: replica.open_streams == 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.read(), timeout=0.3)
    finally:
        resp.close()  # drop the connection mid-stream
    await replica.wait_until(lambda: replica.disconnects == 1 and replica.open_streams == 0)


async def test_liaobots_disconnect_truncates(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    liaobots_replica.scenario = "disconnect"
    received = b""
    async with session.post(
        liaobots_replica.url("/api/chat"), json=chat_body(), headers={"x-auth-code": code}
    ) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    text = liaobots_text(received.decode())
    assert text and DEFAULT_ANSWER.startswith(text) and text != DEFAULT_ANSWER
    assert liaobots_replica.dropped == 1
    assert liaobots_replica.disconnects == 0


async def test_liaobots_slow_first_byte(
    liaobots_replica: LiaobotsReplica, session: aiohttp.ClientSession
) -> None:
    code = await liaobots_auth(liaobots_replica, session)
    liaobots_replica.scenario = "slow_first_byte"
    liaobots_replica.first_byte_delay = 0.3
    started = time.monotonic()
    _, raw, _ = await liaobots_chat(liaobots_replica, session, code)
    assert time.monotonic() - started >= 0.3
    assert liaobots_text(raw) == DEFAULT_ANSWER


# --------------------------------------------------------------------------- Liaobots (legacy)


def legacy_headers(replica: LiaobotsLegacyReplica, code: str | None = None) -> dict[str, str]:
    return {
        "origin": "https://liaobots.com",
        "referer": "https://liaobots.com/",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
        "x-auth-code": replica.auth_code if code is None else code,
    }


def legacy_body(**overrides: Any) -> dict[str, Any]:
    return chat_body(**{"model": LEGACY_MODELS["gpt-3.5-turbo"], **overrides})


async def test_legacy_flow_and_split_multibyte(
    liaobots_legacy_replica: LiaobotsLegacyReplica, session: aiohttp.ClientSession
) -> None:
    replica = liaobots_legacy_replica
    for scenario in ("normal", "split_multibyte", "one_byte"):
        replica.scenario = scenario
        async with session.post(
            replica.url("/api/chat"), json=legacy_body(), headers=legacy_headers(replica)
        ) as r:
            assert r.status == 200
            assert decode_incrementally(await read_chunks(r)) == DEFAULT_ANSWER
    assert replica.violations == []


async def test_legacy_wrong_code_is_error_not_violation(
    liaobots_legacy_replica: LiaobotsLegacyReplica, session: aiohttp.ClientSession
) -> None:
    replica = liaobots_legacy_replica
    headers = legacy_headers(replica, code="wrong")
    async with session.post(replica.url("/api/chat"), json=legacy_body(), headers=headers) as resp:
        assert (resp.status, await resp.text()) == (200, "Error")
    replica.scenario = "bad_auth_401"
    async with session.post(
        replica.url("/api/chat"), json=legacy_body(), headers=legacy_headers(replica)
    ) as resp:
        assert (resp.status, await resp.text()) == (401, "Error")
    assert replica.violations == []
    assert replica.bad_auth_count == 1


@pytest.mark.parametrize(
    ("drop", "override", "reason"),
    [
        ("origin", {}, "origin"),
        ("referer", {}, "referer"),
        ("user-agent", {}, "user-agent"),
        (None, {"model": {"id": "gpt-4", "name": "GPT-4"}}, "model"),
        (None, {"key": None}, "key"),
    ],
)
async def test_legacy_violations(
    liaobots_legacy_replica: LiaobotsLegacyReplica,
    session: aiohttp.ClientSession,
    drop: str | None,
    override: dict[str, Any],
    reason: str,
) -> None:
    replica = liaobots_legacy_replica
    headers = legacy_headers(replica)
    if drop:
        headers.pop(drop)
    async with session.post(replica.url("/api/chat"), json=legacy_body(**override), headers=headers) as resp:
        assert resp.status == 400
    assert len(replica.violations) == 1 and reason in replica.violations[0]


# --------------------------------------------------------------------------- AiChatOnline


async def aichat_token(replica: AiChatOnlineReplica, session: aiohttp.ClientSession, canvas: str) -> str:
    async with session.get(replica.url("/api/v1/user/getUniqueId"), params={"canvas": canvas}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        return (await resp.json())["data"]


async def aichat_chat(replica: AiChatOnlineReplica, session: aiohttp.ClientSession, unique: str) -> str:
    body = {"conversationId": rand(), "prompt": "Hello"}
    async with session.post(
        replica.url("/aichatonline/api/chat/gpt"), json=body, headers={"UniqueId": unique}
    ) as resp:
        assert resp.status == 200
        return decode_incrementally(await read_chunks(resp))


async def test_aichatonline_flow(
    aichatonline_replica: AiChatOnlineReplica, session: aiohttp.ClientSession
) -> None:
    replica = aichatonline_replica
    unique = await aichat_token(replica, session, "-" + rand())
    raw = await aichat_chat(replica, session, unique)
    assert raw.splitlines()[0].startswith('{"data": {"message": ')
    assert aichat_text(raw) == DEFAULT_ANSWER
    replica.scenario = "malformed"
    raw = await aichat_chat(replica, session, unique)
    assert "{not json" in raw
    assert aichat_text(raw) == DEFAULT_ANSWER
    replica.scenario = "split_multibyte"
    assert aichat_text(await aichat_chat(replica, session, unique)) == DEFAULT_ANSWER
    assert replica.prompts == ["Hello"] * 3
    assert replica.violations == []


async def test_aichatonline_violations(
    aichatonline_replica: AiChatOnlineReplica, session: aiohttp.ClientSession
) -> None:
    replica = aichatonline_replica
    canvas = "-" + rand()
    unique = await aichat_token(replica, session, canvas)
    token_url = replica.url("/api/v1/user/getUniqueId")
    async with session.get(token_url, params={"canvas": canvas}) as resp:  # cache busting broken
        assert resp.status == 400
    async with session.get(token_url, params={"canvas": "-ABC"}) as resp:
        assert resp.status == 400
    chat_url = replica.url("/aichatonline/api/chat/gpt")
    async with session.post(chat_url, json={"conversationId": rand(), "prompt": "x"}) as resp:
        assert resp.status == 400
    body = {"conversationId": str(uuid.uuid4()), "prompt": "x"}
    async with session.post(chat_url, json=body, headers={"UniqueId": unique}) as resp:
        assert resp.status == 400
    assert [v.split(": ", 1)[1].split(" ")[0] for v in replica.violations] == [
        "canvas",
        "canvas",
        "missing",
        "conversationId",
    ]
    assert "repeated" in replica.violations[0]


async def test_aichatonline_token_500(
    aichatonline_replica: AiChatOnlineReplica, session: aiohttp.ClientSession
) -> None:
    aichatonline_replica.scenario = "token_500"
    url = aichatonline_replica.url("/api/v1/user/getUniqueId")
    async with session.get(url, params={"canvas": "-" + rand()}) as resp:
        assert resp.status == 500


# --------------------------------------------------------------------------- OpenAI fake


def completion_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
    body.update(overrides)
    return body


async def openai_stream(
    fake: OpenAIFake, session: aiohttp.ClientSession, **overrides: Any
) -> tuple[aiohttp.ClientResponse, str]:
    body = completion_request(stream=True, **overrides)
    async with session.post(fake.url("/v1/chat/completions"), json=body) as resp:
        return resp, decode_incrementally(await read_chunks(resp))


async def test_openai_models(openai_fake: OpenAIFake, session: aiohttp.ClientSession) -> None:
    async with session.get(openai_fake.api_base + "/models") as resp:
        listing = await resp.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake-small", "fake-large"]


async def test_openai_non_streaming(openai_fake: OpenAIFake, session: aiohttp.ClientSession) -> None:
    body = completion_request(temperature=0.2, seed=7, stop=["\n"], x_custom={"a": 1})
    async with session.post(openai_fake.url("/v1/chat/completions"), json=body) as resp:
        obj = await resp.json()
    assert obj["object"] == "chat.completion" and obj["id"].startswith("chatcmpl-")
    assert obj["model"] == "fake-small" and isinstance(obj["created"], int)
    assert obj["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": DEFAULT_ANSWER, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = obj["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert openai_fake.last_body == body  # pass-through fields recorded verbatim


async def test_openai_stream_shape_usage_and_done(
    openai_fake: OpenAIFake, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": "echo:Привет 🌍"}]
    _, raw = await openai_stream(
        openai_fake, session, messages=messages, stream_options={"include_usage": True}
    )
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "fake-small", "chat.completion.chunk")
    }
    usage_chunk, content_chunks = chunks[-1], chunks[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    assert content_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in content_chunks] == [None] * (
        len(content_chunks) - 1
    ) + ["stop"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks)
    assert text == "Привет 🌍"
    assert openai_fake.violations == []


async def test_openai_prefill_and_tool_call(openai_fake: OpenAIFake, session: aiohttp.ClientSession) -> None:
    prefill = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "one, two"}]
    _, raw = await openai_stream(openai_fake, session, messages=prefill)
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in sse_payloads(raw))
    assert text == openai_fake.continuation and openai_fake.prefills == ["one, two"]

    openai_fake.scenario = "tool_call"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    _, raw = await openai_stream(openai_fake, session, tools=tools)
    payloads = sse_payloads(raw)
    calls = [d for p in payloads for d in p["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert len(calls) > 2 and {c["index"] for c in calls} == {0}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == openai_fake.tool_arguments
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503])
async def test_openai_status_scenarios(
    openai_fake: OpenAIFake, session: aiohttp.ClientSession, status: int
) -> None:
    openai_fake.scenario = f"status_{status}"
    openai_fake.retry_after = 3
    async with session.post(openai_fake.url("/v1/chat/completions"), json=completion_request()) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert resp.headers.get("Retry-After") == ("3" if status == 429 else None)


async def test_openai_fail_next_and_api_key(openai_fake: OpenAIFake, session: aiohttp.ClientSession) -> None:
    url = openai_fake.url("/v1/chat/completions")
    openai_fake.fail_next, openai_fake.fail_status = 2, 503
    statuses = []
    for _ in range(3):
        async with session.post(url, json=completion_request()) as resp:
            statuses.append(resp.status)
    assert statuses == [503, 503, 200]
    openai_fake.api_key = "sk-test"
    async with session.post(url, json=completion_request()) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    async with session.post(
        url, json=completion_request(), headers={"Authorization": "Bearer sk-test"}
    ) as resp:
        assert resp.status == 200


async def test_openai_stream_faults(openai_fake: OpenAIFake, session: aiohttp.ClientSession) -> None:
    openai_fake.scenario = "mid_stream_error"
    _, raw = await openai_stream(openai_fake, session)
    assert "error" in sse_payloads(raw)[-1] and "[DONE]" not in raw
    openai_fake.scenario = "malformed_stream"
    _, raw = await openai_stream(openai_fake, session)
    assert raw.endswith("data: {not json\n\n")
    openai_fake.scenario = "keepalive"
    _, raw = await openai_stream(openai_fake, session)
    assert raw.count(": ping\n\n") > 3 and raw.endswith("data: [DONE]\n\n")
    openai_fake.scenario = "one_byte"
    _, raw = await openai_stream(openai_fake, session)
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in sse_payloads(raw)) == DEFAULT_ANSWER
    assert all(len(c) == 1 for c in openai_fake.last_chunks)
    openai_fake.scenario = "html_200"
    resp, raw = await openai_stream(openai_fake, session)
    assert resp.status == 200 and resp.content_type == "text/html" and raw.startswith("<!DOCTYPE html>")


async def test_openai_non_streaming_transport_faults(
    openai_fake: OpenAIFake, session: aiohttp.ClientSession
) -> None:
    url = openai_fake.url("/v1/chat/completions")
    openai_fake.scenario = "one_byte"
    async with session.post(url, json=completion_request()) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == DEFAULT_ANSWER
    openai_fake.scenario = "disconnect"
    async with session.post(url, json=completion_request()) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert openai_fake.dropped == 1
    # A client that gives up while the replica withholds the first byte is noticed.
    openai_fake.scenario = "slow_first_byte"
    openai_fake.first_byte_delay = 30
    with pytest.raises(TimeoutError):
        await session.post(url, json=completion_request(), timeout=aiohttp.ClientTimeout(total=0.3))
    await openai_fake.wait_until(lambda: openai_fake.disconnects == 1 and openai_fake.open_streams == 0)


async def test_aichatonline_disconnect(
    aichatonline_replica: AiChatOnlineReplica, session: aiohttp.ClientSession
) -> None:
    replica = aichatonline_replica
    unique = await aichat_token(replica, session, "-" + rand())
    replica.scenario = "disconnect"
    received = b""
    body = {"conversationId": rand(), "prompt": "Hello"}
    async with session.post(
        replica.url("/aichatonline/api/chat/gpt"), json=body, headers={"UniqueId": unique}
    ) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    text = aichat_text(received.decode())
    assert text and DEFAULT_ANSWER.startswith(text) and text != DEFAULT_ANSWER


async def test_openai_violation_is_error_object(
    openai_fake: OpenAIFake, session: aiohttp.ClientSession
) -> None:
    body = completion_request(stream_options={"include_usage": True})  # without stream: true
    async with session.post(openai_fake.url("/v1/chat/completions"), json=body) as resp:
        assert resp.status == 400
        assert "stream_options" in (await resp.json())["error"]["message"]
    assert openai_fake.violations == [
        "POST /v1/chat/completions: stream_options is only allowed when stream is true"
    ]


# --------------------------------------------------------------------------- lifecycle and CLI


async def test_stop_cancels_stalled_handler(session: aiohttp.ClientSession) -> None:
    replica = OpenAIFake("stall")
    await replica.start()
    resp = await session.post(replica.url("/v1/chat/completions"), json=completion_request(stream=True))
    try:
        await resp.content.readuntil(b"\n\n")
        started = time.monotonic()
        await replica.stop()
        assert time.monotonic() - started < 2
        assert replica.base_url is None and replica.open_streams == 0
    finally:
        resp.close()


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        LiaobotsReplica("no_such_thing")


def test_cli_rejects_unknown_service_and_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        replicas_main(["nonexistent"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        replicas_main(["openai", "--scenario", "nope"])
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert replicas_main(["aichatonline", "--list-scenarios"]) == 0
    assert "token_500" in capsys.readouterr().out.split()
