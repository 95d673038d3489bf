"""What patchbay's server answers on its OpenAI-shaped endpoints, checked against OpenAI's own
published schemas (``../shared/openai/schemas.json``, beside the repository; see its README).

- :func:`validate` checks one document against one schema (Draft 2020-12) and raises an
  ``AssertionError`` naming where the document breaks which rule.
- :func:`schema_for` says which schema an endpoint's answer (or each of its stream events) follows.
- :class:`TrafficCheck` and the autouse fixture :func:`openai_conformance` (a pytest plugin,
  listed in ``tests/conftest.py``) validate every answer and every stream event the tests'
  clients receive from patchbay's server: in-process through
  :class:`tests.support.asgi_client.ASGIClient`, and from a
  :class:`tests.support.gateway_process.GatewayProcess` through httpx and httpx2 (the openai SDK,
  LangChain), aiohttp (``ClientResponse.read()``, and so ``.json()``/``.text()``) and requests
  (schemathesis). Answers from fake upstreams are never checked: only addresses a running
  ``GatewayProcess`` serves on. A test that receives a non-conformant answer fails at its
  teardown, with every violation listed. Not seen: Node clients (the Vercel AI SDK test) and
  aiohttp bodies read piecewise through ``response.content``.

The relaxations, each a narrow edit of a copy of the schemas (``validate(..., relaxed=False)``
still validates as published). :data:`NULLS_THE_API_SENDS`: the published schema names a bare
type in a few places where OpenAI's API sends ``null`` (the README lists them: ``finish_reason``,
``logprobs`` and ``usage`` on stream chunks, ``system_fingerprint``, ``service_tier``); the copy
allows ``null`` at exactly those places (a streamed legacy completion's chunks are
``CreateCompletionResponse`` under this module's name :data:`COMPLETION_CHUNK`), and everything
else is validated as published. Most of those places carry OpenAPI 3.0's ``nullable: true``,
which Draft 2020-12 ignores. And one form the published schema leaves out,
:data:`BASE64_EMBEDDING`: an embedding asked for with ``encoding_format: "base64"`` (what the
openai SDK asks for by default) is a base64 string, as OpenAI's API sends it, where the schema
only describes the list of floats.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support.asgi_client import ASGIClient, Response
from tests.support.gateway_process import GatewayProcess
from tests.support.paths import SCHEMAS

__all__ = [
    "BASE64_EMBEDDING",
    "COMPLETION_CHUNK",
    "HTTPX_MODULES",
    "NULLS_THE_API_SENDS",
    "SCHEMAS_PATH",
    "StreamCheck",
    "TrafficCheck",
    "openai_conformance",
    "schema_for",
    "validate",
]

SCHEMAS_PATH = SCHEMAS


def _httpx_modules() -> tuple[ModuleType, ...]:
    """httpx, and httpx2 where installed: the openai SDK's own fork of it (openai 3)."""
    modules = [httpx]
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module("httpx2"))
    return tuple(modules)


HTTPX_MODULES = _httpx_modules()

#: A legacy completion streamed: each chunk is a ``CreateCompletionResponse`` whose
#: ``finish_reason`` is null until the last one (the README's "finish_reason on stream chunks").
#: A name of this module's, not OpenAI's: the published document has no separate chunk schema.
COMPLETION_CHUNK = "CreateCompletionResponse.chunk"

_CHOICE = "/properties/choices/items/properties"

#: (schema, JSON pointer inside it) where the API's ``null`` is conformant; nowhere else.
NULLS_THE_API_SENDS: tuple[tuple[str, str], ...] = (
    # stream chunks: finish_reason, logprobs (the object and its two lists, marked nullable), usage
    ("CreateChatCompletionStreamResponse", f"{_CHOICE}/finish_reason"),
    ("CreateChatCompletionStreamResponse", f"{_CHOICE}/logprobs"),
    ("CreateChatCompletionStreamResponse", f"{_CHOICE}/logprobs/properties/content"),
    ("CreateChatCompletionStreamResponse", f"{_CHOICE}/logprobs/properties/refusal"),
    ("CreateChatCompletionStreamResponse", "/properties/usage"),
    (COMPLETION_CHUNK, f"{_CHOICE}/finish_reason"),
    # system_fingerprint and service_tier, wherever an answer has them
    ("CreateChatCompletionResponse", "/properties/system_fingerprint"),
    ("CreateChatCompletionStreamResponse", "/properties/system_fingerprint"),
    ("CreateCompletionResponse", "/properties/system_fingerprint"),
    (COMPLETION_CHUNK, "/properties/system_fingerprint"),
    ("CreateChatCompletionResponse", "/properties/service_tier"),
    ("CreateChatCompletionStreamResponse", "/properties/service_tier"),
    ("Response", "/allOf/2/properties/service_tier"),
)

