"""The fixed fake OpenAI-compatible upstream that every gateway benchmark target fronts.

Its answers are fixed, tiny and precomputed, so a benchmark measures the gateway in front of
it rather than the upstream. One worker, uvloop when importable, no access log.

    python -m bench.upstream --port 8000 [--host 127.0.0.1]

- ``POST /v1/chat/completions``: a ``chat.completion`` with usage; with ``"stream": true``, two
  SSE chunks (the second with ``finish_reason``), a usage chunk if
  ``stream_options.include_usage`` is set, then ``data: [DONE]``.
- ``GET /v1/models``: one model, ``fake``.
- Model ``fake-held``, streamed: the first chunk, then the stream waits until ``POST
  /control/release`` (or ``HOLD_TIMEOUT``) before the rest. The soak benchmark uses it to hold
  many streams open at once and to cancel streams that are certainly still running. A client
  that disconnects meanwhile cancels the waiting handler. ``GET /control/held`` answers
  ``{"held": <streams waiting now>}``, so a benchmark can wait until every stream is held.
- Model ``fake-long``, streamed: a long answer of ``max_tokens`` content chunks (when the request
  has a positive integer ``max_tokens``, at most ``MAX_LONG_CHUNKS``), else ``--long-chunks``
  (default ``LONG_CHUNKS``, 500). Chunk ``i`` carries the text ``"t<i> "`` (so the whole text is
  ``long_text(n)`` and a client can check order and completeness); the first also carries the role,
  the last ``finish_reason: "stop"``, then a usage chunk if asked for and ``data: [DONE]``. Each
  SSE event is written on its own, as real upstreams send token by token: one
  ``await response.write(event)`` per event, i.e. one TCP send each (``TCP_NODELAY``; only when the
  socket's buffer is full does the transport queue and merge them, as any server's would). The
  events follow each other without pause, so a gateway reading fast enough gets each on its own and
  a slower one finds several per read. (A yield to the event loop between events would interleave
  the streams but triples the upstream's CPU per chunk, and then the upstream and the client, not
  the gateway, bound every target's rate on a small machine.) Not streamed, ``fake-long`` answers
  the same text in one ``chat.completion``.

The upstream raises its open-file limit to the hard limit and listens with a ``--backlog`` of 4096
connections, so it can hold many thousands of streams at once.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import resource
from typing import Any

from aiohttp import web

__all__ = [
    "Gate", "HELD_MODEL", "HOLD_TIMEOUT", "LONG_CHUNKS", "LONG_MODEL", "MAX_LONG_CHUNKS", "MODEL", "TEXT",
    "long_events", "long_text", "make_app", "main", "raise_fd_limit",
]

MODEL = "fake"
HELD_MODEL = "fake-held"  # streams wait after the first chunk until released
HOLD_TIMEOUT = 120.0  # seconds a held stream waits for a release before it goes on by itself
LONG_MODEL = "fake-long"  # streams a long answer, one SSE event per write
LONG_CHUNKS = 500  # content chunks of a long answer when the request names no max_tokens
MAX_LONG_CHUNKS = 100_000
BACKLOG = 4096  # pending connections the listening socket queues
CHUNKS = ("Hello", " from the fake upstream.")
TEXT = "".join(CHUNKS)  # the whole answer, streamed or not
CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}

log = logging.getLogger("bench.upstream")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chunk(delta: dict[str, Any], finish_reason: str | None, model: str = MODEL) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _sse(value: Any) -> bytes:
    return b"data: " + _dumps(value) + b"\n\n"


COMPLETION = _dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
    "usage": USAGE,
})
STREAM_EVENTS = (
    _sse(_chunk({"role": "assistant", "content": CHUNKS[0]}, None)),
    _sse(_chunk({"content": CHUNKS[1]}, "stop")),
)
USAGE_EVENT = _sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                    "choices": [], "usage": USAGE})
DONE_EVENT = b"data: [DONE]\n\n"
MODELS = _dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED,
                                             "owned_by": "bench"}]})
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def long_text(chunks: int) -> str:
    """The whole text of a long answer of ``chunks`` chunks: ``"t0 t1 ... t<n-1> "``."""
    return "".join(f"t{index} " for index in range(chunks))


@functools.lru_cache(maxsize=8)
def long_events(chunks: int) -> tuple[bytes, ...]:
    """The content events of a long answer (``[DONE]`` not included), built once per length."""
    events = []
    for index in range(chunks):
        delta = {"role": "assistant", "content": f"t{index} "} if index == 0 else {"content": f"t{index} "}
        events.append(_sse(_chunk(delta, "stop" if index == chunks - 1 else None, LONG_MODEL)))
    return tuple(events)


@functools.lru_cache(maxsize=8)
def _long_completion(chunks: int) -> bytes:
    return _dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": LONG_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": long_text(chunks)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks},
    })


def _long_chunks(body: dict[str, Any], default: int) -> int:
    """How many chunks a long answer has: the request's ``max_tokens`` if a positive int, else the default."""
    wanted = body.get("max_tokens")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
        return min(wanted, MAX_LONG_CHUNKS)
    return default


