"""Attacks on the connection layer of a real ``patchbay serve`` (patchbay/server/protocol.py), with
raw sockets: each limit answers or closes promptly, and meanwhile another client is still served.

The gateway runs with short timeouts (1 s) so a timed-out connection is seen closing within a
generous bound; each wait is a read until EOF with a timeout, never a sleep. The probe latencies
of ``GET /health`` during each attack are collected in :data:`PROBES` and shown at the end
(``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

#: Bound on a probe's answer and on each expected close: generous, the machine is shared.
BOUND = 10.0
PROBE_BOUND = 5.0
LIMITS = {"head_timeout": 1.0, "body_idle_timeout": 1.0, "keepalive_timeout": 1.0,
          "max_head_bytes": 65536, "max_headers": 100, "max_url_bytes": 8192}
#: Probe latencies (seconds) by attack.
PROBES: dict[str, list[float]] = {}


class Gateway:
    """The running gateway's address and process id."""

    def __init__(self, process: GatewayProcess) -> None:
        host, port = process.base_url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        assert process.process is not None
        self.pid = process.process.pid

    def rss(self) -> int:
        """The server process's resident memory in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def config(fake: OpenAIFake, **server: Any) -> dict[str, Any]:
    return {"server": {**LIMITS, **server}, "providers": {"p": {"base_url": fake.api_base, "models": ["m"]}},
            "routes": {"m": ["p/m"]}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[OpenAIFake]:
    async with OpenAIFake() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(upstream: OpenAIFake, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    async with GatewayProcess(config(upstream), tmp_path_factory.mktemp("attacks")) as process:
        yield Gateway(process)
    lines = [f"{name}: {', '.join(f'{t * 1000:.1f} ms' for t in times)}" for name, times in PROBES.items()]
    sys.stdout.write("\nprobe latencies (GET /health during each attack):\n  " + "\n  ".join(lines) + "\n")


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(gateway.host, gateway.port)


async def read_to_eof(reader: asyncio.StreamReader, bound: float = BOUND) -> bytes:
    """Everything until the server closes (a reset counts as closed); fails after ``bound``."""
    data = bytearray()
    async with asyncio.timeout(bound):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return bytes(data)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:100]
    return int(response.split(b" ", 2)[1])


def head_of(response: bytes) -> dict[bytes, bytes]:
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in head}


async def probe(gateway: Gateway, attack: str, expect: tuple[int, ...] = (200,)) -> float:
    """``GET /health`` on a fresh connection, answered within :data:`PROBE_BOUND`; its latency."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(connect(gateway), PROBE_BOUND)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        response = await read_to_eof(reader, PROBE_BOUND)
    finally:
        writer.close()
    latency = time.monotonic() - started
    assert status_of(response) in expect
    PROBES.setdefault(attack, []).append(latency)
    return latency


