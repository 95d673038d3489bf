from __future__ import annotations

import pytest

from patchbay.errors import InvalidRequest, ProviderNotWorking
from patchbay.providers import AiChatOnline, Liaobots, LiaobotsLegacy, registry
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.registry import ProviderRegistry


def test_lookup_is_case_insensitive() -> None:
    assert registry.get("liaobots") is Liaobots
    assert registry.get("AICHATONLINE") is AiChatOnline


def test_not_working_providers_are_skipped_unless_named() -> None:
    listed = registry.all()
    assert Liaobots in listed
    assert AiChatOnline not in listed and LiaobotsLegacy not in listed
    assert AiChatOnline in registry.all(include_not_working=True)
    assert registry.get("AiChatOnline") is AiChatOnline
    with pytest.raises(ProviderNotWorking):
        registry.working("AiChatOnline")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(InvalidRequest, match=r"known providers: .*Liaobots"):
        registry.get("nope")


def test_describe_has_flags() -> None:
    rows = {row["name"]: row for row in registry.describe()}
    assert rows["AiChatOnline"]["working"] is False
    assert rows["LiaobotsLegacy"]["needs_auth"] is True
    assert "gpt-4o-2024-08-06" in rows["Liaobots"]["models"]


def test_outside_provider_registers_the_same_way() -> None:
    local = ProviderRegistry()

    class Outside(AsyncGeneratorProvider):
        pass

    local.register(Outside)
    assert local.get("outside") is Outside

    class Other(AsyncGeneratorProvider):
        name = "Outside"

    with pytest.raises(ValueError, match="already registered"):
        local.register(Other)
