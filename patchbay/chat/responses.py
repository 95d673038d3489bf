"""The OpenAI Responses wire format (``POST /v1/responses``), as pure conversions.

A Responses request is decoded into a :class:`ResponsesRequest`, whose :meth:`~ResponsesRequest.chat`
builds patchbay's one :class:`~patchbay.chat.request.ChatCompletionRequest` from the stored
conversation of ``previous_response_id`` (the history), the ``instructions`` and the ``input``.
What the provider streams back is rendered by one state machine, :class:`ResponseRendering`:
its frames are the Responses stream events, and its :meth:`~ResponseRendering.response` is the
whole Response object, so a streamed and a whole answer cannot disagree.

The mapping, where the two APIs differ:

- ``input`` items: messages (``user``/``assistant``/``system``/``developer``; ``input_text``,
  ``output_text``, ``refusal``, ``input_image`` and ``input_file`` parts), ``function_call`` items
  (joined onto the assistant message before them as ``tool_calls``, ``call_id`` as the id) and
  ``function_call_output`` items (tool messages); ``reasoning`` items are dropped (there is no
  reasoning to continue); ``item_reference`` and hosted tools' items are refused;
- ``instructions`` are a system message first and are not inherited from the previous response
  (as OpenAI documents): :meth:`ResponseRendering.conversation` stores only the turns;
- ``tools`` of type ``function`` become chat tools; other tool types are refused by name;
- ``text.format`` becomes ``response_format``, ``max_output_tokens`` becomes ``max_tokens``;
- ``metadata`` is kept with the Response (echoed, stored) and not sent upstream: OpenAI's Chat
  Completions refuses ``metadata`` without ``store`` (400), and ``store`` here is patchbay's;
- ``reasoning``, ``truncation``, ``include``, ``service_tier`` and any other field (OpenAI adds
  them often) are accepted and ignored; ``background``, ``conversation`` and
  ``prompt`` (which need state patchbay does not keep) are refused.

Each mistake is one :class:`~patchbay.errors.InvalidRequest` naming its place in the Responses
body (``input[2].content[0].image_url``, ``tools[1].type``, ``text.format.schema``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from patchbay.chat.output import output_spec
from patchbay.chat.request import ChatCompletionRequest, _json_document, _one_line, request_from_kwargs
from patchbay.errors import InvalidRequest, PatchbayError, RateLimited
from patchbay.events import Finish, ProviderInfo, StreamEvent, TextDelta, ToolCallDelta, Usage

__all__ = [
    "ResponseRendering",
    "ResponsesRequest",
    "decode_responses_request",
    "item_id",
    "response_id",
]

log = logging.getLogger("patchbay.chat.responses")

Frame = tuple[str, dict[str, Any]]

_ids = random.Random()  # seeded from the OS once; ids need to be unique, not unguessable


def response_id() -> str:
    """A fresh ``resp_`` id (48 hex digits, as long as OpenAI's)."""
    return f"resp_{_ids.getrandbits(192):048x}"


def item_id(prefix: str) -> str:
    """A fresh output item id: ``msg_...`` for messages, ``fc_...`` for function calls."""
    return f"{prefix}_{_ids.getrandbits(192):048x}"


# -- the request ----------------------------------------------------------------------------------

#: Fields that need something patchbay does not have; refused rather than silently dropped.
REFUSED = {
    "background": "background responses are not supported: leave background out or false",
    "conversation": "conversations are not supported: chain responses with previous_response_id",
    "prompt": "prompt templates are not supported: send input and instructions",
}
ROLES = ("user", "assistant", "system", "developer")


@dataclass
class ResponsesRequest:
    """A decoded ``POST /v1/responses`` body: the input as chat messages, and the fields the
    Response echoes (``tools``, ``tool_choice``, ``text`` in the Responses shape)."""

    model: str
    input_messages: list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    truncation: str = "disabled"
    #: Chat Completions fields for :meth:`chat` (tools, tool_choice, response_format, max_tokens...).
    options: dict[str, Any] = field(default_factory=dict)
    #: The history :meth:`chat` was given, kept for :meth:`ResponseRendering.conversation`.
    history: list[dict[str, Any]] = field(default_factory=list)

    def chat(self, history: list[dict[str, Any]] | None = None) -> ChatCompletionRequest:
        """The one chat request: ``instructions`` (a system message), then ``history`` (the stored
        conversation of ``previous_response_id``), then the input. Remembers ``history``."""
        self.history = list(history or [])
        messages = ([{"role": "system", "content": self.instructions}] if self.instructions else []) + \
            self.history + self.input_messages
        if not messages:
            raise InvalidRequest("input is empty: give input as a string or a list of items", param="input")
        fields: dict[str, Any] = {"model": self.model, "messages": messages, **self.options}
        if self.stream:
            fields["stream"] = True
            fields["stream_options"] = {"include_usage": True}
        try:
            return request_from_kwargs(fields)
        except InvalidRequest as error:
            if error.param is not None and error.param.startswith("messages"):
                raise InvalidRequest(error.message, param="input") from None
            raise


def decode_responses_request(body: bytes) -> ResponsesRequest:
    """Parse and check a Responses body; every mistake is one InvalidRequest naming its param."""
    document = _json_document(body)
    if not isinstance(document, dict):
        raise InvalidRequest("invalid request: the body must be a JSON object")
    for name, why in REFUSED.items():
        if document.get(name) not in (None, False):
            raise InvalidRequest(f"{name}: {why}", param=name)
    model = document.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise InvalidRequest("model must be a string of 1 to 256 characters (a model or route name)", param="model")
    request = ResponsesRequest(model=model, input_messages=_input(document.get("input")))
    request.instructions = _optional(document, "instructions", str, "a string")
    request.previous_response_id = _optional(document, "previous_response_id", str, "a string (a resp_ id)")
    request.store = _flag(document, "store", True)
    request.stream = _flag(document, "stream", False)
    request.parallel_tool_calls = _flag(document, "parallel_tool_calls", True)
    request.user = _optional(document, "user", str, "a string")
    request.metadata = _metadata(document.get("metadata"))
    request.temperature = _number(document, "temperature", 0, 2)
    request.top_p = _number(document, "top_p", 0, 1)
    request.max_output_tokens = _count(document, "max_output_tokens")
    truncation = document.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise InvalidRequest('truncation must be "auto" or "disabled"', param="truncation")
    request.truncation = truncation or "disabled"
    request.tools, chat_tools = _tools(document.get("tools"))
    request.tool_choice, chat_choice = _tool_choice(document.get("tool_choice"))
    request.text, response_format = _text(document.get("text"))
    _check_output(chat_tools, chat_choice, response_format, document.get("parallel_tool_calls"))
    options: dict[str, Any] = {"tools": chat_tools or None, "tool_choice": chat_choice,
                               "response_format": response_format,
                               "parallel_tool_calls": document.get("parallel_tool_calls"),
                               "max_tokens": request.max_output_tokens, "temperature": request.temperature,
                               "top_p": request.top_p, "user": request.user}
    request.options = {name: value for name, value in options.items() if value is not None}
    return request


def _optional(document: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = document.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{name} must be {what}", param=name)
    return value


def _flag(document: dict[str, Any], name: str, default: bool) -> bool:
    value = document.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false", param=name)
    return value


def _number(document: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number from {low} to {high}", param=name)
    return float(value)


def _count(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise InvalidRequest(f"{name} must be a whole number of at least 1", param=name)
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object of string values", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            param = _one_line(f"metadata.{key}")
            raise InvalidRequest(f"{param} must be a string", param=param)
    return dict(value)


# -- input items -> chat messages -----------------------------------------------------------------


def _input(value: Any) -> list[dict[str, Any]]:
    """The ``input`` (a string, or a list of items) as chat messages."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("input must be a string or a list of items", param="input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object (a message or a function_call item)", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, where))
        elif kind == "reasoning":
            continue  # a reasoning model's notes: nothing here can read them back
        elif isinstance(kind, str):
            raise InvalidRequest(f"{where}.type {kind!r:.60} is not supported: input items are messages, "
                                 "function_call and function_call_output", param=f"{where}.type")
        else:
            raise InvalidRequest(f"{where} has neither a type nor a role", param=f"{where}.type")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r:.40}", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts = [_part(part, f"{where}.content[{index}]", role) for index, part in enumerate(content)]
    return {"role": role, "content": parts}


def _part(part: Any, where: str, role: str) -> dict[str, Any]:
    """One content part as a chat content part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(kind, str):
        raise InvalidRequest(f"{where} must be an object with a type", param=where)
    if kind in ("input_text", "output_text", "text", "refusal"):
        key = "refusal" if kind == "refusal" else "text"
        text = part.get(key)
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
        return {"type": "text", "text": text}
    if role == "assistant":
        raise InvalidRequest(f"{where}.type {kind!r:.40} is not allowed in an assistant message "
                             "(output_text or refusal)", param=f"{where}.type")
    if kind == "input_image":
        url = part.get("image_url")
        if part.get("file_id") is not None and url is None:
            raise InvalidRequest(f"{where}.file_id: uploaded files are not supported, send image_url "
                                 "(a URL or a data: URL)", param=f"{where}.file_id")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}.image_url must be a URL or a data: URL", param=f"{where}.image_url")
        detail = part.get("detail")
        if detail not in (None, "auto", "low", "high"):
            raise InvalidRequest(f'{where}.detail must be "auto", "low" or "high"', param=f"{where}.detail")
        return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            which = "file_id" if part.get("file_id") is not None else "file_url" \
                if part.get("file_url") is not None else "file_data"
            raise InvalidRequest(f"{where}.{which}: only file_data (the file in base64) is supported",
                                 param=f"{where}.{which}")
        filename = part.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise InvalidRequest(f"{where}.filename must be a string", param=f"{where}.filename")
        return {"type": "file", "file": {"file_data": data, **({"filename": filename} if filename else {})}}
    raise InvalidRequest(f"{where}.type {kind!r:.40} is not supported (input_text, input_image, input_file)",
                         param=f"{where}.type")


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise InvalidRequest(f"{where}.{name} must be a string", param=f"{where}.{name}")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.call_id must be the call_id of the function_call it answers",
                             param=f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, str):
        return {"role": "tool", "tool_call_id": call_id, "content": output}
    if not isinstance(output, list):
        raise InvalidRequest(f"{where}.output must be a string or a list of input_text parts", param=f"{where}.output")
    texts = []
    for index, part in enumerate(output):
        here = f"{where}.output[{index}]"
        if not isinstance(part, dict) or part.get("type") != "input_text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{here} must be an input_text part (a tool's output is text here)", param=here)
        texts.append({"type": "text", "text": part["text"]})
    return {"role": "tool", "tool_call_id": call_id, "content": texts}


# -- tools, tool_choice, text.format --------------------------------------------------------------


def _tools(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tools as the Response echoes them, and as chat tools."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise InvalidRequest("tools must be a list of function tools", param="tools")
    echoed, chat = [], []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f'{where} must be an object ({{"type": "function", "name": ...}})', param=where)
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(f"{where}.type {kind!r:.40} is not supported: only function tools are "
                                 "(hosted tools such as web_search and file_search are not)", param=f"{where}.type")
        name = tool.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(f"{where}.name must be a string", param=f"{where}.name")
        description = _optional(tool, "description", str, "a string")
        parameters = tool.get("parameters")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest(f"{where}.strict must be true or false", param=f"{where}.strict")
        function: dict[str, Any] = {"name": name}
        if description is not None:
            function["description"] = description
        if parameters is not None:
            function["parameters"] = parameters
        if strict is not None:
            function["strict"] = strict
        chat.append({"type": "function", "function": function})
        echoed.append({"type": "function", "name": name, "description": description, "parameters": parameters,
                       "strict": strict})
    return echoed, chat


def _tool_choice(value: Any) -> tuple[str | dict[str, Any], str | dict[str, Any] | None]:
    """``tool_choice`` as the Response echoes it, and as the chat field."""
    if value is None:
        return "auto", None
    if value in ("auto", "none", "required"):
        return value, value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.name must be the name of a function tool", param="tool_choice.name")
        return {"type": "function", "name": name}, {"type": "function", "function": {"name": name}}
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str):
        raise InvalidRequest(f"tool_choice.type {kind!r:.40} is not supported: only function tools are",
                             param="tool_choice.type")
    raise InvalidRequest('tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
                         param="tool_choice")


