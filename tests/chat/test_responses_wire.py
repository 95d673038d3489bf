"""The OpenAI Responses wire format (patchbay/chat/responses.py) and its stores
(patchbay/requestlog/responses.py): request mapping, the one state machine for stream and whole,
conformance to OpenAI's published schemas and to the openai SDK's types, chaining, and storage."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import platform
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from patchbay.chat.responses import (
    ResponseRendering,
    ResponsesRequest,
    decode_responses_request,
    item_id,
    response_id,
)
from patchbay.errors import InvalidRequest, PatchbayError, RateLimited, UpstreamError
from patchbay.events import Fallback, Finish, Logprobs, ProviderInfo, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.requestlog.responses import MemoryResponseStore, SQLiteResponseStore
from tests.support.paths import SCHEMAS

# The openai SDK's request headers read platform.processor(), which runs `uname -p` once per
# process: done here, at collection, so no unit test below counts as starting a subprocess.
platform.processor()

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


# -- helpers --------------------------------------------------------------------------------------


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    """A validator of OpenAI's own schema ``name`` (schemas.json registered as a resource)."""
    document = json.loads(SCHEMAS.read_text())
    registry = Registry().with_resource("urn:openai", Resource.from_contents(document,
                                                                               default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"}, registry=registry)


def assert_conforms(name: str, value: dict[str, Any]) -> None:
    """``value`` validates against OpenAI's schema ``name`` (the payload goes through JSON first)."""
    value = json.loads(json.dumps(value))
    error = best_match(_validator(name).iter_errors(value))
    assert error is None, f"{name} at {list(error.absolute_path)}: {error.message[:300]}"


_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def assert_sdk_parses(kind: str, payload: dict[str, Any]) -> None:
    """The openai SDK's pydantic types read the payload as the event it says it is."""
    event = _EVENTS.validate_python(json.loads(json.dumps(payload)))
    assert event.type == kind


def decode(**body: Any) -> ResponsesRequest:
    return decode_responses_request(json.dumps({"model": "route", **body}).encode())


def render(events: list[StreamEvent], request: ResponsesRequest | None = None,
           history: list[dict[str, Any]] | None = None) -> tuple[ResponseRendering, list[tuple[str, dict[str, Any]]]]:
    """Run ``events`` through one rendering; its frames (feed and finish) are checked as they come."""
    request = request or decode(input="hi", tools=[WEATHER])
    request.chat(history)
    rendering = ResponseRendering(request, response_id(), 1_700_000_000, clock=lambda: 1_700_000_005)
    frames = [frame for event in events for frame in rendering.feed(event)]
    frames += rendering.finish()
    return rendering, frames


def rebuild(frames: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The output items as a client that reads only the deltas builds them; each ``done`` event
    must agree with what the deltas built."""
    items: dict[int, dict[str, Any]] = {}
    for kind, payload in frames:
        index: int = payload.get("output_index", -1)
        if kind == "response.output_item.added":
            assert index not in items
            items[index] = copy.deepcopy(payload["item"])
        elif kind == "response.content_part.added":
            assert payload["item_id"] == items[index]["id"]
            items[index]["content"].append(copy.deepcopy(payload["part"]))
        elif kind == "response.output_text.delta":
            items[index]["content"][payload["content_index"]]["text"] += payload["delta"]
        elif kind == "response.output_text.done":
            assert items[index]["content"][payload["content_index"]]["text"] == payload["text"]
        elif kind == "response.content_part.done":
            assert items[index]["content"][payload["content_index"]] == payload["part"]
        elif kind == "response.function_call_arguments.delta":
            assert payload["item_id"] == items[index]["id"]
            items[index]["arguments"] += payload["delta"]
        elif kind == "response.function_call_arguments.done":
            assert (items[index]["name"], items[index]["arguments"]) == (payload["name"], payload["arguments"])
        elif kind == "response.output_item.done":
            built = {**items[index], "status": payload["item"]["status"]}
            assert built == payload["item"]
            items[index] = payload["item"]
    assert sorted(items) == list(range(len(items)))
    return [items[index] for index in sorted(items)]


def check_frames(rendering: ResponseRendering, frames: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Everything a stream and its whole Response must be: returns the whole Response."""
    kinds = [kind for kind, _ in frames]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert [payload["sequence_number"] for _, payload in frames] == list(range(len(frames)))
    for kind, payload in frames:
        assert payload["type"] == kind
        assert_conforms("ResponseStreamEvent", payload)
        assert_sdk_parses(kind, payload)
    for _, payload in frames[:2]:
        assert payload["response"]["status"] == "in_progress"
        assert payload["response"]["output"] == []
    whole = rendering.response()
    assert_conforms("Response", whole)
    parsed = Response.model_validate(json.loads(json.dumps(whole)))
    assert parsed.id == rendering.id and parsed.id.startswith("resp_")
    assert frames[-1][1]["response"] == whole
    assert rebuild(frames) == whole["output"]
    assert "output_text" not in whole
    return whole


def sse(frames: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode() for kind, payload in frames)


def sdk_client(answer: Callable[[dict[str, Any]], httpx2.Response]) -> openai.OpenAI:
    """The real openai SDK over an in-process transport (no sockets): ``answer`` gets each body."""
    def handle(request: httpx2.Request) -> httpx2.Response:
        return answer(json.loads(request.content))
    return openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))


# -- the request ----------------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_then_a_user_message() -> None:
    request = decode(input="Hello", instructions="Answer in French.", max_output_tokens=50, temperature=0.5,
                     top_p=0.9, user="u-1", metadata={"k": "v"}, store=False,
                     reasoning={"effort": "low"}, truncation="auto", include=["message.output_text.logprobs"],
                     service_tier="flex", prompt_cache_key="abc")
    chat = request.chat(None)
    assert [(m.role, m.content) for m in chat.messages] == [("system", "Answer in French."), ("user", "Hello")]
    assert (chat.model, chat.max_tokens, chat.temperature, chat.top_p, chat.user) == ("route", 50, 0.5, 0.9, "u-1")
    # metadata is the Response's (echoed and stored): OpenAI's Chat Completions refuses it without store
    assert chat.metadata is None and request.metadata == {"k": "v"}
    assert chat.extra_body is None and chat.reasoning_effort is None and chat.service_tier is None
    assert chat.store is None  # the Responses store is patchbay's, not asked of the upstream
    assert (request.store, request.stream, request.truncation) == (False, False, "auto")


def test_store_defaults_to_true_and_a_stream_asks_for_usage() -> None:
    request = decode(input="hi", stream=True)
    assert request.store is True
    chat = request.chat(None)
    assert chat.stream is True and chat.include_usage


def test_message_items_with_parts() -> None:
    request = decode(input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
        ]},
        {"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
         "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]},
    ])
    messages = request.chat(None).message_dicts()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    assert messages[2] == {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}


