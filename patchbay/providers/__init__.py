"""Providers: one module per chat service, all registered in :data:`registry`.

``from patchbay.providers import Local, Liaobots, AiChatOnline, liaobots_legacy``
"""

from __future__ import annotations

from patchbay.providers.aichatonline import AiChatOnline
from patchbay.providers.base import AsyncGeneratorProvider, ProviderModelMixin
from patchbay.providers.liaobots import legacy as liaobots_legacy
from patchbay.providers.liaobots.current import Liaobots
from patchbay.providers.liaobots.legacy import LiaobotsLegacy
from patchbay.providers.local.model import Local
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.providers.registry import ProviderRegistry, registry

__all__ = [
    "AiChatOnline",
    "AsyncGeneratorProvider",
    "Liaobots",
    "LiaobotsLegacy",
    "Local",
    "OpenAICompatible",
    "ProviderModelMixin",
    "ProviderRegistry",
    "liaobots_legacy",
    "registry",
]

for _provider in (Local, OpenAICompatible, Liaobots, LiaobotsLegacy, AiChatOnline):
    registry.register(_provider)
