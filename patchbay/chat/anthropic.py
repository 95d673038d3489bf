"""The Anthropic Messages wire format, as pure conversions to and from patchbay's one chat request.

``POST /v1/messages`` takes an Anthropic request: :func:`decode_messages_request` turns it into a
:class:`~patchbay.chat.request.ChatCompletionRequest` (plus what rendering needs), the router runs
it as any chat request, and :class:`MessageRendering` turns the provider's events into Anthropic's
stream events, or into the whole ``Message``: the whole answer is the fold of the very frames the
stream sends, so the two cannot disagree. :func:`error_envelope` and :func:`count_tokens_body`
complete the set. No I/O here.

How the request maps (where Anthropic and Chat Completions differ):

- ``system`` (a string or text blocks; ``cache_control`` ignored) is one system message; a
  message with role ``system`` (the SDK allows it) is one too.
- ``text`` and ``image`` blocks are content parts (``base64`` sources become ``data:`` URLs,
  ``url`` sources stay URLs); a user turn of text blocks only becomes one string (lines joined).
  ``document`` blocks with plain text (``text`` or ``content`` sources) become text; PDFs,
  files and the server-tool blocks are refused (:class:`~patchbay.errors.UnsupportedFeature`).
  ``thinking`` and ``redacted_thinking`` blocks are dropped from the history.
- An assistant's ``tool_use`` blocks are its ``tool_calls`` (arguments as JSON text). A user's
  ``tool_result`` blocks become ``tool`` messages (before the rest of that turn) whose content is
  the result's text; ``is_error`` puts :data:`TOOL_ERROR_PREFIX` in front of it. Images in a tool
  result go into a user message right after the tool messages (tool messages carry text only).
- ``tools`` are function tools (``input_schema`` -> ``parameters``; server tools, which have a
  ``type`` other than ``custom``, are refused); ``tool_choice`` ``auto``/``any``/``tool``/``none``
  -> ``auto``/``required``/the named function/``none``; ``disable_parallel_tool_use`` ->
  ``parallel_tool_calls: false``. ``output_config.format`` (a JSON schema) -> ``response_format``.
- ``max_tokens`` is required, as Anthropic requires it; ``stop_sequences`` -> ``stop`` (at most
  :data:`~patchbay.chat.request.MAX_STOPS`); ``temperature`` (0 to 1) and ``top_p`` are kept;
  ``top_k`` is checked and dropped (OpenAI's API refuses it, and it is only a sampling hint);
  ``metadata.user_id`` -> ``user``.
- Other fields (``thinking``, ``service_tier``, ``container``, ``output_config.effort``...) are
  accepted and not sent on; their names are in :attr:`MessagesRequest.ignored`.

Every mistake is one :class:`~patchbay.errors.InvalidRequest` whose ``param`` is the Anthropic
path (``messages[1].content[0].type``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from patchbay.chat.context import estimate_tokens
from patchbay.chat.output import output_spec
from patchbay.chat.request import MAX_STOPS, NOT_JSON, TOO_DEEP, ChatCompletionRequest, request_from_kwargs
from patchbay.errors import InvalidRequest, PatchbayError, ProtocolError, UnsupportedFeature
from patchbay.events import Finish, ProviderInfo, StreamEvent, TextDelta, ToolCallDelta, Usage

__all__ = [
    "ERROR_TYPES",
    "TOOL_ERROR_PREFIX",
    "Frame",
    "MessageRendering",
    "MessagesRequest",
    "count_tokens_body",
    "decode_messages_request",
    "error_envelope",
    "message_id",
]

#: One server-sent event: its name and its JSON payload.
Frame = tuple[str, dict[str, Any]]

#: Put before a tool result's text when the tool reported an error (``is_error: true``): Chat
#: Completions has no such flag, and the model must still learn that the call failed.
TOOL_ERROR_PREFIX = "Error: "

#: Fields Anthropic defines that patchbay reads; any other field is accepted and ignored.
_READ = frozenset({"model", "messages", "max_tokens", "system", "tools", "tool_choice", "stop_sequences",
                   "temperature", "top_p", "top_k", "metadata", "stream", "output_config"})
_BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")
#: Block types of the Messages API that need Anthropic's own servers (server tools, files...).
_SERVER_BLOCKS = frozenset({"search_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
                            "code_execution_tool_result", "bash_code_execution_tool_result",
                            "text_editor_code_execution_tool_result", "tool_search_tool_result",
                            "container_upload", "mcp_tool_use", "mcp_tool_result", "tool_reference"})
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


_ids = random.Random()  # seeded from the OS once; ids need to be unique, not unguessable


def message_id() -> str:
    """A fresh ``msg_`` id (96 random bits)."""
    return f"msg_{_ids.getrandbits(96):024x}"


# -- the request ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """An Anthropic Messages request: the chat request to run, and what rendering the answer needs."""

    chat: ChatCompletionRequest
    model: str
    stop_sequences: tuple[str, ...] = ()
    stream: bool = False
    #: Top-level fields accepted but not sent on (``thinking``, ``service_tier``...), sorted.
    ignored: tuple[str, ...] = ()


def decode_messages_request(body: bytes) -> MessagesRequest:
    """Parse and check a ``POST /v1/messages`` body; InvalidRequest names the Anthropic param."""
    return _decode(_document(body), count_only=False)


def count_tokens_body(body: bytes, check_model: Callable[[str], object] | None = None) -> dict[str, int]:
    """The answer of ``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``, estimated by
    :func:`patchbay.chat.context.estimate_tokens` over the converted conversation, tools included.
    The body is checked like a create request's, except that ``max_tokens`` is not asked for;
    ``check_model`` (when given) refuses a model nobody serves (as the provider's ``resolve_model``)."""
    request = _decode(_document(body), count_only=True)
    if check_model is not None:
        check_model(request.model)
    measured: list[dict[str, Any]] = []
    for message in request.chat.message_dicts():
        measured.append(message)
        calls = message.get("tool_calls") or []
        if calls:  # estimate_tokens reads the text only: count the calls as text too
            measured.append({"role": "assistant", "content": "\n".join(
                call["function"]["name"] + call["function"]["arguments"] for call in calls)})
    if request.chat.tools:
        measured.append({"role": "system", "content": json.dumps(request.chat.tools, ensure_ascii=False)})
    return {"input_tokens": estimate_tokens(measured)}


def _document(body: bytes) -> Any:
    """``body`` as untyped JSON, or the InvalidRequest saying it is not JSON."""
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None
    except (msgspec.MsgspecError, UnicodeDecodeError):
        pass
    raise InvalidRequest(NOT_JSON)


def _decode(document: Any, *, count_only: bool) -> MessagesRequest:
    if not isinstance(document, dict):
        raise InvalidRequest(f"invalid request: the body must be of type object, got {_json_type(document)}")
    model = _required(document, "model", "model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "must be a non-empty string", model)
    fields: dict[str, Any] = {"model": model}
    if not count_only:
        fields["max_tokens"] = _max_tokens(document)
    messages = _system(document.get("system"))
    messages += _messages(_required(document, "messages", "messages"))
    fields["messages"] = messages
    stream = document.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "must be of type boolean", stream)
    fields["stream"] = bool(stream)
    stops = _stop_sequences(document.get("stop_sequences"))
    if stops:
        fields["stop"] = list(stops)
    for name, high in (("temperature", 1), ("top_p", 1)):
        value = document.get(name)
        if value is not None:
            fields[name] = _number(value, name, 0, high)
    top_k = document.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _invalid("top_k", "must be an integer >= 0", top_k)
    user = _user(document.get("metadata"))
    if user is not None:
        fields["user"] = user
    fields.update(_tools(document.get("tools"), document.get("tool_choice")))
    response_format = _response_format(document.get("output_config"))
    if response_format is not None:
        fields["response_format"] = response_format
    chat = request_from_kwargs(fields)
    ignored = tuple(sorted(name for name in document if name not in _READ))
    return MessagesRequest(chat=chat, model=model, stop_sequences=stops, stream=chat.stream, ignored=ignored)


def _max_tokens(document: dict[str, Any]) -> int:
    value = _required(document, "max_tokens", "max_tokens")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or not 1 <= value < 2**63:
        raise _invalid("max_tokens", "must be an integer >= 1", value)
    return int(value)


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("stop_sequences", "must be of type array", value)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _invalid(f"stop_sequences[{index}]", "must be of type string", item)
    stops = tuple(item for item in value if item)
    if len(stops) > MAX_STOPS:
        raise InvalidRequest(f"invalid field stop_sequences: patchbay takes at most {MAX_STOPS} stop sequences, "
                             f"got {len(stops)}", param="stop_sequences")
    return stops


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _invalid(param, f"must be a number from {low} to {high}", value)
    return float(value)


def _user(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "must be of type object", metadata)
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _invalid("metadata.user_id", "must be of type string", user)
    return user or None


def _system(system: Any) -> list[dict[str, Any]]:
    """The top-level ``system`` as a list of zero or one system message."""
    if system is None:
        return []
    text = _plain_text(system, "system")
    return [{"role": "system", "content": text}] if text else []


def _plain_text(content: Any, where: str) -> str:
    """A string, or a list of text blocks joined by newlines (system prompts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(where, "must be a string or an array of text blocks", content)
    texts = []
    for index, block in enumerate(content):
        block_where = f"{where}[{index}]"
        if not isinstance(block, dict):
            raise _invalid(block_where, "must be of type object", block)
        if block.get("type") != "text":
            raise _invalid(f"{block_where}.type", 'must be "text"', block.get("type"))
        texts.append(_text(block, block_where))
    return "\n".join(texts)


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise _invalid("messages", "must be of type array", messages)
    if not messages:
        raise InvalidRequest("invalid field messages: must have at least 1 item", param="messages")
    converted: list[dict[str, Any]] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(where, "must be of type object", message)
        role = _required(message, "role", f"{where}.role")
        if role not in ("user", "assistant", "system"):
            raise _invalid(f"{where}.role", 'must be "user" or "assistant"', role)
        content = _required(message, "content", f"{where}.content")
        if not isinstance(content, str | list):
            raise _invalid(f"{where}.content", "must be a string or an array of content blocks", content)
        if not content and not (role == "assistant" and index == last):
            raise InvalidRequest(f"invalid field {where}.content: must not be empty (only a last assistant "
                                 "message may be)", param=f"{where}.content")
        if role == "system":
            text = _plain_text(content, f"{where}.content")
            converted += [{"role": "system", "content": text}] if text else []
        elif role == "assistant":
            converted += _assistant(content, where)
        else:
            converted += _user_turn(content, where)
    return converted


def _assistant(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}] if content else []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.content[{index}]"
        kind = _block_type(block, block_where)
        if kind == "text":
            texts.append(_text(block, block_where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, block_where))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning: no other API takes it back
        else:
            raise _invalid(f"{block_where}.type", "must be text, tool_use, thinking or redacted_thinking in an "
                           "assistant message", kind)
    text = "\n".join(texts)
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = _required(block, "id", f"{where}.id")
    name = _required(block, "name", f"{where}.name")
    arguments = _required(block, "input", f"{where}.input")
    for key, value in (("id", call_id), ("name", name)):
        if not isinstance(value, str) or not value:
            raise _invalid(f"{where}.{key}", "must be a non-empty string", value)
    if not isinstance(arguments, dict):
        raise _invalid(f"{where}.input", "must be of type object", arguments)
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _user_turn(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages first, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        block_where = f"{where}.content[{index}]"
        kind = _block_type(block, block_where)
        if kind == "tool_result":
            message, images = _tool_result(block, block_where)
            results.append(message)
            result_images += images
        elif kind in ("text", "image", "document"):
            parts.append(_part(block, kind, block_where))
        else:
            raise _invalid(f"{block_where}.type", "must be text, image, document or tool_result in a user message",
                           kind)
    parts = result_images + parts
    if not parts:
        return results
    if all(part["type"] == "text" for part in parts):
        return [*results, {"role": "user", "content": "\n".join(part["text"] for part in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tool message for a ``tool_result`` block, and the images it held (for a user message)."""
    call_id = _required(block, "tool_use_id", f"{where}.tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_use_id", "must be a non-empty string", call_id)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _invalid(f"{where}.is_error", "must be of type boolean", is_error)
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, inner in enumerate(content):
            inner_where = f"{where}.content[{index}]"
            kind = _block_type(inner, inner_where)
            if kind not in ("text", "image", "document"):
                raise _invalid(f"{inner_where}.type", "must be text, image or document in a tool result", kind)
            part = _part(inner, kind, inner_where)
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    elif content is not None:
        raise _invalid(f"{where}.content", "must be a string or an array of content blocks", content)
    text = "\n".join(texts)
    if is_error:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict):
        raise _invalid(where, "must be of type object", block)
    kind = _required(block, "type", f"{where}.type")
    if not isinstance(kind, str):
        raise _invalid(f"{where}.type", "must be of type string", kind)
    if kind in _SERVER_BLOCKS:
        raise UnsupportedFeature(f"{where}.type: {kind} blocks need Anthropic's own servers; patchbay does not "
                                 "take them", param=f"{where}.type")
    if kind not in _BLOCK_TYPES:
        raise _invalid(f"{where}.type", "must be one of " + ", ".join(_BLOCK_TYPES), kind)
    return kind


