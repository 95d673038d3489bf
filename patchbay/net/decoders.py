"""Incremental stream decoders: bytes in, text / lines / events / JSON values out.

Providers stream their answers as UTF-8 text, server-sent events or newline-delimited JSON,
and the network cuts that stream at arbitrary byte positions: inside a multi-byte character,
between the ``"\\r"`` and ``"\\n"`` of a CRLF, in the middle of an event. Each decoder here keeps
its own explicit state so that the output does not depend on where the cuts fall. They are
pure and synchronous (no I/O, no asyncio), so the transport layer just pushes chunks through
:meth:`decode` and calls :meth:`flush` once at end of stream.

Every decoder has ``decode(data) -> list[...]`` and ``flush() -> list[...]``; after
``flush()`` the decoder is back in its initial state.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

from patchbay.errors import ProtocolError

__all__ = [
    "DECODERS",
    "DEFAULT_MAX_LINE_SIZE",
    "LineDecoder",
    "NDJSONDecoder",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamDecoder",
    "UTF8Decoder",
    "decoder_for",
]

#: Longest line (in characters) a line-based decoder accepts before raising ProtocolError.
DEFAULT_MAX_LINE_SIZE = 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"
_EXCERPT = 80


class UTF8Decoder:
    """Bytes -> text, keeping a multi-byte character that is split across chunks for later.

    Invalid bytes become U+FFFD. Each call returns at most one string and never an empty one.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> list[str]:
        text = self._decoder.decode(data)
        return [text] if text else []

    def flush(self) -> list[str]:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return [text] if text else []