async def send_until_closed(writer: asyncio.StreamWriter, chunks: Iterable[bytes], limit: int,
                            under_way: asyncio.Event) -> int:
    """Write ``chunks`` until the server stops the connection or ``limit`` bytes went; bytes sent.
    ``under_way`` is set once 1 MB went (or the connection ended)."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for chunk in chunks:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), BOUND)
            sent += len(chunk)
            if sent >= 1 << 20:
                under_way.set()
            if sent >= limit or writer.is_closing():
                break
    under_way.set()
    return sent


async def expect_answer(gateway: Gateway, request: bytes, status: int, attack: str) -> bytes:
    """Send ``request`` whole; the answer is ``status`` and the connection closes; a probe meanwhile."""
    reader, writer = await connect(gateway)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        await probe(gateway, attack)
        response = await read_to_eof(reader)
    finally:
        writer.close()
    assert status_of(response) == status
    return response


async def test_an_oversized_head_is_431_and_closed(gateway: Gateway) -> None:
    await expect_answer(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
                        431, "one 70 kB header")


async def test_a_flood_of_small_headers_is_cut_off_with_bounded_memory(gateway: Gateway) -> None:
    before = gateway.rss()
    reader, writer = await connect(gateway)
    under_way = asyncio.Event()
    line = b"X-Flood: " + b"f" * 40 + b"\r\n"
    chunk = line * (65536 // len(line))
    try:
        flood = send_until_closed(writer, [b"GET /health HTTP/1.1\r\nHost: x\r\n", *(chunk for _ in range(1600))],
                                  100 << 20, under_way)
        sending = asyncio.ensure_future(flood)
        await asyncio.wait_for(under_way.wait(), BOUND)
        await probe(gateway, "100 MB of small headers")
        response = await read_to_eof(reader)
        await asyncio.wait_for(sending, BOUND)  # the rest is drained and dropped, or the connection reset
    finally:
        writer.close()
    assert status_of(response) == 431
    assert gateway.rss() - before < 64 << 20  # uvicorn alone: about 1 GB


async def test_more_than_max_headers_is_431(gateway: Gateway) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    await expect_answer(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 431, "101 headers")


async def test_a_long_url_is_414(gateway: Gateway) -> None:
    await expect_answer(gateway, b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "9 kB URL")


async def test_an_endless_url_is_cut_off(gateway: Gateway) -> None:
    before = gateway.rss()
    reader, writer = await connect(gateway)
    under_way = asyncio.Event()
    try:
        flood = send_until_closed(writer, [b"GET /", *(b"u" * 65536 for _ in range(1600))], 100 << 20, under_way)
        sending = asyncio.ensure_future(flood)
        await asyncio.wait_for(under_way.wait(), BOUND)
        await probe(gateway, "100 MB URL")
        response = await read_to_eof(reader)
        await asyncio.wait_for(sending, BOUND)
    finally:
        writer.close()
    assert status_of(response) == 414
    assert gateway.rss() - before < 64 << 20


async def test_silent_connections_are_closed_after_the_head_timeout(gateway: Gateway) -> None:
    connections = [await connect(gateway) for _ in range(50)]
    started = time.monotonic()
    try:
        await probe(gateway, "50 silent connections")
        responses = await asyncio.gather(*(read_to_eof(reader) for reader, _ in connections))
    finally:
        for _, writer in connections:
            writer.close()
    elapsed = time.monotonic() - started
    assert responses == [b""] * 50  # nothing sent, nothing answered: just closed
    assert elapsed < BOUND


async def test_a_slow_head_is_408_after_the_head_timeout(gateway: Gateway) -> None:
    reader, writer = await connect(gateway)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the attack's pace, not synchronisation

    sender = asyncio.ensure_future(trickle())
    try:
        await probe(gateway, "slow head, 20 bytes/s")
        response = await read_to_eof(reader)
    finally:
        sender.cancel()
        writer.close()
    assert status_of(response) == 408


async def test_an_unfinished_body_is_closed_after_the_body_idle_timeout(gateway: Gateway) -> None:
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n{\"model\"")
    response = await expect_answer(gateway, request, 408, "Content-Length 1000, 8 bytes sent")
    assert b"connection: close" in response.lower()


async def test_an_idle_keepalive_connection_is_closed(gateway: Gateway) -> None:
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        length = int(head_of(head)[b"content-length"])
        await asyncio.wait_for(reader.readexactly(length), BOUND)
        await probe(gateway, "idle keep-alive")
        assert await read_to_eof(reader) == b""
    finally:
        writer.close()


async def test_http11_without_host_is_400(gateway: Gateway) -> None:
    await expect_answer(gateway, b"GET /health HTTP/1.1\r\n\r\n", 400, "no Host")


async def test_http10_gets_a_close_delimited_stream(gateway: Gateway) -> None:
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    response = await expect_answer(gateway, request, 200, "HTTP/1.0 stream")
    head = head_of(response)
    assert b"transfer-encoding" not in head
    assert b"content-length" not in head
    assert b"data: [DONE]" in response.split(b"\r\n\r\n", 1)[1]


async def test_connections_beyond_the_cap_get_503_promptly(upstream: OpenAIFake, tmp_path: Path) -> None:
    cap = 8
    settings = config(upstream, max_connections=cap, head_timeout=30.0, keepalive_timeout=30.0)
    async with GatewayProcess(settings, tmp_path) as process:
        gateway = Gateway(process)
        held = [await connect(gateway) for _ in range(cap)]
        try:
            for reader, writer in held:  # each really accepted: a keep-alive exchange
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
                assert status_of(head) == 200
                await asyncio.wait_for(reader.readexactly(int(head_of(head)[b"content-length"])), BOUND)
            for _ in range(3):  # full: answered 503 at once, never left hanging
                latency = await probe(gateway, f"{cap} connections held, cap {cap}", expect=(503,))
                assert latency < PROBE_BOUND
            reader, writer = held.pop()
            writer.close()
            async with asyncio.timeout(BOUND):  # the freed place is taken again once the server saw the close
                while True:
                    try:
                        await probe(gateway, "after one held connection closed")
                        break
                    except AssertionError:
                        await asyncio.sleep(0.05)  # the next poll
        finally:
            for _, writer in held:
                writer.close()
