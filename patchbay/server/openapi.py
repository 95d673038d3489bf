"""The OpenAPI document of the server, generated from the same types that validate requests.

Which paths and methods exist, their operation ids, summaries, schemas and security come from the
route table (:mod:`patchbay.server.routes`); this module adds the schemas and how each answer
looks (:data:`ANSWERS`).

The request schema is :class:`~patchbay.chat.request.ChatCompletionRequest`'s JSON Schema, the
very type the server decodes bodies into, so the document cannot promise what the server
rejects or the other way round.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from patchbay.chat.embeddings import embedding_request_schema
from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.response import ChatCompletion, ChatCompletionChunk, Model, ModelList
from patchbay.chat.text_completion import completion_request_schema
from patchbay.server.routes import Operation, Route, documented

__all__ = ["ANSWERS", "ErrorResponse", "openapi_document"]

REF = "#/components/schemas/{name}"


class ErrorObject(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    """Every error: the OpenAI error object."""

    error: ErrorObject


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(name=name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    described = {400: "Invalid JSON or a field that breaks the schema", 401: "Missing or wrong API key",
                 404: "Unknown model (or stored object)", 413: "Request body over the limit", 429: "Rate limited",
                 502: "Upstream failure", 503: "No provider could be tried", 504: "Upstream timeout"}
    return {str(status): {"description": described[status], "content": _json("ErrorResponse")} for status in statuses}


#: One server-sent event of a streamed answer (OpenAPI 3.2 ``itemSchema``): its data is a chunk,
#: an error object, or ``[DONE]``.
SSE_EVENT = {
    "type": "object", "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {"anyOf": [
            {"const": "[DONE]", "description": "The end of the stream (not JSON)."},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": {"oneOf": [
                {"$ref": REF.format(name="ChatCompletionChunk")}, {"$ref": REF.format(name="ErrorResponse")}]}}]},
    },
}

#: A content part as :func:`patchbay.chat.messages.validate_messages` checks it: typed, text parts with text.
CONTENT_PART = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
                "if": {"properties": {"type": {"const": "text"}}},
                "then": {"required": ["text"], "properties": {"text": {"type": "string"}}}}


def _with_message_rules(message: dict[str, Any]) -> dict[str, Any]:
    """ChatMessage plus the rules :func:`patchbay.chat.messages.validate_messages` applies after decoding,
    so that the document promises exactly what is accepted: content (text or typed parts) unless
    an assistant message carries tool calls, and ``tool_call_id`` on tool messages."""
    text_or_parts = {"anyOf": [{"type": "string"}, {"type": "array", "items": CONTENT_PART}]}
    message["properties"]["content"] = {"anyOf": [*text_or_parts["anyOf"], {"type": "null"}], "default": None}
    message["anyOf"] = [
        {"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}, "content": text_or_parts},
         "required": ["content"]},
        {"properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}},
         "required": ["tool_calls"]},
        {"properties": {"role": {"const": "tool"}, "content": text_or_parts, "tool_call_id": {"type": "string"}},
         "required": ["content", "tool_call_id"]},
    ]
    return message


#: The Anthropic and Responses bodies are read by hand-written decoders that follow those APIs'
#: own references (patchbay/chat/anthropic.py, patchbay/chat/responses.py); the document names
#: what they require and points there for the rest.
ANTHROPIC_REFERENCE = "https://docs.anthropic.com/en/api/messages"
RESPONSES_REFERENCE = "https://platform.openai.com/docs/api-reference/responses"
_OBJECT: dict[str, Any] = {"type": "object"}


def _anthropic_schemas() -> dict[str, Any]:
    message_param = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"enum": ["user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _OBJECT}]}}}
    return {
        "MessagesRequest": {
            "type": "object", "required": ["model", "messages", "max_tokens"],
            "description": f"An Anthropic Messages request ({ANTHROPIC_REFERENCE}): system, content blocks "
                           "text / image / tool_use / tool_result, tools, tool_choice, stop_sequences, temperature, "
                           "top_p, metadata, stream; other fields (thinking...) are accepted and ignored.",
            "properties": {"model": {"type": "string"}, "max_tokens": {"type": "integer", "minimum": 1},
                           "messages": {"type": "array", "items": message_param},
                           "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _OBJECT}]},
                           "stream": {"type": "boolean"}}},
        "CountTokensRequest": {"type": "object", "required": ["model", "messages"],
                               "description": "A Messages request without max_tokens."},
        "Message": {"type": "object", "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
                    "description": "An Anthropic Message."},
        "TokenCount": {"type": "object", "required": ["input_tokens"],
                       "properties": {"input_tokens": {"type": "integer"}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"const": "error"},
            "error": {"type": "object", "required": ["type", "message"],
                      "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}},
    }


def _other_schemas() -> dict[str, Any]:
    return {
        "ResponsesRequest": {
            "type": "object", "required": ["model"],
            "description": f"An OpenAI Responses request ({RESPONSES_REFERENCE}): input (a string or items: "
                           "messages, function_call, function_call_output), instructions, function tools, "
                           "tool_choice, text.format, max_output_tokens, previous_response_id, store, stream.",
            "properties": {"model": {"type": "string"},
                           "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _OBJECT}]},
                           "previous_response_id": {"type": "string"}, "store": {"type": "boolean"},
                           "stream": {"type": "boolean"}}},
        "Response": {"type": "object", "required": ["id", "object", "created_at", "status", "model", "output"],
                     "description": "An OpenAI Responses response."},
        "EmbeddingRequest": embedding_request_schema(),
        "EmbeddingResponse": {"type": "object", "required": ["object", "data", "model", "usage"]},
        "CompletionRequest": completion_request_schema(),
        "Completion": {"type": "object", "required": ["id", "object", "created", "model", "choices"]},
    }


def _stream(description: str) -> dict[str, Any]:
    """A streamed answer of named events (``event: <type>`` then ``data: <JSON>``)."""
    item = {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"type": "string"},
                           "data": {"type": "string", "contentMediaType": "application/json"}}}
    return {"text/event-stream": {"itemSchema": item, "description": description}}


class _Answer(NamedTuple):
    """What the route table does not say about an operation's answer: the 200's description, its
    content when it is not (only) the JSON of the operation's response schema, the error envelope."""

    ok: str
    content: dict[str, Any] | None = None  # added to the response schema's JSON, or the whole content without one
    description: str | None = None
    envelope: str = "ErrorResponse"
    errors: dict[str, str] | None = None  # error descriptions that differ from the usual ones


