"""Embeddings: the typed request of ``POST /v1/embeddings``, its result, and the OpenAI answer.

An embedding is not a stream, so it has its own small request type rather than riding the chat
request: :class:`EmbeddingRequest` is read once at the edge (:func:`decode_embedding_request`),
handed to the router and to the providers (``embed``), which return an
:class:`EmbeddingResult`; :func:`to_response` writes OpenAI's ``CreateEmbeddingResponse``.
Fields the type does not name are kept in ``extra_body`` and go upstream unchanged, as for chat.

``encoding_format`` "base64" is each vector as little-endian float32 bytes in base64, as the
OpenAI API sends it (and as its SDKs decode it); patchbay always asks its upstreams for floats
and encodes here, so every target can serve either format.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from patchbay.chat.request import _json_document
from patchbay.errors import InvalidRequest

__all__ = [
    "MAX_INPUTS",
    "EmbeddingRequest",
    "EmbeddingResult",
    "decode_base64_vector",
    "decode_embedding_request",
    "embedding_request_from_dict",
    "embedding_request_schema",
    "encode_base64_vector",
    "normalized",
    "to_response",
]

MAX_INPUTS = 2048  #: items in one request's ``input`` at most, as OpenAI allows
MAX_TOKEN_ID = 2**31 - 1
FIELDS = ("model", "input", "encoding_format", "dimensions", "user", "extra_body")

#: What ``input`` holds once checked: str | list[str] | list[int] | list[list[int]] (msgspec takes
#: one list type in a union, so the field says ``list[Any]``; :func:`embedding_request_schema`
#: states the four shapes).
EmbeddingInput = str | list[Any]


class EmbeddingRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The body of ``POST /v1/embeddings``; other fields are kept in ``extra_body``."""

    model: str
    #: One text, several texts, one text as token ids, or several texts as token ids.
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    extra_body: dict[str, Any] | None = None

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list, one item per vector asked for (texts, or token id lists)."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]

    def replace(self, **fields: Any) -> EmbeddingRequest:
        """A copy with ``fields`` changed (e.g. the model a target knows the route by)."""
        return msgspec.structs.replace(self, **fields)

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The JSON for an OpenAI-compatible upstream: the client's fields under the target's
        model name; floats are asked for (base64 is encoded here, see the module docstring)."""
        body: dict[str, Any] = {"model": model, "input": self.input}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self.user is not None:
            body["user"] = self.user
        if self.extra_body:
            body.update(self.extra_body)
        return body


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """What a provider's ``embed`` returns: one vector per input, in order."""

    vectors: list[list[float]]
    model: str
    prompt_tokens: int = 0
    provider: str | None = None  #: who answered (set by the caller's entry point)
    cost: float = 0.0  #: US dollars: the input tokens at the answering model's input price


def embedding_request_schema() -> dict[str, Any]:
    """The request's JSON Schema, for the OpenAPI document: the four input shapes, and unknown
    fields allowed (they go upstream)."""
    text = {"type": "string", "minLength": 1}
    tokens = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}, "minItems": 1}
    return {
        "title": "EmbeddingRequest", "type": "object", "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "input": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_INPUTS},
                                tokens,
                                {"type": "array", "items": tokens, "minItems": 1, "maxItems": MAX_INPUTS}],
                      "description": "A text, texts, a text as token ids, or texts as token ids."},
            "encoding_format": {"enum": ["float", "base64"], "default": "float"},
            "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536},
            "user": {"type": "string"},
            "extra_body": {"type": "object", "description": "Fields for the upstream that patchbay does not name."},
        },
    }


def decode_embedding_request(body: bytes) -> EmbeddingRequest:
    """Parse and check a JSON request body; InvalidRequest names the field that is wrong."""
    return embedding_request_from_dict(_json_document(body))


def embedding_request_from_dict(document: Any) -> EmbeddingRequest:
    """The request for a body already parsed (or a client's keyword arguments), checked field by
    field; names the request type does not have go into ``extra_body``."""
    if not isinstance(document, dict):
        raise InvalidRequest("invalid request: the body must be of type object")
    model = document.get("model")
    if model is None:
        raise InvalidRequest("missing required field model", param="model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise InvalidRequest("invalid field model: must be a string of 1 to 256 characters", param="model")
    if "input" not in document:
        raise InvalidRequest("missing required field input", param="input")
    encoding = document.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise InvalidRequest("invalid field encoding_format: must be one of float, base64", param="encoding_format")
    dimensions = document.get("dimensions")
    if isinstance(dimensions, float) and dimensions.is_integer():
        dimensions = int(dimensions)
    if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= 65536):
        raise InvalidRequest("invalid field dimensions: must be an integer from 1 to 65536", param="dimensions")
    user = document.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("invalid field user: must be of type string", param="user")
    extra = document.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidRequest("invalid field extra_body: must be of type object", param="extra_body")
    unknown = {name: value for name, value in document.items() if name not in FIELDS}
    return EmbeddingRequest(model=model, input=_checked_input(document["input"]),
                            encoding_format=encoding or "float", dimensions=dimensions, user=user,
                            extra_body={**unknown, **(extra or {})} or None)


def _checked_input(value: Any) -> EmbeddingInput:
    """``input`` as one of its four shapes; anything else is InvalidRequest naming the item."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("invalid field input: must not be an empty string", param="input")
        return value
    if not isinstance(value, list) or not value:
        raise InvalidRequest("invalid field input: must be a string or a non-empty array of strings or token ids",
                             param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"invalid field input: must have at most {MAX_INPUTS} items", param="input")
    first = value[0]
    if isinstance(first, str):
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise InvalidRequest(f"invalid field input[{index}]: must be a non-empty string (as input[0] is)",
                                     param=f"input[{index}]")
        return value
    if _token_id(first) is not None:
        return _checked_tokens(value, "input")
    checked: list[list[int]] = []
    for index, item in enumerate(value):
        if not isinstance(item, list) or not item:
            raise InvalidRequest(f"invalid field input[{index}]: must be a string, a token id or a non-empty "
                                 "array of token ids, one kind for every item", param=f"input[{index}]")
        checked.append(_checked_tokens(item, f"input[{index}]"))
    return checked


def _token_id(value: Any) -> int | None:
    """``value`` as a token id, or None. A whole float (``2.0``) is the integer, as JSON Schema has it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if type(value) is int and 0 <= value <= MAX_TOKEN_ID else None


def _checked_tokens(tokens: list[Any], where: str) -> list[int]:
    checked = []
    for index, token in enumerate(tokens):
        token_id = _token_id(token)
        if token_id is None:
            raise InvalidRequest(f"invalid field {where}[{index}]: must be a token id (an integer >= 0)",
                                 param=f"{where}[{index}]")
        checked.append(token_id)
    return checked


def encode_base64_vector(vector: list[float]) -> str:
    """``vector`` as OpenAI's base64: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_base64_vector(text: str) -> list[float]:
    """The floats of a base64 vector (little-endian float32); ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def normalized(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays as it is)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def to_response(result: EmbeddingResult, encoding_format: str = "float") -> dict[str, Any]:
    """OpenAI's ``CreateEmbeddingResponse`` for ``result``, vectors as floats or base64."""
    encode = encode_base64_vector if encoding_format == "base64" else list
    data = [{"object": "embedding", "index": index, "embedding": encode(vector)}
            for index, vector in enumerate(result.vectors)]
    return {"object": "list", "data": data, "model": result.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens,
                      "cost": result.cost}}
