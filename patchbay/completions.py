"""OpenAI-shaped chat completions: the request, the response objects, and the one conversion
from a provider's event stream to them.

:class:`ChatCompletionRequest` is the request body the server accepts (its JSON Schema is the
OpenAPI document's, so validation and documentation cannot disagree). :func:`complete` and
:func:`stream_chunks` turn a provider's :class:`~patchbay.events.EventStream` into a
:class:`ChatCompletion` or :class:`ChatCompletionChunk` values; :class:`patchbay.Client` and the
server both use them, so both answer in exactly the same shape. Stop strings are cut here too,
across chunk boundaries, for providers whose service does not honour them.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import jsonschema
import msgspec

from patchbay.errors import InvalidRequest, ModelNotSupported
from patchbay.events import EventStream, Finish, ProviderInfo, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.stops import StopSequenceFilter

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceDelta",
    "ChunkChoice",
    "CompletionUsage",
    "Model",
    "ModelList",
    "StreamOptions",
    "complete",
    "decode_request",
    "find_model",
    "model_list",
    "open_stream",
    "request_from_kwargs",
    "stream_chunks",
]

MAX_MESSAGES = 10_000
MAX_STOPS = 4
#: The request's integer fields; a whole float (2.0) is taken for the integer, as JSON Schema does.
INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "seed", "n")
#: Message for JSON nested deeper than the parser's recursion allows (several hundred levels).
TOO_DEEP = "the request body is nested too deeply (arrays and objects inside each other)"


class _Object(msgspec.Struct, kw_only=True):
    """Base of the response objects: attribute access like the openai SDK's, plus its dump helpers."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def model_dump(self) -> dict[str, Any]:
        return self.to_dict()

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()


