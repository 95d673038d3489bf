"""The Anthropic Messages wire format (patchbay.chat.anthropic): requests in, frames and Messages out.

The rendering is checked against the real anthropic SDK: its client reads the frames (as SSE,
through an in-memory transport) and folds them with its own stream accumulator, its pydantic
models validate every frame and every Message, and its error classes are picked from our
envelopes. No network: the SDK's HTTP client runs on a mock transport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse

from patchbay.chat.anthropic import (
    ERROR_TYPES,
    TOOL_ERROR_PREFIX,
    Frame,
    MessageRendering,
    MessagesRequest,
    count_tokens_body,
    decode_messages_request,
    error_envelope,
)
from patchbay.chat.stops import cut_at_stops
from patchbay.errors import (
    ERROR_TABLE,
    AllProvidersFailed,
    AuthError,
    ContextTooLong,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotSupported,
    PatchbayError,
    PayloadTooLarge,
    PaymentRequired,
    PermissionDenied,
    ProtocolError,
    ProviderNotWorking,
    RateLimited,
    RequestTimeout,
    UnsupportedFeature,
    UpstreamError,
)
from patchbay.events import Fallback, Finish, Logprobs, ProviderInfo, StreamEvent, TextDelta, ToolCallDelta, Usage

MODEL = "claude-sonnet-4-5"
WEATHER_SCHEMA = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                  "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
WEATHER = {"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER_SCHEMA}
READ = {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {
    "file_path": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def body(**fields: Any) -> bytes:
    """A request body: a model, max_tokens and one user turn, with ``fields`` over them."""
    document: dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    document.update(fields)
    return json.dumps({name: value for name, value in document.items() if value is not ...}).encode()


def decode(**fields: Any) -> MessagesRequest:
    return decode_messages_request(body(**fields))


def messages(**fields: Any) -> list[dict[str, Any]]:
    return decode(**fields).chat.message_dicts()


def refused(raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        decode_messages_request(raw)
    return caught.value


# -- the request ------------------------------------------------------------------------------------


def test_plain_request() -> None:
    request = decode()
    assert request.model == MODEL and request.chat.model == MODEL
    assert request.chat.max_tokens == 1024 and not request.stream and not request.chat.stream
    assert request.chat.message_dicts() == [{"role": "user", "content": "hi"}]
    assert request.stop_sequences == () and request.chat.stop is None


def test_system_as_string_and_as_blocks() -> None:
    assert messages(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "You are Claude Code."},
              {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}}]
    assert messages(system=blocks)[0] == {"role": "system", "content": "You are Claude Code.\nAnswer in English."}
    assert messages(system="")[0]["role"] == "user"  # an empty system prompt is no message


def test_images_become_image_url_parts() -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    (user,) = messages(messages=[{"role": "user", "content": content}])
    assert user["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


def test_text_blocks_only_become_one_string() -> None:
    content = [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "do it"}]
    (user,) = messages(messages=[{"role": "user", "content": content}])
    assert user == {"role": "user", "content": "<system-reminder>x</system-reminder>\ndo it"}


def claude_code_turns() -> list[dict[str, Any]]:
    """A conversation as Claude Code sends it: text blocks, tool calls, their results, a new ask."""
    return [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and read notes.md"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two tools", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {"file_path": "notes.md"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True,
             "content": [{"type": "text", "text": "File does not exist."}], "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Thanks, go on."},
        ]},
    ]


def test_tool_use_and_tool_result_turns() -> None:
    converted = messages(system=[{"type": "text", "text": "sys"}], tools=[WEATHER, READ], messages=claude_code_turns())
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "tool", "tool", "user"]
    assistant = converted[2]
    assert assistant["content"] == "Let me check."  # the thinking block is dropped
    calls = assistant["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_01", "toolu_02"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "Read"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert converted[3] == {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, sunny"}
    assert converted[4] == {"role": "tool", "tool_call_id": "toolu_02",
                            "content": TOOL_ERROR_PREFIX + "File does not exist."}
    assert converted[5] == {"role": "user", "content": "Thanks, go on."}


def test_tools_become_function_tools() -> None:
    chat = decode(tools=[WEATHER, READ]).chat
    assert chat.tools == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA,
                                          "description": "Current weather in a city"}},
        {"type": "function", "function": {"name": "Read", "parameters": READ["input_schema"],
                                          "description": "Read a file"}},
    ]


def test_assistant_with_only_tool_use_has_no_text() -> None:
    turns = [{"role": "user", "content": "go"},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]
    converted = messages(tools=[READ], messages=turns)
    assert converted[1].get("content") is None and converted[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert converted[2] == {"role": "tool", "tool_call_id": "t1", "content": ""}
    assert len(converted) == 3


def test_images_of_a_tool_result_follow_the_tool_messages() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    turns = [{"role": "user", "content": "screenshot"},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                           "content": [{"type": "text", "text": "here"}, image]}]}]
    converted = messages(tools=[READ], messages=turns)
    assert converted[2] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert converted[3]["role"] == "user"
    assert converted[3]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]


def test_text_documents_become_text() -> None:
    document = {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain",
                                                                  "data": "line one"}}
    (user,) = messages(messages=[{"role": "user", "content": [document, {"type": "text", "text": "summarize"}]}])
    assert user["content"] == "notes\n\nline one\nsummarize"


@pytest.mark.parametrize(("choice", "expected", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
    ({"type": "none"}, "none", None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
])
def test_tool_choice_forms(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    chat = decode(tools=[WEATHER], tool_choice=choice).chat
    assert chat.tool_choice == expected
    assert chat.parallel_tool_calls is parallel


def test_sampling_stops_metadata_and_stream() -> None:
    request = decode(stop_sequences=["\n\nHuman:", "END"], temperature=0.5, top_p=0.9, top_k=40,
                     metadata={"user_id": "u-1"}, stream=True)
    assert request.stop_sequences == ("\n\nHuman:", "END") and request.chat.stop == ["\n\nHuman:", "END"]
    assert request.chat.temperature == 0.5 and request.chat.top_p == 0.9
    assert request.chat.user == "u-1"
    assert request.stream and request.chat.stream
    assert request.chat.extra_body is None  # top_k is dropped, not sent on


def test_unknown_fields_are_accepted_and_not_sent_on() -> None:
    request = decode(thinking={"type": "enabled", "budget_tokens": 2048}, service_tier="auto",
                     context_management={"edits": []}, output_config={"effort": "high"})
    assert request.ignored == ("context_management", "service_tier", "thinking")
    assert request.chat.extra_body is None and request.chat.response_format is None


def test_output_config_format_is_a_json_schema_answer() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    chat = decode(output_config={"format": {"type": "json_schema", "schema": schema}}).chat
    assert chat.response_format == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_max_tokens_is_required() -> None:
    error = refused(body(max_tokens=...))
    assert error.param == "max_tokens" and error.status == 400
    assert decode(max_tokens=8.0).chat.max_tokens == 8


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"model": ...}, "model"),
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": ...}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "video"}]}]},
     "messages[1].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": ["text"]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": []}]}]},
     "messages[0].content[0].input"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                            "media_type": "image/bmp",
                                                                            "data": "AA=="}}]}]},
     "messages[0].content[0].source.media_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]},
     "messages[0].content[0].source.type"),
    ({"system": [{"type": "image"}]}, "system[0].type"),
    ({"system": 5}, "system"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"stop_sequences": ["a", 1]}, "stop_sequences[1]"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_p": "high"}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ({"stream": "yes"}, "stream"),
    ({"tools": {"name": "x"}}, "tools"),
    ({"tools": [{"name": "get weather!", "input_schema": {"type": "object"}}]}, "tools[0].name"),
    ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "x", "input_schema": {"type": "array"}}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "x", "input_schema": {"type": "object"}, "description": 3}]}, "tools[0].description"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice.type"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_REQUESTS)
def test_each_mistake_names_its_param(fields: dict[str, Any], param: str) -> None:
    error = refused(body(**fields))
    assert error.param == param
    assert error.status == 400 and "\n" not in error.message


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]},
     "messages[0].content[0].source.type"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t",
                                                  "content": []}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file",
                                                                            "file_id": "f"}}]}]},
     "messages[0].content[0].source.type"),
])
def test_what_needs_anthropic_servers_is_refused_as_unsupported(fields: dict[str, Any], param: str) -> None:
    error = refused(body(**fields))
    assert isinstance(error, UnsupportedFeature) and error.param == param


ODD_VALUES: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"type": []}, {"type": "text"}]


def paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path into ``value`` (keys of objects, indexes of arrays)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*path, key)
        yield from paths(item, (*path, key))


def replaced(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def test_any_value_anywhere_is_taken_or_one_invalid_request() -> None:
    """Each value of a Claude-Code-like request replaced by odd values of every JSON type: the
    decode succeeds or raises InvalidRequest (never TypeError, KeyError...), for both endpoints."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    document = {"model": MODEL, "max_tokens": 100, "system": [{"type": "text", "text": "s"}], "tools": [WEATHER],
                "tool_choice": {"type": "auto"}, "metadata": {"user_id": "u"}, "stop_sequences": ["x"],
                "messages": [*claude_code_turns(), {"role": "assistant", "content": "ok"},
                             {"role": "user", "content": [image]}]}
    tried = 0
    for path in paths(document):
        for value in ODD_VALUES:
            raw = json.dumps(replaced(document, path, value)).encode()
            for decoder in (decode_messages_request, count_tokens_body):
                try:
                    decoder(raw)
                except InvalidRequest as error:
                    assert "\n" not in error.message
                tried += 1
    assert tried > 1000


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b"\xff\xfe", b'"text"'])
def test_a_body_that_is_not_an_object_is_refused(raw: bytes) -> None:
    error = refused(raw)
    assert error.status == 400 and error.param is None


