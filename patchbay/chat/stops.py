"""Stop sequences detected across chunk boundaries.

A stop string may arrive split over several deltas ("Par" + "is"). :class:`StopSequenceFilter`
holds back only the tail that could still be the start of a stop string, so text is delivered as
early as possible and never past a stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from patchbay.events import Finish, StreamEvent, TextDelta

__all__ = ["StopSequenceFilter", "cut_at_stops"]


class StopSequenceFilter:
    """Feed text deltas in; get back the text that is safe to deliver, and whether a stop hit."""

    def __init__(self, stops: Sequence[str] | str | None) -> None:
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that can be delivered now; sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        found = [(at, stop) for stop in self.stops if (at := buffer.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda hit: hit[0])
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At end of stream: the held tail was not a stop after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


async def cut_at_stops(events: AsyncIterator[StreamEvent], stops: Sequence[str]) -> AsyncIterator[StreamEvent]:
    """``events`` with the text cut at the first stop string (then a ``Finish("stop")`` naming it)."""
    text_filter = StopSequenceFilter(stops)
    try:
        async for event in events:
            if isinstance(event, TextDelta) and event.choice == 0:
                text = text_filter.feed(event.text)
                if text:
                    yield TextDelta(text)
                if text_filter.stopped:
                    yield Finish("stop", stop_sequence=text_filter.matched)
                    return
            elif isinstance(event, Finish):
                if tail := text_filter.flush():
                    yield TextDelta(tail)
                yield event
            else:
                yield event
        if tail := text_filter.flush():
            yield TextDelta(tail)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
