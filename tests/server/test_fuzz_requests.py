"""Property-based fuzzing of request validation: what the server does with a request body before
any provider sees it (:func:`~patchbay.chat.response.decode_request`, then
:func:`~patchbay.chat.messages.validate_messages`), and the library's ``create(**kwargs)`` twin.

Whatever the input (arbitrary bytes, arbitrary JSON, a valid request with any field swapped for
any JSON value), the result is a request that keeps every documented bound, or
:class:`~patchbay.errors.InvalidRequest` (HTTP 400) whose ``param`` names a field of the request.

Deterministic: ``derandomize`` and no example database, so CI runs the same examples each time.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchbay.chat.messages import validate_messages
from patchbay.chat.request import MAX_MESSAGES, MAX_STOPS, ChatCompletionRequest, decode_request, request_from_kwargs
from patchbay.errors import InvalidRequest

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
        messages: Any = body.get("messages")
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
    assert request.n is None or 1 <= request.n <= 128
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


# -- malformed JSON around valid fields (issue 15): always InvalidRequest, one line, never a 500 --

HELLO_BODY = b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]'
#: The issue's bodies: whole floats, numbers JSON cannot hold, and nesting, each next to a
#: malformed piece, which once made the whole-float retry fail inside its own except.
ISSUE_BODIES = [
    HELLO_BODY + b', "max_tokens": 2.0}xx',
    HELLO_BODY + b', "temperature": 1e999}',
    HELLO_BODY + b', "temperature": -1e999}',
    HELLO_BODY + b', "max_tokens": 2.0, "temperature": NaN}',
    HELLO_BODY + b', "max_tokens": ' + b"9" * 5000 + b"}",
    HELLO_BODY + b', "max_tokens": 2.0, "tools": ' + b"[" * 100_000 + b"}",
]
PLACEHOLDER = "PLACEHOLDER-0f3a9c"
#: Raw JSON tokens (some not JSON at all) put where a field's value goes.
RAW_VALUES = [b"2.0", b"100.0", b"2.5", b"1e999", b"-1e999", b"1E400", b"1e-400", b"-0", b"NaN", b"Infinity",
              b"-Infinity", b"9" * 5000, b"-" + b"9" * 5000, b"9" * 5000 + b".0", b"1" + b"0" * 30, b"2" + b"0" * 19,
              b"[" * 3000 + b"]" * 3000, b"[" * 100_000, b'{"a": ' * 2000 + b"1" + b"}" * 2000, b'"\\ud800"',
              b'"\\udc00x"', b'"\xff"', b'"\\u0000\\n"', b"true", b"null", b"{}", b"[]", b'"x"', b"tru", b"01",
              b"1.", b".5", b"+1", b"0x10", b"'x'", b""]
FIELD_NAMES = ChatCompletionRequest.__struct_fields__
#: The fields to mutate, the number fields first (examples lean to the first of a list).
MUTATED_FIELDS = ["max_tokens", "temperature", "seed", "n", "top_p", "top_logprobs", "max_completion_tokens",
                  *sorted(set(FIELD_NAMES) - {"max_tokens", "temperature", "seed", "n", "top_p", "top_logprobs",
                                              "max_completion_tokens"}), "unknown_field", "new\nline"]
#: Bytes that make JSON wrong in interesting ways, more often than random bytes would.
JSON_BYTES = st.sampled_from([b"}", b"]", b"{", b"[", b",", b":", b'"', b"\\", b" ", b"0", b"-", b"e", b".", b"\n"])


def one_line_400(body: bytes) -> InvalidRequest:
    """The InvalidRequest ``body`` gets (failing the test if it is accepted or anything else)."""
    with pytest.raises(InvalidRequest) as info:
        decode_request(body)
    assert_one_line(info.value)
    return info.value


def assert_one_line(error: InvalidRequest) -> None:
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert error.message and error.message.splitlines() == [error.message]
    assert "Traceback" not in error.message
    error.message.encode("utf-8")  # the server can send it
    if error.param is not None:
        assert error.param.partition("[")[0].partition(".")[0] in FIELD_NAMES


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """Valid request JSON, then up to four mutations: a value swapped for a raw token, a key
    given twice, bytes inserted, deleted or replaced, garbage appended."""
    fields = draw(valid_requests)
    body = json.dumps(fields).encode()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["swap", "duplicate", "swap", "insert", "delete", "replace", "append"]))
        token = draw(st.sampled_from(RAW_VALUES))
        if kind == "swap":
            fields[draw(st.sampled_from(MUTATED_FIELDS))] = PLACEHOLDER
            body = json.dumps(fields).encode().replace(json.dumps(PLACEHOLDER).encode(), token, 1)
        elif kind == "duplicate" and body.endswith(b"}"):
            body = body[:-1] + b', "' + draw(st.sampled_from(MUTATED_FIELDS)).encode() + b'": ' + token + b"}"
        elif kind == "insert":
            at = draw(st.integers(min_value=0, max_value=len(body)))
            body = body[:at] + draw(JSON_BYTES | st.just(token) | st.binary(min_size=1, max_size=4)) + body[at:]
        elif kind == "delete" and body:
            at = draw(st.integers(min_value=0, max_value=len(body) - 1))
            body = body[:at] + body[at + draw(st.integers(min_value=1, max_value=8)):]
        elif kind == "replace" and body:
            at = draw(st.integers(min_value=0, max_value=len(body) - 1))
            body = body[:at] + draw(JSON_BYTES | st.binary(min_size=1, max_size=1)) + body[at + 1:]
        else:
            body += draw(JSON_BYTES | st.just(token) | st.binary(max_size=6))
    return body


@FUZZ
@given(body=mutated_bodies())
@example(body=ISSUE_BODIES[0])
@example(body=HELLO_BODY + b', "max_tokens": 2.0, "max_tokens": 1e999}')
@example(body=HELLO_BODY + b', "logit_bias": {"line\\nbreak": 1000}}')  # a key with a newline, in the message
def test_a_mutated_body_is_a_request_or_invalid_request(body: bytes) -> None:
    try:
        request = decode_request(body)
    except InvalidRequest as error:  # anything else fails the test
        assert_one_line(error)
    else:
        assert_accepted_request_keeps_the_bounds(request)


@pytest.mark.parametrize(("tail", "param", "words"), [
    (b', "max_tokens": 2.0}xx', None, "more after the JSON value ends"),
    (b', "max_tokens": 2.0} {}', None, "more after the JSON value ends"),
    (b', "temperature": 1e999}', "temperature", "out of range"),
    (b', "temperature": -1e999}', "temperature", "out of range"),
    (b', "max_tokens": 1e999}', "max_tokens", "out of range"),
    (b', "max_tokens": ' + b"9" * 5000 + b".0}", "max_tokens", "out of range"),
    (b', "top_p": NaN}', "top_p", "NaN is not a JSON number"),
    (b', "seed": Infinity}', "seed", "Infinity is not a JSON number"),
    (b', "presence_penalty": -Infinity}', "presence_penalty", "-Infinity is not a JSON number"),
    (b', "max_tokens": ' + b"9" * 5000 + b"}", "max_tokens", "too large (5000 digits)"),
    (b', "seed": -' + b"9" * 5000 + b"}", "seed", "too large (5000 digits)"),
    (b', "seed": ' + b"9" * 30 + b"}", "seed", "<= 9223372036854775807"),
    (b', "max_tokens": 2.5}', "max_tokens", "must be of type integer"),
    (b', "user": "\\ud800"}', "user", "unpaired surrogate"),
    (b', "unknown": 1, "temperature": 1e999}', "temperature", "out of range"),
    (b', "unknown": 1e999, "temperature": 1}', None, "invalid field unknown: the number 1e999 is out of range"),
    (b', "unknown": 1, "max_tokens": 2.0, "temperature": 3}', "temperature", "<= 2"),
    (b', "logit_bias": {"a\\nb": 1000}}', "logit_bias.a\\u000ab", "<= 100"),
    (b', "tools": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
    (b', "max_tokens": 2.0, "tools": ' + b"[" * 100_000 + b"}", None, "nested too deeply"),
    (b', "max_tokens": 2.0, "model": "\xff"}', None, "not valid UTF-8"),
    (b', "max_tokens": 2.0', None, "ends before the JSON value does"),
    (b', "max_tokens": 2.0, }', None, "unexpected character '}'"),
    (b', "max_tokens": 2.0\x00}', None, "unexpected character U+0000"),
])
def test_each_malformed_piece_is_one_clear_line(tail: bytes, param: str | None, words: str) -> None:
    error = one_line_400(HELLO_BODY + tail)
    assert error.param == param
    assert words in error.message


@pytest.mark.parametrize(("body", "words"), [
    (b"", "is empty"), (b" \r\n\t", "is empty"), (b"NaN", "NaN is not a JSON number"),
    (b"[1, 2]", "must be of type object, got array"), (b"1e999", "out of range"),
    (b"\xef\xbb\xbf{}", "unexpected character"),  # a byte order mark is not JSON
])
def test_a_body_that_is_not_a_json_object_is_one_clear_line(body: bytes, words: str) -> None:
    assert words in one_line_400(body).message


def test_valid_bodies_keep_their_meaning() -> None:
    """Whole floats in integer fields are integers, a key given twice is its last value, unknown
    fields go to extra_body; the odd corners that are still JSON are still accepted."""
    request = decode_request(HELLO_BODY + b', "max_tokens": 2.0, "seed": -0, "temperature": 1e-400, "n": 1.0}')
    assert (request.max_tokens, request.seed, request.temperature, request.n) == (2, 0, 0.0, 1)
    assert type(request.max_tokens) is int and type(request.n) is int
    request = decode_request(HELLO_BODY + b', "model": "other", "max_tokens": 5, "max_tokens": 7}')
    assert (request.model, request.max_tokens) == ("other", 7)
    request = decode_request(HELLO_BODY + b', "max_tokens": 3.0, "custom": [1.0, {"deep": null}]}')
    assert request.max_tokens == 3 and request.extra_body == {"custom": [1.0, {"deep": None}]}


def test_a_valid_body_takes_the_fast_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid body is one typed decode: the slow path that explains mistakes is not run."""
    import patchbay.chat.request as module

    def slow(body: bytes) -> ChatCompletionRequest:
        raise AssertionError("the slow path ran for a valid body")

    monkeypatch.setattr(module, "_decode_slowly", slow)
    assert decode_request(HELLO_BODY + b', "max_tokens": 2, "temperature": 0.5}').max_tokens == 2
    with pytest.raises(AssertionError):
        decode_request(HELLO_BODY + b', "max_tokens": 2.0}')