def test_a_last_assistant_message_may_be_empty() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    assert messages(messages=turns) == [{"role": "user", "content": "hi"}]
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is ("}]
    assert messages(messages=prefill)[-1] == {"role": "assistant", "content": "The answer is ("}


# -- the SDK's own requests -------------------------------------------------------------------------


@dataclass
class Recorder:
    """What an SDK client sent, and the answer it gets (status, body or SSE bytes)."""

    status: int = 200
    answer: bytes = b"{}"
    content_type: str = "application/json"
    sent: list[bytes] | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if self.sent is None:
            self.sent = []
        self.sent.append(request.read())
        return httpx2.Response(self.status, content=self.answer, headers={"content-type": self.content_type})


def sdk(recorder: Recorder) -> anthropic.Anthropic:
    """The real anthropic client, on an in-memory transport, validating responses strictly."""
    return anthropic.Anthropic(api_key="sk-test", base_url="http://127.0.0.1:9", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(recorder)),
                               _strict_response_validation=True)


def test_the_sdks_request_body_decodes() -> None:
    recorder = Recorder(answer=json.dumps(rendered([TextDelta("ok"), Finish("stop")])[1]).encode())
    with sdk(recorder) as client:
        params: dict[str, Any] = {"system": [{"type": "text", "text": "sys"}], "tools": [WEATHER],
                                  "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
                                  "messages": claude_code_turns()[:1], "stop_sequences": ["STOP"],
                                  "metadata": {"user_id": "someone"}}
        client.messages.create(model=MODEL, max_tokens=2048, **params)
    assert recorder.sent is not None
    request = decode_messages_request(recorder.sent[0])
    assert request.chat.max_tokens == 2048 and request.chat.tool_choice == "required"
    assert request.chat.parallel_tool_calls is False and request.stop_sequences == ("STOP",)
    assert request.chat.user == "someone"
    assert [m["role"] for m in request.chat.message_dicts()] == ["system", "user"]


