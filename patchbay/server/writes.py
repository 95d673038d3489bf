"""One socket write per loop turn: the writes a connection's response makes while the event loop
runs one step are joined and sent together.

uvicorn writes each ASGI message at once, so a whole answer costs two ``send`` system calls
(head, then body) and a stream one per event, even when a single read from the upstream brought
dozens of events. :class:`CoalescingTransport` wraps the connection's transport: ``write``
appends to a buffer and schedules one flush with ``call_soon``, which runs as soon as the
current task step yields, so nothing waits longer than that turn of the loop. A buffer of
:data:`FLUSH_BYTES` or more is sent at once, which keeps the transport's own flow control
(pause_writing / drain) working as before. docs/benchmarks.md ("Gateway: where the time goes")
has the measurement.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FLUSH_BYTES", "CoalescingTransport"]

FLUSH_BYTES = 64 * 1024  # a buffer this large goes out at once, not at the end of the loop turn


class CoalescingTransport:
    """A transport whose writes within one turn of the loop reach the socket as one write.

    Everything but writing is the wrapped transport's; closing (or half-closing) sends what is
    buffered first, aborting drops it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send what is buffered now (dropped when the connection is already closing)."""
        if not self._pending:
            return
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, set_protocol...
        return getattr(self._transport, name)