# -- the issue's bodies through the gateway, in this process --------------------------------------


async def post_in_process(app: Any, body: bytes) -> tuple[int, Any]:
    """POST ``body`` to ``/v1/chat/completions`` of the ASGI ``app``; the status and the JSON."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("body", ISSUE_BODIES)
async def test_the_issue_bodies_are_400_with_an_openai_error(body: bytes, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from patchbay.server.app import Gateway
    from patchbay.settings import ServerSettings, Settings

    for variable in ("PATCHBAY_API_KEYS", "PATCHBAY_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False),  # the upstream is never reached
                        providers={"fake": {"base_url": "http://127.0.0.1:9/v1", "models": ["fake-small"]}},
                        routes={"small": ["fake/fake-small"]})
    status, answer = await post_in_process(Gateway(settings), body)
    assert status == 400
    assert set(answer) == {"error"} and {"message", "type", "param", "code"} <= set(answer["error"])
    assert answer["error"]["type"] == "invalid_request_error"
    message = answer["error"]["message"]
    assert isinstance(message, str) and message and message.splitlines() == [message] and "Traceback" not in message
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


def test_whole_floats_in_logit_bias_are_integers_as_the_schema_counts_them() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    request = decode_request(json.dumps({**base, "logit_bias": {"5": 50.0, "7": -3}}).encode())
    assert request.logit_bias == {"5": 50, "7": -3}
    with pytest.raises(InvalidRequest) as caught:
        decode_request(json.dumps({**base, "logit_bias": {"5": 50.5}}).encode())
    assert caught.value.param == "logit_bias.5"