# -- rendering --------------------------------------------------------------------------------------


def rendering(**fields: Any) -> MessageRendering:
    return MessageRendering(decode(**fields), "msg_0123456789abcdef")


def rendered(events: list[StreamEvent], **fields: Any) -> tuple[list[Frame], dict[str, Any]]:
    """The frames for ``events`` (with finish) and the whole message."""
    machine = rendering(**fields)
    frames = [frame for event in events for frame in machine.feed(event)]
    frames += machine.finish()
    return frames, machine.message()


def names(frames: list[Frame]) -> list[str]:
    return [name for name, _ in frames]


def call(index: int, name: str | None = None, arguments: str = "", call_id: str | None = None) -> ToolCallDelta:
    return ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


TEXT_ONLY: list[StreamEvent] = [ProviderInfo("openai", "gpt-4o-mini"), TextDelta("Hello"), TextDelta(", world"),
                                Usage(12, 3), Finish("stop")]
TEXT_THEN_TWO_CALLS: list[StreamEvent] = [
    TextDelta("Checking."), call(0, "get_weather", '{"ci', "call_a"), call(0, arguments='ty": "Paris"}'),
    call(1, "get_weather", "", "call_b"), call(1, arguments='{"city": "Rome"}'), Usage(40, 22), Finish("tool_calls"),
]
TOOL_ONLY: list[StreamEvent] = [call(0, "Read", '{"file_path": "a.md"}', "call_r"), Finish("tool_calls")]
CUT_SHORT: list[StreamEvent] = [TextDelta("a long"), TextDelta(" answer"), Usage(5, 16), Finish("length")]
SCENARIOS = {"text": TEXT_ONLY, "text+2 tools": TEXT_THEN_TWO_CALLS, "tool": TOOL_ONLY, "length": CUT_SHORT,
             "empty": []}


