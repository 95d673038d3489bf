"""Property-based fuzzing of every stream decoder and of the providers' wire-format parsers.

For arbitrary bytes (plain noise and noise built from the syntax each format cares about),
split at arbitrary points, every decoder either produces exactly what the one-shot decode
produces or raises its one documented error, :class:`~patchbay.errors.ProtocolError`, whatever
the split. The parsers that turn one decoded item into stream events raise nothing but
:class:`~patchbay.errors.PatchbayError` and return events of the declared types, so a hostile
upstream can fail a request but never crash the server.

Deterministic: ``derandomize`` and no example database, so CI runs the same examples each time.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchbay.errors import PatchbayError, ProtocolError
from patchbay.events import Finish, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.net.decoders import DECODERS, LineDecoder, NDJSONDecoder, SSEDecoder, UTF8Decoder
from patchbay.providers import openai_compatible
from patchbay.providers.liaobots import current as liaobots

FUZZ = settings(max_examples=120, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SMALL_LINE = 24  # a line limit small enough for generated input to cross it

#: Pieces of the formats' syntax, mixed with noise so generated input reaches the parsers' branches.
TOKENS = [b"data:", b"data: ", b"event: ", b"id: ", b"id:\x00", b"retry: ", b"retry: 12", b": ping", b"\r", b"\n",
          b"\r\n", b"\n\n", b"{", b"}", b"[", b"]", b'"', b",", b":", b"1", b"-1e400", b"NaN", b"null", b"true",
          b"\xef\xbb\xbf", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f\x98", b"\x80", b"\xff", b"\x00",
          b"[DONE]", b'{"content": "hi"}', b'{"data": {"message": "hi"}}',
          b'{"choices": [{"delta": {"content": "x"}, "finish_reason": null}]}', b"[" * 3000]
stream_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6)), max_size=40).map(b"".join),
)

#: Every decoder configuration the providers use, plus small line limits to reach the limit errors.
DECODER_FACTORIES: dict[str, Callable[[], Any]] = {
    "utf8": UTF8Decoder,
    "sse": SSEDecoder,
    "sse-small-lines": lambda: SSEDecoder(max_line_size=SMALL_LINE),
    "ndjson": NDJSONDecoder,
    "ndjson-strict": lambda: NDJSONDecoder(strict=True),
    "ndjson-small-lines": lambda: NDJSONDecoder(max_line_size=SMALL_LINE),
}


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode_all(make: Callable[[], Any], chunks: Sequence[Any]) -> tuple[str, Any]:
    """("ok", outputs and the decoder's readable state) or ("error", message)."""
    decoder = make()
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.decode(chunk)
        out += decoder.flush()
    except ProtocolError as exc:
        return "error", str(exc)
    if isinstance(decoder, UTF8Decoder):  # text pieces: only their concatenation is defined
        out = ["".join(out)]
    state = {name: getattr(decoder, name) for name in ("comments", "last_event_id", "retry", "skipped")
             if hasattr(decoder, name)}
    return "ok", (_comparable(out), state)


def _comparable(values: list[Any]) -> list[str]:
    """NaN is not equal to itself, so outputs are compared by their repr."""
    return [repr(value) for value in values]


def test_every_decoder_in_the_table_is_fuzzed() -> None:
    fuzzed = {type(make()) for make in DECODER_FACTORIES.values()}
    assert set(DECODERS.values()) <= fuzzed


@pytest.mark.parametrize("name", sorted(DECODER_FACTORIES))
@FUZZ
@given(data=stream_bytes, points=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_decoders_on_arbitrary_bytes_split_anywhere(name: str, data: bytes, points: list[int]) -> None:
    make = DECODER_FACTORIES[name]
    points = [p for p in points if p <= len(data)]
    whole = decode_all(make, [data])
    assert decode_all(make, cut(data, points)) == whole
    assert decode_all(make, cut(data, range(1, len(data)))) == whole  # one byte at a time


@FUZZ
@given(data=stream_bytes)
def test_utf8_decoder_matches_the_one_shot_decode(data: bytes) -> None:
    decoder = UTF8Decoder()
    pieces = [text for byte in data for text in decoder.decode(bytes([byte]))] + decoder.flush()
    assert "".join(pieces) == data.decode("utf-8", "replace")


@FUZZ
@given(text=st.text(alphabet=st.sampled_from("ab\r\n\u2028é😀"), max_size=80),
       points=st.lists(st.integers(min_value=0, max_value=80), max_size=10))
def test_line_decoder_split_anywhere_and_its_limit(text: str, points: list[int]) -> None:
    def make() -> LineDecoder:
        return LineDecoder(max_line_size=8)

    bounds = [0, *sorted(p for p in points if p <= len(text)), len(text)]
    whole = decode_all(make, [text])
    assert decode_all(make, [text[a:b] for a, b in itertools.pairwise(bounds)]) == whole
    if whole[0] == "error":
        assert "max_line_size (8 characters)" in whole[1]


@pytest.mark.parametrize("strict", [False, True])
def test_ndjson_deeply_nested_line_is_a_bad_line_not_a_crash(strict: bool) -> None:
    decoder = NDJSONDecoder(strict=strict)
    data = b"[" * 100_000 + b"\n" + b'{"ok": 1}\n'
    if strict:
        with pytest.raises(ProtocolError, match="invalid JSON on line 1"):
            decoder.decode(data)
    else:
        assert decoder.decode(data) == [{"ok": 1}]
        assert decoder.skipped == 1


# -- the providers' parsers of one decoded item -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _near(shape: Any) -> st.SearchStrategy[Any]:
    """``shape`` with any of its leaves replaced by an arbitrary JSON value (or left alone)."""
    if isinstance(shape, dict):
        return st.fixed_dictionaries({key: _near(value) for key, value in shape.items()}) | json_values
    if isinstance(shape, list):
        return st.lists(_near(shape[0]), max_size=3) | json_values
    return st.just(shape) | json_values


CHUNK = {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "x", "tool_calls": [
    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
COMPLETION = {"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
event_texts = st.one_of(
    st.text(max_size=60),
    json_values.map(json.dumps),
    _near(CHUNK).map(json.dumps),
    _near(COMPLETION).map(json.dumps),
    st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
    st.sampled_from(["1e400", '{"usage": {"prompt_tokens": 1e308}}', '{"error": {"code": "429"}}',
                     '{"error": "boom"}', '{"error": {"code": 99999}}']),
)


def assert_well_typed(events: list[StreamEvent]) -> None:
    """The types the rest of patchbay relies on (merging tool calls, encoding chunks, counting)."""
    for event in events:
        if isinstance(event, TextDelta):
            assert isinstance(event.text, str)
        elif isinstance(event, ToolCallDelta):
            assert type(event.index) is int
            assert event.id is None or isinstance(event.id, str)
            assert event.name is None or isinstance(event.name, str)
            assert isinstance(event.arguments, str)
        elif isinstance(event, Usage):
            assert type(event.prompt_tokens) is int and type(event.completion_tokens) is int
            assert event.prompt_tokens >= 0 and event.completion_tokens >= 0
        elif isinstance(event, Finish):
            assert isinstance(event.reason, str)
        else:
            raise AssertionError(f"unexpected event {event!r}")


@FUZZ
@given(text=event_texts)
@example(text=json.dumps({"choices": [{"delta": {"tool_calls": [{"index": "a", "id": 5, "function": {"arguments": 7}}]},
                                       "finish_reason": {"x": 1}}], "usage": {"prompt_tokens": -3}}))
@example(text=json.dumps({"choices": [{"delta": {}, "finish_reason": ["stop"]}]}))
def test_openai_stream_chunk_parser_raises_only_patchbay_errors(text: str) -> None:
    finishes: dict[int, str] = {}
    try:
        events = openai_compatible._chunk_events(openai_compatible._parse_json(text), finishes)
    except PatchbayError:
        return
    assert_well_typed(events)
    assert all(isinstance(index, int) and isinstance(reason, str) for index, reason in finishes.items())


@FUZZ
@given(text=event_texts)
def test_openai_whole_answer_parser_raises_only_patchbay_errors(text: str) -> None:
    try:
        events = openai_compatible._completion_events(openai_compatible._parse_json(text))
    except PatchbayError:
        return
    assert_well_typed(events)


@FUZZ
@given(text=event_texts)
def test_openai_error_body_parser_never_raises(text: str) -> None:
    message, param = openai_compatible._error_message(text)
    assert isinstance(message, str) and (param is None or isinstance(param, str))


@FUZZ
@given(error=json_values)
def test_openai_error_objects_become_patchbay_errors(error: Any) -> None:
    result = openai_compatible._error_from_object(error)
    assert isinstance(result, PatchbayError) and 400 <= result.status < 600


@FUZZ
@given(text=event_texts)
def test_liaobots_event_parser_never_raises(text: str) -> None:
    content = liaobots._content(text)
    assert content is None or isinstance(content, str)


@pytest.mark.parametrize(("usage", "counts"), [
    ({"prompt_tokens": 12.0, "completion_tokens": "3"}, (12, 3)),
    ({"prompt_tokens": -1, "completion_tokens": math.nan}, (0, 0)),
    ({"prompt_tokens": True, "completion_tokens": "²"}, (0, 0)),
])
def test_usage_counts_are_non_negative_integers(usage: dict[str, Any], counts: tuple[int, int]) -> None:
    events = openai_compatible._chunk_events({"usage": usage}, {})
    assert events == [Usage(*counts)]


@FUZZ
@given(text=st.text(alphabet=st.sampled_from("ab\r\n\u2028é"), max_size=80),
       points=st.lists(st.integers(min_value=0, max_value=80), max_size=10))
def test_line_decoder_matches_a_one_shot_split(text: str, points: list[int]) -> None:
    """Chunks with and without CR take different paths; both give the lines of one regex split."""
    bounds = [0, *sorted(p for p in points if p <= len(text)), len(text)]
    decoder = LineDecoder()
    lines = [line for a, b in itertools.pairwise(bounds) for line in decoder.decode(text[a:b])] + decoder.flush()
    expected = re.split(r"\r\n|\r|\n", text)
    if expected and expected[-1] == "":
        expected.pop()  # a terminator at the very end opens no line
    assert lines == expected
