"""``POST /v1/embeddings``: read the body, embed through the router, write OpenAI's answer.

Not a stream, so none of the chat endpoint's streaming rules apply: a failure is the error's own
status. The router picks the route's targets that make embeddings (the ``embeddings``
capability) and falls back among them (:meth:`patchbay.routing.router.Router.embed`).
"""

from __future__ import annotations

import time

import msgspec

from patchbay.chat.embeddings import EmbeddingRequest, EmbeddingResult, decode_embedding_request, to_response
from patchbay.errors import PatchbayError
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.requestlog import Exchange, RequestLog
from patchbay.server.asgi import REQUEST_ID, Receive, Send, send_bytes
from patchbay.server.chat import Spent
from patchbay.server.metrics import GatewayMetrics
from patchbay.server.ratelimit import ANONYMOUS
from patchbay.timeouts import Timeout

__all__ = ["EmbeddingsEndpoint"]

_encode = msgspec.json.encode


class EmbeddingsEndpoint:
    """``POST /v1/embeddings`` for the gateway: the answer, with the same metrics and request log
    as the chat endpoints; returns the tokens read and their cost (for the rate limits and budgets:
    input tokens at the model's input price)."""

    def __init__(self, provider: type[AsyncGeneratorProvider], *, limits: Timeout, metrics: GatewayMetrics) -> None:
        self.provider = provider
        self.limits = limits
        self.metrics = metrics
        #: Set by the Gateway at startup when the request log is on.
        self.request_log: RequestLog | None = None

    async def __call__(self, body: bytes, receive: Receive, send: Send, *, key: str = ANONYMOUS) -> Spent:
        request = decode_embedding_request(body)
        began, started = time.time(), time.perf_counter()
        try:
            result = await self.provider.create_embedding(request, timeout=self.limits)
        except PatchbayError as error:
            self._record(request, None, time.perf_counter() - started, began, key, error)
            raise
        self._record(request, result, time.perf_counter() - started, began, key)
        answer = _encode(to_response(result, request.encoding_format))
        await send_bytes(send, 200, answer, headers=[(b"x-patchbay-provider", (result.provider or "none").encode())])
        return Spent(result.prompt_tokens, result.cost)

    def _record(self, request: EmbeddingRequest, result: EmbeddingResult | None, latency: float, began: float,
                key: str, error: PatchbayError | None = None) -> None:
        provider = result.provider if result is not None and result.provider else (error and error.provider) or "none"
        model = result.model if result is not None else request.model
        status = 200 if error is None else error.status
        tokens = result.prompt_tokens if result is not None else None
        self.metrics.record(provider, model, status, latency, prompt_tokens=tokens,
                            error_code=error.code if error else None, key=key,
                            cost=result.cost if result is not None else 0.0)
        if self.request_log is not None:
            self.request_log.record(Exchange(
                time=began, source="server", messages=[], requested_model=request.model,
                provider=None if provider == "none" else provider, model=model, prompt_tokens=tokens, latency=latency,
                status=status, error=f"{type(error).__name__}: {error.message}" if error else None,
                options={"endpoint": "embeddings", "inputs": len(request.inputs)}, request_id=REQUEST_ID.get(),
                key=key, cost=result.cost if result is not None else None))
