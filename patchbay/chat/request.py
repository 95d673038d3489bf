"""The one chat request: every OpenAI Chat Completions field, typed, from the edge to the provider.

:class:`ChatCompletionRequest` is built once (by the server from a body, by the client and the
CLI from keyword arguments) and handed to the router and to providers as it is. Fields the
request type does not name are kept in ``extra_body`` and go through unchanged to
OpenAI-compatible targets, so nothing a client sends is silently dropped. Its JSON Schema is the
OpenAPI document's, so validation and documentation cannot disagree.

A valid body takes one typed decode. A body that fails it (an unknown field, or a mistake) is
looked at again, step by step, to keep the unknown fields or to say what is wrong: with checks of
our own (UTF-8, JSON, the request's JSON Schema), never with the wording or the class of
msgspec's exception, which change between its versions.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Annotated, Any, Literal

import jsonschema
import msgspec

from patchbay.chat.messages import validate_messages
from patchbay.errors import InvalidRequest

__all__ = [
    "MAX_MESSAGES",
    "MAX_STOPS",
    "ChatCompletionRequest",
    "ChatMessage",
    "StreamOptions",
    "TextCompletionRequest",
    "decode_request",
    "request_from_kwargs",
    "request_schema",
]

MAX_MESSAGES = 10_000
MAX_STOPS = 4
#: The request's integer fields; a whole float (2.0) is taken for the integer, as JSON Schema does.
INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "seed", "n", "top_logprobs")
#: Message for JSON nested deeper than the parser's recursion allows (several hundred levels).
TOO_DEEP = "the request body is nested too deeply (arrays and objects inside each other)"
NOT_JSON = "the request body is not valid JSON"
JSON_SPACE = " \t\n\r"


class ChatMessage(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One message of the conversation (``developer`` is taken as a synonym of ``system``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Annotated[str, msgspec.Meta(description="Required when role is tool.")] | None = None

    def __post_init__(self) -> None:
        if self.role == "developer":
            self.role = "system"


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: ask for a last chunk that carries the usage."""

    include_usage: bool = False


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Bias = Annotated[int, msgspec.Meta(ge=-100, le=100)]


class ChatCompletionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/chat/completions``; other fields are kept in ``extra_body``."""

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
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, Bias] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    extra_body: Annotated[dict[str, Any], msgspec.Meta(
        description="Fields for the upstream that patchbay does not name; other unknown fields land here too."
    )] | None = None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The conversation as plain dicts, the form the context fitting and web services take."""
        return msgspec.to_builtins(self.messages)  # type: ignore[no-any-return]

    def with_messages(self, messages: list[dict[str, Any]] | list[ChatMessage]) -> ChatCompletionRequest:
        """The same request with another conversation (fitted to a context, or with a prefill)."""
        typed = messages if all(isinstance(m, ChatMessage) for m in messages) else \
            msgspec.convert(messages, list[ChatMessage])
        return msgspec.structs.replace(self, messages=typed)

    def replace(self, **fields: Any) -> ChatCompletionRequest:
        """A copy with ``fields`` changed."""
        return msgspec.structs.replace(self, **fields)

    @property
    def max_output_tokens(self) -> int | None:
        """The answer's token limit: ``max_completion_tokens``, else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings, as a tuple (empty when none)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def options(self) -> dict[str, Any]:
        """Every field that was given, except the model, the messages and ``stream`` (for logs)."""
        fields = msgspec.structs.asdict(self)
        for name in ("model", "messages", "stream"):
            fields.pop(name)
        return {name: msgspec.to_builtins(value) for name, value in fields.items() if value is not None}

    @property
    def prompt(self) -> str | None:
        """A raw prompt completed in place of the messages: only a :class:`TextCompletionRequest`
        (legacy completions) has one; a chat request's is None."""
        return None


class TextCompletionRequest(ChatCompletionRequest, kw_only=True, forbid_unknown_fields=True):
    """A legacy text completion (``POST /v1/completions``) as the one request type: the chat
    request's options and a raw ``prompt``, completed without a chat template, in place of the
    messages (which are empty). A subclass, so that the chat request's schema (and what a chat
    body may hold) stays as it is; built by :mod:`patchbay.chat.text_completion`, never decoded."""

    prompt: str  # type: ignore[assignment]  # the field that the base class's property stands in for

    @classmethod
    def of(cls, request: ChatCompletionRequest, prompt: str) -> TextCompletionRequest:
        """``request``'s options with ``prompt`` and no messages."""
        fields = {name: getattr(request, name) for name in request.__struct_fields__}
        return cls(**{**fields, "messages": [], "prompt": prompt})


