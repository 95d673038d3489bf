"""Writing an answer in another API's format: a :class:`Rendering` is a state machine fed with
the provider's events; the same one makes the stream and the whole answer, so the two cannot
disagree (:mod:`patchbay.chat.anthropic`, :mod:`patchbay.chat.responses`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
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


async def rendered_events(rendering: Rendering, events: EventStream) -> AsyncGenerator[RenderedEvent, None]:
    """``events`` written by ``rendering``, the closing events included."""
    feed = rendering.feed
    async with aclosing(events):
        async for event in events:
            for rendered in feed(event):
                yield rendered
    for rendered in rendering.finish():
        yield rendered


async def rendered_whole(rendering: Rendering, events: EventStream, result: Callable[[], Any]) -> Any:
    """Read ``events`` to the end through ``rendering``; then ``result()``, the whole answer."""
    feed = rendering.feed
    async with aclosing(events):
        async for event in events:
            feed(event)
    rendering.finish()
    return result()