#: Where an embedding may be the base64 of its little-endian float32s (``encoding_format:
#: "base64"``), and the form that string takes.
BASE64_EMBEDDING: tuple[str, str] = ("Embedding", "/properties/embedding")
_BASE64 = {"type": "string", "contentEncoding": "base64",
           "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}


# -- the schemas ----------------------------------------------------------------------------------


@cache
def _published() -> dict[str, Any]:
    if not SCHEMAS_PATH.is_file():
        raise FileNotFoundError(f"OpenAI's schemas are not at {SCHEMAS_PATH} (../shared beside the repository)")
    document: dict[str, Any] = json.loads(SCHEMAS_PATH.read_text(encoding="utf-8"))
    return document


def _allow(node: dict[str, Any], other: dict[str, Any]) -> None:
    """Turn the subschema ``node`` into "``node`` or ``other``", in place."""
    inner = dict(node)
    node.clear()
    node["anyOf"] = [inner, other]


def _at(schemas: dict[str, Any], name: str, pointer: str) -> dict[str, Any]:
    node = schemas[name]
    for part in pointer.strip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node  # type: ignore[no-any-return]


@cache
def _relaxed() -> dict[str, Any]:
    document = copy.deepcopy(_published())
    schemas = document["components"]["schemas"]
    schemas[COMPLETION_CHUNK] = copy.deepcopy(schemas["CreateCompletionResponse"])
    # deepest first: wrapping a node moves the nodes below it
    for name, pointer in sorted(NULLS_THE_API_SENDS, key=lambda entry: -entry[1].count("/")):
        _allow(_at(schemas, name, pointer), {"type": "null"})
    _allow(_at(schemas, *BASE64_EMBEDDING), _BASE64)
    return document


@cache
def _validator(name: str, relaxed: bool) -> Draft202012Validator:
    document = _relaxed() if relaxed else _published()
    if name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {SCHEMAS_PATH}")
    uri = SCHEMAS_PATH.as_uri()
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(document,
                                                                                    default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{name}"}, registry=registry)


def _narrowed(error: ValidationError) -> tuple[ValidationError, list[str]]:
    """The error to show for ``error``, and the union branches it is in: inside a union
    (``anyOf``/``oneOf``), the one branch whose ``type`` discriminator the document matched, when
    exactly one did; then jsonschema's best match."""
    branches_taken: list[str] = []
    while error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        matched = [(index, errors) for index, errors in branches.items()
                   if not any(list(sub.relative_path) == ["type"] and sub.validator in ("enum", "const")
                              for sub in errors)]
        if len(matched) != 1:
            break
        index, errors = matched[0]
        branch = error.validator_value[index]
        branches_taken.append(str(branch.get("$ref", f"{error.validator}[{index}]")).rpartition("/")[2])
        error = min(errors, key=lambda sub: len(sub.relative_path))
    best = best_match([error])
    return (error if best is None else best), branches_taken


def _describe(error: ValidationError) -> str:
    error, branches = _narrowed(error)
    rule = "/".join(str(part) for part in error.relative_schema_path)
    inside = f" in {' > '.join(branches)}" if branches else ""
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    return f"{error.json_path}: {message} (rule {error.validator!r}: {rule}{inside})"


def validate(schema_name: str, document: Any, *, relaxed: bool = True) -> None:
    """Raise ``AssertionError`` naming each place ``document`` breaks the schema ``schema_name``
    and the rule it breaks; ``relaxed=False`` validates against the schemas exactly as published."""
    errors = sorted(_validator(schema_name, relaxed).iter_errors(document), key=lambda error: error.json_path)
    if errors:
        raise AssertionError(f"{schema_name}: " + "; ".join(_describe(error) for error in errors))


#: The endpoints patchbay also serves without the ``/v1`` prefix.
_WITHOUT_V1 = frozenset({"/chat/completions", "/completions", "/embeddings", "/models"})


def schema_for(method: str, path: str, streaming: bool, *, status: int = 200) -> str | None:
    """The schema of an answer of patchbay's server (``streaming``: of each event of its stream),
    or None where no OpenAI schema applies (not an OpenAI-shaped endpoint, Anthropic's Messages,
    a HEAD, an answer without a body)."""
    path = urlsplit(path).path.rstrip("/") or "/"
    if path in _WITHOUT_V1 or path.startswith("/models/"):
        path = "/v1" + path  # the same endpoints for a base URL without /v1
    method = method.upper()
    if (not path.startswith("/v1/") or path == "/v1/messages" or path.startswith("/v1/messages/")
            or method == "HEAD" or status in (204, 304)):
        return None
    if status >= 400:
        return "ErrorResponse"
    if method == "GET":
        if path == "/v1/models":
            return "ListModelsResponse"
        if path.startswith("/v1/models/"):
            return "Model"
        if path.startswith("/v1/responses/") and path.count("/") == 3:
            return "Response"
        return None
    if method != "POST":
        return None
    return {
        "/v1/chat/completions": ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
        "/v1/completions": ("CreateCompletionResponse", COMPLETION_CHUNK),
        "/v1/embeddings": ("CreateEmbeddingResponse", None),
        "/v1/responses": ("Response", "ResponseStreamEvent"),
    }.get(path, (None, None))[streaming]


# -- checking traffic -------------------------------------------------------------------------------


class StreamCheck:
    """One answer as its bytes arrive: a JSON body checked when complete, or each server-sent
    event checked as it ends (an event cut off by the end of the stream is dropped, as the SSE
    rules say). ``feed(bytes)``, then ``close(complete=...)``."""

    def __init__(self, traffic: TrafficCheck, method: str, path: str, status: int, content_type: str) -> None:
        self.traffic, self.method, self.path, self.status = traffic, method, path, status
        self.streaming = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.schema = schema_for(method, path, self.streaming, status=status)
        self._body = bytearray()
        self._line = bytearray()
        self._event: str | None = None
        self._data: list[str] = []
        self._events = 0
        self._closed = False

    def feed(self, data: bytes) -> None:
        if self.schema is None:
            return
        if not self.streaming:
            self._body += data
            return
        self._line += data
        while True:
            end = min((i for i in (self._line.find(b"\n"), self._line.find(b"\r")) if i >= 0), default=-1)
            if end < 0 or (self._line[end:end + 1] == b"\r" and end + 1 == len(self._line)):
                return  # no whole line yet (a \r at the end may be the first half of \r\n)
            line = self._line[:end].decode("utf-8", errors="replace")
            del self._line[:end + (2 if self._line[end:end + 2] == b"\r\n" else 1)]
            self._sse_line(line)

    def close(self, *, complete: bool = True) -> None:
        """The answer ended: ``complete`` when all of it was received."""
        if self._closed or self.schema is None:
            return
        self._closed = True
        if not self.streaming and complete:
            self._whole()

    def _whole(self) -> None:
        try:
            document = json.loads(self._body)
        except ValueError:
            self.traffic.fail(self, "", f"the body is not JSON: {bytes(self._body[:200])!r}")
            return
        assert self.schema is not None
        self.traffic.check(self, "", self.schema, document)

    def _sse_line(self, line: str) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(":"):
            return  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)

    def _dispatch(self) -> None:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = None, []
        if not data and event is None:
            return
        where = f"event {self._events}" + (f" ({event})" if event else "")
        self._events += 1
        if data == "[DONE]" and self.schema != "ResponseStreamEvent":
            return
        try:
            document = json.loads(data)
        except ValueError:
            self.traffic.fail(self, where, f"the data is not JSON: {data[:200]!r}")
            return
        schema = self.schema
        assert schema is not None
        if schema == "ResponseStreamEvent":
            if isinstance(document, dict) and event is not None and event != document.get("type"):
                self.traffic.fail(self, where, f"the event name {event!r} is not the data's type "
                                               f"{document.get('type')!r}")
        elif isinstance(document, dict) and "error" in document and "choices" not in document:
            schema = "ErrorResponse"  # an in-band error, as the openai SDK reads it
        self.traffic.check(self, where, schema, document)


@dataclass
class TrafficCheck:
    """Collects what broke the schemas in the answers a test received (``failures``)."""

    enabled: bool = True
    failures: list[str] = field(default_factory=list)
    checked: int = 0  # documents validated

    def answer(self, method: str, path: str, status: int, content_type: str) -> StreamCheck:
        return StreamCheck(self, method, path, status, content_type)

    def whole(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        """An answer received in one piece."""
        check = self.answer(method, path, status, content_type)
        check.feed(body)
        check.feed(b"\n\n" if check.streaming else b"")  # a last event without its blank line still counts
        check.close()

    def check(self, answer: StreamCheck, where: str, schema: str, document: Any) -> None:
        if not self.enabled:
            return
        self.checked += 1
        try:
            validate(schema, document)
        except AssertionError as error:
            self.fail(answer, where, str(error))

    def fail(self, answer: StreamCheck, where: str, problem: str) -> None:
        if self.enabled:
            self.failures.append(f"{answer.method} {answer.path} -> {answer.status}"
                                 f"{' ' + where if where else ''}: {problem}")

    def assert_clean(self) -> None:
        if self.failures:
            listed = "\n".join(f"- {failure}" for failure in self.failures[:20])
            more = f"\n... and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
            pytest.fail(f"patchbay's server answered outside OpenAI's published schemas:\n{listed}{more}",
                        pytrace=False)


# -- where the tests' clients receive answers ---------------------------------------------------------


def _served_by_patchbay(url: str) -> bool:
    parts = urlsplit(str(url))
    host = "127.0.0.1" if parts.hostname in ("localhost", "::1") else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port}" in GatewayProcess.running


def _install_asgi(monkeypatch: pytest.MonkeyPatch, traffic: TrafficCheck) -> None:
    def observe(method: str, path: str, response: Response) -> None:
        content_type = response.headers.get(b"content-type", b"").decode("latin-1")
        traffic.whole(method, path, response.status, content_type, response.body)

    monkeypatch.setattr(ASGIClient, "observers", [*ASGIClient.observers, observe])


def _install_httpx(monkeypatch: pytest.MonkeyPatch, traffic: TrafficCheck, http: ModuleType) -> None:
    """Tee the body of each answer a transport of ``http`` (httpx, or httpx2 that the openai SDK
    uses: the same interface) receives from patchbay's server into the check, as it is read."""

    class AsyncTee(http.AsyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, check: StreamCheck) -> None:
            self.inner, self.check, self.done = inner, check, False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                self.check.feed(chunk)
                yield chunk
            self.done = True

        async def aclose(self) -> None:
            self.check.close(complete=self.done)
            await self.inner.aclose()

    class SyncTee(http.SyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, check: StreamCheck) -> None:
            self.inner, self.check, self.done = inner, check, False

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                self.check.feed(chunk)
                yield chunk
            self.done = True

        def close(self) -> None:
            self.check.close(complete=self.done)
            self.inner.close()

    def check_for(request: Any, response: Any) -> StreamCheck | None:
        if not _served_by_patchbay(str(request.url)):
            return None
        if response.headers.get("content-encoding", "identity") != "identity":
            traffic.failures.append(f"{request.method} {request.url.path}: an encoded body, not checked")
            return None
        return traffic.answer(request.method, request.url.path, response.status_code,
                              response.headers.get("content-type", ""))

    async_handle = http.AsyncHTTPTransport.handle_async_request
    sync_handle = http.HTTPTransport.handle_request

    async def handle_async_request(self: Any, request: Any) -> Any:
        response = await async_handle(self, request)
        check = check_for(request, response)
        if check is not None:
            response.stream = AsyncTee(response.stream, check)
        return response

    def handle_request(self: Any, request: Any) -> Any:
        response = sync_handle(self, request)
        check = check_for(request, response)
        if check is not None:
            response.stream = SyncTee(response.stream, check)
        return response

    monkeypatch.setattr(http.AsyncHTTPTransport, "handle_async_request", handle_async_request)
    monkeypatch.setattr(http.HTTPTransport, "handle_request", handle_request)


def _install_aiohttp(monkeypatch: pytest.MonkeyPatch, traffic: TrafficCheck) -> None:
    read: Callable[[aiohttp.ClientResponse], Any] = aiohttp.ClientResponse.read
    seen: weakref.WeakSet[aiohttp.ClientResponse] = weakref.WeakSet()

    async def checked_read(self: aiohttp.ClientResponse) -> bytes:
        body: bytes = await read(self)
        if self not in seen and _served_by_patchbay(str(self.url)):
            seen.add(self)
            traffic.whole(self.method, self.url.path, self.status, self.headers.get("content-type", ""), body)
        return body

    monkeypatch.setattr(aiohttp.ClientResponse, "read", checked_read)


def _install_requests(monkeypatch: pytest.MonkeyPatch, traffic: TrafficCheck) -> None:
    """``requests`` (schemathesis's client): each whole answer, once received."""
    try:
        requests = importlib.import_module("requests")
    except ImportError:  # pragma: no cover - installed with schemathesis
        return
    send = requests.Session.send

    def checked_send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = send(self, request, **kwargs)
        if not kwargs.get("stream") and _served_by_patchbay(response.url):
            traffic.whole(request.method, urlsplit(request.url).path, response.status_code,
                          response.headers.get("content-type", ""), response.content)
        return response

    monkeypatch.setattr(requests.Session, "send", checked_send)


@pytest.fixture(autouse=True)
def openai_conformance(monkeypatch: pytest.MonkeyPatch) -> Iterator[TrafficCheck]:
    """Every answer this test's clients receive from patchbay's server, validated against
    OpenAI's published schemas; the test fails at teardown if one broke them (``enabled =
    False`` for a test that sends a broken answer on purpose)."""
    traffic = TrafficCheck()
    _install_asgi(monkeypatch, traffic)
    for http in HTTPX_MODULES:
        _install_httpx(monkeypatch, traffic, http)
    _install_aiohttp(monkeypatch, traffic)
    _install_requests(monkeypatch, traffic)
    yield traffic
    traffic.assert_clean()
