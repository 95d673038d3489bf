"""Writing an answer in another API's format: a :class:`Rendering` is a state machine fed with
the provider's events; the same one makes the stream and the whole answer, so the two cannot
disagree (:mod:`patchbay.chat.anthropic`, :mod:`patchbay.chat.responses`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from patchbay.errors import PatchbayError
from patchbay.events import EventStream, StreamEvent

__all__ = ["Rendering", "rendered_events", "rendered_whole"]

#: One event of the other API: its name (None for a plain ``data:`` event) and its JSON-able payload.
RenderedEvent = tuple[str | None, Any]


class Rendering(Protocol):
    def feed(self, event: StreamEvent) -> Sequence[RenderedEvent]:
        """The events that ``event`` produces."""
        ...

    def finish(self) -> Sequence[RenderedEvent]:
        """The closing events, after the last provider event."""
        ...

    def error_frame(self, error: PatchbayError) -> RenderedEvent:
        """``error`` as an event, for a failure after the stream started."""
        ...


async def rendered_events(rendering: Rendering, events: EventStream,
                          finished: Callable[[], Awaitable[None]] | None = None
                          ) -> AsyncGenerator[RenderedEvent, None]:
    """``events`` written by ``rendering``, the closing events included. ``finished`` (when
    given) is awaited once the answer is complete, before the closing events go out: a client
    that acts on the last event (e.g. continues a stored response) finds its effects done."""
    feed = rendering.feed
    async with aclosing(events):
        async for event in events:
            for rendered in feed(event):
                yield rendered
    closing = rendering.finish()
    if finished is not None:
        await finished()
    for rendered in closing:
        yield rendered


async def rendered_whole(rendering: Rendering, events: EventStream, result: Callable[[], Any]) -> Any:
    """Read ``events`` to the end through ``rendering``; then ``result()``, the whole answer."""
    feed = rendering.feed
    async with aclosing(events):
        async for event in events:
            feed(event)
    rendering.finish()
    return result()
