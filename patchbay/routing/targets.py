"""Route tables: a public model name -> the ordered targets that can serve it.

A :class:`Target` is one provider with the model name to ask it for and a weight (for the
weighted strategy). A :class:`RouteTable` maps public names to targets; the name ``"*"`` is a
catch-all whose targets receive the requested model name unchanged. In any other route a target
given without a model (a bare provider name, ``Target(Local)``) asks for that provider's default
model: the route's public name means nothing to the provider.

A name with glob characters (``"claude-*"``, ``"gpt-4?"``, ``"[ab]*"``) is a pattern: it serves
every model name it matches (``fnmatch``, case-sensitive) that no route names exactly, the first
matching pattern in the table's order winning, before the catch-all. Agents send fixed model
names; a pattern sends them all to the targets of one's choosing. Patterns are not listed as
models.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from patchbay.errors import InvalidRequest, ModelNotSupported, PatchbayError
from patchbay.providers import registry
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.catalog import catalog

__all__ = ["WILDCARD", "RouteTable", "Target", "default_model", "is_pattern", "target_from_config"]

WILDCARD = "*"
_GLOB = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether route name ``name`` is a glob pattern (the catch-all ``"*"`` is not one)."""
    return name != WILDCARD and not _GLOB.isdisjoint(name)
ProviderType = type[AsyncGeneratorProvider]


@dataclass(frozen=True, slots=True)
class Target:
    """One provider (and the model to ask it for) that can serve a route."""

    provider: ProviderType
    #: None: the provider's default model in a named route, the caller's model in the "*" route
    #: (a RouteTable settles which); "": whatever the provider takes no model name to mean.
    model: str | None = None
    weight: float = 1.0
    base_url: str | None = None  # this target's API address, when not the provider's default

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, int | float) and self.weight > 0):
            raise InvalidRequest(f"target {self.provider.name}: weight must be a positive number, got {self.weight!r}")

    def model_for(self, requested: str | None) -> str | None:
        return self.model if self.model is not None else requested

    def key(self, requested: str | None = None) -> str:
        """The state key of this target: ``provider/model``."""
        return f"{self.provider.name}/{self.model_for(requested) or 'default'}"

    @property
    def supports_prefill(self) -> bool:
        return bool(self.provider.supports_prefill)

    def context_window(self, requested: str | None) -> int | None:
        model = self.model_for(requested)
        record = catalog().get(self.provider.name, model) if model else None
        return record.context_window if record else None


class RouteTable:
    """Public model names -> ordered targets."""

    def __init__(self, routes: Mapping[str, Sequence[Target]]) -> None:
        if not routes:
            raise InvalidRequest("a route table needs at least one route")
        for name, targets in routes.items():
            if not targets:
                raise InvalidRequest(f"route {name!r} has no targets")
        self._routes = {name: list(targets) if name == WILDCARD else [_with_default(t, name) for t in targets]
                        for name, targets in routes.items()}
        self._patterns = [(name, targets) for name, targets in self._routes.items() if is_pattern(name)]

    @classmethod
    def from_config(cls, routes: Mapping[str, Iterable[Any]],
                    providers: Mapping[str, ProviderType] | None = None) -> RouteTable:
        """Build from plain data: ``{"gpt-4o": ["Liaobots/gpt-4o", {"provider": "Local", "weight": 2}]}``.

        Provider names are looked up in ``providers`` first (e.g. services from a config file),
        then in the registry."""
        return cls({name: [target_from_config(entry, name, providers) for entry in entries]
                    for name, entries in routes.items()})

    def names(self) -> list[str]:
        """The model names routes name exactly (not the patterns, not the catch-all)."""
        return [name for name in self._routes if name != WILDCARD and not is_pattern(name)]

    def targets_for(self, model: str | None) -> list[Target]:
        """The targets of ``model``'s route, else of the first pattern it matches, else the
        catch-all's; unknown -> ModelNotSupported."""
        if model and model in self._routes and not is_pattern(model):
            return list(self._routes[model])
        if model:
            for pattern, targets in self._patterns:
                if fnmatch.fnmatchcase(model, pattern):
                    return list(targets)
        if WILDCARD in self._routes:
            return list(self._routes[WILDCARD])
        raise ModelNotSupported(
            f"no route for model {model!r}; routes: {', '.join(n for n in self._routes) or '(none)'}", model=model,
            param="model",
        )

    def all_targets(self) -> list[Target]:
        seen: dict[tuple[str, str | None], Target] = {}
        for targets in self._routes.values():
            for target in targets:
                seen.setdefault((target.provider.name, target.model), target)
        return list(seen.values())


def target_from_config(entry: Any, route: str, providers: Mapping[str, ProviderType] | None = None) -> Target:
    """One target of ``route`` from plain data: a Target, ``"Provider/model"``, ``"Provider"`` or a
    table ``{provider, model, weight, base_url}``. Provider names are looked up in ``providers``
    first, then in the registry; mistakes are InvalidRequest naming the route."""
    def lookup(name: str) -> ProviderType:
        if providers and name in providers:
            return providers[name]
        return registry.get(name)

    if isinstance(entry, Target):
        return entry
    if isinstance(entry, str):
        provider, _, model = entry.partition("/")
        return Target(lookup(provider), model or None)
    if isinstance(entry, Mapping) and isinstance(entry.get("provider"), str):
        unknown = set(entry) - {"provider", "model", "weight", "base_url"}
        if unknown:
            raise InvalidRequest(f"route {route!r}: unknown target fields {sorted(unknown)}")
        return Target(lookup(entry["provider"]), entry.get("model"), entry.get("weight", 1.0), entry.get("base_url"))
    raise InvalidRequest(f"route {route!r}: a target is 'Provider/model', 'Provider' or a table with a provider, "
                         f"got {entry!r}")


def default_model(provider: ProviderType) -> str | None:
    """The model ``provider`` serves when none is named, known without the network: what it
    resolves no model to, else the first model its class lists; None when it names none."""
    try:
        resolved = provider.resolve_model(None)
    except PatchbayError:
        resolved = ""
    if resolved:
        return resolved
    listed = getattr(provider, "models", None)
    return str(listed[0]) if isinstance(listed, list | tuple) and listed else None


def _with_default(target: Target, route: str) -> Target:
    """``target`` of a named route, with the provider's default model when it names none."""
    if target.model is not None:
        return target
    model = default_model(target.provider)
    if model is None:
        try:
            target.provider.resolve_model(None)
        except PatchbayError:
            name = target.provider.name
            raise InvalidRequest(f"route {route!r}: {name} has no default model; name one ('{name}/MODEL') or "
                                 "configure its default_model") from None
        model = ""  # it takes no model name at all: let it choose
    return replace(target, model=model)
