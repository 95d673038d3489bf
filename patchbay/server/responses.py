"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: OpenAI's Responses API over the one chat
pipeline (:mod:`patchbay.chat.responses` reads the request and writes the answer).

A response made with ``store`` (the default) is kept for ``[server] responses_ttl`` seconds with
its conversation, so a later request can continue it by ``previous_response_id`` and
``GET /v1/responses/{id}`` can show it again. Where: Redis when configured (every worker and host
sees it), else the request log's SQLite file, else this process's memory.
"""

from __future__ import annotations

import msgspec

from patchbay.errors import EndpointNotFound, PatchbayError, ResourceNotFound
from patchbay.requestlog.responses import ResponseStore, begin_response
from patchbay.server.asgi import Receive, Scope, Send, error_body, send_bytes
from patchbay.server.chat import RenderedTurn, Turn

__all__ = ["OpenAIResponses", "RESPONSES_PREFIX"]

RESPONSES_PREFIX = "/v1/responses/"
_encode = msgspec.json.encode


class OpenAIResponses:
    """The :class:`~patchbay.server.chat.Dialect` of ``/v1/responses``, and the handler that shows
    a stored response. ``store`` is set by the gateway at startup."""

    def __init__(self, store: ResponseStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    async def begin(self, body: bytes) -> Turn:
        turn = await begin_response(body, self.store, self.ttl)
        return RenderedTurn(turn.chat, turn.rendering, turn.rendering.response, done=turn.keep,
                            fail=turn.rendering.fail)

    def error_body(self, error: PatchbayError) -> bytes:
        return error_body(error)

    async def show(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/responses/{id}``."""
        wanted = scope["path"][len(RESPONSES_PREFIX):]
        if "/" in wanted:  # /v1/responses/{id}/input_items and the like: not served
            raise EndpointNotFound(f"no endpoint at {scope['path']}; see /openapi.json")
        stored = await self.store.get(wanted) if wanted else None
        if stored is None:
            raise ResourceNotFound(f"no response {wanted!r}: it was made without store, or has expired",
                                    param="response_id")
        await send_bytes(send, 200, _encode(stored.response))
