"""Routing: fallback over several providers, retries, cooldowns and shared state.

``from patchbay.routing import Router, RetryProvider, Target``
"""

from __future__ import annotations

from patchbay.routing.policy import DECISIONS, Action, CooldownPolicy, RetryPolicy, decide
from patchbay.routing.redis_state import RedisStateStore
from patchbay.routing.router import MidStream, RetryProvider, Router
from patchbay.routing.state import Health, MemoryStateStore, StateStore
from patchbay.routing.strategies import STRATEGIES, get_strategy
from patchbay.routing.targets import WILDCARD, RouteTable, Target

__all__ = [
    "DECISIONS",
    "STRATEGIES",
    "WILDCARD",
    "Action",
    "CooldownPolicy",
    "Health",
    "MemoryStateStore",
    "MidStream",
    "RedisStateStore",
    "RetryPolicy",
    "RetryProvider",
    "RouteTable",
    "Router",
    "StateStore",
    "Target",
    "decide",
    "get_strategy",
]