def _text(value: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``text`` as the Response echoes it, and ``text.format`` as the chat ``response_format``."""
    if value is None:
        return {"format": {"type": "text"}}, None
    if not isinstance(value, dict):
        raise InvalidRequest("text must be an object (with a format)", param="text")
    verbosity = value.get("verbosity")
    if verbosity not in (None, "low", "medium", "high"):
        raise InvalidRequest('text.verbosity must be "low", "medium" or "high"', param="text.verbosity")
    extra = {"verbosity": verbosity} if verbosity else {}
    spec = value.get("format")
    if spec is None:
        return {"format": {"type": "text"}, **extra}, None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("text", "json_object"):
        return {"format": {"type": kind}, **extra}, None if kind == "text" else {"type": "json_object"}
    if not isinstance(spec, dict) or kind != "json_schema":
        raise InvalidRequest('text.format.type must be "text", "json_object" or "json_schema"',
                             param="text.format.type")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("text.format.name must be a string (the schema's name)", param="text.format.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("text.format.schema must be a JSON Schema object", param="text.format.schema")
    description = _optional(spec, "description", str, "a string")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest("text.format.strict must be true or false", param="text.format.strict")
    json_schema: dict[str, Any] = {"name": name, "schema": schema}
    echoed: dict[str, Any] = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
    if description is not None:
        json_schema["description"] = echoed["description"] = description
    if strict is not None:
        json_schema["strict"] = strict
    return {"format": echoed, **extra}, {"type": "json_schema", "json_schema": json_schema}


#: Where output_spec's chat paths are in a Responses body.
_PATHS = (("response_format.json_schema.", "text.format."), ("response_format", "text.format"), (".function.", "."))


def _check_output(tools: list[dict[str, Any]], tool_choice: Any, response_format: Any, parallel: Any) -> None:
    """The deep checks of :func:`~patchbay.chat.output.output_spec` (schemas, names, the chosen tool),
    its params and words moved to where the fields are in a Responses body."""
    try:
        output_spec(tools or None, tool_choice, response_format, parallel)
    except InvalidRequest as error:
        message, param = error.message, error.param
        for chat, responses in _PATHS:
            message = message.replace(chat, responses)
            param = param.replace(chat, responses) if param else param
        raise InvalidRequest(message, param=param) from None


# -- the answer: stream events and the whole Response ---------------------------------------------

#: Finish reasons that leave a Response incomplete, and the reason it then gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: patchbay error classes -> the Response's ``error.code`` (OpenAI's short list); others server_error.
FAILED_CODES: tuple[tuple[type[PatchbayError], str], ...] = (
    (RateLimited, "rate_limit_exceeded"),
    (InvalidRequest, "invalid_prompt"),
)


@dataclass
class _Item:
    """One output item while it is built: a message (its text) or a function call."""

    kind: str  # "message" or "function_call"
    id: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    status: str = "in_progress"

    def body(self) -> dict[str, Any]:
        """The item as the API shows it (output_text parts; arguments so far)."""
        if self.kind == "message":
            content = [_text_part("".join(self.text))] if self.status != "in_progress" or self.text else []
            return {"id": self.id, "type": "message", "status": self.status, "role": "assistant", "content": content}
        return {"id": self.id, "type": "function_call", "status": self.status, "call_id": self.call_id,
                "name": self.name, "arguments": "".join(self.arguments)}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseRendering:
    """One Response, built from provider events: the stream's frames and the whole object.

    :meth:`feed` takes each event and returns the frames it makes (``(event type, payload)``);
    :meth:`finish` closes what is open and returns the last frames; :meth:`response` is the Response
    at any point (what ``response.completed`` carries, and what ``GET /v1/responses/{id}`` returns).
    Only choice 0 is rendered (a Response has one answer); logprobs and fallbacks are ignored.
    A tool-call fragment for a call that was already closed (an upstream that interleaves calls)
    is dropped from both, with a warning, so the stream and the whole object stay equal.

    A whole (not streamed) answer goes through the same steps: feed every event and :meth:`finish`,
    dropping the frames, then take :meth:`response`. Build it after ``request.chat(history)`` (or
    pass ``history=``): :meth:`conversation` starts from that history.
    """

    def __init__(self, request: ResponsesRequest, response_id: str, created_at: int, *,
                 history: list[dict[str, Any]] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.request = request
        self.id = response_id
        self.created_at = created_at
        self.model = request.model
        self.status = "in_progress"
        self.history = list(request.history if history is None else history)
        self._clock = clock
        self._sequence = 0
        self._started = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # tool-call index -> its item
        self._pending: dict[int, ToolCallDelta] = {}  # fragments of a call whose name has not come yet
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._completed_at: int | None = None
        self._error: dict[str, str] | None = None
        self._incomplete: dict[str, str] | None = None

    # -- frames --

    def _frame(self, kind: str, **payload: Any) -> Frame:
        frame = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return kind, frame

    def _begin(self) -> list[Frame]:
        if self._started:
            return []
        self._started = True
        return [self._frame("response.created", response=self.response()),
                self._frame("response.in_progress", response=self.response())]

    def feed(self, event: StreamEvent) -> list[Frame]:
        """The frames ``event`` makes (the first call also opens the Response; after :meth:`finish`
        or :meth:`error_frame`, none)."""
        if self.status != "in_progress":
            return []
        if isinstance(event, ProviderInfo) and not self._started:
            self.model = event.model  # before response.created, so it names who answers
        frames = self._begin()
        if isinstance(event, ProviderInfo):
            self.model = event.model
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Finish):
            if event.choice == 0:
                self._finish = event.reason
        elif isinstance(event, TextDelta):
            if event.choice == 0 and event.text:
                frames += self._text(event.text)
        elif isinstance(event, ToolCallDelta) and event.choice == 0:
            frames += self._tool_call(event)
        return frames

    def _text(self, text: str) -> list[Frame]:
        frames: list[Frame] = []
        item = self._open
        if item is None or item.kind != "message":
            frames += self._close()
            item = self._add(_Item("message", item_id("msg")))
            frames.append(self._frame("response.output_item.added", output_index=len(self._items) - 1,
                                      item=item.body()))
            frames.append(self._frame("response.content_part.added", item_id=item.id,
                                      output_index=len(self._items) - 1, content_index=0, part=_text_part("")))
        item.text.append(text)
        frames.append(self._frame("response.output_text.delta", item_id=item.id, output_index=len(self._items) - 1,
                                  content_index=0, delta=text, logprobs=[]))
        return frames

    def _tool_call(self, delta: ToolCallDelta) -> list[Frame]:
        item = self._calls.get(delta.index)
        if item is not None:
            if item is not self._open:
                log.warning("a fragment of tool call %d came after the call was closed; it is dropped", delta.index)
                return []
            if delta.name:
                item.name += delta.name
            if not delta.arguments:
                return []
            item.arguments.append(delta.arguments)
            return [self._frame("response.function_call_arguments.delta", item_id=item.id,
                                output_index=len(self._items) - 1, delta=delta.arguments)]
        pending = self._pending.pop(delta.index, None)
        if pending is not None:  # join it with the fragments that came before its name
            delta = ToolCallDelta(delta.index, delta.id or pending.id, (pending.name or "") + (delta.name or ""),
                                  pending.arguments + delta.arguments)
        if not delta.name:
            self._pending[delta.index] = delta
            return []
        return self._start_call(delta)

    def _start_call(self, delta: ToolCallDelta) -> list[Frame]:
        frames = self._close()
        item = self._add(_Item("function_call", item_id("fc"), call_id=delta.id or item_id("call"),
                               name=delta.name or ""))
        self._calls[delta.index] = item
        index = len(self._items) - 1
        frames.append(self._frame("response.output_item.added", output_index=index, item=item.body()))
        if delta.arguments:
            item.arguments.append(delta.arguments)
            frames.append(self._frame("response.function_call_arguments.delta", item_id=item.id, output_index=index,
                                      delta=delta.arguments))
        return frames

    def _add(self, item: _Item) -> _Item:
        self._items.append(item)
        self._open = item
        return item

    def _close(self, status: str = "completed") -> list[Frame]:
        """The frames that close the open item, if any."""
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._items.index(item)
        item.status = status
        if item.kind == "message":
            text = "".join(item.text)
            return [self._frame("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                                text=text, logprobs=[]),
                    self._frame("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                part=_text_part(text)),
                    self._frame("response.output_item.done", output_index=index, item=item.body())]
        return [self._frame("response.function_call_arguments.done", item_id=item.id, output_index=index,
                            name=item.name, arguments="".join(item.arguments)),
                self._frame("response.output_item.done", output_index=index, item=item.body())]

    def finish(self) -> list[Frame]:
        """Close what is open and end the Response: ``response.completed``, or ``response.incomplete``
        when the answer was cut (finish reason ``length`` or ``content_filter``). Once only."""
        if self.status != "in_progress":
            return []
        frames = self._begin()
        for index in sorted(self._pending):  # calls whose name never came: shown with an empty name
            frames += self._start_call(self._pending.pop(index))
        reason = INCOMPLETE.get(self._finish or "")
        frames += self._close("incomplete" if reason else "completed")
        self._completed_at = int(self._clock())
        if reason:
            self.status, self._incomplete = "incomplete", {"reason": reason}
            frames.append(self._frame("response.incomplete", response=self.response()))
        else:
            self.status = "completed"
            frames.append(self._frame("response.completed", response=self.response()))
        return frames

    def error_frame(self, error: PatchbayError) -> Frame:
        """The in-band failure after the stream began, as one frame: the ``error`` event. It marks
        the Response failed (with its ``error``) for the store and ``GET``. :meth:`fail` is the whole
        ending (``error`` then ``response.failed``, as OpenAI sends it); prefer it.

        Why ``error`` first and not only ``response.failed``: the openai SDK's streams
        (``responses.create(stream=True)``, ``responses.stream``) raise :class:`openai.APIError` with
        our message and body as soon as a frame holds an ``error`` object, so the caller's loop ends
        with the real reason; ``response.failed`` alone is passed on as one more event, and
        ``get_final_response()`` then fails with "Didn't receive a `response.completed` event". The
        payload has the published schema's fields (``code``, ``message``, ``param``) and the same as
        an ``error`` object (``type``, ``code``, ``message``, ``param``), which is what OpenAI really
        sends and what the openai SDK and the Vercel AI SDK read.
        """
        self.status = "failed"
        if self._open is not None:
            self._open.status, self._open = "incomplete", None
        self._error = {"code": _failed_code(error), "message": str(error)}
        return self._frame("error", code=error.code, message=str(error), param=error.param, error=error.to_dict())

    def fail(self, error: PatchbayError) -> list[Frame]:
        """End the stream with ``error``: ``response.created``/``in_progress`` when nothing was sent
        yet, the ``error`` event (:meth:`error_frame`), then ``response.failed`` with the Response.
        Clients that read only one of the two (Codex reads ``response.failed``) see the failure."""
        if self.status != "in_progress":
            return []
        frames = self._begin()
        frames.append(self.error_frame(error))
        frames.append(self._frame("response.failed", response=self.response()))
        return frames

    # -- the whole --

    def response(self) -> dict[str, Any]:
        """The Response object as it stands (in progress until :meth:`finish`)."""
        request = self.request
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "completed_at": self._completed_at, "error": self._error, "incomplete_details": self._incomplete,
            "model": self.model, "output": [item.body() for item in self._items],
            "instructions": request.instructions, "previous_response_id": request.previous_response_id,
            "tools": request.tools, "tool_choice": request.tool_choice, "text": request.text,
            "parallel_tool_calls": request.parallel_tool_calls, "temperature": request.temperature,
            "top_p": request.top_p, "max_output_tokens": request.max_output_tokens, "metadata": request.metadata,
            "truncation": request.truncation, "reasoning": {"effort": None, "summary": None},
            "background": False, "service_tier": "default", "store": request.store,
        }
        if request.user is not None:
            body["user"] = request.user
        if self.status != "in_progress":
            body["usage"] = self.usage()
        return body

    def usage(self) -> dict[str, Any]:
        """The usage in the Responses shape (zeros when the provider reported none)."""
        usage = self._usage or Usage(0, 0)
        shape: dict[str, Any] = {
            "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}
        if usage.cost is not None:
            shape["cost"] = usage.cost  # patchbay's: US dollars, every attempt included
        return shape

    def conversation(self) -> list[dict[str, Any]]:
        """The turns to store for ``previous_response_id``: the history, the input and the answer as
        chat messages (without the instructions, which the next request does not inherit)."""
        text = "".join(part for item in self._items if item.kind == "message" for part in item.text)
        calls = [{"id": item.call_id, "type": "function",
                  "function": {"name": item.name, "arguments": "".join(item.arguments)}}
                 for item in self._items if item.kind == "function_call"]
        answer: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            answer["tool_calls"] = calls
        return [*self.history, *self.request.input_messages, answer]


def _failed_code(error: PatchbayError) -> str:
    for cls, code in FAILED_CODES:
        if isinstance(error, cls):
            return code
    return "server_error"
