"""Tools and JSON output emulated for text-only services (patchbay.providers.emulation).

The service is a scripted fake: it replays canned replies and records the conversations it was
given, so each test says what the service answered and checks what the caller receives.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchbay.errors import InvalidRequest, ProtocolError
from patchbay.events import Finish, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.providers.emulation import emulate, instructions, render_history

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                 "required": ["name", "age"]}
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}


def calls_reply(*calls: tuple[str, dict[str, Any]]) -> str:
    return json.dumps({"tool_calls": [{"name": name, "arguments": args} for name, args in calls]})


class Service:
    """A scripted ``run``: replays ``replies`` in order (in small chunks) and records what it got."""

    def __init__(self, *replies: str, usage: Usage | None = None, finish: str | None = "stop") -> None:
        self.replies = list(replies)
        self.usage = usage
        self.finish = finish
        self.conversations: list[list[dict[str, Any]]] = []

    def __call__(self, messages: list[dict[str, Any]]) -> AsyncIterator[StreamEvent]:
        self.conversations.append(copy.deepcopy(messages))
        return self._stream(self.replies[len(self.conversations) - 1])

    async def _stream(self, reply: str) -> AsyncIterator[StreamEvent]:
        for start in range(0, len(reply), 7):
            yield TextDelta(reply[start:start + 7])
        if self.usage is not None:
            yield self.usage
        if self.finish is not None:
            yield Finish(self.finish)


async def answer(service: Service, messages: list[dict[str, Any]] = ASK, **asked: Any) -> list[StreamEvent]:
    return [event async for event in emulate(messages, run=service, **asked)]


async def failure(service: Service, **asked: Any) -> tuple[list[StreamEvent], ProtocolError]:
    """The events delivered before emulate raised, and the ProtocolError it raised."""
    delivered: list[StreamEvent] = []
    with pytest.raises(ProtocolError) as info:
        async for event in emulate(ASK, run=service, **asked):
            delivered.append(event)
    return delivered, info.value


def tool_calls(events: list[StreamEvent]) -> list[tuple[str | None, Any]]:
    return [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCallDelta)]


def text(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finish(events: list[StreamEvent]) -> str:
    finishes = [e.reason for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1 and isinstance(events[-1], Finish)
    return finishes[0]


# -- tool calls ---------------------------------------------------------------------------------


async def test_a_valid_call_the_first_time_takes_one_run() -> None:
    service = Service(calls_reply(("get_weather", {"city": "Paris"})))
    events = await answer(service, tools=TOOLS)
    assert tool_calls(events) == [("get_weather", {"city": "Paris"})]
    assert finish(events) == "tool_calls"
    assert len(service.conversations) == 1
    delta = next(e for e in events if isinstance(e, ToolCallDelta))
    assert delta.index == 0 and CALL_ID.match(delta.id or "")
    assert delta.arguments == '{"city":"Paris"}'  # compact JSON text
    system = service.conversations[0][0]
    assert system["role"] == "system"
    assert "get_weather" in system["content"] and '"required": ["city"]' in system["content"]
    assert "Current weather for a city" in system["content"]
    assert service.conversations[0][1:] == ASK


@pytest.mark.parametrize(
    "reply",
    [
        "```json\n" + calls_reply(("get_weather", {"city": "Paris"})) + "\n```",
        "Sure, let me check.\n" + calls_reply(("get_weather", {"city": "Paris"})) + "\nOne moment.",
        "I'll call it: ```\n" + calls_reply(("get_weather", {"city": "Paris"})) + "\n``` done",
        json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),  # a single call object
        json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}]),  # a bare list
        json.dumps({"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}),  # arguments as text
        json.dumps({"tool_calls": [{"type": "function",
                                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
    ],
    ids=["fenced", "prose-around", "prose-and-fence", "single-object", "bare-list", "string-arguments",
         "openai-shape"],
)
async def test_tolerant_reading_of_the_call(reply: str) -> None:
    service = Service(reply)
    events = await answer(service, tools=TOOLS)
    assert tool_calls(events) == [("get_weather", {"city": "Paris"})]
    assert len(service.conversations) == 1


async def test_invalid_arguments_get_one_repair_turn_that_names_the_problem() -> None:
    bad = calls_reply(("get_weather", {"city": 42}))
    service = Service(bad, calls_reply(("get_weather", {"city": "Paris"})))
    events = await answer(service, tools=TOOLS)
    assert tool_calls(events) == [("get_weather", {"city": "Paris"})]
    first, second = service.conversations
    assert second[:-2] == first
    assert second[-2] == {"role": "assistant", "content": bad}
    repair = second[-1]
    assert repair["role"] == "user"
    assert "city" in repair["content"] and "type" in repair["content"]
    assert '{"tool_calls"' in repair["content"]  # says again what to reply with


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (calls_reply(("get_weather", {})), "city"),  # a required property is missing
        (calls_reply(("get_weather", {"city": "Paris", "zip": 1})), "zip"),  # not allowed
        (calls_reply(("get_weather", {"city": "Paris", "unit": "k"})), "unit"),
        (calls_reply(("get_forecast", {"city": "Paris"})), "get_forecast"),  # unknown tool
    ],
)
async def test_the_repair_message_names_what_was_wrong(bad: str, named: str) -> None:
    service = Service(bad, calls_reply(("get_weather", {"city": "Paris"})))
    await answer(service, tools=TOOLS)
    assert named in service.conversations[1][-1]["content"]


async def test_invalid_twice_is_a_protocol_error_with_nothing_delivered() -> None:
    long_bad = calls_reply(("get_weather", {"city": 42, "note": "x" * 500}))
    service = Service(calls_reply(("get_weather", {"city": 1})), long_bad)
    delivered, error = await failure(service, tools=TOOLS)
    assert delivered == []
    assert "after one repair turn" in error.message
    assert "city" in error.message
    assert long_bad not in error.message and len(error.message) < 400
    assert len(service.conversations) == 2


async def test_required_with_a_text_reply_is_repaired() -> None:
    service = Service("It is sunny in Paris.", calls_reply(("get_weather", {"city": "Paris"})))
    events = await answer(service, tools=TOOLS, tool_choice="required")
    assert tool_calls(events) == [("get_weather", {"city": "Paris"})]
    assert "tool" in service.conversations[1][-1]["content"]
    assert "plain text" not in service.conversations[0][0]["content"]  # text is not offered


async def test_a_named_tool_must_be_the_one_called() -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    service = Service(calls_reply(("get_weather", {"city": "Paris"})), calls_reply(("get_time", {})))
    events = await answer(service, tools=TOOLS, tool_choice=choice)
    assert tool_calls(events) == [("get_time", {})]
    system = service.conversations[0][0]["content"]
    assert "get_time" in system.split("# How to reply")[1]
    assert "get_weather" not in system  # only the tool that may be called is listed
    assert "only get_time may be called" in service.conversations[1][-1]["content"]


async def test_parallel_false_refuses_two_calls() -> None:
    two = calls_reply(("get_weather", {"city": "Paris"}), ("get_time", {}))
    service = Service(two, two)
    delivered, error = await failure(service, tools=TOOLS, parallel_tool_calls=False)
    assert delivered == []
    assert "2 calls" in error.message


async def test_parallel_calls_are_indexed_in_order_with_unique_ids() -> None:
    service = Service(calls_reply(("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})))
    events = await answer(service, tools=TOOLS)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [d.index for d in deltas] == [0, 1]
    assert tool_calls(events) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert len({d.id for d in deltas}) == 2


async def test_auto_answered_with_text_is_text() -> None:
    service = Service("Paris is sunny {mostly}. [citation needed]")
    events = await answer(service, tools=TOOLS, tool_choice="auto")
    assert text(events) == "Paris is sunny {mostly}. [citation needed]"
    assert not tool_calls(events)
    assert finish(events) == "stop"
    assert len(service.conversations) == 1
    assert "plain text" in service.conversations[0][0]["content"]


async def test_auto_keeps_the_services_length_finish_for_text() -> None:
    events = await answer(Service("It is sunny and", finish="length"), tools=TOOLS)
    assert finish(events) == "length"


async def test_usage_of_both_turns_is_summed_into_one_event() -> None:
    service = Service("no tool", calls_reply(("get_time", {})), usage=Usage(10, 3))
    events = await answer(service, tools=TOOLS, tool_choice="required")
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages == [Usage(20, 6)]
    assert events.index(usages[0]) < len(events) - 1  # before the finish


async def test_no_usage_event_when_the_service_reported_none() -> None:
    events = await answer(Service(calls_reply(("get_time", {}))), tools=TOOLS)
    assert not any(isinstance(e, Usage) for e in events)


async def test_ids_are_unique_and_well_formed() -> None:
    reply = calls_reply(*[("get_time", {})] * 20)
    ids = []
    for _ in range(10):
        events = await answer(Service(reply), tools=TOOLS)
        ids += [e.id for e in events if isinstance(e, ToolCallDelta)]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert all(CALL_ID.match(i or "") for i in ids)


# -- JSON output ----------------------------------------------------------------------------


async def test_json_object_is_extracted_as_written() -> None:
    written = '{"answer": 4,  "why": "2+2"}'
    events = await answer(Service(f"Here you go:\n```json\n{written}\n```"), response_format={"type": "json_object"})
    assert text(events) == written
    assert finish(events) == "stop"


async def test_json_object_repairs_a_reply_without_an_object() -> None:
    service = Service("The answer is four.", '{"answer": 4}')
    events = await answer(service, response_format={"type": "json_object"})
    assert json.loads(text(events)) == {"answer": 4}
    assert len(service.conversations) == 2


async def test_json_object_invalid_twice_fails() -> None:
    delivered, error = await failure(Service("four", '["a list", 4]'), response_format={"type": "json_object"})
    assert delivered == [] and "repair" in error.message


async def test_json_schema_valid() -> None:
    service = Service('Result: {"name": "Ada", "age": 36}')
    events = await answer(service, response_format=PERSON)
    assert json.loads(text(events)) == {"name": "Ada", "age": 36}
    assert json.dumps(PERSON_SCHEMA) in service.conversations[0][0]["content"]


async def test_json_schema_invalid_is_repaired_with_the_field_named() -> None:
    service = Service('{"name": "Ada", "age": "36"}', '{"name": "Ada", "age": 36}')
    events = await answer(service, response_format=PERSON)
    assert json.loads(text(events)) == {"name": "Ada", "age": 36}
    assert "age" in service.conversations[1][-1]["content"]


async def test_json_schema_invalid_twice_fails_naming_the_field() -> None:
    delivered, error = await failure(Service('{"name": "Ada"}', '{"name": "Ada"}'), response_format=PERSON)
    assert delivered == [] and "age" in error.message


async def test_tools_with_json_output_take_either() -> None:
    events = await answer(Service('{"name": "Ada", "age": 36}'), tools=TOOLS, response_format=PERSON)
    assert json.loads(text(events)) == {"name": "Ada", "age": 36}
    events = await answer(Service(calls_reply(("get_time", {}))), tools=TOOLS, response_format=PERSON)
    assert tool_calls(events) == [("get_time", {})]


async def test_a_json_schema_without_a_schema_takes_any_json_value() -> None:
    no_schema = {"type": "json_schema", "json_schema": {"name": "x"}}
    events = await answer(Service("Here: [1, 2]"), response_format=no_schema)
    assert json.loads(text(events)) == [1, 2]


async def test_an_unresolvable_ref_is_the_requests_fault() -> None:
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(InvalidRequest) as info:
        await answer(Service("{}"), response_format=broken)
    assert info.value.param == "response_format.json_schema.schema"


# -- nothing asked ------------------------------------------------------------------------------


async def test_nothing_asked_passes_the_stream_through() -> None:
    service = Service("Hello there", usage=Usage(5, 2))
    conversation: list[dict[str, Any]] = [{"role": "system", "content": "be kind"},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    events = await answer(service, conversation, tools=TOOLS, tool_choice="none", response_format={"type": "text"})
    assert events == [TextDelta("Hello t"), TextDelta("here"), Usage(5, 2), Finish("stop")]
    assert service.conversations == [[{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]]


def test_instructions_are_none_when_nothing_is_asked() -> None:
    assert instructions(None, None, None, None) is None
    assert instructions(TOOLS, "none", {"type": "text"}, None) is None
    assert instructions([], "auto", None, None) is None
    text = instructions(TOOLS, "none", {"type": "json_object"}, None)
    assert text is not None and "JSON object" in text and "get_weather" not in text


async def test_instructions_join_an_existing_system_message() -> None:
    service = Service(calls_reply(("get_time", {})))
    await answer(service, [{"role": "system", "content": "be brief"}, *ASK], tools=TOOLS)
    conversation = service.conversations[0]
    assert [m["role"] for m in conversation] == ["system", "user"]
    assert conversation[0]["content"].startswith("be brief\n\n") and "get_time" in conversation[0]["content"]


# -- history --------------------------------------------------------------------------------


TOOL_LOOP: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]},
    {"role": "tool", "tool_call_id": "call_a1", "content": "18C, sunny"},
    {"role": "tool", "tool_call_id": "call_b2", "content": [{"type": "text", "text": "24C, cloudy"}]},
    {"role": "assistant", "content": "Paris 18C, Rome 24C."},
    {"role": "user", "content": "And the time?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_c3", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]},
    {"role": "tool", "tool_call_id": "call_c3", "content": "12:00"},
]


def test_a_two_turn_tool_loop_renders_as_plain_text() -> None:
    rendered = render_history(TOOL_LOOP)
    assert all(set(m) == {"role", "content"} for m in rendered)
    assert all(isinstance(m["content"], str) for m in rendered)
    assert {m["role"] for m in rendered} <= {"system", "user", "assistant"}
    everything = "\n".join(m["content"] for m in rendered)
    for fragment in ("call_a1", "call_b2", "call_c3", "get_weather", "get_time", "18C, sunny", "24C, cloudy",
                     "12:00", "Paris", "Rome"):
        assert fragment in everything
    # the two results of one turn become one user message, after the assistant's calls
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "assistant", "user",
                                             "assistant", "user"]
    assert "call_a1" in rendered[3]["content"] and "call_b2" in rendered[3]["content"]
    assert rendered[6]["content"].startswith("Checking.")


async def test_rendered_calls_are_in_the_reply_shape_the_model_is_asked_for() -> None:
    assistant = render_history(TOOL_LOOP)[2]["content"]
    events = await answer(Service(assistant), tools=TOOLS)
    assert tool_calls(events) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]


def test_content_lists_become_their_text() -> None:
    rendered = render_history([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}])
    assert rendered == [{"role": "user", "content": "a\nb"}]


def test_developer_is_a_system_message() -> None:
    assert render_history([{"role": "developer", "content": "x"}]) == [{"role": "system", "content": "x"}]


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_a_non_text_part_is_refused_naming_it(kind: str) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": kind, kind: {}}]}]
    with pytest.raises(InvalidRequest) as info:
        render_history(messages)
    assert info.value.param == "messages[1].content[1]"
    assert kind in info.value.message


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ("hello", "messages[0]"),
        ({"role": "robot", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": 5}, "messages[0].content"),
        ({"role": "assistant", "content": None, "tool_calls": {"id": "x"}}, "messages[0].tool_calls"),
        ({"role": "assistant", "tool_calls": [{"id": "x", "function": {}}]}, "messages[0].tool_calls[0].function.name"),
    ],
)
def test_a_malformed_message_is_refused_naming_it(message: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        render_history([message])
    assert info.value.param == param


async def test_emulate_refuses_a_non_text_part_before_running() -> None:
    service = Service("unused")
    with pytest.raises(InvalidRequest):
        await answer(service, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert service.conversations == []


plain_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}),
    min_size=1, max_size=8,
)


@given(plain_messages)
def test_plain_conversations_come_back_equal(messages: list[dict[str, Any]]) -> None:
    assert render_history(messages) == messages


# -- round trips ---------------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ANY_ARGS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5), st.sampled_from(["", "Calling f.\n"]))
def test_random_arguments_round_trip_through_the_reply_format(args: dict[str, Any], prose: str) -> None:
    events = asyncio.run(answer(Service(prose + calls_reply(("f", args))), tools=ANY_ARGS))
    assert tool_calls(events) == [("f", args)]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_random_arguments_round_trip_through_the_history(args: dict[str, Any]) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": json.dumps(args)}}]}]
    events = asyncio.run(answer(Service(render_history(history)[-1]["content"]), tools=ANY_ARGS))
    assert tool_calls(events) == [("f", args)]


# -- bad requests (the checks themselves: tests/chat/test_chat_output.py) ---------------------------


@pytest.mark.parametrize(
    ("tools", "tool_choice", "response_format", "param"),
    [
        ([WEATHER, WEATHER], None, None, "tools[1].function.name"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, None, "tool_choice"),
        (None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}},
         "response_format.json_schema.schema"),
    ],
)
async def test_a_bad_request_is_refused_before_the_service_runs(tools: Any, tool_choice: Any, response_format: Any,
                                                                param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        instructions(tools, tool_choice, response_format, None)
    assert info.value.param == param
    service = Service("unused")
    with pytest.raises(InvalidRequest) as again:
        await answer(service, tools=tools, tool_choice=tool_choice, response_format=response_format)
    assert again.value.param == param
    assert service.conversations == []
