"""Tests for patchbay.net.decoders.

Decoder tests feed the same bytes split every way: whole, one byte at a time, two bytes at a
time, at every single split position and at random cut points; the output must not change.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchbay.errors import ProtocolError
from patchbay.net.decoders import (
    DECODERS,
    DEFAULT_MAX_LINE_SIZE,
    LineDecoder,
    NDJSONDecoder,
    ServerSentEvent,
    SSEDecoder,
    UTF8Decoder,
    decoder_for,
)

S = TypeVar("S", str, bytes)

# --- helpers ----------------------------------------------------------------------------------


def feed(decoder: Any, chunks: Sequence[Any]) -> list[Any]:
    """All outputs of decode() over the chunks, then flush()."""
    out: list[Any] = []
    for chunk in chunks:
        out += decoder.decode(chunk)
    out += decoder.flush()
    return out


def cut(data: S, points: Sequence[int]) -> list[S]:
    """``data`` cut at the given positions (any order, duplicates allowed)."""
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def splittings(data: S) -> list[list[S]]:
    """Whole, 1 at a time (also with empty chunks between), 2 at a time, split in two anywhere."""
    singles = cut(data, range(1, len(data)))
    with_empties = [part for single in singles for part in (single, data[:0])]
    ways = [[data], singles, with_empties, cut(data, range(2, len(data), 2))]
    ways += [[data[:i], data[i:]] for i in range(len(data) + 1)]
    return ways


def assert_split_invariant(factory: Callable[[], Any], data: S, expected: Any, join: bool = False) -> None:
    for chunks in splittings(data):
        out = feed(factory(), chunks)
        assert ("".join(out) if join else out) == expected, chunks


# --- shared corpus ----------------------------------------------------------------------------

# Cyrillic, CJK, 4-byte emoji, and every kind of line end, incl. CR and CRLF back to back.
TEXT = "Привет, мир\r\n你好世界\n🦜 parrot 🎉\rlast ✓\r\r\nend 🦜"
TEXT_LINES = ["Привет, мир", "你好世界", "🦜 parrot 🎉", "last ✓", "", "end 🦜"]
TEXT_BYTES = TEXT.encode()

SSE_STREAM = (
    "\ufeff: keep-alive comment\r\n"
    "event: delta\r\n"
    "id: 1\r\n"
    "data: Привет\r\n"
    "data: 你好 🦜\r\n"
    "\r\n"
    "retry: 3000\n"
    "data:no space\n"
    "\n"
    "event: ignored-no-data\r"
    "\r"
    'data: {"emoji": "🎉"}\r'
    "\r"
    "data: [DONE]"
).encode()
SSE_EVENTS = [
    ServerSentEvent("Привет\n你好 🦜", event="delta", id="1"),
    ServerSentEvent("no space", id="1", retry=3000),
    ServerSentEvent('{"emoji": "🎉"}', id="1"),
    ServerSentEvent("[DONE]", id="1"),
]

NDJSON_STREAM = '{"a": "Привет"}\r\n\n[1, "你好"]\rnot json 🦜\n"🎉"\r\n  \n{"b": null}'.encode()
NDJSON_VALUES = [{"a": "Привет"}, [1, "你好"], "🎉", {"b": None}]


# --- split invariance -------------------------------------------------------------------------


def test_corpus_crosses_the_interesting_boundaries() -> None:
    # The corpora really do contain a CRLF and multi-byte characters to split inside.
    for data in (TEXT_BYTES, SSE_STREAM, NDJSON_STREAM):
        assert b"\r\n" in data
        assert re.search(rb"[\xf0-\xf4]", data)  # a 4-byte UTF-8 lead byte
        assert len(data.decode()) < len(data)


def test_utf8_split_every_way() -> None:
    assert_split_invariant(UTF8Decoder, TEXT_BYTES, TEXT, join=True)


def test_utf8_returns_at_most_one_nonempty_string_per_call() -> None:
    decoder = UTF8Decoder()
    for i in range(len(TEXT_BYTES)):
        out = decoder.decode(TEXT_BYTES[i : i + 1])
        assert len(out) <= 1
        assert all(out)
    assert decoder.flush() == []


def test_lines_split_every_way() -> None:
    assert_split_invariant(LineDecoder, TEXT, TEXT_LINES)


def test_lines_through_utf8_split_every_way() -> None:
    def lines_from(chunks: list[bytes]) -> list[str]:
        text_decoder, line_decoder = UTF8Decoder(), LineDecoder()
        texts = feed(text_decoder, chunks)
        return feed(line_decoder, texts)

    for chunks in splittings(TEXT_BYTES):
        assert lines_from(chunks) == TEXT_LINES, chunks


def test_sse_split_every_way() -> None:
    assert_split_invariant(SSEDecoder, SSE_STREAM, SSE_EVENTS)


def test_ndjson_split_every_way() -> None:
    assert_split_invariant(NDJSONDecoder, NDJSON_STREAM, NDJSON_VALUES)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_cut_points(data: st.DataObject) -> None:
    for stream, factory, expected, join in (
        (TEXT_BYTES, UTF8Decoder, TEXT, True),
        (SSE_STREAM, SSEDecoder, SSE_EVENTS, False),
        (NDJSON_STREAM, NDJSONDecoder, NDJSON_VALUES, False),
    ):
        points = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
        out = feed(factory(), cut(stream, points))
        assert ("".join(out) if join else out) == expected
    points = data.draw(st.lists(st.integers(0, len(TEXT)), max_size=len(TEXT)))
    assert feed(LineDecoder(), cut(TEXT, points)) == TEXT_LINES


PIECES = ["a", "Ж", "字", "🦜", " ", ":", "data", "\r", "\n", "\r\n", "\ufeff"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.data())
def test_utf8_matches_one_shot_decode(blob: bytes, data: st.DataObject) -> None:
    points = data.draw(st.lists(st.integers(0, len(blob)), max_size=16))
    assert "".join(feed(UTF8Decoder(), cut(blob, points))) == blob.decode("utf-8", errors="replace")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40), st.data())
def test_lines_match_reference_split(pieces: list[str], data: st.DataObject) -> None:
    text = "".join(pieces)
    expected = re.split(r"\r\n|\r|\n", text)
    if expected[-1] == "":
        expected.pop()
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=16))
    assert feed(LineDecoder(), cut(text, points)) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*PIECES, "event: e", "id: 7", "retry: 5", ": c", "data: x"]), max_size=40), st.data())
def test_sse_generated_streams_split_invariant(pieces: list[str], data: st.DataObject) -> None:
    stream = "".join(pieces).encode()
    whole = feed(SSEDecoder(), [stream])
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=16))
    assert feed(SSEDecoder(), cut(stream, points)) == whole


# --- UTF8Decoder ------------------------------------------------------------------------------


def test_utf8_invalid_bytes_become_replacement_character() -> None:
    assert feed(UTF8Decoder(), [b"ok \xff\xfe end"]) == ["ok \ufffd\ufffd end"]


def test_utf8_truncated_character_at_end_is_replaced_on_flush() -> None:
    decoder = UTF8Decoder()
    assert decoder.decode("a🦜".encode()[:3]) == ["a"]
    assert decoder.flush() == ["\ufffd"]
    assert decoder.decode(b"b") == ["b"]  # reset after flush: no leftover bytes


def test_utf8_keeps_a_bom() -> None:
    assert feed(UTF8Decoder(), [b"\xef\xbb\xbfhi"]) == ["\ufeffhi"]


# --- LineDecoder ------------------------------------------------------------------------------


def test_lines_crlf_split_between_cr_and_lf() -> None:
    decoder = LineDecoder()
    assert decoder.decode("one\r") == ["one"]
    assert decoder.decode("\ntwo\r") == ["two"]
    assert decoder.decode("\r") == [""]
    assert decoder.flush() == []


def test_lines_empty_chunk_between_cr_and_lf_keeps_the_pending_cr() -> None:
    assert feed(LineDecoder(), ["a\r", "", "\nb"]) == ["a", "b"]


def test_lines_flush_emits_final_unterminated_line_only_if_nonempty() -> None:
    decoder = LineDecoder()
    assert decoder.decode("a\nb") == ["a"]
    assert decoder.flush() == ["b"]
    assert decoder.flush() == []


def test_lines_other_unicode_breaks_are_not_line_ends() -> None:
    assert feed(LineDecoder(), ["a\x0bb\x1cc\u2028d\n"]) == ["a\x0bb\x1cc\u2028d"]


def test_line_decoder_default_limit_is_one_mib() -> None:
    assert LineDecoder().max_line_size == DEFAULT_MAX_LINE_SIZE == 1024 * 1024


@pytest.mark.parametrize("chunks", [["x" * 11 + "\n"], ["x" * 6, "x" * 6], ["x" * 11]])
def test_line_decoder_max_line_size_raises(chunks: list[str]) -> None:
    decoder = LineDecoder(max_line_size=10)
    with pytest.raises(ProtocolError, match="max_line_size"):
        feed(decoder, chunks)


def test_line_decoder_max_line_size_allows_lines_at_the_limit() -> None:
    assert feed(LineDecoder(max_line_size=10), ["x" * 5, "x" * 5 + "\r\n", "y" * 10]) == ["x" * 10, "y" * 10]


def test_sse_passes_max_line_size_on() -> None:
    with pytest.raises(ProtocolError, match="max_line_size"):
        SSEDecoder(max_line_size=8).decode(b"data: 0123456789")


# --- SSEDecoder -------------------------------------------------------------------------------


def sse(text: str) -> list[ServerSentEvent]:
    return feed(SSEDecoder(), [text.encode()])


def test_sse_multiline_data_joined_with_newline() -> None:
    assert sse("data: a\ndata:\ndata: b\n\n") == [ServerSentEvent("a\n\nb")]


def test_sse_comments_ignored_and_counted() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b": ping\n\n:\n\ndata: x\n: mid-event\n\n") == [ServerSentEvent("x")]
    assert decoder.comments == 3


def test_sse_event_id_retry_fields() -> None:
    events = sse("event: update\nid: abc\nretry: 1500\ndata: 1\n\ndata: 2\n\n")
    assert events == [
        ServerSentEvent("1", event="update", id="abc", retry=1500),
        ServerSentEvent("2", event="message", id="abc", retry=None),  # id persists, event resets
    ]


def test_sse_id_with_nul_is_ignored() -> None:
    assert sse("id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n")[1].id == "1"


@pytest.mark.parametrize("value", ["12a", "-5", "", " 5", "١٢"])
def test_sse_retry_must_be_ascii_digits(value: str) -> None:
    decoder = SSEDecoder()
    assert feed(decoder, [f"retry: {value}\ndata: x\n\n".encode()]) == [ServerSentEvent("x")]
    assert decoder.retry is None


def test_sse_exactly_one_space_after_colon_is_stripped() -> None:
    assert sse("data:x\n\ndata:  y\n\nevent:e\ndata: z \n\n") == [
        ServerSentEvent("x"),
        ServerSentEvent(" y"),
        ServerSentEvent("z ", event="e"),
    ]


def test_sse_value_may_contain_colons() -> None:
    assert sse("data: a: b:c\n\n") == [ServerSentEvent("a: b:c")]


def test_sse_field_without_colon_has_empty_value() -> None:
    assert sse("data\ndata\n\n") == [ServerSentEvent("\n")]
    assert sse("data\n\n") == [ServerSentEvent("")]


def test_sse_unknown_fields_are_ignored() -> None:
    assert sse("foo: bar\ndata: x\nDATA: y\n\n") == [ServerSentEvent("x")]


def test_sse_leading_bom_stripped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert feed(SSEDecoder(), [bom[:1], bom[1:] + b"data: a\n\n"]) == [ServerSentEvent("a")]
    # A second BOM is not a BOM any more: it is part of the field name, so the line is ignored.
    assert feed(SSEDecoder(), [bom + bom + b"data: a\n\n"]) == []


def test_sse_blank_data_not_dispatched() -> None:
    assert sse("event: ping\nid: 9\n\n\n\nretry: 10\n\n") == []


def test_sse_done_sentinel_passes_through_as_plain_string() -> None:
    [event] = sse("data: [DONE]\n\n")
    assert event == ServerSentEvent("[DONE]")
    with pytest.raises(json.JSONDecodeError):
        event.json()


def test_sse_json_helper() -> None:
    assert sse('data: {"choices": [1]}\n\n')[0].json() == {"choices": [1]}


def test_sse_final_event_without_trailing_blank_line_dispatched_on_flush() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: one\n\ndata: two\ndata: three") == [ServerSentEvent("one")]
    assert decoder.flush() == [ServerSentEvent("two\nthree")]
    assert decoder.flush() == []


def test_sse_pending_block_without_data_not_dispatched_on_flush() -> None:
    assert sse("data: a\n\nevent: x\nid: 2") == [ServerSentEvent("a")]


def test_sse_flush_resets_parsing_state() -> None:
    decoder = SSEDecoder()
    decoder.decode(b"event: half\ndata: x")
    decoder.flush()
    assert feed(decoder, [b"data: y\n\n"]) == [ServerSentEvent("y")]


def test_server_sent_event_is_frozen_with_defaults() -> None:
    event = ServerSentEvent("d")
    assert (event.event, event.id, event.retry) == ("message", None, None)
    with pytest.raises(AttributeError):
        event.data = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


# --- NDJSONDecoder ----------------------------------------------------------------------------


def test_ndjson_skips_and_counts_bad_lines() -> None:
    decoder = NDJSONDecoder()
    assert feed(decoder, [b'1\n{oops\n\n"two"\n[3\n']) == [1, "two"]
    assert decoder.skipped == 2


def test_ndjson_strict_raises_with_line_number_and_excerpt() -> None:
    bad = "{" + "x" * 200
    decoder = NDJSONDecoder(strict=True)
    with pytest.raises(ProtocolError, match="line 3") as info:
        feed(decoder, [f'1\n\n{bad}\n"never"\n'.encode()])
    excerpt = re.search(r"'(.*)'", str(info.value))
    assert excerpt is not None
    assert len(excerpt.group(1)) <= 80
    assert excerpt.group(1).startswith("{xxx")


def test_ndjson_strict_accepts_valid_stream() -> None:
    decoder = NDJSONDecoder(strict=True)
    assert feed(decoder, [b'{"a": 1}\r\n\r\n2']) == [{"a": 1}, 2]
    assert decoder.skipped == 0


def test_ndjson_strict_final_line_checked_on_flush() -> None:
    decoder = NDJSONDecoder(strict=True)
    assert decoder.decode(b"1\n{") == [1]
    with pytest.raises(ProtocolError, match="line 2"):
        decoder.flush()


# --- decoder_for ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "cls"),
    [
        ("text/event-stream", SSEDecoder),
        ("Text/Event-Stream; charset=utf-8", SSEDecoder),
        ("application/x-ndjson", NDJSONDecoder),
        ("application/jsonl;charset=UTF-8", NDJSONDecoder),
        (" APPLICATION/JSON-LINES ", NDJSONDecoder),
        ("text/plain; charset=utf-8", UTF8Decoder),
        ("application/octet-stream", UTF8Decoder),
        ("", UTF8Decoder),
        (None, UTF8Decoder),
    ],
)
def test_decoder_for(content_type: str | None, cls: type) -> None:
    decoder = decoder_for(content_type)
    assert type(decoder) is cls


def test_decoder_for_returns_a_new_instance_each_time() -> None:
    assert decoder_for("text/event-stream") is not decoder_for("text/event-stream")


def test_decoders_table_keys() -> None:
    assert set(DECODERS) == {
        "text/event-stream",
        "application/x-ndjson",
        "application/jsonl",
        "application/json-lines",
        "text/plain",
    }
