"""Typed stream events, and the stream object that carries them.

A provider produces :data:`StreamEvent` values: text deltas plus the few facts a caller may need
beside the text (tool-call fragments, logprobs, usage, why it finished, who answered). Callers
who only want text iterate a :class:`TextStream`; callers who want everything iterate the
:class:`EventStream` itself. New event kinds can be added later without breaking text-only
callers, because text-only iteration simply skips them.

The outermost stream of a request records what it hands over in a :class:`Transcript`: the one
record of what reached the caller. The router and providers never keep their own "delivered"
flags: before retrying, rotating a credential or falling back, they ask the transcript whether
anything reached the caller since their attempt began (:meth:`Transcript.mark`,
:meth:`Transcript.since`), so nothing is ever sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EventStream",
    "Charge",
    "Fallback",
    "Finish",
    "Ledger",
    "Logprobs",
    "Mark",
    "ProviderInfo",
    "StreamConsumed",
    "StreamEvent",
    "TextDelta",
    "TextStream",
    "ToolCallDelta",
    "Transcript",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of the answer's text."""

    text: str
    choice: int = 0  # which of the ``n`` answers it belongs to


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same ``index`` belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    choice: int = 0


@dataclass(frozen=True, slots=True)
class Logprobs:
    """Log probabilities of the tokens just delivered, in the OpenAI shape (``content`` items:
    ``{"token", "logprob", "bytes", "top_logprobs": [...]}``)."""

    content: list[dict[str, Any]]
    choice: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the provider (or counted by patchbay for local models).

    ``cached_tokens`` is the part of the prompt the upstream served from its prompt cache.
    ``cost`` is in US dollars: what the request has cost so far, this answer included (every
    earlier attempt of a fallback too, see :class:`Ledger`); an upstream that states its own cost
    (OpenRouter) sets it for its own tokens, and patchbay's pricing adds the rest. ``None`` until
    priced."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the answer ended: ``stop``, ``length``, ``tool_calls`` or ``content_filter``;
    ``stop_sequence`` is the stop string that ended it, when patchbay cut the text there."""

    reason: str
    choice: int = 0
    stop_sequence: str | None = None


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


@dataclass(frozen=True, slots=True)
class Charge:
    """What one upstream attempt cost: its tokens priced at its target's prices (or the cost the
    upstream stated). ``estimated``: the attempt reported no usage (it was interrupted, or the
    service never reports any), so the tokens are counted from the prompt and the delivered text."""

    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cached_tokens: int = 0
    estimated: bool = False


class Ledger:
    """Every charge of one request, in order: each attempt that consumed tokens, the failed ones
    of a fallback included. Made with the request's outermost stream and handed down to the
    providers (as the :class:`Transcript` is), so one ledger sees every attempt however the
    request ends; what it holds is what the request is charged."""

    __slots__ = ("charges",)

    def __init__(self) -> None:
        self.charges: list[Charge] = []

    def add(self, charge: Charge) -> None:
        self.charges.append(charge)

    @property
    def cost(self) -> float:
        """The request's cost so far, in US dollars."""
        return sum(charge.cost for charge in self.charges)


StreamEvent = TextDelta | ToolCallDelta | Logprobs | Usage | Finish | ProviderInfo | Fallback


@dataclass(frozen=True, slots=True)
class Mark:
    """A point in a transcript: how many visible events and text pieces it held then."""

    visible: int
    text_parts: int


class Transcript:
    """The visible output delivered so far (text and tool-call fragments)."""

    __slots__ = ("_calls", "_parts", "visible")

    def __init__(self) -> None:
        self._parts: list[str] = []  # text of choice 0, the one a continuation can extend
        self._calls = 0
        #: How many visible events (text, tool-call fragments, logprobs) reached the caller.
        self.visible = 0

    def record(self, event: StreamEvent) -> None:
        """Note ``event`` as delivered (events that are not visible output are ignored)."""
        if isinstance(event, TextDelta):
            if event.text:
                self.visible += 1
                if event.choice == 0:
                    self._parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self.visible += 1
            self._calls += 1
        elif isinstance(event, Logprobs):
            self.visible += 1

    @property
    def delivered(self) -> bool:
        """Whether anything visible reached the caller."""
        return self.visible > 0

    @property
    def only_text(self) -> bool:
        """Whether what was delivered is the text of one answer, which a prefill can continue."""
        return self._calls == 0 and self.visible == len(self._parts)

    @property
    def text(self) -> str:
        """The delivered text (of the first answer)."""
        return "".join(self._parts)

    def mark(self) -> Mark:
        return Mark(self.visible, len(self._parts))

    def since(self, mark: Mark) -> bool:
        """Whether anything visible was delivered after ``mark``."""
        return self.visible > mark.visible

    def text_since(self, mark: Mark) -> str:
        return "".join(self._parts[mark.text_parts:])


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

    def __init__(self, source: AsyncIterator[StreamEvent], transcript: Transcript | None = None,
                 ledger: Ledger | None = None) -> None:
        self._source = source
        self._started = False
        #: What reached the caller: every visible event this stream handed over.
        self.transcript = transcript if transcript is not None else Transcript()
        #: What the request was charged, attempt by attempt (complete once the stream is closed).
        self.ledger = ledger if ledger is not None else Ledger()
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.provider_info: ProviderInfo | None = None
        self.tool_calls: list[ToolCallDelta] = []
        self.fallbacks: list[Fallback] = []

    @property
    def text(self) -> str:
        """All text delivered so far (of the first answer, when there are several)."""
        return self.transcript.text

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
        self.transcript.record(event)
        if isinstance(event, Usage):
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
