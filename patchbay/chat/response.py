"""OpenAI-shaped chat completions: the response objects, and the one conversion from a
provider's event stream to them.

The request is :class:`~patchbay.chat.request.ChatCompletionRequest`; starting it on a provider is
:func:`patchbay.providers.calls.open_stream`, a layer up. :func:`complete` and
:func:`stream_chunks` turn a provider's :class:`~patchbay.events.EventStream` into a
:class:`ChatCompletion` or :class:`ChatCompletionChunk` values; :class:`patchbay.Client` and the
server both use them, so both answer in exactly the same shape, and a whole answer is assembled
from the same events as the streamed one.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from patchbay.events import (
    EventStream,
    Finish,
    Logprobs,
    ProviderInfo,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceLogprobs",
    "ChoiceDelta",
    "ChunkChoice",
    "CompletionUsage",
    "Model",
    "ModelList",
    "complete",
    "stream_chunks",
]


# -- the response objects -------------------------------------------------------------------------


class _Object(msgspec.Struct, kw_only=True):
    """Base of the response objects: attribute access like the openai SDK's, plus its dump helpers."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def model_dump(self) -> dict[str, Any]:
        return self.to_dict()

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()


class CompletionUsage(_Object, kw_only=True, omit_defaults=True):
    """OpenAI's usage object; ``cost`` (US dollars, the request's whole cost) is patchbay's, as
    OpenRouter adds it; ``prompt_tokens_details`` only when the upstream's cache served tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | None = None
    prompt_tokens_details: dict[str, int] | None = None


class ChatCompletionMessage(_Object, kw_only=True, omit_defaults=True, tag_field="role", tag="assistant"):
    """The assistant's message of a whole answer. As OpenAI's schema has it: ``role``, ``content``
    and ``refusal`` always written (``content`` and ``refusal`` may be null, so they have no
    default), ``tool_calls`` left out when there are none (never null)."""

    role: ClassVar[str] = "assistant"  # the struct's tag: always written, never an argument
    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChoiceLogprobs(_Object, kw_only=True):
    content: list[dict[str, Any]] | None = None
    refusal: list[dict[str, Any]] | None = None


class Choice(_Object, kw_only=True):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Object, kw_only=True, omit_defaults=True, tag_field="object", tag="chat.completion"):
    """A whole answer, shaped like the openai SDK's ``ChatCompletion``; ``provider`` says who answered.
    ``usage``, ``provider`` and ``system_fingerprint`` are left out when unknown (OpenAI's schema
    has no null ``usage`` on a whole answer)."""

    object: ClassVar[str] = "chat.completion"  # the struct's tag: always written, never an argument
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None = None
    provider: str | None = None
    system_fingerprint: str | None = None


class ChoiceDelta(_Object, omit_defaults=True, kw_only=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Object, kw_only=True):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Object, kw_only=True):
    """One piece of a streamed answer, shaped like the openai SDK's ``ChatCompletionChunk``."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    provider: str | None = None
    system_fingerprint: str | None = None


