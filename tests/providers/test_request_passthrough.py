"""Every request field reaches an OpenAI-compatible upstream as the client sent it, and every
choice and logprob of the answer reaches the client.

The request goes in through the gateway (an HTTP body, served in-process over ASGI), through
``OpenAICompatible.stream`` keyword arguments and through an explicit ``extra_body``; the
OpenAI fake records the body it received, and each field is compared as JSON text, so a
rewritten value, a reordered part or a renamed field (``max_completion_tokens`` to
``max_tokens``) fails. Fields patchbay does not name travel in ``extra_body`` and must arrive
top-level. The answers with two choices and logprobs are crafted in the OpenAI shape and served
by the fake, whole and streamed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from patchbay.events import Logprobs, StreamEvent, TextDelta
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.server.app import Gateway
from patchbay.settings import ServerSettings, Settings
from patchbay.timeouts import Timeout
from tests.replicas.base import sse
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient

FAST = Timeout(connect=2, first_byte=5, idle=5, total=20)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}]
#: In the order the request type keeps a message's keys (role, content, name, tool_calls, tool_call_id).
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture? Ünïcødé 🌍"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc123"}},
    ], "name": "ada"},
    {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
    {"role": "tool", "content": [{"type": "text", "text": "{\"temperature\": 21}"}], "tool_call_id": "call_1"},
    {"role": "user", "content": "And tomorrow?"},
]
FIELDS: dict[str, Any] = {
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "parallel_tool_calls": False,
    "user": "user-42",
    "metadata": {"team": "blue", "ticket": "T-1"},
    "store": True,
    "logit_bias": {"50256": -100, "1734": 7},
    "reasoning_effort": "low",
    "service_tier": "flex",
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "The weather tomorrow is"},
    "audio": {"voice": "alloy", "format": "wav"},
    "max_completion_tokens": 77,
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "weather", "strict": True,
        "schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}}},
    "temperature": 0.25,
    "top_p": 0.5,
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "stop": ["\n\n", "END"],
}
#: Fields patchbay does not name: they travel in extra_body and go upstream top-level.
UNKNOWN: dict[str, Any] = {
    "web_search_options": {"search_context_size": "low",
                           "user_location": {"type": "approximate", "approximate": {"city": "Paris"}}},
    "verbosity": "low",
}


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def assert_passed_through(body: dict[str, Any], sent: dict[str, Any]) -> None:
    """Each field the client sent is in the upstream body as the same JSON text."""
    for name, value in sent.items():
        assert name in body, f"{name} did not reach the upstream"
        assert as_json(body[name]) == as_json(value), f"{name} was changed on the way"
    assert "max_tokens" not in body  # max_completion_tokens is not rewritten
    assert "extra_body" not in body  # its fields went top-level
    for position, message in enumerate(MESSAGES):
        assert as_json(body["messages"][position].get("content")) == as_json(message.get("content"))


# -- the gateway, in-process ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ASGIClient]:
    for variable in ("PATCHBAY_API_KEYS", "PATCHBAY_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False),
                        providers={"fake": {"base_url": openai_fake.api_base, "models": ["fake-small"]}},
                        routes={"small": ["fake/fake-small"]})
    yield ASGIClient(Gateway(settings))


def sse_data(body: bytes) -> list[Any]:
    """The JSON payloads of an SSE response body (comments and ``[DONE]`` left out)."""
    found = []
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            found.append(json.loads(line.removeprefix("data: ")))
    return found


@pytest.mark.parametrize("stream", [False, True])
async def test_every_field_of_an_http_body_reaches_the_upstream(gateway: ASGIClient, openai_fake: OpenAIFake,
                                                                stream: bool) -> None:
    sent = {"model": "small", "messages": MESSAGES, **FIELDS, **UNKNOWN, "stream": stream}
    status, _ = await gateway.post("/v1/chat/completions", json.dumps(sent).encode())
    assert status == 200
    body = openai_fake.last_body
    assert_passed_through(body, {**FIELDS, **UNKNOWN, "messages": MESSAGES})
    assert body["model"] == "fake-small" and body["stream"] is stream
    assert openai_fake.violations == []


async def test_an_explicit_extra_body_in_the_http_body_goes_top_level(gateway: ASGIClient,
                                                                     openai_fake: OpenAIFake) -> None:
    sent = {"model": "small", "messages": MESSAGES, "extra_body": {"repetition_penalty": 1.1, **UNKNOWN},
            "max_completion_tokens": 5}
    status, _ = await gateway.post("/v1/chat/completions", json.dumps(sent).encode())
    assert status == 200
    assert_passed_through(openai_fake.last_body, {"repetition_penalty": 1.1, **UNKNOWN, "max_completion_tokens": 5})


# -- OpenAICompatible directly --------------------------------------------------------------------


def fake_provider(fake: OpenAIFake) -> type[OpenAICompatible]:
    return OpenAICompatible.configure("Fake", base_url=fake.api_base, default_model="fake-small")


@pytest.mark.parametrize("how", ["keywords", "extra_body"])
async def test_every_field_given_to_a_provider_reaches_the_upstream(openai_fake: OpenAIFake, how: str) -> None:
    unknown = UNKNOWN if how == "keywords" else {"extra_body": UNKNOWN}
    stream = fake_provider(openai_fake).stream(None, MESSAGES, timeout=FAST, **FIELDS, **unknown)
    await stream.collect()
    assert_passed_through(openai_fake.last_body, {**FIELDS, **UNKNOWN, "messages": MESSAGES})
    assert openai_fake.violations == []


# -- two choices and logprobs, back to the client -------------------------------------------------


def token(text: str, logprob: float) -> dict[str, Any]:
    data = list(text.encode())
    return {"token": text, "logprob": logprob, "bytes": data,
            "top_logprobs": [{"token": text, "logprob": logprob, "bytes": data},
                             {"token": "x", "logprob": -9.5, "bytes": [120]}]}


#: Two answers, each in two tokens: (text pieces, finish reason).
ANSWERS = [(["Sunny", " skies"], "stop"), (["Rain", " again"], "length")]
LOGPROBS = [[token(piece, -0.25 * (i + 1)) for i, piece in enumerate(pieces)] for pieces, _ in ANSWERS]
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
PRICED_USAGE = {**USAGE, "cost": 0.0}  # as patchbay answers it: the fake's model has no prices


def whole_answer(order: Sequence[int]) -> bytes:
    choices = [{"index": index, "message": {"role": "assistant", "content": "".join(ANSWERS[index][0]),
                                            "refusal": None},
                "logprobs": {"content": LOGPROBS[index], "refusal": None}, "finish_reason": ANSWERS[index][1]}
               for index in order]
    return json.dumps({"id": "chatcmpl-two", "object": "chat.completion", "created": 1700000000,
                       "model": "fake-small", "choices": choices, "usage": USAGE}).encode()


def streamed_answer() -> list[bytes]:
    head = {"id": "chatcmpl-two", "object": "chat.completion.chunk", "created": 1700000000, "model": "fake-small"}

    def chunk(index: int, delta: dict[str, Any], logprobs: list[dict[str, Any]] | None = None,
              finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                  "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    pieces = [chunk(0, {"role": "assistant", "content": ""}), chunk(1, {"role": "assistant", "content": ""})]
    for position in range(2):  # the two answers interleaved, token by token
        for index, (texts, _) in enumerate(ANSWERS):
            pieces.append(chunk(index, {"content": texts[position]}, [LOGPROBS[index][position]]))
    pieces += [chunk(index, {}, finish=finish) for index, (_, finish) in enumerate(ANSWERS)]
    pieces += [sse({**head, "choices": [], "usage": USAGE}), b"data: [DONE]\n\n"]
    return pieces


def serve_crafted(fake: OpenAIFake, order: Sequence[int] = (0, 1)) -> None:
    """The fake answers every chat request with the two crafted choices (whole or streamed)."""
    original = fake.send

    async def send(request: web.Request, pieces: Sequence[bytes], **options: Any) -> web.StreamResponse:
        streamed = bool(pieces) and pieces[0].startswith(b"data: ")
        return await original(request, streamed_answer() if streamed else [whole_answer(order)], **options)

    fake.send = send  # type: ignore[method-assign]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["in-order", "listed-backwards"])
async def test_a_whole_answer_with_two_choices_and_logprobs(gateway: ASGIClient, openai_fake: OpenAIFake,
                                                            order: tuple[int, int]) -> None:
    serve_crafted(openai_fake, order)
    request = {"model": "small", "messages": MESSAGES[:2], "n": 2, "logprobs": True, "top_logprobs": 2}
    status, raw = await gateway.post("/v1/chat/completions", json.dumps(request).encode())
    assert status == 200
    answer = json.loads(raw)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for index, choice in enumerate(answer["choices"]):
        texts, finish = ANSWERS[index]
        assert choice["message"]["content"] == "".join(texts)
        assert choice["finish_reason"] == finish
        assert as_json(choice["logprobs"]["content"]) == as_json(LOGPROBS[index])
    assert answer["usage"] == PRICED_USAGE


async def test_a_streamed_answer_with_two_choices_and_logprobs(gateway: ASGIClient, openai_fake: OpenAIFake) -> None:
    serve_crafted(openai_fake)
    request = {"model": "small", "messages": MESSAGES[:2], "n": 2, "logprobs": True, "top_logprobs": 2,
               "stream": True, "stream_options": {"include_usage": True}}
    status, raw = await gateway.post("/v1/chat/completions", json.dumps(request).encode())
    assert status == 200
    chunks = sse_data(raw)
    assert not any("error" in chunk for chunk in chunks)
    text: dict[int, str] = {0: "", 1: ""}
    logprobs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text[choice["index"]] += choice["delta"].get("content") or ""
            logprobs[choice["index"]] += (choice.get("logprobs") or {}).get("content") or []
            if choice.get("finish_reason"):
                finishes[choice["index"]] = choice["finish_reason"]
    for index, (texts, finish) in enumerate(ANSWERS):
        assert text[index] == "".join(texts)
        assert as_json(logprobs[index]) == as_json(LOGPROBS[index])
        assert finishes[index] == finish
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == PRICED_USAGE


async def test_the_provider_yields_each_choices_text_and_logprobs(openai_fake: OpenAIFake) -> None:
    serve_crafted(openai_fake)
    for streamed in (False, True):
        events: list[StreamEvent] = [e async for e in fake_provider(openai_fake).stream(
            None, MESSAGES[:2], n=2, logprobs=True, stream=streamed, timeout=FAST)]
        for index, (texts, _) in enumerate(ANSWERS):
            assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == index) == "".join(texts)
            assert [t for e in events if isinstance(e, Logprobs) and e.choice == index
                    for t in e.content] == LOGPROBS[index]