def test_function_call_items_join_the_assistant_message_and_outputs_are_tool_messages() -> None:
    request = decode(tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "21C"}]},
        {"type": "function_call", "call_id": "call_c", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
    ])
    messages = request.chat(None).message_dicts()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert messages[1]["content"] == [{"type": "text", "text": "Checking."}]
    assert messages[1]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_a", "content": "18C"}
    assert messages[3] == {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "21C"}]}
    assert "content" not in messages[4] and messages[4]["tool_calls"][0]["id"] == "call_c"


def test_tools_tool_choice_and_text_format_map_to_the_chat_fields() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    request = decode(input="hi", tools=[{**WEATHER, "strict": True}],
                     tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
                     text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}})
    chat = request.chat(None)
    assert chat.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER["parameters"],
        "strict": True}}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.parallel_tool_calls is False
    assert chat.response_format == {"type": "json_schema",
                                    "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    assert request.tool_choice == {"type": "function", "name": "get_weather"}
    assert request.text == {"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}}


@pytest.mark.parametrize(("choice", "chat_choice"), [("auto", "auto"), ("none", "none"), ("required", "required")])
def test_tool_choice_strings(choice: str, chat_choice: str) -> None:
    assert decode(input="hi", tools=[WEATHER], tool_choice=choice).chat(None).tool_choice == chat_choice


def test_text_formats_text_and_json_object() -> None:
    assert decode(input="hi", text={"format": {"type": "text"}}).chat(None).response_format is None
    assert decode(input="hi", text={"format": {"type": "json_object"}}).chat(None).response_format == \
        {"type": "json_object"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi", "tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type"),
    ({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]},
     "tools[0].parameters"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": 12}}]},
     "tools[0].parameters"),
    ({"input": "hi", "tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": "no"}}},
     "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}}},
     "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_audio"}]}]},
     "input[0].content[1].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
    ({"input": ["hi", {"role": "user", "content": 7}]}, "input[0]"),
    ({"input": [{"role": "user", "content": 7}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[1].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": 42}, "input"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "top_p": "high"}, "top_p"),
    ({"input": "hi", "instructions": ["not", "a", "string"]}, "instructions"),
    ({"input": "hi", "store": "yes"}, "store"),
    ({"input": "hi", "stream": 1}, "stream"),
    ({"input": "hi", "metadata": {"n": 1}}, "metadata.n"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "hi", "model": ""}, "model"),
])
def test_each_mistake_is_one_invalid_request_naming_its_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode(**body)
    assert caught.value.param == param
    assert param in caught.value.message
    assert ".function." not in caught.value.message and "response_format" not in caught.value.message


