"""Route names with glob characters: agents send fixed model names ("claude-sonnet-4-5"), a
pattern route ("claude-*") sends them to targets of one's choosing."""

from __future__ import annotations

import pytest

from patchbay.errors import ModelNotSupported
from patchbay.events import ProviderInfo
from patchbay.routing import Router, Target
from patchbay.routing.targets import RouteTable, is_pattern
from tests.routing.test_router import run, script


def test_glob_characters_make_a_pattern_but_the_catch_all_is_not_one() -> None:
    assert [is_pattern(name) for name in ("claude-*", "gpt-4?", "[ab]x", "*", "gpt-4o")] == \
        [True, True, True, False, False]


async def test_a_pattern_route_serves_every_name_it_matches_with_its_targets_default_model() -> None:
    a, b = script("A"), script("B")
    r = Router.configure({"claude-*": [Target(a)], "*": [Target(b)]})
    text, events = await run(r, "claude-sonnet-4-5")
    assert text == "answer from A"
    info = next(e for e in events if isinstance(e, ProviderInfo))
    assert (info.provider, info.model) == ("A", "m")  # the target's default model, not the name sent
    text, _ = await run(r, "gpt-4o")
    assert text == "answer from B"  # no match: the catch-all


def test_an_exact_name_wins_over_a_pattern_and_the_first_pattern_over_later_ones() -> None:
    a, b, c = script("A"), script("B"), script("C")
    table = RouteTable({"claude-*": [Target(a)], "claude-opus-*": [Target(b)], "claude-opus-4": [Target(c)]})
    assert table.targets_for("claude-opus-4")[0].provider is c
    assert table.targets_for("claude-opus-4-1")[0].provider is a  # table order: the first match
    assert table.targets_for("claude-haiku")[0].provider is a


def test_matching_is_case_sensitive_and_unmatched_names_are_refused() -> None:
    table = RouteTable({"claude-*": [Target(script("A"))]})
    with pytest.raises(ModelNotSupported, match="claude-\\*"):
        table.targets_for("Claude-3")


async def test_patterns_are_not_listed_as_models() -> None:
    r = Router.configure({"claude-*": [Target(script("A"))], "small": [Target(script("B"))]})
    assert await r.list_models() == ["small"]


def test_a_pattern_named_exactly_is_still_only_a_pattern() -> None:
    a = script("A")
    table = RouteTable({"gpt-4?": [Target(a)]})
    assert table.targets_for("gpt-4o")[0].provider is a
    assert table.names() == []