FIELDS = frozenset(ChatCompletionRequest.__struct_fields__)


def request_schema() -> dict[str, Any]:
    """The request's JSON Schema, as published: unknown fields are allowed (they go upstream)."""
    schema = msgspec.json.schema(ChatCompletionRequest)
    for definition in schema.get("$defs", {}).values():
        if definition.get("title") == "ChatCompletionRequest":
            definition.pop("additionalProperties", None)
    return schema


_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)


def decode_request(body: bytes) -> ChatCompletionRequest:
    """Parse and check a JSON request body; InvalidRequest names the field that is wrong.

    Every failure of any step is InvalidRequest with a one-line message: a body is never a 500.
    """
    try:
        request: ChatCompletionRequest | None = _request_decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        request = None  # looked at again below, out of the handler (explained in the module docstring)
    if request is None:
        return _decode_slowly(body)
    try:
        _check_messages(request)
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None
    return request


def _decode_slowly(body: bytes) -> ChatCompletionRequest:
    """The body the typed decode refused: kept with its unknown fields, or the InvalidRequest."""
    document = _json_document(body)
    try:
        return request_from_kwargs(document)
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None


def request_from_kwargs(kwargs: dict[str, Any]) -> ChatCompletionRequest:
    """The request for a ``create(**kwargs)`` call, checked exactly like a server request; names
    the request type does not have go into ``extra_body``."""
    if not isinstance(kwargs, dict):
        raise InvalidRequest(f"invalid request: the body must be of type object, got {_json_type(kwargs)}")
    fields = _whole_numbers_as_ints(kwargs)
    unknown = {name: value for name, value in fields.items() if name not in FIELDS}
    if unknown:
        fields = {name: value for name, value in fields.items() if name in FIELDS}
        extra = fields.get("extra_body")
        if extra is not None and not isinstance(extra, dict):
            raise InvalidRequest(f"invalid field extra_body: must be of type object, got {_json_type(extra)}",
                                 param="extra_body")
        fields["extra_body"] = {**unknown, **(extra or {})}
    try:
        request = msgspec.convert(fields, ChatCompletionRequest)
    except msgspec.MsgspecError as exc:
        raise _schema_error(fields, exc) from None
    _check_messages(request)
    return request


def _check_messages(request: ChatCompletionRequest) -> None:
    """The rules a schema does not state (a tool message's tool_call_id, content parts...), by
    :func:`~patchbay.chat.messages.validate_messages`; plain text turns, the usual case, need none."""
    if any(m.role == "tool" or not isinstance(m.content, str) for m in request.messages):
        validate_messages(request.message_dicts())


def _json_document(body: bytes) -> Any:
    """``body`` parsed as untyped JSON, or the InvalidRequest that says why it is not JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{NOT_JSON}: it is not valid UTF-8 (byte {exc.start})") from None
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None
    except msgspec.MsgspecError:
        pass  # what is wrong is found out below, out of the handler
    raise _why_not_json(text)


class _Unfit:
    """A value the standard ``json`` parser reads but JSON (and msgspec) does not take."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _float_or_unfit(token: str) -> float | _Unfit:
    number = float(token)
    return number if math.isfinite(number) else _Unfit(f"the number {_short(token)} is out of range")


def _int_or_unfit(token: str) -> int | _Unfit:
    try:
        return int(token)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return _Unfit(f"the integer is too large ({len(token.lstrip('-'))} digits)")


def _constant_unfit(token: str) -> _Unfit:
    return _Unfit(f"{token} is not a JSON number")


_explaining_decoder = json.JSONDecoder(parse_float=_float_or_unfit, parse_int=_int_or_unfit,
                                       parse_constant=_constant_unfit)


