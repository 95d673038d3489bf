"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API over the one
chat pipeline (:mod:`patchbay.chat.anthropic` reads the request and writes the answer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from patchbay.chat.anthropic import (
    MessageRendering,
    count_tokens_body,
    decode_messages_request,
    error_envelope,
    message_id,
)
from patchbay.errors import PatchbayError
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.server.asgi import REQUEST_ID, Receive, Scope, Send, read_body, send_bytes
from patchbay.server.chat import RenderedTurn, Turn

__all__ = ["AnthropicMessages", "anthropic_error_body", "count_tokens"]

_encode = msgspec.json.encode
def anthropic_error_body(error: PatchbayError) -> bytes:
    """``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` for ``error``
    (the request id where Anthropic's API puts it)."""
    envelope = error_envelope(error)
    request_id = REQUEST_ID.get()
    if request_id is not None:
        envelope["request_id"] = request_id
    return _encode(envelope)


class AnthropicMessages:
    """The :class:`~patchbay.server.chat.Dialect` of ``/v1/messages``."""

    async def begin(self, body: bytes) -> Turn:
        request = decode_messages_request(body)
        rendering = MessageRendering(request, message_id())
        return RenderedTurn(request.chat, rendering, rendering.message)

    def error_body(self, error: PatchbayError) -> bytes:
        return anthropic_error_body(error)


def count_tokens(provider: type[AsyncGeneratorProvider], max_body_bytes: int
                 ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The handler of ``/v1/messages/count_tokens``: patchbay's token estimate of the request
    (404 for a model ``provider`` does not serve, as ``/v1/messages`` would answer)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, max_body_bytes)
        await send_bytes(send, 200, _encode(count_tokens_body(body, provider.resolve_model)))

    return handle
