"""``POST /v1/embeddings``: read the body, embed through the router, write OpenAI's answer.

Not a stream, so none of the chat endpoint's streaming rules apply: a failure is the error's own
status. The router picks the route's targets that make embeddings (the ``embeddings``
capability) and falls back among them (:meth:`patchbay.routing.router.Router.embed`).
"""

from __future__ import annotations

import msgspec

from patchbay.chat.embeddings import EmbeddingResult, decode_embedding_request, to_response
from patchbay.config import UNSET, TimeoutTypes
from patchbay.providers.base import AsyncGeneratorProvider

__all__ = ["embeddings_body", "serve_embeddings"]

_encode = msgspec.json.encode


async def serve_embeddings(provider: type[AsyncGeneratorProvider], body: bytes, *, timeout: TimeoutTypes = UNSET,
                           api_key: str | None = None) -> tuple[bytes, EmbeddingResult]:
    """The JSON answer to an embeddings request body, and the result it was made from (who
    answered, the tokens read: for metrics, rate limits and the request log). Bad input is
    InvalidRequest naming the field; a route without an embedding target, UnsupportedFeature
    naming ``model``."""
    request = decode_embedding_request(body)
    result = await provider.create_embedding(request, timeout=timeout, api_key=api_key)
    return _encode(to_response(result, request.encoding_format)), result


async def embeddings_body(provider: type[AsyncGeneratorProvider], body: bytes, *, timeout: TimeoutTypes = UNSET
                          ) -> bytes:
    """The JSON answer to an embeddings request body (see :func:`serve_embeddings`)."""
    answer, _ = await serve_embeddings(provider, body, timeout=timeout)
    return answer
