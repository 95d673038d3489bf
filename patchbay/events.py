"""Typed stream events, and the stream object that carries them.

A provider produces :data:`StreamEvent` values: text deltas plus the few facts a caller may need
beside the text (tool-call fragments, usage, why it finished, who answered). Callers who only
want text iterate a :class:`TextStream`; callers who want everything iterate the
:class:`EventStream` itself. New event kinds can be added later without breaking text-only
callers, because text-only iteration simply skips them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EventStream",
    "Fallback",
    "Finish",
    "ProviderInfo",
    "StreamConsumed",
    "StreamEvent",
    "TextDelta",
    "TextStream",
    "ToolCallDelta",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same ``index`` belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the provider (or counted by patchbay for local models)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the answer ended: ``stop``, ``length``, ``tool_calls`` or ``content_filter``."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """Which provider and model are answering; sent before the first text."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Fallback:
    """A router left a target after a failure; the next :class:`ProviderInfo` says who answers now.

    ``delivered`` is how many characters had reached the caller; when it is non-zero the next
    target continues the answer from there (assistant prefill), so nothing is sent twice.
    """

    provider: str
    model: str
    error: str  # the error's class name
    message: str
    delivered: int = 0


StreamEvent = TextDelta | ToolCallDelta | Usage | Finish | ProviderInfo | Fallback


class StreamConsumed(RuntimeError):
    """A stream was iterated a second time; streams can be consumed once."""

    def __init__(self) -> None:
        super().__init__("this stream has already been consumed; start a new request to read it again")


class EventStream:
    """One answer as an async stream of :data:`StreamEvent` values.

    It can be iterated once. While it runs it collects what it saw, so after (or during)
    iteration ``text``, ``usage``, ``finish_reason`` and ``provider_info`` tell the story.
    ``await stream`` returns the stream itself, which keeps the services' old call form
    ``gen = await P.create_async_generator(...)`` working.
    """

    def __init__(self, source: AsyncIterator[StreamEvent]) -> None:
        self._source = source
        self._started = False
        self._parts: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.provider_info: ProviderInfo | None = None
        self.tool_calls: list[ToolCallDelta] = []
        self.fallbacks: list[Fallback] = []

    @property
    def text(self) -> str:
        """All text delivered so far."""
        return "".join(self._parts)

    def __aiter__(self) -> EventStream:
        if self._started:
            raise StreamConsumed()
        self._started = True
        return self

    async def __anext__(self) -> StreamEvent:
        event = await self._source.__anext__()
        self._record(event)
        return event

    def _record(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            self._parts.append(event.text)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish_reason = event.reason
        elif isinstance(event, ProviderInfo):
            self.provider_info = event
        elif isinstance(event, ToolCallDelta):
            self.tool_calls.append(event)
        elif isinstance(event, Fallback):
            self.fallbacks.append(event)

    async def aclose(self) -> None:
        """Stop the stream early and close the upstream request."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    def __await__(self) -> Generator[Any, None, EventStream]:
        return self._itself().__await__()

    async def _itself(self) -> EventStream:
        return self

    def text_stream(self) -> TextStream:
        """A view of this stream that yields only text (``str``) deltas."""
        return TextStream(self)

    async def collect(self) -> str:
        """Read the whole stream and return its text."""
        async for _ in self:
            pass
        return self.text


class TextStream:
    """The text-only view of an :class:`EventStream`: iterating yields ``str`` deltas.

    Usage, finish reason and provider info stay available on ``.events`` afterwards.
    """

    def __init__(self, events: EventStream) -> None:
        self.events = events
        self._iterator: EventStream | None = None

    def __aiter__(self) -> TextStream:
        self._iterator = self.events.__aiter__()
        return self

    async def __anext__(self) -> str:
        if self._iterator is None:
            self.__aiter__()
        assert self._iterator is not None
        while True:
            event = await self._iterator.__anext__()
            if isinstance(event, TextDelta):
                return event.text

    async def aclose(self) -> None:
        """Stop early and close the upstream request."""
        await self.events.aclose()

    def __await__(self) -> Generator[Any, None, TextStream]:
        return self._itself().__await__()

    async def _itself(self) -> TextStream:
        return self
