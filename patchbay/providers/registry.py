"""Find providers by name.

Built-in providers are registered through :meth:`ProviderRegistry.register`, exactly the call an
outside package makes; outside packages are found through the ``patchbay.providers`` entry-point
group (an entry point names a provider class, or a function that takes the registry).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

from patchbay.errors import InvalidRequest, ProviderNotWorking
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.catalog import ModelCatalog, ModelRecord, add_record_source, catalog

__all__ = ["ENTRY_POINT_GROUP", "ProviderRegistry", "registry"]

ENTRY_POINT_GROUP = "patchbay.providers"
ProviderType = type[AsyncGeneratorProvider]


class ProviderRegistry:
    """Provider classes by name (case-insensitive)."""

    def __init__(self) -> None:
        self._providers: dict[str, ProviderType] = {}
        self._plugins_loaded = False

    def register(self, provider: ProviderType) -> ProviderType:
        """Add ``provider``; usable as a class decorator. A second class with the same name fails."""
        key = provider.name.lower()
        existing = self._providers.get(key)
        if existing is not None and existing is not provider:
            raise ValueError(f"a provider named {provider.name!r} is already registered ({existing.__module__})")
        self._providers[key] = provider
        return provider

    def unregister(self, name: str) -> None:
        self._providers.pop(name.lower(), None)

    def get(self, name: str) -> ProviderType:
        """The provider called ``name``, working or not (asking by name selects it)."""
        self._load_plugins()
        provider = self._providers.get(name.lower())
        if provider is None:
            raise InvalidRequest(
                f"unknown provider {name!r}; known providers: {', '.join(self.names())}", param="provider"
            )
        return provider

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(p.name for p in self._providers.values())

    def all(self, *, include_not_working: bool = False) -> list[ProviderType]:
        """Registered providers, sorted by name; not-working ones only when asked."""
        self._load_plugins()
        providers = sorted(self._providers.values(), key=lambda p: p.name.lower())
        return [p for p in providers if include_not_working or p.working]

    def working(self, name: str) -> ProviderType:
        """Like :meth:`get`, but a provider marked not working is an error."""
        provider = self.get(name)
        if not provider.working:
            raise ProviderNotWorking(f"{provider.name} is marked not working", provider=provider.name)
        return provider

    def catalog(self) -> ModelCatalog:
        """The process-wide model catalog, which holds every registered provider's records."""
        return catalog()

    def describe(self) -> list[dict[str, Any]]:
        """Each provider with its flags, for tables and JSON output."""
        return [_describe(p) for p in self.all(include_not_working=True)]

    def __iter__(self) -> Iterator[ProviderType]:
        return iter(self.all(include_not_working=True))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._providers

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            target = entry_point.load()
            if isinstance(target, type) and issubclass(target, AsyncGeneratorProvider):
                self.register(target)
            else:
                target(self)


def _describe(provider: ProviderType) -> dict[str, Any]:
    models = [record.model for record in provider.model_records()]  # never asks the network
    return {
        "name": provider.name,
        "url": provider.url,
        "working": provider.working,
        "needs_auth": provider.needs_auth,
        "supports_stream": provider.supports_stream,
        "supports_message_history": provider.supports_message_history,
        "supports_system_message": provider.supports_system_message,
        "default_model": getattr(provider, "default_model", ""),
        "models": models,
    }


registry = ProviderRegistry()


def _model_records() -> Iterator[ModelRecord]:
    """Every registered provider's model records, for the catalog."""
    for provider in registry.all(include_not_working=True):
        yield from provider.model_records()


add_record_source(_model_records)