class Gate:
    """Where held streams wait: ``release()`` lets every stream waiting now go on."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.held = 0  # streams waiting now

    async def wait(self) -> None:
        event = self._event
        self.held += 1
        try:
            async with asyncio.timeout(HOLD_TIMEOUT):
                await event.wait()
        except TimeoutError:
            log.warning("a held stream was not released within %.0f s; it goes on", HOLD_TIMEOUT)
        finally:
            self.held -= 1

    def release(self) -> int:
        """Release the streams waiting now (later ones wait for the next release); how many."""
        released = self.held
        self._event.set()
        self._event = asyncio.Event()
        return released


GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
DEFAULT_LONG: web.AppKey[int] = web.AppKey("long_chunks", int)


def _wants_usage(request_body: dict[str, Any]) -> bool:
    options = request_body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer with the fixed completion; parse the body only when it may ask for a stream."""
    raw = await request.read()
    if b'"stream"' not in raw and LONG_MODEL.encode() not in raw:  # the common case: skip JSON parsing
        return web.Response(body=COMPLETION, content_type="application/json")
    try:
        body = json.loads(raw)
    except ValueError:
        return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}}, status=400)
    if not isinstance(body, dict):
        return web.Response(body=COMPLETION, content_type="application/json")
    if body.get("model") == LONG_MODEL:
        return await _long_answer(request, body)
    if body.get("stream") is not True:
        return web.Response(body=COMPLETION, content_type="application/json")
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    for index, event in enumerate(STREAM_EVENTS):
        if index == 1 and body.get("model") == HELD_MODEL:
            await request.app[GATE].wait()
        await response.write(event)
    if _wants_usage(body):
        await response.write(USAGE_EVENT)
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


async def _long_answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """The long model: its answer streamed one event per write (or whole, not streamed)."""
    chunks = _long_chunks(body, request.app[DEFAULT_LONG])
    if body.get("stream") is not True:
        return web.Response(body=_long_completion(chunks), content_type="application/json")
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    for event in long_events(chunks):
        await response.write(event)  # one write, one TCP send: as a real upstream sends each token
    if _wants_usage(body):
        await response.write(_sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                                   "model": LONG_MODEL, "choices": [],
                                   "usage": {"prompt_tokens": 9, "completion_tokens": chunks,
                                             "total_tokens": 9 + chunks}}))
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


async def models(_: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def release(request: web.Request) -> web.Response:
    """Let the held streams go on; answers ``{"released": <how many were waiting>}``."""
    return web.json_response({"released": request.app[GATE].release()})


async def held(request: web.Request) -> web.Response:
    """How many streams wait now: ``{"held": <count>}``."""
    return web.json_response({"held": request.app[GATE].held})


def make_app(long_chunks: int = LONG_CHUNKS) -> web.Application:
    """The upstream as an aiohttp application (the tests run it in-process); ``long_chunks``: the
    long model's answer length when a request names no ``max_tokens``."""
    app = web.Application()
    app[GATE] = Gate()
    app[DEFAULT_LONG] = long_chunks
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/control/release", release)
    app.router.add_get("/control/held", held)
    return app


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to the hard one (many held streams need many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--long-chunks", type=int, default=LONG_CHUNKS,
                        help=f"chunks of a {LONG_MODEL} answer when the request has no max_tokens")
    parser.add_argument("--backlog", type=int, default=BACKLOG, help="pending connections queued by the socket")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    limit = raise_fd_limit()
    log.info("listening on http://%s:%d/v1 (open-file limit %d)", args.host, args.port, limit)
    # handler_cancellation: a client that leaves cancels its handler (a held stream stops waiting).
    web.run_app(make_app(max(1, min(args.long_chunks, MAX_LONG_CHUNKS))), host=args.host, port=args.port,
                access_log=None, print=None, loop=_new_loop(), handler_cancellation=True, backlog=args.backlog)


if __name__ == "__main__":
    main()