class LineDecoder:
    """Text -> lines without their terminators; a line ends at CR, LF or CRLF.

    A line is complete as soon as its ``"\\r"`` arrives, so it is returned at once; the
    explicit ``_after_cr`` state remembers that a ``"\\n"`` opening the next chunk belongs to
    that CRLF and must be swallowed rather than read as an empty line.
    """

    def __init__(self, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self.max_line_size = max_line_size
        self._parts: list[str] = []  # the incomplete last line, in pieces (no quadratic joins)
        self._size = 0
        self._after_cr = False

    def decode(self, text: str) -> list[str]:
        if not text:  # an empty chunk must not forget a pending "\r"
            return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" not in text:  # the usual stream: LF only, so one C-level split does it
            return self._split_lf(text)
        lines: list[str] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line = text[start : match.start()]
            if self._parts:
                line = "".join(self._parts) + line
                self._parts.clear()
                self._size = 0
            self._check(len(line))
            lines.append(line)
            start = match.end()
        if start < len(text):
            self._parts.append(text[start:])
            self._size += len(text) - start
            self._check(self._size)
        self._after_cr = text.endswith("\r")
        return lines

    def _split_lf(self, text: str) -> list[str]:
        """:meth:`decode` for text with no ``"\\r"``: the same lines, from ``str.split``."""
        carried = self._size
        lines = text.split("\n")
        rest = lines.pop()  # after the last "\n": the start of an unfinished line ('' if none)
        if lines and self._parts:
            lines[0] = "".join(self._parts) + lines[0]
            self._parts.clear()
            self._size = 0
        if len(text) + carried > self.max_line_size:  # only then can a line be too long
            for line in lines:
                self._check(len(line))
        if rest:
            self._parts.append(rest)
            self._size += len(rest)
            self._check(self._size)
        return lines

    def flush(self) -> list[str]:
        line = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._after_cr = False
        return [line] if line else []

    def _check(self, size: int) -> None:
        if size > self.max_line_size:
            self._parts.clear()
            self._size = 0
            raise ProtocolError(f"line longer than max_line_size ({self.max_line_size} characters)")


class _TextLines:
    """Bytes -> lines: UTF8Decoder then LineDecoder, dropping one UTF-8 BOM at stream start."""

    def __init__(self, max_line_size: int) -> None:
        self._text = UTF8Decoder()
        self._lines = LineDecoder(max_line_size)
        self._at_start = True

    def decode(self, data: bytes) -> list[str]:
        return self._feed(self._text.decode(data))

    def flush(self) -> list[str]:
        lines = self._feed(self._text.flush()) + self._lines.flush()
        self._at_start = True
        return lines

    def _feed(self, texts: list[str]) -> list[str]:
        lines: list[str] = []
        for text in texts:
            if self._at_start:
                self._at_start = False
                text = text.removeprefix(_BOM)
            lines += self._lines.decode(text)
        return lines


class ServerSentEvent(NamedTuple):
    """One dispatched server-sent event (a named tuple: one is made per event of every stream,
    in less than half a frozen dataclass's time: 0.45 against 1.1 µs)."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    def json(self) -> object:
        """The data parsed as JSON (raises ``json.JSONDecodeError`` for ``[DONE]`` and the like)."""
        return json.loads(self.data)


class SSEDecoder:
    """Bytes -> server-sent events, following the HTML "event stream interpretation".

    ``id`` is the last event ID seen so far (it persists across events, as the spec says);
    ``retry`` is set only on the event whose block carried a valid ``retry:`` field, and the
    latest value is also kept in :attr:`retry`. Comment lines are counted in :attr:`comments`.
    :meth:`flush` resets the parsing state but keeps ``comments``, ``last_event_id`` and
    ``retry`` readable: they are what a caller needs to reconnect.
    """

    def __init__(self, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self._lines = _TextLines(max_line_size)
        self.comments = 0
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self._data: list[str] = []
        self._event = ""
        self._block_retry: int | None = None

    def decode(self, data: bytes) -> list[ServerSentEvent]:
        return self._process(self._lines.decode(data))

    def flush(self) -> list[ServerSentEvent]:
        events = self._process(self._lines.flush())
        # Deliberate deviation from the spec, which discards an event still pending at EOF:
        # real chat services (Liaobots among them) close the stream right after the last
        # "data:" line with no blank line after it, and that last event carries the answer.
        # So the end of the stream dispatches like a final blank line would.
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _process(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line[0] == ":":
                self.comments += 1
            else:
                name, colon, value = line.partition(":")
                if colon and value[:1] == " ":
                    value = value[1:]
                self._field(name, value)
        return events

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = self._block_retry = int(value)
        # Any other field name is ignored, as the spec says.

    def _dispatch(self) -> ServerSentEvent | None:
        data, event, retry = self._data, self._event, self._block_retry
        self._data, self._event, self._block_retry = [], "", None
        if not data:  # no data line at all: nothing to dispatch (per spec)
            return None
        return ServerSentEvent("\n".join(data), event or "message", self.last_event_id, retry)


class NDJSONDecoder:
    """Bytes -> JSON values, one per non-blank line (NDJSON / JSON Lines).

    Lines that do not parse are skipped and counted in :attr:`skipped`, or with
    ``strict=True`` raise ProtocolError naming the 1-based line number and an excerpt.
    A leading UTF-8 BOM is dropped; :attr:`skipped` survives :meth:`flush`.
    """

    def __init__(self, strict: bool = False, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self.strict = strict
        self.skipped = 0
        self._lines = _TextLines(max_line_size)
        self._lineno = 0

    def decode(self, data: bytes) -> list[object]:
        return self._parse(self._lines.decode(data))

    def flush(self) -> list[object]:
        values = self._parse(self._lines.flush())
        self._lineno = 0
        return values

    def _parse(self, lines: list[str]) -> list[object]:
        values: list[object] = []
        for line in lines:
            self._lineno += 1
            if not line.strip():
                continue
            try:
                values.append(json.loads(line))
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
                if self.strict:
                    excerpt = line if len(line) <= _EXCERPT else line[: _EXCERPT - 3] + "..."
                    raise ProtocolError(f"invalid JSON on line {self._lineno}: {excerpt!r}") from exc
                self.skipped += 1
        return values


StreamDecoder: TypeAlias = UTF8Decoder | SSEDecoder | NDJSONDecoder

#: Media type (lower case, no parameters) -> decoder factory. Anything else gets UTF8Decoder.
DECODERS: dict[str, Callable[[], StreamDecoder]] = {
    "text/event-stream": SSEDecoder,
    "application/x-ndjson": NDJSONDecoder,
    "application/jsonl": NDJSONDecoder,
    "application/json-lines": NDJSONDecoder,
    "text/plain": UTF8Decoder,
}


def decoder_for(content_type: str | None) -> StreamDecoder:
    """A new decoder for a ``Content-Type`` header value such as ``text/event-stream; charset=utf-8``."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return DECODERS.get(media_type, UTF8Decoder)()
