from __future__ import annotations

import pytest

from patchbay.chat.context import count_chars, estimate_tokens, fit_messages
from patchbay.errors import ContextTooLong


def convo() -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "S" * 10},
        {"role": "user", "content": "a" * 100},
        {"role": "assistant", "content": "b" * 100},
        {"role": "user", "content": "c" * 100},
        {"role": "assistant", "content": "d" * 100},
        {"role": "user", "content": "e" * 50},
    ]


def test_fits_untouched() -> None:
    messages = convo()
    assert fit_messages(messages, 10_000, count_chars) is messages


def test_oldest_turns_go_first_system_and_latest_stay() -> None:
    fitted = fit_messages(convo(), 259, count_chars)
    assert [m["content"][0] for m in fitted] == ["S", "d", "e"]
    assert count_chars(fitted) <= 259


def test_too_long_even_when_minimal() -> None:
    with pytest.raises(ContextTooLong) as info:
        fit_messages(convo(), 40, count_chars, unit="characters")
    assert info.value.limit == 40
    assert info.value.size == 60
    assert "60 characters" in str(info.value) and "limit of 40" in str(info.value)


def test_estimate_is_documented_rule() -> None:
    assert estimate_tokens([{"role": "user", "content": "x" * 9}]) == 3 + 4