_OBJECT_JSON = {"application/json": {"schema": {"type": "object"}}}
_STREAM_TEXT = ("server-sent events: `data: <ChatCompletionChunk JSON>` lines, then `data: [DONE]`; an error "
                "after the first chunk arrives as `data: {\"error\": ...}` and ends the stream.")

#: By operation id: the answers of the operations in :data:`~patchbay.server.routes.ROUTES`.
ANSWERS: dict[str, _Answer] = {
    "createChatCompletion": _Answer(f"The answer (JSON); when `stream` is true, {_STREAM_TEXT}",
                                    {"text/event-stream": {"itemSchema": SSE_EVENT}}),
    "createMessage": _Answer(
        "The message; with `stream`, server-sent events", _stream("Anthropic stream events"),
        description="The key may also be sent as `x-api-key`. Streamed: message_start, content_block_start, "
                    "ping, content_block_delta, content_block_stop, message_delta, message_stop; a failure "
                    "after the first event is an `error` event.", envelope="AnthropicError"),
    "countMessageTokens": _Answer("The estimate", envelope="AnthropicError"),
    "createResponse": _Answer("The response; with `stream`, server-sent events (response.created ... "
                              "response.completed; on a failure after the start, `error` then `response.failed`)",
                              _stream("Responses stream events")),
    "retrieveResponse": _Answer("The response"),
    "createEmbedding": _Answer("One vector per input (`encoding_format` float or base64)"),
    "createCompletion": _Answer("The completion; with `stream`, `data:` lines of completion chunks, then "
                                "`data: [DONE]`", _stream("completion chunks")),
    "listModels": _Answer("The models"),
    "retrieveModel": _Answer("The model"),
    "health": _Answer("Alive", _OBJECT_JSON),
    "ready": _Answer("Ready to serve", _OBJECT_JSON, errors={"503": "Starting or stopping"}),
    "metrics": _Answer("Text exposition format", {"text/plain": {"schema": {"type": "string"}}}),
}


def _operation(route: Route, operation: Operation, auth: bool) -> dict[str, Any]:
    """The OpenAPI operation of a table route: its id, summary and schemas from the table, security
    (keyed routes when the server has keys), path parameter, and answers from :data:`ANSWERS`."""
    answer = ANSWERS[operation.operation_id]
    keyed = auth and not route.public
    content = {**(_json(operation.response) if operation.response else {}), **(answer.content or {})}
    errors = _errors(*sorted({*operation.errors, *((401,) if keyed else ())}))
    for status, body in errors.items():
        body["content"] = _json(answer.envelope)
        if answer.errors and status in answer.errors:
            body["description"] = answer.errors[status]
    described: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    if keyed:
        described["security"] = [{"bearer": []}]
    if answer.description:
        described["description"] = answer.description
    if route.pattern:
        name = route.path[route.path.index("{") + 1:-1]
        described["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]
    if operation.request:
        described["requestBody"] = {"required": True, "content": _json(operation.request)}
    described["responses"] = {"200": {"description": answer.ok, "content": content}, **errors}
    return described


def _paths(auth: bool) -> dict[str, Any]:
    """The document's paths: every route of the table that has an operation, with its methods."""
    paths: dict[str, Any] = {}
    for route, operation in documented():
        paths[route.path] = {method.lower(): _operation(route, operation, auth) for method in route.methods}
    return paths


def openapi_document(version: str, *, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.2 document; ``auth`` adds the bearer-key requirement to the keyed routes."""
    _, components = msgspec.json.schema_components(
        [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelList, Model, ErrorResponse], ref_template=REF)
    _with_message_rules(components["ChatMessage"])
    components["ChatCompletionRequest"].pop("additionalProperties", None)  # unknown fields go upstream
    document: dict[str, Any] = {
        "openapi": "3.2.0",  # 3.2 for itemSchema: the schema of each server-sent event
        "info": {"title": "patchbay", "version": version,
                 "description": "OpenAI-compatible chat gateway with routing and fallback."},
        "paths": _paths(auth),
        "components": {"schemas": {**components, **_anthropic_schemas(), **_other_schemas()}},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document