def _part(block: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """A text, image or document block as a Chat Completions content part."""
    if kind == "text":
        return {"type": "text", "text": _text(block, where)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    return {"type": "text", "text": _document_text(block, where)}


def _text(block: dict[str, Any], where: str) -> str:
    text = _required(block, "text", f"{where}.text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text", "must be of type string", text)
    return text


def _image_url(block: dict[str, Any], where: str) -> str:
    source = _required(block, "source", f"{where}.source")
    if not isinstance(source, dict):
        raise _invalid(f"{where}.source", "must be of type object", source)
    kind = _required(source, "type", f"{where}.source.type")
    if kind == "base64":
        media_type = _required(source, "media_type", f"{where}.source.media_type")
        if media_type not in _IMAGE_TYPES:
            raise _invalid(f"{where}.source.media_type", "must be one of " + ", ".join(_IMAGE_TYPES), media_type)
        data = _required(source, "data", f"{where}.source.data")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.source.data", "must be a non-empty base64 string", data)
        return f"data:{media_type};base64,{data}"
    if kind == "url":
        url = _required(source, "url", f"{where}.source.url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{where}.source.url", "must be a non-empty string", url)
        return url
    if kind == "file":
        raise UnsupportedFeature(f"{where}.source: images from the Files API (file_id) are not supported; send "
                                 "base64 data or a URL", param=f"{where}.source.type")
    raise _invalid(f"{where}.source.type", 'must be "base64" or "url"', kind)


def _document_text(block: dict[str, Any], where: str) -> str:
    """A document block's text: plain-text sources only (PDFs need a model that reads them)."""
    source = _required(block, "source", f"{where}.source")
    if not isinstance(source, dict):
        raise _invalid(f"{where}.source", "must be of type object", source)
    kind = source.get("type")
    if kind == "text":
        data = _required(source, "data", f"{where}.source.data")
        if not isinstance(data, str):
            raise _invalid(f"{where}.source.data", "must be of type string", data)
        text = data
    elif kind == "content":
        inner = _required(source, "content", f"{where}.source.content")
        if isinstance(inner, list):  # text blocks only; images in a document are not kept apart
            inner = [item for item in inner if not (isinstance(item, dict) and item.get("type") == "image")]
        text = _plain_text(inner, f"{where}.source.content")
    elif kind in ("base64", "url", "file"):
        raise UnsupportedFeature(f"{where}.source: {kind} documents (PDF or files) are not supported; send "
                                 "the text (a text source)", param=f"{where}.source.type")
    else:
        raise _invalid(f"{where}.source.type", 'must be "text", "content", "base64", "url" or "file"', kind)
    title = block.get("title")
    return f"{title}\n\n{text}" if isinstance(title, str) and title else text


def _tools(tools: Any, tool_choice: Any) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` as the Chat Completions fields, checked by
    :func:`~patchbay.chat.output.output_spec` (its errors renamed to the Anthropic params)."""
    fields: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools", "must be of type array", tools)
        fields["tools"] = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    if tool_choice is not None:
        fields.update(_tool_choice(tool_choice))
    try:
        output_spec(fields.get("tools"), fields.get("tool_choice"), None, fields.get("parallel_tool_calls"))
    except InvalidRequest as error:
        param = _anthropic_param(error.param or "tools")
        raise InvalidRequest(_anthropic_param(error.message), param=param) from None
    return fields


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _invalid(where, "must be of type object", tool)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise UnsupportedFeature(f"{where}.type: {kind!r:.60} is a server tool, run by Anthropic's own servers; "
                                 "patchbay takes custom tools (name, description, input_schema)",
                                 param=f"{where}.type")
    name = _required(tool, "name", f"{where}.name")
    schema = _required(tool, "input_schema", f"{where}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    description = tool.get("description")
    if description is not None:
        function["description"] = description
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise _invalid("tool_choice", "must be of type object", choice)
    kind = _required(choice, "type", "tool_choice.type")
    mapped: str | dict[str, Any]
    if kind == "tool":
        name = _required(choice, "name", "tool_choice.name")
        if not isinstance(name, str):
            raise _invalid("tool_choice.name", "must be of type string", name)
        mapped = {"type": "function", "function": {"name": name}}
    elif kind in ("auto", "any", "none"):
        mapped = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise _invalid("tool_choice.type", 'must be "auto", "any", "tool" or "none"', kind)
    fields: dict[str, Any] = {"tool_choice": mapped}
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _invalid("tool_choice.disable_parallel_tool_use", "must be of type boolean", disable)
    if disable and kind != "none":
        fields["parallel_tool_calls"] = False
    return fields


#: Chat Completions paths in output_spec's errors -> the Anthropic request's.
_PARAM_NAMES = (("function.parameters", "input_schema"), ("function.description", "description"),
                ("function.name", "name"), ("parallel_tool_calls", "tool_choice.disable_parallel_tool_use"),
                ('"required"', '"any"'))


def _anthropic_param(text: str) -> str:
    for chat, anthropic in _PARAM_NAMES:
        text = text.replace(chat, anthropic)
    return text


def _response_format(config: Any) -> dict[str, Any] | None:
    """``output_config.format`` (structured outputs) as ``response_format``; the rest is ignored."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise _invalid("output_config", "must be of type object", config)
    output_format = config.get("format")
    if output_format is None:
        return None
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        raise _invalid("output_config.format.type", 'must be "json_schema"',
                       output_format.get("type") if isinstance(output_format, dict) else output_format)
    schema = _required(output_format, "schema", "output_config.format.schema")
    if not isinstance(schema, dict):
        raise _invalid("output_config.format.schema", "must be of type object", schema)
    response_format = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    try:
        output_spec(None, None, response_format, None)
    except InvalidRequest as error:
        raise InvalidRequest(error.message.replace("response_format.json_schema.schema", "output_config.format.schema"),
                             param="output_config.format.schema") from None
    return response_format


def _required(container: dict[str, Any], key: str, param: str) -> Any:
    if key not in container or container[key] is None:
        raise InvalidRequest(f"missing required field {param}", param=param)
    return container[key]


def _invalid(param: str, rule: str, value: Any) -> InvalidRequest:
    shown = f"{value!r:.60}" if isinstance(value, str) else _json_type(value)
    return InvalidRequest(f"invalid field {param}: {rule}, got {shown}", param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
             type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


# -- errors -----------------------------------------------------------------------------------------


#: HTTP status -> Anthropic ``error.type`` (https://docs.claude.com/en/api/errors, and the anthropic
#: SDK's ``ErrorType``). Other 4xx statuses are ``invalid_request_error``, other 5xx ``api_error``.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_envelope(error: PatchbayError) -> dict[str, Any]:
    """The Anthropic error body, ``{"type": "error", "error": {"type", "message"}}``, typed by the
    error's HTTP status (:data:`ERROR_TYPES`)."""
    status = error.status
    kind = ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(error)}}


# -- events -> the answer ---------------------------------------------------------------------------


#: patchbay finish reasons -> Anthropic stop reasons (``stop`` is ``end_turn``, ``stop_sequence``
#: when the matched stop is known, ``tool_use`` when the answer called tools).
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _usage(usage: Usage | None) -> dict[str, Any]:
    """The usage of a ``message_delta``: Anthropic's counts (zeros when unknown), plus patchbay's
    ``cost`` in US dollars when the answer was priced."""
    counts: dict[str, Any] = {"input_tokens": usage.prompt_tokens if usage else 0,
                              "output_tokens": usage.completion_tokens if usage else 0}
    if usage is not None and usage.cost is not None:
        counts["cost"] = usage.cost
    return counts


@dataclass(slots=True)
class _ToolBlock:
    """A tool call whose block is not started yet: its name has not come."""

    index: int
    id: str | None = None
    arguments: list[str] = field(default_factory=list)


class MessageRendering:
    """Provider events -> Anthropic stream frames, and the whole ``Message`` they add up to.

    :meth:`feed` each event, then :meth:`finish`; the frames are sent as they are (stream), and
    :meth:`message` is the ``Message`` they describe (whole answer), folded from the same frames
    the way the anthropic SDK's stream accumulator folds them. Only choice 0 is rendered
    (``n`` has no Messages equivalent); logprobs and fallbacks are not shown.

    Decisions:

    - ``message_start`` waits for the first content (or :meth:`finish`), so its ``model`` is the
      one of the last :class:`~patchbay.events.ProviderInfo` before it (else the requested one);
      its usage is what is known then (usually zeros), and ``message_delta`` carries both counts
      (the SDK takes them over: they are cumulative).
    - A tool call's block starts at its first fragment that has a name (fragments before it are
      held); its id is the provider's, else ``toolu_<message id>_<n>``; later name fragments are
      ignored. Its arguments go out as they come (``input_json_delta``). When its block closes
      they must be a JSON object (or empty: ``{}``), else :class:`~patchbay.errors.ProtocolError`
      (the stream and the whole answer fail alike); only a last call cut by the token limit keeps
      ``{}`` for unreadable arguments. A fragment of a call whose block is closed (calls
      interleaved) is a ProtocolError too: Anthropic's blocks cannot reopen.
    - ``stop_reason`` is ``tool_use`` whenever the answer has tool blocks and was not cut short,
      whatever finish reason the provider gave (agents run tools on ``tool_use`` only).
    """

    def __init__(self, request: MessagesRequest, message_id: str) -> None:
        self.request = request
        self.message_id = message_id
        self._model = request.model
        self._snapshot: dict[str, Any] | None = None  # the Message, folded from the frames sent
        self._json: dict[int, list[str]] = {}  # per tool block: the partial_json sent
        self._open: int | None = None  # index of the open content block
        self._open_call: int | None = None  # provider index of the tool call in the open block
        self._closed_calls: set[int] = set()
        self._held: _ToolBlock | None = None
        self._pinged = False
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._finished = False

    # -- the contract ------------------------------------------------------------------------------

    def feed(self, event: StreamEvent) -> list[Frame]:
        """The frames ``event`` produces (none for most non-content events)."""
        if self._finished:
            return []
        if isinstance(event, TextDelta):
            return self._text(event) if event.choice == 0 and event.text else []
        if isinstance(event, ToolCallDelta):
            return self._tool(event) if event.choice == 0 else []
        if isinstance(event, Finish):
            if event.choice == 0:
                self._finish = event
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, ProviderInfo) and self._snapshot is None:
            self._model = event.model
        return []

    def start(self) -> list[Frame]:
        """``message_start`` now, if not sent yet (for an endpoint that wants bytes on the wire before
        the first content: it then names the model known so far). :meth:`feed` and :meth:`finish`
        send it when needed, so calling this is optional."""
        return [] if self._finished else self._start()

    def finish(self) -> list[Frame]:
        """The last frames: the open block closed, ``message_delta`` and ``message_stop``."""
        if self._finished:
            return []
        frames = self._start()
        cut = self._finish is not None and self._finish.reason == "length"
        frames += self._flush_held() + self._close(lenient=cut)
        self._finished = True
        usage = self._usage
        frames.append(self._emit("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(), "stop_sequence": self._stop_sequence()},
            "usage": _usage(usage),
        }))
        frames.append(self._emit("message_stop", {"type": "message_stop"}))
        return frames

    def message(self) -> dict[str, Any]:
        """The whole ``Message`` (call after :meth:`finish`): the fold of every frame sent."""
        if not self._finished or self._snapshot is None:
            raise RuntimeError("MessageRendering.message() is called after finish()")
        return self._snapshot

    @staticmethod
    def error_frame(error: PatchbayError) -> Frame:
        """The in-band ``error`` event, for a failure after the stream started."""
        return "error", error_envelope(error)

    # -- content -------------------------------------------------------------------------------------

    def _text(self, event: TextDelta) -> list[Frame]:
        frames = self._start() + self._flush_held()
        if self._open is None or self._open_call is not None:
            frames += self._close() + self._open_block({"type": "text", "text": ""})
        frames.append(self._delta({"type": "text_delta", "text": event.text}))
        return frames

    def _tool(self, event: ToolCallDelta) -> list[Frame]:
        if event.index in self._closed_calls:
            if not event.arguments:
                return []  # an empty last fragment (some upstreams send one): nothing is lost
            raise ProtocolError(f"the fragments of tool call {event.index} came after another content block "
                                "began; the Messages format cannot reopen a block")
        frames = self._start()
        if self._open_call == event.index:
            return frames + ([self._delta({"type": "input_json_delta", "partial_json": event.arguments})]
                             if event.arguments else [])
        held = self._held
        if held is not None and held.index != event.index:
            frames += self._flush_held()
            held = None
        if held is None:
            held = self._held = _ToolBlock(event.index)
        held.id = held.id or event.id
        if event.arguments:
            held.arguments.append(event.arguments)
        if event.name:
            frames += self._flush_held(event.name)
        return frames

    def _flush_held(self, name: str = "") -> list[Frame]:
        """Start the block of the held tool call (with ``name``, or none if it never came)."""
        held, self._held = self._held, None
        if held is None:
            return []
        frames = self._close()
        number = len(self._content())
        call_id = held.id or f"toolu_{self.message_id.removeprefix('msg_')}_{number}"
        frames += self._open_block({"type": "tool_use", "id": call_id, "name": name, "input": {}}, held.index)
        frames += [self._delta({"type": "input_json_delta", "partial_json": part}) for part in held.arguments]
        return frames

    def _open_block(self, block: dict[str, Any], call: int | None = None) -> list[Frame]:
        index = len(self._content())
        frames = [self._emit("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": block})]
        self._open, self._open_call = index, call
        if not self._pinged:
            self._pinged = True
            frames.append(self._emit("ping", {"type": "ping"}))
        return frames

    def _close(self, *, lenient: bool = False) -> list[Frame]:
        if self._open is None:
            return []
        index = self._open
        if self._open_call is not None:
            self._content()[index]["input"] = self._tool_input(index, lenient=lenient)
            self._closed_calls.add(self._open_call)
        self._open = self._open_call = None
        return [self._emit("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _tool_input(self, index: int, *, lenient: bool) -> dict[str, Any]:
        text = "".join(self._json.get(index, []))
        if not text.strip():
            return {}
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return value
        if lenient:
            return {}
        name = self._content()[index]["name"]
        raise ProtocolError(f"the arguments of the tool call {name!r:.60} are not a JSON object")

    def _delta(self, delta: dict[str, Any]) -> Frame:
        assert self._open is not None
        return self._emit("content_block_delta", {"type": "content_block_delta", "index": self._open,
                                                  "delta": delta})

    def _start(self) -> list[Frame]:
        if self._snapshot is not None:
            return []
        usage = self._usage
        return [self._emit("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "content": [], "model": self._model,
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage.prompt_tokens if usage else 0, "output_tokens": 0},
        }})]

    def _stop_reason(self) -> str:
        reason = self._finish.reason if self._finish else "stop"
        if reason in ("length", "content_filter"):
            return _STOP_REASONS[reason]
        if reason == "tool_calls" or any(block["type"] == "tool_use" for block in self._content()):
            return "tool_use"
        return "stop_sequence" if self._stop_sequence() else "end_turn"

    def _stop_sequence(self) -> str | None:
        """The stop string that ended the answer, when the provider said which (``Finish.stop_sequence``,
        where patchbay's stop cutter reports it)."""
        if self._finish is None or self._finish.reason != "stop":
            return None
        return self._finish.stop_sequence or None

    # -- the fold ------------------------------------------------------------------------------------

    def _content(self) -> list[dict[str, Any]]:
        assert self._snapshot is not None
        content: list[dict[str, Any]] = self._snapshot["content"]
        return content

    def _emit(self, name: str, payload: dict[str, Any]) -> Frame:
        """A frame to send, applied to the snapshot first: the whole answer is what was sent."""
        _FOLDS[name](self, payload)
        return name, payload

    def _fold_start(self, payload: dict[str, Any]) -> None:
        self._snapshot = json.loads(json.dumps(payload["message"]))  # a copy, never the frame itself

    def _fold_block(self, payload: dict[str, Any]) -> None:
        self._content().append(dict(payload["content_block"]))

    def _fold_delta(self, payload: dict[str, Any]) -> None:
        index, delta = payload["index"], payload["delta"]
        if delta["type"] == "text_delta":
            self._content()[index]["text"] += delta["text"]
        else:
            self._json.setdefault(index, []).append(delta["partial_json"])

    def _fold_delta_message(self, payload: dict[str, Any]) -> None:
        assert self._snapshot is not None
        self._snapshot.update(payload["delta"])
        self._snapshot["usage"].update(payload["usage"])

    def _fold_nothing(self, payload: dict[str, Any]) -> None:
        pass


_FOLDS: dict[str, Callable[[MessageRendering, dict[str, Any]], None]] = {
    "message_start": MessageRendering._fold_start,
    "content_block_start": MessageRendering._fold_block,
    "ping": MessageRendering._fold_nothing,
    "content_block_delta": MessageRendering._fold_delta,
    "content_block_stop": MessageRendering._fold_nothing,  # the tool input is parsed by _close
    "message_delta": MessageRendering._fold_delta_message,
    "message_stop": MessageRendering._fold_nothing,
}