# -- the request ------------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One message of the conversation (``developer`` is accepted as a synonym of ``system``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Annotated[str, msgspec.Meta(description="Required when role is tool.")] | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: ask for a last chunk that carries the usage."""

    include_usage: bool = False


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST /v1/chat/completions``. Fields not listed here are ignored."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=MAX_STOPS)] | None = None
    seed: Int64 | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The conversation as plain dicts, the form providers take."""
        messages = msgspec.to_builtins(self.messages)
        for message in messages:
            if message["role"] == "developer":
                message["role"] = "system"
        return messages  # type: ignore[no-any-return]

    def provider_options(self) -> dict[str, Any]:
        """The sampling options a provider understands, only those that were given."""
        options = {
            "max_tokens": self.max_tokens if self.max_tokens is not None else self.max_completion_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop, "seed": self.seed,
            "tools": self.tools, "tool_choice": self.tool_choice, "response_format": self.response_format,
        }
        extra = {"presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty}
        options = {key: value for key, value in options.items() if value is not None}
        extra = {key: value for key, value in extra.items() if value is not None}
        if extra:
            options["extra_body"] = extra
        return options

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)


def decode_request(body: bytes) -> ChatCompletionRequest:
    """Parse and check a JSON request body; InvalidRequest names the field that is wrong.

    A valid body takes one typed decode. A body that fails it is looked at again, step by step,
    to say what is wrong: with checks of our own (UTF-8, JSON, the request's JSON Schema), never
    with the wording or the class of msgspec's exception, which change between its versions.
    """
    try:
        return _request_decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        pass  # explained below
    return request_from_kwargs(_json_document(body))


def request_from_kwargs(kwargs: dict[str, Any]) -> ChatCompletionRequest:
    """The request for a ``create(**kwargs)`` call, checked exactly like a server request."""
    fields = _whole_numbers_as_ints(kwargs)
    try:
        return msgspec.convert(fields, ChatCompletionRequest)
    except msgspec.MsgspecError as exc:
        raise _schema_error(fields, exc) from None


def _json_document(body: bytes) -> Any:
    """``body`` parsed as untyped JSON, or the InvalidRequest that says why it is not JSON."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid JSON: it is not valid UTF-8") from None
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None
    except msgspec.MsgspecError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def _whole_numbers_as_ints(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with whole floats in the integer fields (``max_tokens=100.0``) made ints."""
    if not isinstance(fields, dict):
        return fields
    whole = {name: int(value) for name in INTEGER_FIELDS
             if isinstance(value := fields.get(name), float) and value.is_integer()}
    return {**fields, **whole} if whole else fields


@functools.cache
def _request_validator() -> jsonschema.protocols.Validator:
    """A JSON Schema validator of the request: the same schema the OpenAPI document publishes."""
    schema = msgspec.json.schema(ChatCompletionRequest)
    return jsonschema.Draft202012Validator(schema)


def _schema_error(document: Any, exc: msgspec.MsgspecError) -> InvalidRequest:
    """The InvalidRequest for a document msgspec refused, naming the field by the JSON Schema."""
    try:
        error = jsonschema.exceptions.best_match(_request_validator().iter_errors(document))
    except RecursionError:
        return InvalidRequest(TOO_DEEP)
    if error is None:  # msgspec is stricter than the schema here: its own words are all there is
        return InvalidRequest(f"invalid request: {exc}")
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        path += [name for name in error.validator_value if name not in error.instance][:1]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    if not param:
        return InvalidRequest(f"invalid request: the body {_broken_rule(error)}")
    if error.validator == "required":
        return InvalidRequest(f"missing required field {param}", param=param)
    return InvalidRequest(f"invalid field {param}: {_broken_rule(error)}", param=param)


def _broken_rule(error: jsonschema.ValidationError) -> str:
    """What the value should have been, in our words (the library's repeat the whole value)."""
    rule, value = error.validator, error.validator_value
    if rule in ("anyOf", "oneOf") and error.context:
        # A value of one allowed type that breaks that type's rule: name the rule. Else the types.
        kept = [e for e in error.context if e.validator != "type"]
        if kept:
            return _broken_rule(kept[0])
        types = [t for e in error.context for t in (e.validator_value if isinstance(e.validator_value, list)
                                                     else [e.validator_value]) if e.validator == "type"]
        if types:
            rule, value = "type", list(dict.fromkeys(types))
    match rule:
        case "type":
            expected = " or ".join(value) if isinstance(value, list) else value
            return f"must be of type {expected}, got {_json_type(error.instance)}"
        case "enum":
            return "must be one of " + ", ".join(map(str, value))
        case "minLength" | "maxLength":
            return f"must be {'at least' if rule == 'minLength' else 'at most'} {_count(value, 'character')} long"
        case "minItems" | "maxItems":
            return f"must have {'at least' if rule == 'minItems' else 'at most'} {_count(value, 'item')}"
        case "minimum" | "maximum":
            return f"must be {'>=' if rule == 'minimum' else '<='} {value}"
        case _:
            return f"does not match the schema ({rule})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _json_type(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
             type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


# -- the response objects -------------------------------------------------------------------------


class CompletionUsage(_Object, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(_Object, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(_Object, kw_only=True):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletion(_Object, kw_only=True):
    """A whole answer, shaped like the openai SDK's ``ChatCompletion``; ``provider`` says who answered."""

    id: str
    object: str = "chat.completion"
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
    logprobs: None = None


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


def model_list(provider: type[AsyncGeneratorProvider]) -> ModelList:
    """The models ``provider`` serves (a router: its routes), as ``GET /v1/models`` shows them."""
    get_models = getattr(provider, "get_models", None)
    names: list[str] = get_models() if get_models is not None else []
    return ModelList(data=[Model(id=name, owned_by=provider.name) for name in names])


def find_model(provider: type[AsyncGeneratorProvider], model: str) -> Model:
    """One model of :func:`model_list`; ModelNotSupported (404) names the valid ones."""
    models = model_list(provider).data
    for item in models:
        if item.id == model:
            return item
    raise ModelNotSupported(f"model {model!r} not found; models: {', '.join(m.id for m in models)}",
                            model=model, param="model")


# -- events -> responses ----------------------------------------------------------------------------


def open_stream(provider: type[AsyncGeneratorProvider], request: ChatCompletionRequest, **kwargs: Any
                ) -> EventStream:
    """Start ``request`` on ``provider``; stop strings are cut here as well as upstream. A
    non-streaming request asks services for a whole answer too (``stream=False``)."""
    options = request.provider_options()
    events = provider.stream(request.model, request.message_dicts(), stream=request.stream, **options, **kwargs)
    if not request.stop:
        return events
    return EventStream(_cut_at_stops(events, StopSequenceFilter(request.stop)))


async def _cut_at_stops(events: EventStream, stops: StopSequenceFilter) -> AsyncIterator[StreamEvent]:
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                text = stops.feed(event.text)
                if text:
                    yield TextDelta(text)
                if stops.stopped:
                    yield Finish("stop")
                    return
            elif isinstance(event, Finish):
                if tail := stops.flush():
                    yield TextDelta(tail)
                yield event
                return
            else:
                yield event
        if tail := stops.flush():
            yield TextDelta(tail)


_ids = random.Random()  # seeded from the OS once; ids need to be unique, not unguessable


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id (96 random bits, without a system call per request)."""
    return f"chatcmpl-{_ids.getrandbits(96):024x}"


def _usage(usage: Usage | None) -> CompletionUsage | None:
    if usage is None:
        return None
    return CompletionUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens)


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


async def complete(events: EventStream, requested_model: str) -> ChatCompletion:
    """Read ``events`` to the end and return the whole answer."""
    async with aclosing(events):
        async for _ in events:
            pass
    info = events.provider_info
    tool_calls = merge_tool_calls(events.tool_calls)
    finish = events.finish_reason or ("tool_calls" if tool_calls else "stop")
    message = ChatCompletionMessage(content=events.text if events.text or not tool_calls else None,
                                    tool_calls=tool_calls)
    return ChatCompletion(
        id=completion_id(), created=int(time.time()), model=info.model if info else requested_model,
        choices=[Choice(message=message, finish_reason=finish)], usage=_usage(events.usage),
        provider=info.provider if info else None,
    )


async def stream_chunks(events: EventStream, requested_model: str, *, include_usage: bool = False
                        ) -> AsyncGenerator[ChatCompletionChunk, None]:
    """The answer as chunks: role with the first content, one chunk per delta, a last chunk with
    the finish reason, then (when asked) a chunk with the usage and no choices."""
    chunk_id, created = completion_id(), int(time.time())
    model, provider = requested_model, None
    role: str | None = "assistant"
    finish: str | None = None
    saw_tools = False

    def chunk(delta: ChoiceDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=chunk_id, created=created, model=model, provider=provider,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)])

    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                yield chunk(ChoiceDelta(role=role, content=event.text))
                role = None
            elif isinstance(event, ToolCallDelta):
                saw_tools = True
                yield chunk(ChoiceDelta(role=role, tool_calls=[_tool_call(event)]))
                role = None
            elif isinstance(event, Finish):
                finish = event.reason
            elif isinstance(event, ProviderInfo):
                model, provider = event.model, event.provider
    yield chunk(ChoiceDelta(role=role), finish or ("tool_calls" if saw_tools else "stop"))
    if include_usage:
        yield ChatCompletionChunk(id=chunk_id, created=created, model=model, provider=provider, choices=[],
                                  usage=_usage(events.usage))
