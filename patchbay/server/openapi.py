"""The OpenAPI document of the server, generated from the same types that validate requests.

The request schema is :class:`~patchbay.chat.request.ChatCompletionRequest`'s JSON Schema, the
very type the server decodes bodies into, so the document cannot promise what the server
rejects or the other way round.
"""

from __future__ import annotations

from typing import Any

import msgspec

from patchbay.chat.embeddings import embedding_request_schema
from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.response import ChatCompletion, ChatCompletionChunk, Model, ModelList
from patchbay.chat.text_completion import completion_request_schema

__all__ = ["ErrorResponse", "openapi_document"]

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


def _anthropic_errors(*statuses: int) -> dict[str, Any]:
    return {status: {**body, "content": _json("AnthropicError")} for status, body in _errors(*statuses).items()}


def _stream(description: str) -> dict[str, Any]:
    """A streamed answer of named events (``event: <type>`` then ``data: <JSON>``)."""
    item = {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"type": "string"},
                           "data": {"type": "string", "contentMediaType": "application/json"}}}
    return {"text/event-stream": {"itemSchema": item, "description": description}}


def _api_paths(secured: dict[str, Any], auth_errors: tuple[int, ...]) -> dict[str, Any]:
    """The Anthropic Messages, OpenAI Responses, embeddings and legacy completions operations."""
    statuses = (400, *auth_errors, 404, 413, 429, 502, 503, 504)
    return {
        "/v1/messages": {"post": {
            "operationId": "createMessage", "summary": "Create a message (Anthropic Messages API)", **secured,
            "description": "The key may also be sent as `x-api-key`. Streamed: message_start, content_block_start, "
                           "ping, content_block_delta, content_block_stop, message_delta, message_stop; a failure "
                           "after the first event is an `error` event.",
            "requestBody": {"required": True, "content": _json("MessagesRequest")},
            "responses": {"200": {"description": "The message; with `stream`, server-sent events",
                                  "content": {**_json("Message"), **_stream("Anthropic stream events")}},
                          **_anthropic_errors(*statuses)},
        }},
        "/v1/messages/count_tokens": {"post": {
            "operationId": "countMessageTokens", "summary": "Estimate a Messages request's input tokens", **secured,
            "requestBody": {"required": True, "content": _json("CountTokensRequest")},
            "responses": {"200": {"description": "The estimate", "content": _json("TokenCount")},
                          **_anthropic_errors(400, *auth_errors, 413)},
        }},
        "/v1/responses": {"post": {
            "operationId": "createResponse", "summary": "Create a response (OpenAI Responses API)", **secured,
            "requestBody": {"required": True, "content": _json("ResponsesRequest")},
            "responses": {"200": {"description": "The response; with `stream`, server-sent events "
                                                 "(response.created ... response.completed; on a failure after the "
                                                 "start, `error` then `response.failed`)",
                                  "content": {**_json("Response"), **_stream("Responses stream events")}},
                          **_errors(*statuses)},
        }},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding", "summary": "Embed texts (targets with the embeddings capability)",
            **secured,
            "requestBody": {"required": True, "content": _json("EmbeddingRequest")},
            "responses": {"200": {"description": "One vector per input (`encoding_format` float or base64)",
                                  "content": _json("EmbeddingResponse")},
                          **_errors(*statuses)},
        }},
        "/v1/completions": {"post": {
            "operationId": "createCompletion", "summary": "Complete a prompt (legacy; raw-completion targets)",
            **secured,
            "requestBody": {"required": True, "content": _json("CompletionRequest")},
            "responses": {"200": {"description": "The completion; with `stream`, `data:` lines of completion "
                                                 "chunks, then `data: [DONE]`",
                                  "content": {**_json("Completion"), **_stream("completion chunks")}},
                          **_errors(*statuses)},
        }},
        "/v1/responses/{response_id}": {"get": {
            "operationId": "retrieveResponse", "summary": "A stored response", **secured,
            "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The response", "content": _json("Response")},
                          **_errors(*auth_errors, 404)},
        }},
    }


def openapi_document(version: str, *, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.2 document; ``auth`` adds the bearer-key requirement to the API paths."""
    _, components = msgspec.json.schema_components(
        [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelList, Model, ErrorResponse], ref_template=REF)
    _with_message_rules(components["ChatMessage"])
    components["ChatCompletionRequest"].pop("additionalProperties", None)  # unknown fields go upstream
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if auth else {}
    auth_errors = (401,) if auth else ()
    stream_text = ("server-sent events: `data: <ChatCompletionChunk JSON>` lines, then `data: [DONE]`; an error "
                   "after the first chunk arrives as `data: {\"error\": ...}` and ends the stream.")
    document: dict[str, Any] = {
        "openapi": "3.2.0",  # 3.2 for itemSchema: the schema of each server-sent event
        "info": {"title": "patchbay", "version": version,
                 "description": "OpenAI-compatible chat gateway with routing and fallback."},
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion", "summary": "Create a chat completion (streaming or not)",
                **secured,
                "requestBody": {"required": True, "content": _json("ChatCompletionRequest")},
                "responses": {
                    "200": {"description": f"The answer (JSON); when `stream` is true, {stream_text}",
                            "content": {**_json("ChatCompletion"), "text/event-stream": {"itemSchema": SSE_EVENT}}},
                    **_errors(400, *auth_errors, 404, 413, 429, 502, 503, 504),
                },
            }},
            "/v1/models": {"get": {
                "operationId": "listModels", "summary": "List the models (routes) served", **secured,
                "responses": {"200": {"description": "The models", "content": _json("ModelList")},
                              **_errors(*auth_errors)},
            }},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "summary": "One model", **secured,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model", "content": _json("Model")},
                              **_errors(*auth_errors, 404)},
            }},
            "/health": {"get": {"operationId": "health",
                                "summary": "Liveness and each target's status; counts and last errors with an API key",
                                "responses": {"200": {"description": "Alive",
                                                      "content": {"application/json": {"schema": {
                                                          "type": "object"}}}}}}},
            "/ready": {"get": {"operationId": "ready", "summary": "Readiness",
                               "responses": {"200": {"description": "Ready to serve",
                                                     "content": {"application/json": {"schema": {"type": "object"}}}},
                                             "503": {"description": "Starting or stopping",
                                                     "content": _json("ErrorResponse")}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", **secured,
                                 "responses": {"200": {"description": "Text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               **_errors(*auth_errors)}}},
        },
        "components": {"schemas": {**components, **_anthropic_schemas(), **_other_schemas()}},
    }
    document["paths"].update(_api_paths(secured, auth_errors))
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document