def test_text_only() -> None:
    frames, message = rendered(TEXT_ONLY)
    assert names(frames) == ["message_start", "content_block_start", "ping", "content_block_delta",
                             "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = frames[0][1]["message"]
    assert start["id"] == "msg_0123456789abcdef" and start["model"] == "gpt-4o-mini"
    assert start["content"] == [] and start["stop_reason"] is None
    assert frames[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert frames[3][1]["delta"] == {"type": "text_delta", "text": "Hello"}
    assert frames[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message["content"] == [{"type": "text", "text": "Hello, world"}]
    assert message["stop_reason"] == "end_turn" and message["usage"] == {"input_tokens": 12, "output_tokens": 3}


def test_text_then_two_tool_calls() -> None:
    frames, message = rendered(TEXT_THEN_TWO_CALLS, tools=[WEATHER])
    starts = [payload for name, payload in frames if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    stops = [payload["index"] for name, payload in frames if name == "content_block_stop"]
    assert stops == [0, 1, 2]
    json_deltas = [p["delta"]["partial_json"] for n, p in frames
                   if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta"]
    assert json_deltas == ['{"ci', 'ty": "Paris"}', '{"city": "Rome"}']
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert names(frames).count("ping") == 1 and names(frames).index("ping") == 2


def test_tool_only() -> None:
    frames, message = rendered(TOOL_ONLY)
    assert names(frames)[:3] == ["message_start", "content_block_start", "ping"]
    assert message["content"] == [{"type": "tool_use", "id": "call_r", "name": "Read", "input": {"file_path": "a.md"}}]
    assert message["stop_reason"] == "tool_use"


def test_length_is_max_tokens() -> None:
    _, message = rendered(CUT_SHORT)
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    assert message["content"] == [{"type": "text", "text": "a long answer"}]


def test_nothing_at_all_is_still_a_message() -> None:
    frames, message = rendered([])
    assert names(frames) == ["message_start", "message_delta", "message_stop"]
    assert message["content"] == [] and message["model"] == MODEL and message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_the_requested_model_when_no_provider_info() -> None:
    frames, message = rendered([TextDelta("x")])
    assert frames[0][1]["message"]["model"] == MODEL == message["model"]


def test_provider_info_after_content_does_not_change_the_model() -> None:
    events: list[StreamEvent] = [ProviderInfo("a", "model-a"), TextDelta("x"), ProviderInfo("b", "model-b")]
    _, message = rendered(events)
    assert message["model"] == "model-a"


def test_other_choices_logprobs_and_fallbacks_are_not_shown() -> None:
    events: list[StreamEvent] = [
        Fallback("a", "m", "UpstreamError", "boom"), ProviderInfo("b", "m2"), TextDelta("one"),
        TextDelta("other", choice=1), call(0, "Read", "{}", "c", ), ToolCallDelta(0, "x", "Read", "{}", choice=1),
        Logprobs([{"token": "one", "logprob": -0.1, "bytes": None, "top_logprobs": []}]), Finish("stop", choice=1),
        Finish("tool_calls"),
    ]
    frames, message = rendered(events)
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["content"][0]["text"] == "one" and message["stop_reason"] == "tool_use"
    assert len(frames) == 10  # start, text (start, ping, delta, stop), tool (start, delta, stop), delta, stop


def test_stop_with_tool_calls_is_tool_use() -> None:
    _, message = rendered([call(0, "Read", "{}", "c"), Finish("stop")])
    assert message["stop_reason"] == "tool_use"


def test_content_filter_is_refusal() -> None:
    _, message = rendered([TextDelta("I"), Finish("content_filter")])
    assert message["stop_reason"] == "refusal"


@dataclass(frozen=True)
class FinishAtStop(Finish):
    """A Finish that names the stop string that matched (what patchbay's stop cutter would report)."""

    stop_sequence: str | None = None


def test_a_matched_stop_sequence_is_reported_when_known() -> None:
    _, message = rendered([TextDelta("a"), FinishAtStop("stop", stop_sequence="END")], stop_sequences=["END"])
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "END"


def test_a_tool_call_without_id_gets_one_and_a_late_name_is_waited_for() -> None:
    events: list[StreamEvent] = [call(0, arguments='{"a"'), call(0, name="Read", arguments=": 1}")]
    frames, message = rendered(events)
    (block,) = message["content"]
    assert block["name"] == "Read" and block["input"] == {"a": 1}
    assert block["id"].startswith("toolu_") and block["id"] != "toolu_"
    assert names(frames)[1:4] == ["content_block_start", "ping", "content_block_delta"]


def test_text_after_a_tool_call_is_a_new_block() -> None:
    _, message = rendered([TextDelta("a"), call(0, "Read", "{}", "c"), TextDelta("b")])
    assert [block["type"] for block in message["content"]] == ["text", "tool_use", "text"]


def test_arguments_that_are_not_a_json_object_fail_both_ways() -> None:
    machine = rendering()
    machine.feed(call(0, "Read", "not json", "c"))
    with pytest.raises(ProtocolError):
        machine.finish()
    machine = rendering()
    machine.feed(call(0, "Read", "[1, 2]", "c"))
    with pytest.raises(ProtocolError):
        machine.feed(call(1, "Read", "{}", "d"))


def test_a_call_cut_by_the_token_limit_keeps_an_empty_input() -> None:
    _, message = rendered([call(0, "Read", '{"file_pa', "c"), Finish("length")])
    assert message["content"][0]["input"] == {} and message["stop_reason"] == "max_tokens"


def test_interleaved_tool_calls_are_a_protocol_error() -> None:
    machine = rendering()
    machine.feed(call(0, "Read", '{"a": 1}', "c0"))
    machine.feed(call(1, "Read", "{", "c1"))
    assert machine.feed(call(0)) == []  # an empty fragment loses nothing
    with pytest.raises(ProtocolError):
        machine.feed(call(0, arguments=' '))


def test_message_before_finish_is_a_programming_error() -> None:
    machine = rendering()
    machine.feed(TextDelta("x"))
    with pytest.raises(RuntimeError):
        machine.message()
    assert machine.finish() and machine.finish() == [] and machine.feed(TextDelta("late")) == []


# -- the SDK reads the stream and the whole answer the same way --------------------------------------


def sse(frames: list[Frame]) -> bytes:
    """The frames as the server writes them (SSEWriter.event): ``event:``, then one ``data:`` line."""
    return b"".join(b"event: " + name.encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"
                    for name, payload in frames)


def test_start_sends_message_start_once_with_the_model_known_so_far() -> None:
    machine = rendering()
    machine.feed(ProviderInfo("p", "served-model"))
    (start,) = machine.start()
    assert start[0] == "message_start" and start[1]["message"]["model"] == "served-model"
    assert machine.start() == [] and names(machine.feed(TextDelta("x")))[0] == "content_block_start"
    assert names(machine.finish()) == ["content_block_stop", "message_delta", "message_stop"]


_stream_event = pydantic.TypeAdapter(RawMessageStreamEvent)


def validate_frame(name: str, payload: dict[str, Any]) -> None:
    """``payload`` is a valid event named ``name`` to the SDK's pydantic models (strict: no extras lost)."""
    assert payload["type"] == name
    if name == "ping":
        assert payload == {"type": "ping"}
        return
    event = _stream_event.validate_python(payload)
    assert event.to_dict(exclude_none=True) == _without_nones(payload)


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nones(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nones(item) for item in value]
    return value


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_frame_is_a_valid_sdk_event(scenario: str) -> None:
    frames, message = rendered(SCENARIOS[scenario])
    for name, payload in frames:
        validate_frame(name, payload)
    assert Message.model_validate(message).to_dict(exclude_none=True) == _without_nones(message)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_sdks_stream_accumulator_builds_the_whole_message(scenario: str) -> None:
    frames, message = rendered(SCENARIOS[scenario], tools=[WEATHER, READ])
    recorder = Recorder(answer=sse(frames), content_type="text/event-stream")
    with sdk(recorder) as client, client.messages.stream(model=MODEL, max_tokens=64, messages=[
            {"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.to_dict(exclude_none=True) == Message.model_validate(message).to_dict(exclude_none=True)
    assert text == "".join(block.get("text", "") for block in message["content"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_sdk_reads_the_whole_message(scenario: str) -> None:
    _, message = rendered(SCENARIOS[scenario])
    with sdk(Recorder(answer=json.dumps(message).encode())) as client:
        answer = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert answer.id == message["id"] and answer.stop_reason == message["stop_reason"]
    assert [block.type for block in answer.content] == [block["type"] for block in message["content"]]


async def test_the_async_sdk_streams_and_reads_the_same_message() -> None:
    frames, message = rendered(TEXT_THEN_TWO_CALLS, tools=[WEATHER])
    sent: list[bytes] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.read())
        streaming = json.loads(sent[-1]).get("stream") is True
        return httpx2.Response(200, content=sse(frames) if streaming else json.dumps(message).encode(),
                               headers={"content-type": "text/event-stream" if streaming else "application/json"})

    client = anthropic.AsyncAnthropic(api_key="sk-test", base_url="http://127.0.0.1:9", max_retries=0,
                                      http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
                                      _strict_response_validation=True)
    async with client:
        params: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "x"}],
                                  "tools": [WEATHER]}
        async with client.messages.stream(**params) as stream:
            streamed = await stream.get_final_message()
        whole = await client.messages.create(**params)
    assert streamed.to_dict(exclude_none=True) == whole.to_dict(exclude_none=True)
    assert [block.type for block in whole.content] == ["text", "tool_use", "tool_use"]
    assert decode_messages_request(sent[0]).stream and not decode_messages_request(sent[1]).stream


def test_an_in_band_error_reaches_the_sdk_as_an_error() -> None:
    machine = rendering()
    frames = machine.feed(TextDelta("partial"))
    frames.append(machine.error_frame(UpstreamError("the upstream went away")))
    validate_frame("message_start", frames[0][1])
    with sdk(Recorder(answer=sse(frames), content_type="text/event-stream")) as client, \
            pytest.raises(anthropic.APIStatusError) as caught, \
            client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]) as stream:
        for _ in stream:
            pass
    assert caught.value.body == error_envelope(UpstreamError("the upstream went away"))


# -- errors -----------------------------------------------------------------------------------------


ERRORS: list[tuple[PatchbayError, str, type[anthropic.APIStatusError]]] = [
    (InvalidRequest("bad", param="messages"), "invalid_request_error", anthropic.BadRequestError),
    (ContextTooLong("too long"), "invalid_request_error", anthropic.BadRequestError),
    (AuthError("no key"), "authentication_error", anthropic.AuthenticationError),
    (PaymentRequired("no credits"), "billing_error", anthropic.PaymentRequiredError),
    (PermissionDenied("no"), "permission_error", anthropic.PermissionDeniedError),
    (ModelNotSupported("no such model"), "not_found_error", anthropic.NotFoundError),
    (MethodNotAllowed("GET"), "invalid_request_error", anthropic.APIStatusError),
    (PayloadTooLarge("big"), "request_too_large", anthropic.ContentTooLargeError),
    (RateLimited("slow down"), "rate_limit_error", anthropic.RateLimitError),
    (PatchbayError("internal"), "api_error", anthropic.InternalServerError),
    (UpstreamError("bad gateway"), "api_error", anthropic.InternalServerError),
    (ProviderNotWorking("off"), "overloaded_error", anthropic.ServiceUnavailableError),
    (AllProvidersFailed([]), "overloaded_error", anthropic.ServiceUnavailableError),
    (RequestTimeout("slow"), "timeout_error", anthropic.GatewayTimeoutError),
]


@pytest.mark.parametrize(("error", "kind", "sdk_error"), ERRORS, ids=lambda value: type(value).__name__)
def test_error_envelope(error: PatchbayError, kind: str, sdk_error: type[anthropic.APIStatusError]) -> None:
    envelope = error_envelope(error)
    assert envelope == {"type": "error", "error": {"type": kind, "message": str(error)}}
    if kind != "request_too_large":  # Anthropic documents it; the SDK's ErrorObject union lacks it
        ErrorResponse.model_validate(envelope)
    recorder = Recorder(status=error.status, answer=json.dumps(envelope).encode())
    with sdk(recorder) as client, pytest.raises(sdk_error) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == error.status and caught.value.body == envelope


def test_error_frame_is_the_envelope() -> None:
    error = RateLimited("slow down")
    assert MessageRendering.error_frame(error) == ("error", error_envelope(error))


def every_error_class() -> Iterator[type[PatchbayError]]:
    yield from ERROR_TABLE


@pytest.mark.parametrize("cls", list(every_error_class()), ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_documented_type(cls: type[PatchbayError]) -> None:
    error = _instance(cls)
    status = error.status
    kind = error_envelope(error)["error"]["type"]
    documented = {*ERROR_TYPES.values()}
    assert kind in documented
    assert kind == ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def _instance(cls: type[PatchbayError]) -> PatchbayError:
    makers: dict[type[PatchbayError], Callable[[], PatchbayError]] = {
        AllProvidersFailed: lambda: AllProvidersFailed([]),
    }
    if cls in makers:
        return makers[cls]()
    if cls.__name__ in ("ClientRateLimited", "BudgetExceeded"):
        return cls("over", limit="rpm", retry_after=1.0)  # type: ignore[call-arg]
    return cls("x")


# -- count_tokens -----------------------------------------------------------------------------------


def count(**fields: Any) -> int:
    return count_tokens_body(body(**fields))["input_tokens"]


def test_count_tokens_needs_no_max_tokens_and_counts_system_and_tools() -> None:
    plain = count(max_tokens=...)
    assert plain > 0
    assert count(max_tokens=..., system="You are a very careful assistant. " * 20) > plain + 100
    assert count(max_tokens=..., tools=[WEATHER, READ]) > plain + 20
    assert count(max_tokens=..., tools=[WEATHER], messages=claude_code_turns()) > count(
        max_tokens=..., tools=[WEATHER], messages=claude_code_turns()[:1])


def test_count_tokens_answer_is_what_the_sdk_reads() -> None:
    answer = count_tokens_body(body(max_tokens=...))
    recorder = Recorder(answer=json.dumps(answer).encode())
    with sdk(recorder) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == answer["input_tokens"]
    assert recorder.sent is not None and count_tokens_body(recorder.sent[0]) == answer


def test_count_tokens_checks_the_body() -> None:
    with pytest.raises(InvalidRequest) as caught:
        count_tokens_body(body(messages=[{"role": "user", "content": [{"type": "video"}]}]))
    assert caught.value.param == "messages[0].content[0].type"


async def test_a_stop_sequence_patchbay_cut_at_is_reported() -> None:
    async def source() -> AsyncIterator[StreamEvent]:
        for piece in ("one, two", ", ST", "OP three"):
            yield TextDelta(piece)

    request = decode_messages_request(json.dumps({
        "model": "m", "max_tokens": 50, "stop_sequences": ["never", "STOP"],
        "messages": [{"role": "user", "content": "count"}]}).encode())
    rendering = MessageRendering(request, "msg_1")
    async for event in cut_at_stops(source(), request.chat.stops):
        rendering.feed(event)
    rendering.finish()
    message = rendering.message()
    assert message["content"][0]["text"] == "one, two, "
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "STOP")
