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
  that disconnects meanwhile cancels the waiting handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from aiohttp import web

__all__ = ["Gate", "HELD_MODEL", "HOLD_TIMEOUT", "MODEL", "TEXT", "make_app", "main"]

MODEL = "fake"
HELD_MODEL = "fake-held"  # streams wait after the first chunk until released
HOLD_TIMEOUT = 120.0  # seconds a held stream waits for a release before it goes on by itself
CHUNKS = ("Hello", " from the fake upstream.")
TEXT = "".join(CHUNKS)  # the whole answer, streamed or not
CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}

log = logging.getLogger("bench.upstream")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
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


def _wants_usage(request_body: dict[str, Any]) -> bool:
    options = request_body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer with the fixed completion; parse the body only when it may ask for a stream."""
    raw = await request.read()
    if b'"stream"' not in raw:  # the common benchmark case: skip JSON parsing entirely
        return web.Response(body=COMPLETION, content_type="application/json")
    try:
        body = json.loads(raw)
    except ValueError:
        return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error"}}, status=400)
    if not isinstance(body, dict) or body.get("stream") is not True:
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


async def models(_: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def release(request: web.Request) -> web.Response:
    """Let the held streams go on; answers ``{"released": <how many were waiting>}``."""
    return web.json_response({"released": request.app[GATE].release()})


def make_app() -> web.Application:
    """The upstream as an aiohttp application (the tests run it in-process)."""
    app = web.Application()
    app[GATE] = Gate()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/control/release", release)
    return app


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    log.info("listening on http://%s:%d/v1", args.host, args.port)
    # handler_cancellation: a client that leaves cancels its handler (a held stream stops waiting).
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=_new_loop(),
                handler_cancellation=True)


if __name__ == "__main__":
    main()