def test_bodies_that_are_not_json_objects() -> None:
    for body in (b"", b"{", b"[1]", b"\xff"):
        with pytest.raises(InvalidRequest):
            decode_responses_request(body)
    with pytest.raises(InvalidRequest) as caught:
        decode_responses_request(b'{"input": "hi"}')
    assert caught.value.param == "model"


def test_no_input_and_no_history_is_refused_at_input() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode().chat(None)
    assert caught.value.param == "input"


# -- the state machine ----------------------------------------------------------------------------


def test_text() -> None:
    rendering, frames = render([ProviderInfo("fake", "model-7"), TextDelta("Hel"), TextDelta(""), TextDelta("lo"),
                                Usage(11, 2), Finish("stop")])
    whole = check_frames(rendering, frames)
    assert [kind for kind, _ in frames] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert frames[0][1]["response"]["model"] == "model-7"
    assert whole["status"] == "completed" and whole["completed_at"] == 1_700_000_005
    assert whole["model"] == "model-7"
    assert whole["usage"] == {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13,
                              "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}
    [message] = whole["output"]
    assert message["id"].startswith("msg_") and message["status"] == "completed"
    assert message["content"][0]["text"] == "Hello"
    assert Response.model_validate(whole).output_text == "Hello"


def test_text_then_tool_calls() -> None:
    rendering, frames = render([
        TextDelta("Let me check."),
        ToolCallDelta(0, "call_1", "get_weather", '{"city":'), ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "call_2", "get_weather", ""), ToolCallDelta(1, arguments='{"city":"Rome"}'),
        Usage(20, 9), Finish("tool_calls")])
    whole = check_frames(rendering, frames)
    message, first, second = whole["output"]
    assert message["type"] == "message" and message["content"][0]["text"] == "Let me check."
    assert (first["type"], first["call_id"], first["name"], first["arguments"], first["status"]) == \
        ("function_call", "call_1", "get_weather", '{"city":"Paris"}', "completed")
    assert (second["call_id"], second["arguments"]) == ("call_2", '{"city":"Rome"}')
    assert first["id"].startswith("fc_") and first["id"] != second["id"]
    # each item is closed when the next begins
    kinds = [kind for kind, _ in frames]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    added = [payload["item"] for kind, payload in frames if kind == "response.output_item.added"]
    assert added[1]["arguments"] == "" and added[1]["status"] == "in_progress"
    assert whole["status"] == "completed"


def test_tool_calls_only_and_a_name_that_comes_late() -> None:
    rendering, frames = render([
        ToolCallDelta(0, "call_x", None, '{"ci'), ToolCallDelta(0, None, "get_weather", 'ty":"Oslo"}'),
        ToolCallDelta(1, None, "get_weather", '{"city":"Bergen"}'), Finish("tool_calls")])
    whole = check_frames(rendering, frames)
    assert [item["type"] for item in whole["output"]] == ["function_call", "function_call"]
    assert whole["output"][0]["arguments"] == '{"city":"Oslo"}' and whole["output"][0]["call_id"] == "call_x"
    assert whole["output"][1]["call_id"]  # made up when the upstream gives none
    assert whole["usage"]["total_tokens"] == 0  # no usage reported: zeros, the key is still there
    parsed = Response.model_validate(whole)
    assert parsed.output_text == ""


