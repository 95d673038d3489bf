"""The coalescing transport: writes within one turn of the loop reach the socket as one write."""

from __future__ import annotations

import asyncio

import pytest

from patchbay.server.writes import FLUSH_BYTES, CoalescingTransport


class RecordingTransport:
    """The transport calls a CoalescingTransport makes, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.calls.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def _one_turn() -> None:
    """Let the loop run the callbacks scheduled so far (call_soon's flush among them)."""
    await asyncio.sleep(0)


@pytest.fixture
async def wrapped() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_writes_of_one_step_leave_as_one(wrapped: tuple[CoalescingTransport, RecordingTransport]) -> None:
    transport, inner = wrapped
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"data: 1\n\n")
    transport.write(bytearray(b"data: 2\n\n"))
    assert inner.writes == []  # nothing yet: the step has not ended
    assert transport.get_write_buffer_size() == 37
    await _one_turn()
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\ndata: 2\n\n"]
    transport.write(b"data: 3\n\n")
    await _one_turn()
    assert inner.writes[1:] == [b"data: 3\n\n"]  # a later step is its own write, in order


async def test_a_large_buffer_is_written_at_once(wrapped: tuple[CoalescingTransport, RecordingTransport]) -> None:
    transport, inner = wrapped
    transport.write(b"x" * (FLUSH_BYTES - 1))
    assert inner.writes == []
    transport.write(b"y")  # reaches FLUSH_BYTES: flow control must see it now
    assert [len(data) for data in inner.writes] == [FLUSH_BYTES]
    await _one_turn()
    assert len(inner.writes) == 1  # the scheduled flush finds nothing left


async def test_close_and_eof_send_the_buffer_first(wrapped: tuple[CoalescingTransport, RecordingTransport]) -> None:
    transport, inner = wrapped
    transport.write(b"last")
    transport.write_eof()
    assert inner.calls == ["write", "write_eof"] and inner.writes == [b"last"]
    transport.write(b"bye")
    transport.close()
    assert inner.calls[-2:] == ["write", "close"] and inner.writes[-1] == b"bye"
    transport.write(b"after close")
    await _one_turn()
    assert inner.writes[-1] == b"bye"  # the connection is closing: dropped, not written


async def test_abort_drops_the_buffer(wrapped: tuple[CoalescingTransport, RecordingTransport]) -> None:
    transport, inner = wrapped
    transport.write(b"never")
    transport.abort()
    await _one_turn()
    assert inner.writes == [] and inner.calls == ["abort"]


async def test_empty_writes_and_the_rest_of_the_transport(
        wrapped: tuple[CoalescingTransport, RecordingTransport]) -> None:
    transport, inner = wrapped
    transport.write(b"")
    transport.writelines([b"a", b"", b"b"])
    await _one_turn()
    assert inner.writes == [b"ab"]
    assert transport.get_extra_info("peername") == "info:peername"  # delegated
    assert transport.is_closing() is False
