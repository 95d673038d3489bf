"""Property-based fuzzing of request validation: what the server does with a request body before
any provider sees it (:func:`~patchbay.completions.decode_request`, then
:func:`~patchbay.messages.validate_messages`), and the library's ``create(**kwargs)`` twin.

Whatever the input (arbitrary bytes, arbitrary JSON, a valid request with any field swapped for
any JSON value), the result is a request that keeps every documented bound, or
:class:`~patchbay.errors.InvalidRequest` (HTTP 400) whose ``param`` names a field of the request.

Deterministic: ``derandomize`` and no example database, so CI runs the same examples each time.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchbay.chat.request import MAX_MESSAGES, MAX_STOPS, ChatCompletionRequest, decode_request, request_from_kwargs
from patchbay.errors import InvalidRequest
from patchbay.messages import validate_messages

FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

ROLES = ["system", "developer", "user", "assistant", "tool", "function", "robot", "", "USER", None, 1]
FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "n", "tools", "tool_choice",
          "response_format", "user"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
valid_messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                           "content": st.text(max_size=10)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=5),
                           "tool_call_id": st.text(max_size=5)}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(st.fixed_dictionaries(
        {"type": st.just("text"), "text": st.text(max_size=5)}), max_size=2)}),
), min_size=1, max_size=3)
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_tokens": st.integers(min_value=1), "max_completion_tokens": st.integers(min_value=1),
    "temperature": st.floats(min_value=0, max_value=2), "top_p": st.floats(min_value=0, max_value=1),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=MAX_STOPS), "seed": st.integers(),
    "presence_penalty": st.floats(min_value=-2, max_value=2), "frequency_penalty": st.floats(min_value=-2, max_value=2),
    "n": st.just(1), "tools": st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=2), max_size=2),
    "tool_choice": st.sampled_from(["auto", "none"]) | st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    "response_format": st.fixed_dictionaries({"type": st.just("json_object")}), "user": st.text(max_size=8),
}
valid_requests = st.fixed_dictionaries({"model": st.just("small") | st.text(min_size=1, max_size=20),
                                        "messages": valid_messages}, optional=VALID_FIELDS)
ODD_VALUES = st.sampled_from([0, 1, 2, 2.5, -2, -3, 4096, 2**64, "", "stop", "user"]) | st.builds(list) | st.builds(
    dict) | st.just("abcde").map(list)


@st.composite
def near_valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with up to three mistakes: a field (or a message's field) set to any value."""
    body = draw(valid_requests)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        value = draw(json_values | ODD_VALUES)
        messages = body.get("messages")
        editable = isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
        if draw(st.booleans()) or not editable:
            body[draw(st.sampled_from([*FIELDS, "unknown_field"]))] = value
        else:
            message = draw(st.sampled_from(messages))
            message[draw(st.sampled_from(["role", "content", "tool_call_id", "tool_calls", "name"]))] = (
                draw(st.sampled_from(ROLES)) if draw(st.booleans()) else value)
    return body


near_valid = near_valid_requests()


def check(body: bytes) -> ChatCompletionRequest | InvalidRequest:
    """What the server does with a body before the router: decode, then check the messages."""
    try:
        request = decode_request(body)
        validate_messages(request.message_dicts())
    except InvalidRequest as error:
        return error
    return request


def assert_accepted_request_keeps_the_bounds(request: ChatCompletionRequest) -> None:
    assert 1 <= len(request.model) <= 256
    assert 1 <= len(request.messages) <= MAX_MESSAGES
    assert request.temperature is None or 0 <= request.temperature <= 2
    assert request.top_p is None or 0 <= request.top_p <= 1
    assert request.n in (None, 1)
    assert not isinstance(request.stop, list) or len(request.stop) <= MAX_STOPS
    for message in request.message_dicts():
        assert message["role"] in ("system", "user", "assistant", "tool")
    again = decode_request(msgspec.json.encode(request))  # what was accepted survives a round trip
    assert again == request


def assert_clear_400(error: InvalidRequest) -> None:
    assert type(error) is InvalidRequest and error.status == 400
    assert error.message and error.to_dict()["type"] == "invalid_request_error"
    if error.param is not None:  # the param names a field of the request
        assert error.param.partition("[")[0].partition(".")[0] in FIELDS


def assert_clear_400_or_within_bounds(result: ChatCompletionRequest | InvalidRequest) -> None:
    """Every body ends one of two ways: a clear 400, or a request within every documented bound."""
    if isinstance(result, InvalidRequest):
        assert_clear_400(result)
    else:
        assert_accepted_request_keeps_the_bounds(result)


@FUZZ
@given(body=st.binary(max_size=300))
@example(body=b"\xff\xfe{}")
@example(body=b"[" * 100_000)
@example(body=b'{"model": "sm\xffall", "messages": [{"role": "user", "content": "x"}]}')
@example(body=b'{"model": "m", "messages": [{"role": "user", "content": [' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000
         + b"]}]}")
def test_arbitrary_bytes(body: bytes) -> None:
    assert_clear_400_or_within_bounds(check(body))


@FUZZ
@given(value=json_values)
def test_arbitrary_json_values(value: Any) -> None:
    assert_clear_400_or_within_bounds(check(json.dumps(value).encode()))


@FUZZ
@given(body=near_valid)
@example(body={"model": "small", "messages": [{"role": "wizard", "content": "hi"}]})
@example(body={"model": "small", "messages": [{"role": "tool", "content": "hi"}]})
@example(body={"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})
def test_near_valid_requests(body: dict[str, Any]) -> None:
    assert_clear_400_or_within_bounds(check(json.dumps(body).encode()))


@FUZZ
@given(body=near_valid)
def test_library_and_server_agree_on_what_is_valid(body: dict[str, Any]) -> None:
    """``create(**kwargs)`` checks exactly like the server does."""
    try:
        from_kwargs: ChatCompletionRequest | str = request_from_kwargs(body)
    except InvalidRequest as error:
        from_kwargs = error.message
    try:
        from_body: ChatCompletionRequest | str = decode_request(json.dumps(body).encode())
    except InvalidRequest as error:
        from_body = error.message
    assert type(from_kwargs) is type(from_body)
    if isinstance(from_body, ChatCompletionRequest):
        assert from_kwargs == from_body


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "must be one of"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got integer"),
    ({"model": "m", "messages": []}, "messages", "at least 1 item"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model", "at least 1 character"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing required field model"),
    ({"model": "m"}, "messages", "missing required field messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature", "<= 2"),
    ({"model": "m", "messages": "hello"}, "messages", "must be of type array, got string"),
])
def test_each_kind_of_mistake_names_its_field(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request(json.dumps(body).encode())
    assert info.value.param == param
    assert words in info.value.message


def test_message_count_is_capped_with_a_clear_message() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": ""}] * (MAX_MESSAGES + 1)}
    with pytest.raises(InvalidRequest) as info:
        decode_request(json.dumps(body).encode())
    assert info.value.param == "messages"
    assert f"at most {MAX_MESSAGES} items" in info.value.message


def test_deep_nesting_is_a_400_naming_the_problem() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [' + b'{"a": ' * 100_000
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        decode_request(body)
    deep: Any = 1
    for _ in range(100_000):
        deep = {"a": deep}
    request = request_from_kwargs({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [deep]})
    assert request.tools is not None  # kwargs are Python objects, no parser: taken as they are
