"""What one upstream attempt costs, charged to the request's :class:`~patchbay.events.Ledger`.

Every provider's stream passes through a :class:`Meter` (the base class's guard runs it). The
attempt is charged once: when its :class:`~patchbay.events.Usage` arrives, at the provider's
prices (or the cost the upstream stated, which wins); or, when the attempt ends without one, for
an estimate of its prompt and of the text it delivered (:mod:`patchbay.chat.context`'s count). An
attempt that finishes without usage (a web chat service never reports any) gets the estimate as
its usage, so every answer has one; one that is interrupted or left by the client is charged
the estimate when it closes. The usage the caller sees carries the request's cost so
far, so the final usage of a fallback includes what the failed attempts cost.
"""

from __future__ import annotations

import dataclasses
import logging

from patchbay.chat.context import CHARS_PER_TOKEN, estimate_tokens
from patchbay.chat.request import ChatCompletionRequest
from patchbay.events import Charge, Ledger, Mark, Transcript, Usage
from patchbay.providers.catalog import Prices

__all__ = ["Meter"]

log = logging.getLogger("patchbay.providers")

_unpriced: set[tuple[str, str]] = set()  # (provider, model) already warned about
_UNPRICED_MAX = 1000  # names can come from clients (a "*" route): warn about this many at most


class Meter:
    """Charges one attempt of ``provider``'s ``model`` to ``ledger``."""

    __slots__ = ("charged", "ledger", "mark", "model", "prices", "provider", "request", "transcript")

    def __init__(self, provider: str, model: str, prices: Prices | None, request: ChatCompletionRequest,
                 transcript: Transcript, ledger: Ledger) -> None:
        self.provider, self.model, self.prices = provider, model, prices
        self.request, self.transcript, self.ledger = request, transcript, ledger
        self.mark: Mark = transcript.mark()
        self.charged = False

    def priced(self, usage: Usage) -> Usage:
        """Charge the attempt for ``usage``; the usage to hand on, with the request's cost so far."""
        if self.charged:  # a second report of the same attempt replaces nothing: one charge each
            return dataclasses.replace(usage, cost=self.ledger.cost)
        cost = usage.cost if usage.cost is not None else self._cost(usage.prompt_tokens, usage.completion_tokens,
                                                                    usage.cached_tokens)
        self.ledger.add(Charge(self.provider, self.model, usage.prompt_tokens, usage.completion_tokens, cost,
                               cached_tokens=usage.cached_tokens))
        self.charged = True
        return dataclasses.replace(usage, cost=self.ledger.cost)

    def estimate(self) -> Usage:
        """The attempt finished without reporting usage (a web chat service): charge and return
        patchbay's count of its prompt and of the text it delivered."""
        charge = self._estimated()
        return Usage(charge.prompt_tokens, charge.completion_tokens, cost=self.ledger.cost)

    def close(self) -> None:
        """The attempt ended: if it was not charged yet (it was interrupted, or the client left),
        charge an estimate of what it consumed; nothing when it delivered nothing (a refused
        request consumed no tokens we can know of)."""
        if not self.charged and self.transcript.since(self.mark):
            self._estimated()

    def _estimated(self) -> Charge:
        self.charged = True
        text = self.transcript.text_since(self.mark)
        prompt = estimate_tokens(self.request.message_dicts())
        completion = -(-len(text) // CHARS_PER_TOKEN)
        charge = Charge(self.provider, self.model, prompt, completion, self._cost(prompt, completion), estimated=True)
        self.ledger.add(charge)
        return charge

    def _cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        if self.prices is None:
            if (self.provider, self.model) not in _unpriced and len(_unpriced) < _UNPRICED_MAX:
                _unpriced.add((self.provider, self.model))
                log.info("no prices for %s/%s: its tokens are counted, their cost as 0 (set them in "
                            "[providers.%s.prices] or the model catalog)", self.provider, self.model, self.provider)
            return 0.0
        return self.prices.cost(prompt_tokens, completion_tokens, cached_tokens)