def test_length_is_incomplete() -> None:
    rendering, frames = render([TextDelta("A long"), Usage(5, 16), Finish("length")])
    whole = check_frames(rendering, frames)
    assert frames[-1][0] == "response.incomplete"
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["output"][0]["status"] == "incomplete"


def test_content_filter_is_incomplete() -> None:
    rendering, frames = render([TextDelta("x"), Finish("content_filter")])
    assert check_frames(rendering, frames)["incomplete_details"] == {"reason": "content_filter"}


def test_empty_answer() -> None:
    rendering, frames = render([])
    whole = check_frames(rendering, frames)
    assert [kind for kind, _ in frames] == ["response.created", "response.in_progress", "response.completed"]
    assert whole["output"] == [] and whole["status"] == "completed"
    assert rendering.conversation()[-1] == {"role": "assistant", "content": ""}


def test_other_choices_logprobs_and_fallbacks_are_not_rendered() -> None:
    rendering, frames = render([
        TextDelta("one", choice=0), TextDelta("two", choice=1), ToolCallDelta(0, "c", "f", "{}", choice=1),
        Logprobs([{"token": "one", "logprob": -0.1, "bytes": None, "top_logprobs": []}]),
        Fallback("a", "m", "UpstreamError", "down", delivered=3), ProviderInfo("b", "m2"), TextDelta(" more"),
        Finish("length", choice=1), Finish("stop")])
    whole = check_frames(rendering, frames)
    assert [item["type"] for item in whole["output"]] == ["message"]
    assert whole["output"][0]["content"][0]["text"] == "one more"
    assert whole["status"] == "completed" and whole["model"] == "m2"


def test_text_after_a_tool_call_is_a_new_message() -> None:
    rendering, frames = render([ToolCallDelta(0, "c1", "get_weather", "{}"), TextDelta("done"), Finish("stop")])
    whole = check_frames(rendering, frames)
    assert [item["type"] for item in whole["output"]] == ["function_call", "message"]


def test_a_fragment_of_a_closed_call_is_dropped_from_stream_and_whole_alike() -> None:
    rendering, frames = render([ToolCallDelta(0, "c1", "get_weather", '{"city":"A"}'),
                                ToolCallDelta(1, "c2", "get_weather", '{"city":"B"}'),
                                ToolCallDelta(0, arguments="junk"), Finish("tool_calls")])
    whole = check_frames(rendering, frames)
    assert [item["arguments"] for item in whole["output"]] == ['{"city":"A"}', '{"city":"B"}']


def test_nothing_after_the_end() -> None:
    rendering, frames = render([TextDelta("x")])
    assert rendering.feed(TextDelta("late")) == [] and rendering.finish() == []
    assert check_frames(rendering, frames)["output"][0]["content"][0]["text"] == "x"