class Model(_Object, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "patchbay"


class ModelList(_Object, kw_only=True):
    """``GET /v1/models``; iterating it yields the models, like the openai SDK's page."""

    object: str = "list"
    data: list[Model]

    def __iter__(self) -> Any:
        return iter(self.data)


# -- events -> responses ----------------------------------------------------------------------------


_ids = random.Random()  # seeded from the OS once; ids need to be unique, not unguessable


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id (96 random bits, without a system call per request)."""
    return f"chatcmpl-{_ids.getrandbits(96):024x}"


def _usage(usage: Usage | None) -> CompletionUsage | None:
    if usage is None:
        return None
    return CompletionUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens, cost=usage.cost,
                           prompt_tokens_details={"cached_tokens": usage.cached_tokens} if usage.cached_tokens
                           else None)


def _tool_call(delta: ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": delta.index, "type": "function", "function": {"arguments": delta.arguments}}
    if delta.id is not None:
        call["id"] = delta.id
    if delta.name is not None:
        call["function"]["name"] = delta.name
    return call


def merge_tool_calls(deltas: list[ToolCallDelta]) -> list[dict[str, Any]] | None:
    """Tool-call fragments joined into whole calls, in index order."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.id:
            call["id"] = delta.id
        if delta.name:
            call["function"]["name"] += delta.name
        call["function"]["arguments"] += delta.arguments
    return [calls[index] for index in sorted(calls)] or None


@dataclass
class _Answer:
    """One choice of a whole answer, assembled from its events."""

    text: list[str] = field(default_factory=list)
    calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None

    def choice(self, index: int) -> Choice:
        tool_calls = merge_tool_calls(self.calls)
        text = "".join(self.text)
        message = ChatCompletionMessage(content=text if text or not tool_calls else None, refusal=None,
                                        tool_calls=tool_calls)
        finish = self.finish or ("tool_calls" if tool_calls else "stop")
        return Choice(index=index, message=message, finish_reason=finish,
                      logprobs=ChoiceLogprobs(content=self.logprobs) if self.logprobs else None)


async def complete(events: EventStream, requested_model: str) -> ChatCompletion:
    """Read ``events`` to the end and return the whole answer (every choice)."""
    answers: dict[int, _Answer] = {0: _Answer()}
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta | ToolCallDelta | Logprobs | Finish):
                answer = answers.get(event.choice)
                if answer is None:
                    answer = answers[event.choice] = _Answer()
                if isinstance(event, TextDelta):
                    answer.text.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    answer.calls.append(event)
                elif isinstance(event, Logprobs):
                    answer.logprobs.extend(event.content)
                else:
                    answer.finish = event.reason
    info = events.provider_info
    return ChatCompletion(
        id=completion_id(), created=int(time.time()), model=info.model if info else requested_model,
        choices=[answers[index].choice(index) for index in sorted(answers)], usage=_usage(events.usage),
        provider=info.provider if info else None,
    )


async def stream_chunks(events: EventStream, requested_model: str, *, include_usage: bool = False
                        ) -> AsyncGenerator[ChatCompletionChunk, None]:
    """The answer as chunks: role with each choice's first content, one chunk per delta, a last
    chunk per choice with its finish reason, then (when asked) a chunk with the usage and no choices."""
    chunk_id, created = completion_id(), int(time.time())
    model, provider = requested_model, None
    started: set[int] = set()  # choices whose role was sent
    finishes: dict[int, str] = {}
    with_tools: set[int] = set()

    def chunk(choice: ChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=chunk_id, created=created, model=model, provider=provider, choices=[choice])

    def role(index: int) -> str | None:
        if index in started:
            return None
        started.add(index)
        return "assistant"

    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                yield chunk(ChunkChoice(index=event.choice, delta=ChoiceDelta(role=role(event.choice),
                                                                              content=event.text)))
            elif isinstance(event, ToolCallDelta):
                with_tools.add(event.choice)
                yield chunk(ChunkChoice(index=event.choice, delta=ChoiceDelta(role=role(event.choice),
                                                                              tool_calls=[_tool_call(event)])))
            elif isinstance(event, Logprobs):
                yield chunk(ChunkChoice(index=event.choice, delta=ChoiceDelta(role=role(event.choice)),
                                        logprobs=ChoiceLogprobs(content=event.content)))
            elif isinstance(event, Finish):
                finishes[event.choice] = event.reason
            elif isinstance(event, ProviderInfo):
                model, provider = event.model, event.provider
    for index in sorted(started | set(finishes) | {0}):
        reason = finishes.get(index) or ("tool_calls" if index in with_tools else "stop")
        yield chunk(ChunkChoice(index=index, delta=ChoiceDelta(role=role(index)), finish_reason=reason))
    if include_usage:
        yield ChatCompletionChunk(id=chunk_id, created=created, model=model, provider=provider, choices=[],
                                  usage=_usage(events.usage))
