from __future__ import annotations

import pytest

from patchbay.chat.messages import content_text, validate_messages
from patchbay.errors import InvalidRequest


def test_valid_conversation_passes() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]
    assert validate_messages(messages) == messages


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("hello", "must be a list"),
        ([], "must not be empty"),
        ([{"role": "user", "content": "a"}, "b"], "messages[1] must be an object"),
        ([{"role": "bot", "content": "a"}], "messages[0].role must be one of"),
        ([{"role": "user"}], "messages[0] has no content"),
        ([{"role": "user", "content": 5}], "messages[0].content must be a string or a list"),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0] must be an object with a type"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "messages[0].content[0].text"),
    ],
)
def test_malformed_list_names_the_bad_item(messages: object, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_messages(messages)
    assert fragment in str(info.value)
    assert info.value.status == 400


def test_content_text_joins_text_parts() -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "x"}, {"type": "text", "text": "b"}]}
    assert content_text(message) == "a\nb"


def test_a_tool_message_needs_the_id_of_the_call_it_answers() -> None:
    with pytest.raises(InvalidRequest, match="tool_call_id") as info:
        validate_messages([{"role": "tool", "content": "42"}])
    assert info.value.param == "messages[0].tool_call_id"
