"""Chat messages: the one place that checks a conversation before it goes anywhere.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts in the OpenAI shape. Content
is a string or a list of parts (``{"type": "text", "text": ...}`` and other typed parts). A bad
list fails early with :class:`~patchbay.errors.InvalidRequest` naming the item and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from patchbay.errors import InvalidRequest

__all__ = ["ROLES", "Message", "Messages", "content_text", "validate_messages"]

Message = dict[str, Any]
Messages = list[Message]

ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: object) -> Messages:
    """Check ``messages`` and return them as a list of dicts (the items are not copied)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidRequest(
            f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}",
            param="messages",
        )
    if not messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    for index, message in enumerate(messages):
        _check_message(index, message)
    return list(messages)


def _check_message(index: int, message: object) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object with role and content, got {type(message).__name__}",
                             param=where)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"{where} has role tool but no tool_call_id (the id of the call it answers)",
                             param=f"{where}.tool_call_id")
    if "content" not in message:
        if role == "assistant" and message.get("tool_calls"):
            return
        raise InvalidRequest(f"{where} has no content", param=f"{where}.content")
    content = message["content"]
    if content is None and role == "assistant" and message.get("tool_calls"):
        return
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    f"{where}.content[{part_index}] must be an object with a type, got {part!r:.60}",
                    param=f"{where}.content[{part_index}]",
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.content[{part_index}].text must be a string",
                                     param=f"{where}.content[{part_index}].text")
        return
    raise InvalidRequest(
        f"{where}.content must be a string or a list of parts, got {type(content).__name__}",
        param=f"{where}.content",
    )


def content_text(message: Message) -> str:
    """The text of a message: the string itself, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""