def test_the_response_echoes_the_request() -> None:
    schema = {"type": "object", "properties": {}}
    request = decode(input="hi", instructions="Be kind.", tools=[WEATHER], tool_choice="required",
                     max_output_tokens=64, temperature=0.2, top_p=0.5, metadata={"a": "b"}, user="u",
                     previous_response_id="resp_0", parallel_tool_calls=False, store=False,
                     text={"format": {"type": "json_schema", "name": "s", "schema": schema}})
    rendering, frames = render([TextDelta("{}"), Finish("stop")], request, history=[
        {"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}])
    whole = check_frames(rendering, frames)
    assert (whole["instructions"], whole["tool_choice"], whole["max_output_tokens"], whole["temperature"],
            whole["top_p"], whole["metadata"], whole["user"], whole["previous_response_id"],
            whole["parallel_tool_calls"], whole["store"]) == \
        ("Be kind.", "required", 64, 0.2, 0.5, {"a": "b"}, "u", "resp_0", False, False)
    assert whole["tools"][0]["name"] == "get_weather" and whole["tools"][0]["type"] == "function"
    assert whole["text"]["format"]["name"] == "s"


def test_the_in_progress_response_conforms_too() -> None:
    request = decode(input="hi")
    request.chat(None)
    rendering = ResponseRendering(request, response_id(), 1)
    rendering.feed(TextDelta("partial"))
    whole = rendering.response()
    assert whole["status"] == "in_progress" and "usage" not in whole
    assert_conforms("Response", whole)
    assert Response.model_validate(whole).output_text == "partial"


def test_error_frame_mid_stream() -> None:
    request = decode(input="hi")
    request.chat(None)
    rendering = ResponseRendering(request, response_id(), 1)
    frames = rendering.feed(TextDelta("half"))
    kind, payload = rendering.error_frame(UpstreamError("the upstream went away"))
    assert kind == "error" and payload["type"] == "error"
    assert payload["sequence_number"] == frames[-1][1]["sequence_number"] + 1
    assert payload["code"] == "upstream_error" and payload["error"]["code"] == "upstream_error"
    assert_conforms("ResponseStreamEvent", payload)
    assert_sdk_parses("error", payload)
    whole = rendering.response()
    assert whole["status"] == "failed" and whole["error"]["code"] == "server_error"
    assert whole["output"][0]["status"] == "incomplete"
    assert_conforms("Response", whole)
    Response.model_validate(whole)


def test_fail_ends_the_stream_as_openai_does() -> None:
    request = decode(input="hi", tools=[WEATHER])
    request.chat(None)
    rendering = ResponseRendering(request, response_id(), 1)
    frames = rendering.feed(ToolCallDelta(0, "c1", "get_weather", '{"ci'))
    frames += rendering.fail(UpstreamError("the upstream went away"))
    assert [kind for kind, _ in frames[-2:]] == ["error", "response.failed"]
    assert [payload["sequence_number"] for _, payload in frames] == list(range(len(frames)))
    for kind, payload in frames:
        assert_conforms("ResponseStreamEvent", payload)
        assert_sdk_parses(kind, payload)
    failed = frames[-1][1]["response"]
    assert failed == rendering.response() and failed["status"] == "failed"
    assert failed["output"][0]["arguments"] == '{"ci' and failed["output"][0]["status"] == "incomplete"
    assert rendering.fail(UpstreamError("again")) == [] and rendering.finish() == []


def test_fail_before_anything_was_sent_opens_the_response_first() -> None:
    rendering = ResponseRendering(decode(input="hi"), response_id(), 1)
    frames = rendering.fail(RateLimited("slow down"))
    assert [kind for kind, _ in frames] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert frames[2][1]["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(("error", "code"), [(RateLimited("slow down"), "rate_limit_exceeded"),
                                             (InvalidRequest("bad"), "invalid_prompt"),
                                             (PatchbayError("boom"), "server_error")])
def test_a_failed_response_names_a_code_of_openais_list(error: PatchbayError, code: str) -> None:
    request = decode(input="hi")
    rendering = ResponseRendering(request, response_id(), 1)
    rendering.error_frame(error)
    whole = rendering.response()
    assert whole["error"]["code"] == code
    assert_conforms("Response", whole)


def test_ids() -> None:
    ids = {response_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("resp_") and len(i) >= 5 + 24 and int(i[5:], 16) >= 0 for i in ids)
    assert item_id("msg").startswith("msg_") and len(item_id("fc")) >= 3 + 24


# -- the real openai SDK over an in-process transport ----------------------------------------------


def test_sdk_responses_create_reads_the_whole_response() -> None:
    def answer(body: dict[str, Any]) -> httpx2.Response:
        request = decode_responses_request(json.dumps(body).encode())
        rendering, _ = render([TextDelta("Bonjour"), Usage(4, 1), Finish("stop")], request)
        return httpx2.Response(200, json=rendering.response())

    response = sdk_client(answer).responses.create(model="route", input="Hello", instructions="French.")
    assert response.output_text == "Bonjour" and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == 5


def test_sdk_responses_parse_sends_a_json_schema_and_reads_the_answer() -> None:
    class Reply(pydantic.BaseModel):
        city: str
        degrees: int

    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> httpx2.Response:
        request = decode_responses_request(json.dumps(body).encode())
        seen.append(request.chat(None).response_format or {})
        rendering, _ = render([TextDelta('{"city": "Oslo", '), TextDelta('"degrees": 3}'), Finish("stop")], request)
        return httpx2.Response(200, json=rendering.response())

    response = sdk_client(answer).responses.parse(model="route", input="Weather?", text_format=Reply)
    assert response.output_parsed == Reply(city="Oslo", degrees=3)
    assert seen[0]["type"] == "json_schema" and seen[0]["json_schema"]["name"] == "Reply"
    assert seen[0]["json_schema"]["schema"]["properties"].keys() == {"city", "degrees"}


def _streaming(events: list[StreamEvent], error: PatchbayError | None = None
               ) -> Callable[[dict[str, Any]], httpx2.Response]:
    def answer(body: dict[str, Any]) -> httpx2.Response:
        request = decode_responses_request(json.dumps(body).encode())
        assert request.stream
        request.chat(None)
        rendering = ResponseRendering(request, response_id(), 1)
        frames = [frame for event in events for frame in rendering.feed(event)]
        frames += rendering.fail(error) if error else rendering.finish()
        return httpx2.Response(200, content=sse(frames), headers={"content-type": "text/event-stream"})
    return answer


def test_sdk_responses_stream_text_and_tool_calls() -> None:
    client = sdk_client(_streaming([TextDelta("It is "), TextDelta("sunny."),
                                    ToolCallDelta(0, "call_1", "get_weather", '{"city"'),
                                    ToolCallDelta(0, arguments=':"Paris"}'), Usage(3, 4), Finish("tool_calls")]))
    with client.responses.stream(model="route", input="Weather?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "It is sunny." == final.output_text
    call = final.output[1]
    assert call.type == "function_call" and call.arguments == '{"city":"Paris"}' and call.call_id == "call_1"
    assert final.usage is not None and final.usage.output_tokens == 4


def test_sdk_create_stream_true_sees_every_event_type() -> None:
    client = sdk_client(_streaming([TextDelta("x"), Finish("length")]))
    kinds = [event.type for event in client.responses.create(model="route", input="hi", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"


def test_sdk_stream_raises_on_the_error_frame() -> None:
    client = sdk_client(_streaming([TextDelta("half")], error=RateLimited("slow down")))
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught, \
            client.responses.stream(model="route", input="hi") as stream:
        seen.extend(event.type for event in stream)
    assert "response.output_text.delta" in seen
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"


# -- chaining -------------------------------------------------------------------------------------


def test_conversation_of_one_response_is_the_history_of_the_next() -> None:
    first = decode(input="Weather in Paris?", instructions="Old instructions.", tools=[WEATHER])
    rendering, _ = render([TextDelta("Checking."), ToolCallDelta(0, "call_1", "get_weather", '{"city":"Paris"}'),
                           Finish("tool_calls")], first)
    history = rendering.conversation()
    assert history == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{
            "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    ]
    second = decode(previous_response_id=rendering.id, instructions="New instructions.", tools=[WEATHER],
                    input=[{"type": "function_call_output", "call_id": "call_1", "output": "18C"}])
    chat = second.chat(history)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "New instructions."), ("user", "Weather in Paris?"), ("assistant", "Checking."),
        ("tool", "18C")]
    assert chat.messages[2].tool_calls and chat.messages[2].tool_calls[0]["id"] == "call_1"
    rendering2, _ = render([TextDelta("18C in Paris.")], second, history=history)
    third = rendering2.conversation()
    assert len(third) == 4 and third[-1] == {"role": "assistant", "content": "18C in Paris."}
    assert all(m.get("content") not in ("Old instructions.", "New instructions.") for m in third)


# -- stores ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


async def test_memory_store_put_get_and_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(clock=clock)
    await store.put("resp_1", {"id": "resp_1", "status": "completed"}, CONVERSATION, ttl=60)
    stored = await store.get("resp_1")
    assert stored is not None and stored.response["status"] == "completed"
    assert stored.conversation == CONVERSATION and stored.expires - stored.created == 60
    stored.conversation.append({"role": "user", "content": "changed"})  # a copy: the store is not changed
    again = await store.get("resp_1")
    assert again is not None and again.conversation == CONVERSATION
    assert await store.get("resp_missing") is None
    clock.now += 60
    assert await store.get("resp_1") is None
    assert len(store) == 0 and store.stored_bytes == 0


async def test_memory_store_is_bounded_least_recently_used_out() -> None:
    store = MemoryResponseStore(max_entries=3, clock=Clock())
    for number in range(3):
        await store.put(f"resp_{number}", {"n": number}, [], ttl=60)
    assert await store.get("resp_0") is not None  # now the most recently used
    await store.put("resp_3", {"n": 3}, [], ttl=60)
    assert len(store) == 3
    assert await store.get("resp_1") is None
    assert {n for n in ("resp_0", "resp_2", "resp_3") if await store.get(n)} == {"resp_0", "resp_2", "resp_3"}


async def test_memory_store_is_bounded_in_bytes() -> None:
    store = MemoryResponseStore(max_bytes=2_000, clock=Clock())
    big = [{"role": "user", "content": "x" * 600}]
    for number in range(5):
        await store.put(f"resp_{number}", {}, big, ttl=60)
        assert store.stored_bytes <= 2_000
    assert await store.get("resp_4") is not None and await store.get("resp_0") is None
    await store.put("resp_huge", {}, [{"role": "user", "content": "x" * 5_000}], ttl=60)
    assert await store.get("resp_huge") is None and await store.get("resp_4") is not None
    assert await store.delete("resp_4") and not await store.delete("resp_4")


async def test_memory_store_evicts_expired_entries_first() -> None:
    clock = Clock()
    store = MemoryResponseStore(max_entries=2, clock=clock)
    await store.put("resp_long", {}, [], ttl=600)
    await store.put("resp_short", {}, [], ttl=1)
    await store.get("resp_short")
    clock.now += 5
    await store.put("resp_new", {}, [], ttl=600)
    assert await store.get("resp_long") is not None and await store.get("resp_new") is not None


async def test_sqlite_store_survives_reopen_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    clock = Clock()
    store = SQLiteResponseStore(path, clock=clock)
    response = {"id": "resp_1", "object": "response", "output": [{"type": "message", "content": []}]}
    await store.put("resp_1", response, CONVERSATION, ttl=60)
    await store.put("resp_2", {"id": "resp_2"}, [], ttl=10)
    store.close()
    reopened = SQLiteResponseStore(path, clock=clock)
    stored = await reopened.get("resp_1")
    assert stored is not None and stored.response == response and stored.conversation == CONVERSATION
    assert stored.created == 1_000.0 and stored.expires == 1_060.0
    clock.now += 30
    assert await reopened.get("resp_2") is None  # expired: gone for get() at once
    assert reopened.count() == 2
    await reopened.put("resp_3", {"id": "resp_3"}, [], ttl=60)  # a write prunes the expired row
    assert reopened.count() == 2
    assert await reopened.delete("resp_3") and not await reopened.delete("resp_3")
    reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [row[0] for row in db.execute("SELECT id FROM responses")] == ["resp_1"]


async def test_sqlite_store_waits_a_bounded_time_for_a_held_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    store = SQLiteResponseStore(path, lock_wait=0.1)
    await store.put("resp_1", {"id": "resp_1"}, CONVERSATION, ttl=60)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write in progress
    try:
        started = time.monotonic()
        await store.put("resp_2", {"id": "resp_2"}, [], ttl=60)  # dropped and logged, not raised
        assert time.monotonic() - started < 5
        stored = await store.get("resp_1")  # WAL: reading is not blocked by the writer
        assert stored is not None and stored.conversation == CONVERSATION
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await store.get("resp_2") is None
    await store.put("resp_2", {"id": "resp_2"}, [], ttl=60)
    assert await store.get("resp_2") is not None
    store.close()


async def test_sqlite_store_serves_concurrent_requests(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "r.db")
    await asyncio.gather(*(store.put(f"resp_{n}", {"n": n}, [{"role": "user", "content": str(n)}], ttl=60)
                           for n in range(20)))
    found = await asyncio.gather(*(store.get(f"resp_{n}") for n in range(20)))
    assert [item.response["n"] for item in found if item is not None] == list(range(20))
    store.close()


def test_a_stored_conversation_chains_through_the_store(tmp_path: Path) -> None:
    async def run() -> list[dict[str, Any]]:
        store = SQLiteResponseStore(tmp_path / "logs.db")
        rendering, _ = render([TextDelta("Hi!"), Finish("stop")], decode(input="Hello"))
        await store.put(rendering.id, rendering.response(), rendering.conversation(), ttl=60)
        stored = await store.get(rendering.id)
        store.close()
        assert stored is not None
        assert_conforms("Response", stored.response)
        return decode(input="And again", previous_response_id=rendering.id).chat(stored.conversation).message_dicts()

    messages = asyncio.run(run())
    assert [m["content"] for m in messages] == ["Hello", "Hi!", "And again"]
