"""The OpenAI schema check (tests/support/openai_schema.py): the validator, its one relaxation,
which schema each endpoint follows, and the traffic check that validates what the tests' clients
receive from patchbay's server."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import msgspec
import openai
import pytest
import requests
from aiohttp import web

from patchbay.chat.response import complete, stream_chunks
from patchbay.errors import InvalidRequest, RateLimited
from patchbay.events import EventStream, Finish, Logprobs, ProviderInfo, TextDelta, ToolCallDelta, Transcript, Usage
from tests.support.asgi_client import ASGIClient
from tests.support.gateway_process import GatewayProcess
from tests.support.openai_schema import (
    COMPLETION_CHUNK,
    HTTPX_MODULES,
    NULLS_THE_API_SENDS,
    SCHEMAS_PATH,
    TrafficCheck,
    schema_for,
    validate,
)

TOOL_CALL = [ToolCallDelta(0, "call_1", "lookup", '{"city": ', 0), ToolCallDelta(0, None, None, '"Paris"}', 0),
             Finish("tool_calls", 0)]
TEXT = [ProviderInfo("Fake", "fake-small"), TextDelta("Hel", 0), TextDelta("lo", 0),
        Logprobs([{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": []}], 0),
        Usage(3, 2), Finish("stop", 0)]


def events(items: list[Any]) -> EventStream:
    async def produce() -> AsyncIterator[Any]:
        for item in items:
            yield item
    return EventStream(produce(), Transcript())


def as_json(value: Any) -> Any:
    """What the server sends: the object encoded, then decoded as a client would."""
    return json.loads(msgspec.json.encode(value))


def rejected(schema: str, document: Any, *, relaxed: bool = True) -> str:
    with pytest.raises(AssertionError) as info:
        validate(schema, document, relaxed=relaxed)
    return str(info.value)


def chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, **choice}]}


def whole(**message: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None, **message},
                         "finish_reason": "stop", "logprobs": None}]}


# -- patchbay's chat completion objects --------------------------------------------------------------


@pytest.mark.parametrize("items", [TEXT, TOOL_CALL], ids=["text", "tool-call"])
async def test_patchbays_whole_answer_follows_the_schema(items: list[Any]) -> None:
    answer = as_json(await complete(events(items), "m"))
    validate("CreateChatCompletionResponse", answer)
    validate("CreateChatCompletionResponse", answer, relaxed=False)  # it needs none of the API's nulls
    message = answer["choices"][0]["message"]
    assert message["refusal"] is None
    assert ("tool_calls" in message) == (items is TOOL_CALL)


@pytest.mark.parametrize("items", [TEXT, TOOL_CALL], ids=["text", "tool-call"])
async def test_patchbays_chunks_follow_the_schema(items: list[Any]) -> None:
    chunks = [as_json(piece) async for piece in stream_chunks(events(items), "m", include_usage=True)]
    assert len(chunks) >= 3
    for piece in chunks:
        validate("CreateChatCompletionStreamResponse", piece)
        for choice in piece["choices"]:
            assert choice["delta"].get("tool_calls", []) is not None


async def test_an_answer_without_usage_leaves_usage_out() -> None:
    answer = as_json(await complete(events([TextDelta("hi", 0)]), "m"))
    assert "usage" not in answer
    validate("CreateChatCompletionResponse", answer)


def test_patchbays_error_body_follows_the_schema() -> None:
    for error in (InvalidRequest("messages[0].role is wrong", param="messages[0].role"), RateLimited("slow down")):
        validate("ErrorResponse", {"error": error.to_dict()})


# -- the validator -------------------------------------------------------------------------------------


def test_the_two_known_faults_are_rejected_naming_the_place_and_the_rule() -> None:
    message = whole(tool_calls=None)
    del message["choices"][0]["message"]["refusal"]
    problem = rejected("CreateChatCompletionResponse", message)
    assert "$.choices[0].message.tool_calls: None is not of type 'array'" in problem
    assert "$.choices[0].message: 'refusal' is a required property" in problem
    assert "'required'" in problem and "'type'" in problem


def test_a_conformant_answer_is_accepted() -> None:
    validate("CreateChatCompletionResponse", whole())
    validate("CreateChatCompletionResponse", whole(content=None, tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]))


def test_a_union_names_the_branch_the_type_chose() -> None:
    event = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
             "delta": 5, "sequence_number": 1, "logprobs": []}
    problem = rejected("ResponseStreamEvent", event)
    assert "$.delta: 5 is not of type 'string'" in problem and "ResponseTextDeltaEvent" in problem
    validate("ResponseStreamEvent", {**event, "delta": "hi"})


def test_an_unknown_schema_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate("NoSuchSchema", {})


# -- the relaxation: the nulls the README lists, and no others ---------------------------------------------


@pytest.mark.parametrize(("schema", "document"), [
    ("CreateChatCompletionStreamResponse", chunk(finish_reason=None)),
    ("CreateChatCompletionStreamResponse", chunk(finish_reason=None, logprobs=None)),
    ("CreateChatCompletionStreamResponse", chunk(finish_reason=None, logprobs={"content": None, "refusal": None})),
    ("CreateChatCompletionStreamResponse", {**chunk(finish_reason="stop"), "usage": None}),
    ("CreateChatCompletionStreamResponse", {**chunk(finish_reason="stop"), "system_fingerprint": None}),
    ("CreateChatCompletionResponse", {**whole(), "system_fingerprint": None}),
    ("CreateCompletionResponse", {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [], "system_fingerprint": None}),
    (COMPLETION_CHUNK, {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": None}]}),
], ids=["finish_reason", "logprobs", "logprobs-lists", "usage", "chunk-fingerprint", "fingerprint",
        "completion-fingerprint", "completion-chunk-finish_reason"])
def test_the_nulls_the_api_sends_are_conformant_and_only_by_the_relaxation(schema: str, document: Any) -> None:
    validate(schema, document)
    published = "CreateCompletionResponse" if schema == COMPLETION_CHUNK else schema
    rejected(published, document, relaxed=False)


def test_service_tier_null_is_conformant_as_published() -> None:
    validate("CreateChatCompletionResponse", {**whole(), "service_tier": None}, relaxed=False)
    validate("CreateChatCompletionStreamResponse", {**chunk(finish_reason=None), "service_tier": None})


@pytest.mark.parametrize(("schema", "document"), [
    ("CreateChatCompletionResponse", whole(tool_calls=None)),
    ("CreateChatCompletionResponse", {**whole(), "usage": None}),
    ("CreateChatCompletionResponse", {**whole(), "choices": [{**whole()["choices"][0], "finish_reason": None}]}),
    ("CreateChatCompletionStreamResponse", chunk(finish_reason=None, delta={"tool_calls": None})),
    ("CreateCompletionResponse", {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": None}]}),
    ("Model", {"id": "m", "object": "model", "created": None, "owned_by": "patchbay"}),
    ("ErrorResponse", {"error": {"message": None, "type": "invalid_request_error", "param": None, "code": None}}),
], ids=["tool_calls", "whole-usage", "whole-finish_reason", "delta-tool_calls", "whole-completion-finish_reason",
        "model-created", "error-message"])
def test_other_nulls_stay_refused(schema: str, document: Any) -> None:
    rejected(schema, document)


def test_the_relaxation_covers_every_nullable_mark_and_only_the_readmes_fields() -> None:
    schemas = json.loads(SCHEMAS_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    marked: set[tuple[str, str]] = set()

    def walk(node: Any, name: str, pointer: str) -> None:
        if isinstance(node, dict):
            if node.get("nullable") is True:
                marked.add((name, pointer))
            for key, value in node.items():
                walk(value, name, f"{pointer}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, name, f"{pointer}/{index}")

    for name, schema in schemas.items():
        walk(schema, name, "")
    assert marked and marked <= set(NULLS_THE_API_SENDS)
    fields = {pointer.rpartition("/")[2] for _, pointer in NULLS_THE_API_SENDS}
    assert fields == {"finish_reason", "logprobs", "content", "refusal", "usage", "system_fingerprint", "service_tier"}
    for name, pointer in NULLS_THE_API_SENDS:
        if pointer.endswith(("/content", "/refusal")):
            assert "/logprobs/properties/" in pointer and name == "CreateChatCompletionStreamResponse"
        if pointer.endswith(("/finish_reason", "/logprobs", "/usage")):
            assert name in ("CreateChatCompletionStreamResponse", COMPLETION_CHUNK)  # stream chunks only


def embeddings(embedding: Any) -> dict[str, Any]:
    return {"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}]}


def test_an_embedding_may_be_base64_as_the_api_sends_it() -> None:
    packed = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode()
    validate("CreateEmbeddingResponse", embeddings([0.5, -1.0, 2.0]))
    validate("CreateEmbeddingResponse", embeddings(packed))
    rejected("CreateEmbeddingResponse", embeddings(packed), relaxed=False)
    assert "$.data[0].embedding" in rejected("CreateEmbeddingResponse", embeddings("not base64!"))
    rejected("CreateEmbeddingResponse", embeddings(None))


# -- which schema an endpoint follows ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "streaming", "status", "expected"), [
    ("GET", "/v1/models", False, 200, "ListModelsResponse"),
    ("GET", "/v1/models/Liaobots/gpt-4o", False, 200, "Model"),
    ("GET", "/v1/models/small?x=1", False, 200, "Model"),
    ("POST", "/v1/chat/completions", False, 200, "CreateChatCompletionResponse"),
    ("POST", "/v1/chat/completions", True, 200, "CreateChatCompletionStreamResponse"),
    ("POST", "/v1/chat/completions", False, 429, "ErrorResponse"),
    ("POST", "/v1/chat/completions", True, 502, "ErrorResponse"),
    ("GET", "/v1/chat/completions", False, 405, "ErrorResponse"),
    ("GET", "/v1/nothing", False, 404, "ErrorResponse"),
    ("POST", "/v1/embeddings", False, 200, "CreateEmbeddingResponse"),
    ("POST", "/v1/completions", False, 200, "CreateCompletionResponse"),
    ("POST", "/v1/completions", True, 200, COMPLETION_CHUNK),
    ("POST", "/v1/responses", False, 200, "Response"),
    ("POST", "/v1/responses", True, 200, "ResponseStreamEvent"),
    ("GET", "/v1/responses/resp_123", False, 200, "Response"),
    ("POST", "/chat/completions", True, 200, "CreateChatCompletionStreamResponse"),
    ("POST", "/completions", False, 400, "ErrorResponse"),
    ("POST", "/embeddings", False, 200, "CreateEmbeddingResponse"),
    ("GET", "/models", False, 200, "ListModelsResponse"),
    ("GET", "/models/small", False, 200, "Model"),
    ("POST", "/responses", False, 404, None),
    ("POST", "/v1/messages", False, 200, None),
    ("POST", "/v1/messages", True, 400, None),
    ("POST", "/v1/messages/count_tokens", False, 200, None),
    ("HEAD", "/v1/models", False, 200, None),
    ("GET", "/health", False, 200, None),
    ("GET", "/v2/nothing", False, 404, None),
    ("GET", "/metrics", False, 200, None),
])
def test_schema_for(method: str, path: str, streaming: bool, status: int, expected: str | None) -> None:
    assert schema_for(method, path, streaming, status=status) == expected


# -- the traffic check ------------------------------------------------------------------------------------------


def sse(*events: tuple[str | None, Any]) -> bytes:
    out = b": keep-alive\n\n"
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()
    return out


GOOD_CHUNK = chunk(finish_reason=None)
BAD_CHUNK = chunk(finish_reason=None, delta={"content": "x", "tool_calls": None})


@pytest.mark.parametrize("split", [1, 2, 7, None], ids=["bytes", "pairs", "sevens", "whole"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_stream_is_checked_event_by_event_however_it_is_split(split: int | None, newline: bytes) -> None:
    body = sse((None, GOOD_CHUNK), (None, BAD_CHUNK), (None, {"error": error_object()}), (None, "[DONE]"))
    body = body.replace(b"\n", newline)
    traffic = TrafficCheck()
    check = traffic.answer("POST", "/v1/chat/completions", 200, "text/event-stream; charset=utf-8")
    for start in range(0, len(body), split or len(body)):
        check.feed(body[start:start + (split or len(body))])
    check.close()
    assert traffic.checked == 3  # two chunks and the in-band error; [DONE] and the comment are no documents
    assert len(traffic.failures) == 1 and "event 1" in traffic.failures[0]
    assert "$.choices[0].delta.tool_calls" in traffic.failures[0]


def error_object(**fields: Any) -> dict[str, Any]:
    return {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limited", **fields}


def test_an_in_band_error_follows_the_error_schema() -> None:
    traffic = TrafficCheck()
    traffic.whole("POST", "/v1/chat/completions", 200, "text/event-stream",
                  sse((None, GOOD_CHUNK), (None, {"error": {"message": "broken"}})))
    assert len(traffic.failures) == 1 and "ErrorResponse" in traffic.failures[0]


def test_an_event_cut_off_by_the_end_of_the_stream_is_dropped() -> None:
    traffic = TrafficCheck()
    check = traffic.answer("POST", "/v1/chat/completions", 200, "text/event-stream")
    check.feed(sse((None, GOOD_CHUNK)) + b'data: {"id": "chatc')
    check.close(complete=False)
    assert traffic.checked == 1 and not traffic.failures


def test_responses_events_name_their_type() -> None:
    event = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
             "delta": "hi", "sequence_number": 1, "logprobs": []}
    traffic = TrafficCheck()
    traffic.whole("POST", "/v1/responses", 200, "text/event-stream",
                  sse(("response.output_text.delta", event), ("response.created", event)))
    assert len(traffic.failures) == 1 and "event 1 (response.created)" in traffic.failures[0]


def test_whole_bodies() -> None:
    traffic = TrafficCheck()
    traffic.whole("GET", "/v1/models", 200, "application/json",
                  json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                          "owned_by": "patchbay"}]}).encode())
    traffic.whole("POST", "/v1/messages", 400, "application/json", b'{"type": "error"}')  # Anthropic's
    traffic.whole("GET", "/health", 200, "application/json", b"{}")
    assert traffic.checked == 1 and not traffic.failures
    traffic.whole("POST", "/v1/chat/completions", 500, "text/plain", b"Internal Server Error")
    traffic.whole("POST", "/v1/chat/completions", 400, "application/json", json.dumps(
        {"error": {"message": "bad", "type": "invalid_request_error"}}).encode())
    assert len(traffic.failures) == 2
    assert "not JSON" in traffic.failures[0] and "'param' is a required property" in traffic.failures[1]


def test_a_part_of_a_json_body_is_not_checked() -> None:
    traffic = TrafficCheck()
    check = traffic.answer("POST", "/v1/chat/completions", 200, "application/json")
    check.feed(b'{"id": ')
    check.close(complete=False)
    assert traffic.checked == 0 and not traffic.failures


def test_the_check_fails_the_test_that_received_the_bad_answer() -> None:
    traffic = TrafficCheck()
    traffic.assert_clean()
    traffic.whole("POST", "/v1/chat/completions", 200, "application/json", json.dumps(whole(tool_calls=None)).encode())
    with pytest.raises(pytest.fail.Exception, match="tool_calls"):
        traffic.assert_clean()


# -- the fixture sees every client: ASGIClient, httpx (the openai SDK), aiohttp, requests ---------------------


async def bad_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering every request with a chat completion whose tool_calls is null."""
    if scope["type"] != "http":
        return
    await receive()
    body = json.dumps(whole(tool_calls=None)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_the_fixture_checks_what_an_asgi_client_receives(openai_conformance: TrafficCheck) -> None:
    await ASGIClient(bad_app).request("POST", "/v1/chat/completions", b"{}")
    failures, openai_conformance.failures = openai_conformance.failures, []
    assert len(failures) == 1 and "tool_calls" in failures[0]


@pytest.fixture
async def bad_server() -> AsyncIterator[str]:
    """A server on 127.0.0.1 answering a non-conformant chat completion, whole or streamed."""
    async def answer(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(whole(tool_calls=None))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse((None, GOOD_CHUNK), (None, BAD_CHUNK), (None, "[DONE]")))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


HELLO: list[Any] = [{"role": "user", "content": "hi"}]


def test_the_openai_sdks_http_clients_are_among_those_checked() -> None:
    checked = tuple(module.AsyncClient for module in HTTPX_MODULES), tuple(module.Client for module in HTTPX_MODULES)
    assert issubclass(openai.DefaultAsyncHttpxClient, checked[0]) and issubclass(openai.DefaultHttpxClient, checked[1])


async def test_the_fixture_checks_only_patchbays_servers(openai_conformance: TrafficCheck, bad_server: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # (httpx clients as the openai SDK makes them: the SDK itself would run `uname`, a subprocess)
    url = f"{bad_server}/v1/chat/completions"
    async with httpx.AsyncClient() as plain:
        assert (await plain.post(url, json={})).json()["object"] == "chat.completion"  # not patchbay's: unchecked
    assert openai_conformance.checked == 0 and not openai_conformance.failures

    monkeypatch.setattr(GatewayProcess, "running", {bad_server})  # as if patchbay served there
    for module in HTTPX_MODULES:
        async with module.AsyncClient() as client:
            await client.post(url, json={})
            async with client.stream("POST", url, json={"stream": True}) as response:
                async for _ in response.aiter_lines():
                    pass

    def sync_clients() -> None:  # in a thread: the server runs on this test's loop
        for module in HTTPX_MODULES:
            with module.Client() as client:
                client.post(url, json={})
                with client.stream("POST", url, json={"stream": True}) as response:
                    for _ in response.iter_lines():
                        pass
        with requests.Session() as session:  # schemathesis's client
            assert session.post(url, json={}).status_code == 200

    await asyncio.to_thread(sync_clients)
    async with aiohttp.ClientSession() as http, http.post(url, json={}) as response:
        assert (await response.json())["object"] == "chat.completion"
        await response.text()  # a second read is the same answer, checked once
    failures, openai_conformance.failures = openai_conformance.failures, []
    assert len(failures) == 4 * len(HTTPX_MODULES) + 2, failures
    assert sum("event 1" in failure for failure in failures) == 2 * len(HTTPX_MODULES)  # the streamed ones
    assert all("tool_calls" in failure for failure in failures)
