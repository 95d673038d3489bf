"""Candidate server stacks for ``bench/server_stack.py``: the smallest ASGI apps that isolate
one choice each (the ASGI server, the upstream HTTP client).

- ``static``: reads the body, parses it, answers a fixed JSON body (the server's own cost); on
  ``GET /stream`` it answers :data:`STREAM_PARTS` in pieces without a length instead, the
  response an HTTP/1.0 client must get close-delimited (the server stack's attack matrix);
- ``forward_aiohttp``: forwards to the upstream with one shared aiohttp ClientSession;
- ``forward_pool``: forwards with patchbay's keep-alive pool (:mod:`patchbay.net.pool`).

The upstream address comes from ``STACK_UPSTREAM`` (``http://127.0.0.1:PORT``).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from yarl import URL

from bench.upstream import TEXT

__all__ = ["STREAM_PARTS", "forward_aiohttp", "forward_pool", "static"]

UPSTREAM = os.environ.get("STACK_UPSTREAM", "http://127.0.0.1:9100")
ANSWER = msgspec.json.encode({"id": "x", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}]})
STREAM_PARTS = (b"one\n", b"two\n", b"three\n")
_session: Any = None


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _answer(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in STREAM_PARTS:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def static(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] == "/stream":
        return await _stream(send)
    msgspec.json.decode(await _body(receive))
    await _answer(send, ANSWER)


async def forward_aiohttp(scope: Any, receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    import aiohttp

    request = msgspec.json.decode(await _body(receive))
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    async with _session.post(f"{UPSTREAM}/v1/chat/completions", data=msgspec.json.encode(request),
                             headers={"content-type": "application/json"}) as response:
        answer = msgspec.json.decode(await response.read())
    await _answer(send, msgspec.json.encode(answer))


async def forward_pool(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    from patchbay.net.pool import pool_for_loop
    from patchbay.net.transport import UpstreamRequest

    request = msgspec.json.decode(await _body(receive))
    response = await pool_for_loop().send(UpstreamRequest(
        "POST", URL(f"{UPSTREAM}/v1/chat/completions"), headers={"content-type": "application/json"},
        body=msgspec.json.encode(request)))
    try:
        parts = []
        while chunk := await response.read_chunk():
            parts.append(chunk)
        answer = msgspec.json.decode(b"".join(parts))
    finally:
        response.release()
    await _answer(send, msgspec.json.encode(answer))
