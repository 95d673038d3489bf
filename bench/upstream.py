"""The fixed fake OpenAI-compatible upstream that every gateway benchmark target fronts.

Its answers are fixed, tiny and precomputed, so a benchmark measures the gateway in front of
it rather than the upstream. One worker, uvloop when importable, no access log.

    python -m bench.upstream --port 8000 [--host 127.0.0.1]

- ``POST /v1/chat/completions``: a ``chat.completion`` with usage; with ``"stream": true``, two
  SSE chunks (the second with ``finish_reason``), a usage chunk if
  ``stream_options.include_usage`` is set, then ``data: [DONE]``.
- ``GET /v1/models``: one model, ``fake``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from aiohttp import web

__all__ = ["MODEL", "TEXT", "make_app", "main"]

MODEL = "fake"
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
    for event in STREAM_EVENTS:
        await response.write(event)
    if _wants_usage(body):
        await response.write(USAGE_EVENT)
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


async def models(_: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def make_app() -> web.Application:
    """The upstream as an aiohttp application (the tests run it in-process)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
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
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()
