"""What the router does after a failure, decided by the error's class in one table.

Before the first text: transient failures are retried on the same target with jittered backoff
(honouring Retry-After up to a cap), then the next target is tried; auth failures move on (the
provider already rotated its own credential pool before raising); invalid requests stop (they
would fail everywhere), except ContextTooLong, which moves to a target with a larger window.
After the first text nothing is ever retried from the start: see the router's mid-stream rule.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from patchbay.errors import (
    AuthError,
    ConnectionFailed,
    ContextTooLong,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    PaymentRequired,
    PermissionDenied,
    ProtocolError,
    ProviderNotWorking,
    RateLimited,
    RequestTimeout,
    StreamInterrupted,
    UpstreamError,
)

__all__ = ["DECISIONS", "Action", "CooldownPolicy", "RetryPolicy", "decide"]


class Action(enum.Enum):
    RETRY = "retry"  # the same target again, after a backoff
    NEXT = "next"  # the next target
    LARGER_CONTEXT = "larger_context"  # the next target with a larger context window
    FAIL = "fail"  # stop: no other target would do better


#: Error class -> action, looked up along the error's MRO (most specific first).
DECISIONS: dict[type[PatchbayError], Action] = {
    ContextTooLong: Action.LARGER_CONTEXT,
    ModelNotSupported: Action.NEXT,
    InvalidRequest: Action.FAIL,
    AuthError: Action.NEXT,
    PaymentRequired: Action.NEXT,
    PermissionDenied: Action.NEXT,
    ProviderNotWorking: Action.NEXT,
    ProtocolError: Action.NEXT,
    StreamInterrupted: Action.NEXT,
    RateLimited: Action.RETRY,
    RequestTimeout: Action.RETRY,
    ConnectionFailed: Action.RETRY,
    UpstreamError: Action.RETRY,
    PatchbayError: Action.NEXT,
}


def decide(error: PatchbayError) -> Action:
    """The action for ``error`` (see :data:`DECISIONS`)."""
    for klass in type(error).__mro__:
        action = DECISIONS.get(klass)  # type: ignore[arg-type]
        if action is not None:
            return action
    return Action.NEXT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one target before moving on.

    ``attempts`` tries per target in all; the n-th retry waits ``backoff * 2**n`` seconds (at
    most ``max_backoff``) times a random factor in [0.5, 1.5). A Retry-After up to
    ``max_retry_after`` is waited out; a longer one moves on at once (and cools the target down).
    """

    attempts: int = 2
    backoff: float = 0.25
    max_backoff: float = 4.0
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidRequest(f"retry attempts must be at least 1, got {self.attempts}")

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to move on instead."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return min(self.max_backoff, self.backoff * 2**retry) * rng.uniform(0.5, 1.5)


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    """A target with ``failures`` failures within ``window`` seconds is skipped for ``duration``."""

    failures: int = 3
    window: float = 60.0
    duration: float = 30.0
