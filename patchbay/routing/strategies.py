"""Strategies: the order in which a route's targets are tried.

Each strategy is a function ``(targets, health, rng) -> targets`` in :data:`STRATEGIES`. They
only reorder; skipping targets in cooldown happens before, in the router.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from patchbay.errors import InvalidRequest
from patchbay.routing.state import Health
from patchbay.routing.targets import Target

__all__ = ["STRATEGIES", "USES_HEALTH", "Strategy", "get_strategy"]

Strategy = Callable[[list[Target], Mapping[Target, Health], random.Random], list[Target]]


def priority(targets: list[Target], health: Mapping[Target, Health], rng: random.Random) -> list[Target]:
    """The order the route table gives (the default)."""
    return list(targets)


def shuffle(targets: list[Target], health: Mapping[Target, Health], rng: random.Random) -> list[Target]:
    """A uniformly random order, new for every request."""
    ordered = list(targets)
    rng.shuffle(ordered)
    return ordered


def weighted(targets: list[Target], health: Mapping[Target, Health], rng: random.Random) -> list[Target]:
    """A random order in which each target comes first with probability weight / total weight."""
    # Weighted sampling without replacement (Efraimidis & Spirakis): sort by u ** (1 / w).
    return sorted(targets, key=lambda t: rng.random() ** (1.0 / t.weight), reverse=True)


def lowest_latency(targets: list[Target], health: Mapping[Target, Health], rng: random.Random) -> list[Target]:
    """Fastest moving-average time to first token first; unmeasured targets first, to measure them."""
    def key(target: Target) -> float:
        ttft = health[target].ttft if target in health else None
        return -1.0 if ttft is None else ttft

    return sorted(targets, key=key)  # stable: ties keep table order


def least_busy(targets: list[Target], health: Mapping[Target, Health], rng: random.Random) -> list[Target]:
    """Fewest requests in flight first (across processes when the state is shared)."""
    return sorted(targets, key=lambda t: health[t].in_flight if t in health else 0)


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "shuffle": shuffle,
    "weighted": weighted,
    "lowest_latency": lowest_latency,
    "least_busy": least_busy,
}


#: The strategies that read target health (the others get an empty mapping).
USES_HEALTH = frozenset({"lowest_latency", "least_busy"})


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidRequest(f"unknown routing strategy {name!r}; choose one of {', '.join(STRATEGIES)}",
                             param="strategy") from None