def _why_not_json(text: str) -> InvalidRequest:
    """Why msgspec refused ``text`` (UTF-8 already), found with the standard parser, whose
    hooks mark what JSON does not allow (1e999, NaN, integers too long to read), and a walk
    that names the field holding it."""
    start = len(text) - len(text.lstrip(JSON_SPACE))
    if start == len(text):
        return InvalidRequest(f"{NOT_JSON}: it is empty")
    try:
        document, end = _explaining_decoder.raw_decode(text, start)
    except RecursionError:
        return InvalidRequest(TOO_DEEP)
    except json.JSONDecodeError as exc:
        at = min(exc.pos, len(text))
        if not text[at:].strip(JSON_SPACE):
            return InvalidRequest(f"{NOT_JSON}: it ends before the JSON value does")
        return InvalidRequest(f"{NOT_JSON}: unexpected {_shown_char(text[at])} at byte {_byte_at(text, at)}")
    if text[end:].strip(JSON_SPACE):
        return InvalidRequest(f"{NOT_JSON}: there is more after the JSON value ends (at byte {_byte_at(text, end)})")
    found = _first_unfit(document)
    if found is None:
        return InvalidRequest(NOT_JSON)
    path, problem = found
    if not path:
        return InvalidRequest(f"{NOT_JSON}: {problem}")
    param = _one_line(_param(path))
    return InvalidRequest(f"invalid field {param}: {problem}", param=param if path[0] in FIELDS else None)


def _first_unfit(document: Any) -> tuple[list[str | int], str] | None:
    """The path to the first value (or key) of ``document`` JSON does not allow, and why;
    walked without recursion, since the document may be nested as deep as the parser goes."""
    pending: list[tuple[list[str | int], Any]] = [([], document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Unfit):
            return path, value.problem
        if isinstance(value, str) and not _encodable(value):
            return path, "a string holds an unpaired surrogate escape (\\ud800-\\udfff)"
        if isinstance(value, dict):
            for key in value:
                if not _encodable(key):
                    return path, "a key holds an unpaired surrogate escape (\\ud800-\\udfff)"
            pending.extend(([*path, key], item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend(([*path, index], item) for index, item in reversed(list(enumerate(value))))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _param(path: list[str | int]) -> str:
    """A JSON path the way errors name fields: ``messages[0].content``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def _byte_at(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _shown_char(char: str) -> str:
    return f"character {char!r}" if char.isprintable() else f"character U+{ord(char):04X}"


def _short(token: str) -> str:
    return token if len(token) <= 24 else f"{token[:20]}...({len(token)} characters)"


#: Characters a one-line message must not hold: line breaks, other controls, lone surrogates.
_ESCAPES = {code: f"\\u{code:04x}" for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
                                                   *range(0xD800, 0xE000)]}


def _one_line(text: str) -> str:
    """``text`` with line breaks, control characters and lone surrogates escaped."""
    return text.translate(_ESCAPES)


def _whole_numbers_as_ints(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with whole floats in the integer fields (``max_tokens=100.0``, a ``logit_bias``
    value of ``5.0``) made ints, as JSON Schema counts them integers."""
    if not isinstance(fields, dict):
        return fields
    whole: dict[str, Any] = {name: int(value) for name in INTEGER_FIELDS
                             if isinstance(value := fields.get(name), float) and value.is_integer()}
    bias = fields.get("logit_bias")
    if isinstance(bias, dict) and any(isinstance(v, float) and v.is_integer() for v in bias.values()):
        whole["logit_bias"] = {token: int(v) if isinstance(v, float) and v.is_integer() else v
                               for token, v in bias.items()}
    return {**fields, **whole} if whole else fields


@functools.cache
def _request_validator() -> jsonschema.protocols.Validator:
    """A JSON Schema validator of the request: the same schema the OpenAPI document publishes."""
    return jsonschema.Draft202012Validator(request_schema())


def _schema_error(document: Any, exc: msgspec.MsgspecError) -> InvalidRequest:
    """The InvalidRequest for a document msgspec refused, naming the field by the JSON Schema."""
    try:
        error = jsonschema.exceptions.best_match(_request_validator().iter_errors(document))
    except RecursionError:
        return InvalidRequest(TOO_DEEP)
    if error is None:  # msgspec is stricter than the schema here: its own words are all there is
        return InvalidRequest(_one_line(f"invalid request: {exc}"))
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        path += [name for name in error.validator_value if name not in error.instance][:1]
    param = _one_line(_param(path))
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

