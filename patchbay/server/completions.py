"""``POST /v1/completions``: OpenAI's legacy text completions over the one chat pipeline.

A prompt is a request that needs the ``text_completion`` capability, so the router sends it only
to targets that complete raw text (OpenAI-compatible services, the embedded model). Several
prompts are run one after another as one answer, prompt ``i``'s choices numbered after those of
the prompts before it (:func:`patchbay.chat.text_completion.chain_prompts`)."""

from __future__ import annotations

import time

from patchbay.chat.text_completion import CompletionRendering, chain_prompts, completion_id, decode_completion_request
from patchbay.errors import PatchbayError
from patchbay.events import EventStream, Ledger, Transcript
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.server.asgi import error_body
from patchbay.server.chat import DONE, Opener, RenderedTurn, Turn
from patchbay.timeouts import Timeout

__all__ = ["TextCompletions"]


class TextCompletions:
    """The :class:`~patchbay.server.chat.Dialect` of ``/v1/completions``."""

    async def begin(self, body: bytes) -> Turn:
        request, echo, prompts = decode_completion_request(body)
        rendering = CompletionRendering(request, completion_id(), int(time.time()), request.model, echo=echo,
                                        prompts=prompts)
        opener: Opener | None = None
        if len(prompts) > 1:
            def opener(provider: type[AsyncGeneratorProvider], timeout: Timeout) -> EventStream:
                transcript, ledger = Transcript(), Ledger()
                events = chain_prompts(request, prompts, lambda one: provider.open(
                    one, transcript=transcript, timeout=timeout, ledger=ledger))
                return EventStream(events, transcript, ledger)

        return RenderedTurn(request, rendering, rendering.result, opener=opener, last=DONE)

    def error_body(self, error: PatchbayError) -> bytes:
        return error_body(error)
