"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: OpenAI's Responses API over the one chat
pipeline (:mod:`patchbay.chat.responses` reads the request and writes the answer).

A response made with ``store`` (the default) is kept for ``[server] responses_ttl`` seconds with
its conversation, so a later request can continue it by ``previous_response_id`` and
``GET /v1/responses/{id}`` can show it again. Where: Redis when configured (every worker and host
sees it), else the request log's SQLite file, else this process's memory.
"""

from __future__ import annotations

import time

import msgspec

from patchbay.chat.responses import ResponseRendering, decode_responses_request, response_id
from patchbay.errors import InvalidRequest, PatchbayError, ResourceNotFound
from patchbay.requestlog.responses import ResponseStore
from patchbay.server.asgi import Receive, Scope, Send, error_body, send_bytes
from patchbay.server.chat import RenderedTurn, Turn

__all__ = ["OpenAIResponses", "RESPONSES_PREFIX"]

RESPONSES_PREFIX = "/v1/responses/"
_encode = msgspec.json.encode
_KEPT = ("completed", "incomplete")  # what a finished answer's status is; a failed one is not kept


class OpenAIResponses:
    """The :class:`~patchbay.server.chat.Dialect` of ``/v1/responses``, and the handler that shows
    a stored response. ``store`` is set by the gateway at startup."""

    def __init__(self, store: ResponseStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    async def begin(self, body: bytes) -> Turn:
        request = decode_responses_request(body)
        history = None
        if request.previous_response_id is not None:
            stored = await self.store.get(request.previous_response_id)
            if stored is None:
                raise InvalidRequest(f"previous response {request.previous_response_id!r} not found: it was made "
                                     f"without store, or more than {self.ttl:g} s ago, or elsewhere",
                                     param="previous_response_id")
            history = stored.conversation
        chat = request.chat(history)
        rendering = ResponseRendering(request, response_id(), int(time.time()), history=history)

        async def keep() -> None:
            if request.store and rendering.status in _KEPT:
                await self.store.put(rendering.id, rendering.response(), rendering.conversation(), self.ttl)

        return RenderedTurn(chat, rendering, rendering.response, done=keep, fail=rendering.fail)

    def error_body(self, error: PatchbayError) -> bytes:
        return error_body(error)

    async def show(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/responses/{id}``."""
        wanted = scope["path"][len(RESPONSES_PREFIX):]
        stored = await self.store.get(wanted) if wanted else None
        if stored is None:
            raise ResourceNotFound(f"no response {wanted!r}: it was made without store, or has expired",
                                    param="response_id")
        await send_bytes(send, 200, _encode(stored.response))
