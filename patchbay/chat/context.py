"""Fit a conversation into a model's limit before it is sent.

Oldest non-system turns go first; system messages and the latest turn always stay. Sizes are
measured by a :data:`Measure` function: characters for services that state a character budget
(Liaobots' ``maxLength``), a model's own tokenizer for local models, and :func:`estimate_tokens`
elsewhere. When even the kept messages do not fit, :class:`~patchbay.errors.ContextTooLong` names
the limit and the size.
"""

from __future__ import annotations

from collections.abc import Callable

from patchbay.chat.messages import Messages, content_text
from patchbay.errors import ContextTooLong

__all__ = ["Measure", "count_chars", "estimate_tokens", "fit_messages"]

Measure = Callable[[Messages], int]

#: Estimate used where no tokenizer is at hand: about 4 characters per token in English text
#: (OpenAI's rule of thumb), rounded up, plus 4 tokens of framing per message.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def count_chars(messages: Messages) -> int:
    """Characters of text in ``messages``."""
    return sum(len(content_text(m)) for m in messages)


def estimate_tokens(messages: Messages) -> int:
    """A documented estimate of tokens in ``messages`` (see :data:`CHARS_PER_TOKEN`)."""
    return sum(-(-len(content_text(m)) // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in messages)


def fit_messages(messages: Messages, limit: int | None, measure: Measure = estimate_tokens, *,
                 unit: str = "tokens") -> Messages:
    """``messages`` with the oldest non-system turns dropped until ``measure`` is within ``limit``.

    Returns the same list when it already fits. Raises ContextTooLong when the system messages
    plus the latest turn alone are over the limit.
    """
    if limit is None:
        return messages
    size = measure(messages)
    if size <= limit:
        return messages
    kept = list(messages)
    last = len(kept) - 1
    droppable = [i for i, m in enumerate(kept) if m.get("role") != "system" and i != last]
    dropped: set[int] = set()
    for index in droppable:
        dropped.add(index)
        candidate = [m for i, m in enumerate(kept) if i not in dropped]
        # A tool result is meaningless without the assistant turn that called it; drop it too.
        while len(candidate) > 1 and candidate[0].get("role") == "tool":
            candidate.pop(0)
        size = measure(candidate)
        if size <= limit:
            return candidate
    minimal = [m for i, m in enumerate(kept) if i not in dropped]
    raise ContextTooLong(
        f"the conversation needs {measure(minimal)} {unit} even with only the system message and the "
        f"latest turn, over the model's limit of {limit} {unit}",
        limit=limit,
        size=measure(minimal),
        param="messages",
    )
