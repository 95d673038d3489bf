"""Legacy text completions (``POST /v1/completions``) over the chat pipeline.

A legacy request is read into the one chat request type, as a
:class:`~patchbay.chat.request.TextCompletionRequest` (its ``prompt`` set, no messages;
:func:`decode_completion_request`), so the router, its capability check (``text_completion``:
web chats are skipped), fallback and exactly-once streaming serve it unchanged; the embedded
model completes the raw prompt without a chat template, OpenAI-compatible targets get it at
their own ``/completions``. A list of prompts is one request per prompt, one after another
(:func:`chain_prompts` numbers their choices as OpenAI does: prompt ``i``, choice ``j`` ->
``i * n + j``). :class:`CompletionRendering` writes the events as OpenAI's ``text_completion``
objects, streamed or whole; ``echo`` is applied there (the prompt is written before each
choice's text) and never sent upstream.

Not supported, and refused by name rather than dropped: prompts as token ids (they mean
nothing across targets), ``logprobs`` (the legacy shape), ``best_of`` other than ``n``.
``max_tokens`` defaults to 16, as in OpenAI's API.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import msgspec

from patchbay.chat.request import (
    ChatCompletionRequest,
    TextCompletionRequest,
    _json_document,
    request_from_kwargs,
    request_schema,
)
from patchbay.errors import InvalidRequest, PatchbayError, UnsupportedFeature
from patchbay.events import Finish, Logprobs, StreamEvent, TextDelta, ToolCallDelta, Usage

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_PROMPTS",
    "CompletionRendering",
    "chain_prompts",
    "completion_id",
    "completion_request_from_dict",
    "completion_request_schema",
    "decode_completion_request",
]

DEFAULT_MAX_TOKENS = 16  #: as OpenAI's /v1/completions
MAX_PROMPTS = 32  #: prompts in one request at most (LangChain sends up to 20 at a time)
#: The fields of OpenAI's CreateCompletionRequest that the chat request has under the same name.
SHARED = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed",
                    "presence_penalty", "frequency_penalty", "n", "logit_bias", "user", "extra_body"})
#: Read here, never passed as chat fields.
OWN = frozenset({"prompt", "echo", "suffix", "best_of", "logprobs"})
_PLACEHOLDER = [{"role": "user", "content": "-"}]  # lets the chat checks read the shared fields

Frame = tuple[str | None, dict[str, Any]]


def completion_id() -> str:
    """A fresh ``cmpl-`` id."""
    return f"cmpl-{secrets.token_hex(12)}"


def decode_completion_request(body: bytes) -> tuple[TextCompletionRequest, bool, list[str]]:
    """A ``/v1/completions`` body as (the chat request for its first prompt, echo, every
    prompt); InvalidRequest (or UnsupportedFeature) names the field that is wrong."""
    return completion_request_from_dict(_json_document(body))


def completion_request_from_dict(document: Any) -> tuple[TextCompletionRequest, bool, list[str]]:
    """:func:`decode_completion_request` for a body already parsed (or a client's arguments)."""
    if not isinstance(document, dict):
        raise InvalidRequest("invalid request: the body must be of type object")
    if "messages" in document:
        raise InvalidRequest("/v1/completions takes a prompt, not messages (those go to /v1/chat/completions)",
                             param="messages")
    prompts = _prompts(document.get("prompt"), "prompt" in document)
    echo = document.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise InvalidRequest("invalid field echo: must be of type boolean", param="echo")
    logprobs = document.get("logprobs")
    if logprobs is not None and logprobs is not False and logprobs != 0:
        raise UnsupportedFeature("logprobs are not available on /v1/completions; use /v1/chat/completions",
                                 param="logprobs")
    n = document.get("n")
    best_of = document.get("best_of")
    if best_of is not None and best_of != 1 and best_of != n:
        raise UnsupportedFeature("best_of is not supported (other than equal to n)", param="best_of")
    suffix = document.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise InvalidRequest("invalid field suffix: must be of type string", param="suffix")
    fields = {name: value for name, value in document.items() if name in SHARED}
    passed = {name: value for name, value in document.items() if name not in SHARED and name not in OWN}
    if suffix is not None:
        passed["suffix"] = suffix
    extra = fields.get("extra_body")
    if passed and (extra is None or isinstance(extra, dict)):  # a wrong extra_body is named by the chat checks
        fields["extra_body"] = {**passed, **(extra or {})}
    fields.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    checked = request_from_kwargs({**fields, "messages": _PLACEHOLDER})
    return TextCompletionRequest.of(checked, prompts[0]), bool(echo), prompts


def _prompts(value: Any, given: bool) -> list[str]:
    """The prompts of a body: one string or a non-empty list of strings."""
    if not given:
        raise InvalidRequest("missing required field prompt", param="prompt")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("invalid field prompt: must be a string or a non-empty array of strings",
                             param="prompt")
    if len(value) > MAX_PROMPTS:
        raise InvalidRequest(f"invalid field prompt: must have at most {MAX_PROMPTS} items", param="prompt")
    for index, item in enumerate(value):
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise UnsupportedFeature("prompts as token ids are not supported: send the text", param="prompt")
        if not isinstance(item, str):
            raise InvalidRequest(f"invalid field prompt[{index}]: must be of type string", param=f"prompt[{index}]")
    return list(value)


def completion_request_schema() -> dict[str, Any]:
    """The request's JSON Schema, for the OpenAPI document (self-contained: no references): the
    chat request's rules for the fields the two share, and this endpoint's own; unknown fields
    are allowed (they go upstream)."""
    chat = request_schema()
    definitions = chat["$defs"]
    shared = definitions["ChatCompletionRequest"]["properties"]
    properties = {name: _inlined(shared[name], definitions) for name in sorted(SHARED) if name in shared}
    properties["max_tokens"] = {**properties["max_tokens"], "default": DEFAULT_MAX_TOKENS}
    text = {"type": "string"}
    properties.update({
        "prompt": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_PROMPTS}],
                   "description": "The text to complete, or several (one answer each, n choices per prompt)."},
        "echo": {"type": "boolean", "default": False, "description": "Write the prompt before each answer."},
        "suffix": {"type": "string", "description": "Text after the completion (OpenAI-compatible targets)."},
        "best_of": {"type": "integer", "minimum": 1, "maximum": 1, "description": "Only 1 (or equal to n)."},
        "logprobs": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 0}, {"type": "null"}],
                     "description": "Not available here: only 0 or null."},
    })
    return {"title": "CompletionRequest", "type": "object", "required": ["model", "prompt"],
            "properties": properties}


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """``schema`` with every ``#/$defs/`` reference replaced by its definition."""
    if isinstance(schema, dict):
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _inlined(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _inlined(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


async def chain_prompts(request: TextCompletionRequest, prompts: Sequence[str],
                        open_one: Callable[[TextCompletionRequest], AsyncIterator[StreamEvent]]
                        ) -> AsyncGenerator[StreamEvent, None]:
    """The events of one request per prompt (``open_one`` runs each), one after another: prompt
    ``i``'s choice ``j`` becomes choice ``i * n + j``, and the usages are summed into one
    :class:`Usage` at the end (its cost the last one's: each is the request's cost so far). Pure:
    whatever runs a request is handed in."""
    n = request.n or 1
    prompt_tokens = completion_tokens = cached_tokens = 0
    cost: float | None = None
    counted = False
    for position, prompt in enumerate(prompts):
        offset = position * n
        usage: Usage | None = None
        async with aclosing(_closing(open_one(msgspec.structs.replace(request, prompt=prompt)))) as events:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                else:
                    yield _offset(event, offset)
        if usage is not None:
            counted = True
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            cached_tokens += usage.cached_tokens
            cost = usage.cost if usage.cost is not None else cost
    if counted:
        yield Usage(prompt_tokens, completion_tokens, cached_tokens, cost)


async def _closing(events: AsyncIterator[StreamEvent]) -> AsyncGenerator[StreamEvent, None]:
    """``events`` as an async generator that closes its source when it is closed."""
    try:
        async for event in events:
            yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _offset(event: StreamEvent, offset: int) -> StreamEvent:
    if not offset:
        return event
    if isinstance(event, TextDelta):
        return TextDelta(event.text, event.choice + offset)
    if isinstance(event, Finish):
        return Finish(event.reason, event.choice + offset)
    if isinstance(event, Logprobs):
        return Logprobs(event.content, event.choice + offset)
    if isinstance(event, ToolCallDelta):
        return ToolCallDelta(event.index, event.id, event.name, event.arguments, event.choice + offset)
    return event


class CompletionRendering:
    """Provider events -> OpenAI ``text_completion`` objects: the stream's chunks (data-only
    server-sent events, ``feed`` and ``finish``) and the whole answer (``result``), from the
    same state so they cannot disagree. The endpoint writes ``data: [DONE]`` after the last
    frame, as for chat completions.

    ``request`` is the chat request of :func:`decode_completion_request` (its ``n`` and
    ``stream_options``); ``prompts`` every prompt (default: the request's), for ``echo``.
    """

    def __init__(self, request: ChatCompletionRequest, completion_id: str, created: int, model: str, *,
                 echo: bool = False, prompts: Sequence[str] | None = None) -> None:
        self.id = completion_id
        self.created = created
        self.model = model
        self.echo = echo
        self.n = request.n or 1
        self.prompts = list(prompts) if prompts is not None else [request.prompt or ""]
        self.include_usage = request.include_usage
        self._texts: dict[int, list[str]] = {}
        self._finishes: dict[int, str] = {}
        self._opened: set[int] = set()
        self.usage: Usage | None = None

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def _chunk(self, index: int, text: str, finish: str | None = None) -> Frame:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        return None, {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                      "choices": [choice]}

    def _prompt_of(self, index: int) -> str:
        return self.prompts[min(index // self.n, len(self.prompts) - 1)]

    def _open(self, index: int) -> list[Frame]:
        """The echoed prompt, before a choice's first text (once)."""
        if index in self._opened:
            return []
        self._opened.add(index)
        if not self.echo or not self._prompt_of(index):
            return []
        return [self._chunk(index, self._prompt_of(index))]

    def feed(self, event: StreamEvent) -> list[Frame]:
        """The chunks that ``event`` makes (none for events a text completion does not show)."""
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            self._texts.setdefault(event.choice, []).append(event.text)
            return [*self._open(event.choice), self._chunk(event.choice, event.text)]
        if isinstance(event, Finish):
            if event.choice in self._finishes:
                return []
            reason = _reason(event.reason)
            self._finishes[event.choice] = reason
            return [*self._open(event.choice), self._chunk(event.choice, "", reason)]
        if isinstance(event, Usage):
            self.usage = event
        return []

    def finish(self) -> list[Frame]:
        """The closing chunks: a finish for any choice that had none, then the usage when asked."""
        frames: list[Frame] = []
        for index in range(self.choices):
            if index not in self._finishes:
                frames.extend(self.feed(Finish("stop", index)))
        if self.include_usage:
            frames.append((None, {"id": self.id, "object": "text_completion", "created": self.created,
                                  "model": self.model, "choices": [], "usage": self._usage()}))
        return frames

    def result(self) -> dict[str, Any]:
        """The whole answer: OpenAI's ``CreateCompletionResponse``."""
        choices = []
        for index in range(self.choices):
            text = "".join(self._texts.get(index, ()))
            if self.echo:
                text = self._prompt_of(index) + text
            choices.append({"text": text, "index": index, "logprobs": None,
                            "finish_reason": self._finishes.get(index, "stop")})
        answer: dict[str, Any] = {"id": self.id, "object": "text_completion", "created": self.created,
                                  "model": self.model, "choices": choices}
        usage = self._usage()
        if usage is not None:
            answer["usage"] = usage
        return answer

    def error_frame(self, error: PatchbayError) -> Frame:
        """A failure after the stream started, as the OpenAI error object in a data event."""
        return None, {"error": error.to_dict()}

    def _usage(self) -> dict[str, int] | None:
        if self.usage is None:
            return None
        return {"prompt_tokens": self.usage.prompt_tokens, "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens}


def _reason(reason: str) -> str:
    """A finish reason the legacy API knows (stop, length, content_filter)."""
    return reason if reason in ("stop", "length", "content_filter") else "stop"
