"""Any OpenAI-compatible Chat Completions API (docs/protocols.md#openai-compatible-chat-completions).

Besides chat, it passes on the legacy text completions (a request with a raw ``prompt`` goes to
``{base}/completions`` and its ``text_completion`` answer is read into the same events) and
embeddings (``{base}/embeddings``, :meth:`OpenAICompatible.embed`).

Providers are classes, so a service is configured by making a subclass (:meth:`~OpenAICompatible.configure`,
:meth:`~OpenAICompatible.from_preset`). Keys live in a per-class CredentialPool; with several keys, one
the service rejects is banned and the next tried, but only before any output was delivered.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar, ParamSpec, TypeVar

import msgspec

from patchbay.chat.embeddings import EmbeddingRequest, EmbeddingResult, decode_base64_vector
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import (
    AuthError,
    InvalidRequest,
    PatchbayError,
    PermissionDenied,
    ProtocolError,
    UnsupportedFeature,
    UpstreamError,
    error_for_status,
)
from patchbay.events import Finish, Logprobs, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.net.decoders import SSEDecoder
from patchbay.net.session import HTTPSession, parse_retry_after
from patchbay.net.transport import Response
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Capabilities
from patchbay.providers.catalog import FREE, Prices
from patchbay.providers.presets import get_preset
from patchbay.redact import clip, mask, register_secret
from patchbay.secrets.pool import CredentialPool
from patchbay.sync import in_event_loop, run_sync
from patchbay.timeouts import Timeout

__all__ = ["OpenAICompatible"]

log = logging.getLogger("patchbay.providers.openai_compatible")
P = ParamSpec("P")
R = TypeVar("R")

MODELS_TIMEOUT = 5.0  # seconds for GET /models
MODELS_TTL = 300.0  # seconds a fetched model list is reused
MAX_BODY = 16 * 1024 * 1024  # bytes of a non-streamed answer read at most
MAX_CHOICES = 128  # as the request's n allows
#: The request fields sent upstream as given (model, stream and extra_body are set apart).
BODY_FIELDS = tuple(name for name in ChatCompletionRequest.__struct_fields__
                    if name not in ("model", "stream", "stream_options", "extra_body", "prompt"))
#: The request fields a legacy ``/completions`` request takes (its own, such as ``suffix``, come
#: in ``extra_body``); ``max_tokens`` is the request's :attr:`max_output_tokens`.
COMPLETION_FIELDS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "n",
                     "logit_bias", "user")
#: The errors that mean "this key is no good": with several keys, ban it and try the next
#: (docs/protocols.md#openai-api-keys).
KEY_REJECTED = (AuthError, PermissionDenied)
#: OpenAI error ``code`` / ``type`` names -> the HTTP status they stand for (for in-stream errors;
#: docs/protocols.md#openai-error-objects).
ERROR_NAME_STATUS: dict[str, int] = {
    "invalid_request_error": 400, "authentication_error": 401, "invalid_api_key": 401, "insufficient_quota": 402,
    "permission_error": 403, "not_found_error": 404, "model_not_found": 404, "conflict_error": 409,
    "rate_limit_error": 429, "rate_limit_exceeded": 429, "server_error": 500, "api_error": 500,
    "overloaded_error": 503,
}
_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SENSITIVE_HEADER = re.compile(r"auth|key|token|cookie", re.IGNORECASE)


class OpenAICompatible(AsyncGeneratorProvider, ProviderModelMixin):
    """An OpenAI-compatible API; use :meth:`configure` or :meth:`from_preset` to point it somewhere."""

    name = "OpenAICompatible"
    working = True
    needs_auth = False
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    features = Capabilities.all_native()  # everything passes through; config can say otherwise

    base_url: ClassVar[str] = ""
    api_key_env: ClassVar[str | None] = None
    local: ClassVar[bool] = False
    #: List prices per model of the service a preset names (the catalog and config come first).
    price_list: ClassVar[Mapping[str, Prices]] = {}
    headers: ClassVar[dict[str, str]] = {}
    extra_body: ClassVar[dict[str, Any]] = {}
    credentials: ClassVar[CredentialPool] = CredentialPool("OpenAICompatible")
    _models_cache: ClassVar[tuple[float, list[str]] | None] = None

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def configure(
        cls, name: str, *, base_url: str,
        api_key: str | None = None, api_key_env: str | None = None, api_keys: list[str] | None = None,
        models: list[str] | None = None, default_model: str | None = None,
        headers: dict[str, str] | None = None, extra_body: dict[str, Any] | None = None, verify_ssl: bool = True,
        prefill: bool | None = None, capabilities: Mapping[str, str] | None = None,
        prices: Prices | None = None,
    ) -> type[OpenAICompatible]:
        """A new subclass for one service, with its own key pool (``api_key``/``api_keys`` plus the
        comma-separated keys in ``api_key_env``, read at the first request). Other arguments left
        ``None`` are inherited from ``cls``. ``prefill`` says the server continues a trailing
        partial assistant message (llama.cpp, vLLM and others do), which the router uses to
        continue an interrupted answer. ``capabilities`` overrides what the service honours, per
        feature (``{"image_input": "none"}`` for a server without vision; see
        :mod:`patchbay.providers.capabilities`): the router then skips it for such requests.
        ``prices`` are what every model of the service costs (else the catalog's, per model)."""
        if not name or not base_url:
            raise InvalidRequest("a configured provider needs a name and a base_url", param="base_url")
        env = api_key_env if api_key_env is not None else cls.api_key_env
        pool = CredentialPool(name, env_var=env)
        pool.add(api_key)
        pool.add(api_keys)
        where = f"providers.{name}.capabilities"
        features = cls.features.merged(capabilities or {}, where=where)
        if capabilities and "prefill" in capabilities:  # the flag is where the prefill capability lives
            prefill = features.accepts("prefill")
        merged_headers = {**cls.headers, **(headers or {})}
        for header, value in merged_headers.items():
            if _SENSITIVE_HEADER.search(header):
                register_secret(value)
        attrs: dict[str, Any] = {
            "__module__": cls.__module__, "__doc__": f"OpenAI-compatible API at {base_url}.", "name": name,
            "url": base_url, "base_url": base_url.rstrip("/"), "api_key_env": env, "credentials": pool,
            "models": list(models if models is not None else cls.models),
            "default_model": default_model if default_model is not None else cls.default_model,
            "headers": merged_headers, "extra_body": {**cls.extra_body, **(extra_body or {})},
            "verify_ssl": verify_ssl, "_models_cache": None,
            "supports_prefill": cls.supports_prefill if prefill is None else prefill,
            "features": features, "prices": prices if prices is not None else cls.prices,
            "supports_system_message": features.accepts("system_message") if capabilities
            and "system_message" in capabilities else cls.supports_system_message,
        }
        return type(re.sub(r"\W", "_", name), (cls,), attrs)

    @classmethod
    def from_preset(cls, preset_name: str, **overrides: Any) -> type[OpenAICompatible]:
        """A configured subclass for a named preset (see :mod:`patchbay.providers.presets`)."""
        preset = get_preset(preset_name)
        overrides.setdefault("base_url", preset.base_url)
        overrides.setdefault("api_key_env", preset.key_env)
        provider = cls.configure(overrides.pop("name", preset.name), **overrides)
        provider.needs_auth = preset.needs_auth
        provider.local = preset.local
        provider.price_list = preset.prices
        if preset.local and provider.prices is None:
            provider.prices = FREE
        return provider

    @classmethod
    def prices_for(cls, model: str) -> Prices | None:
        """The configured prices, else the catalog's for ``model``, else its preset's list price."""
        return super().prices_for(model) or cls.price_list.get(model)

    # -- models --------------------------------------------------------------------------------

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """Empty -> ``default_model``; any other name is passed through (the server knows its models)."""
        if model:
            return model
        if cls.default_model:
            return cls.default_model
        raise InvalidRequest(f"{cls.name}: no model given and no default_model configured", param="model")

    @classmethod
    def get_model(cls, name: str | None) -> str:
        return cls.resolve_model(name)

    @classmethod
    def get_models(cls) -> list[str]:
        """The configured models, else the server's list (cached), else ``[default_model]``.

        For sync callers. From plain sync code it fetches over the bridge (blocking); inside a
        running event loop it never blocks: the last list fetched (even past its TTL), else
        ``[default_model]``, else ``[]``. Async code awaits :meth:`list_models` instead."""
        if cls.models:
            return list(cls.models)
        cached = cls._cached_models()
        if cached is not None:
            return cached
        if in_event_loop():
            stale = cls.__dict__.get("_models_cache")
            return list(stale[1]) if stale is not None else cls._default_models()
        try:
            return run_sync(cls.list_models(), timeout=MODELS_TIMEOUT + 1)
        except TimeoutError:
            if cls.default_model:
                return [cls.default_model]
            raise

    @classmethod
    async def list_models(cls, *, refresh: bool = False) -> list[str]:
        """The configured models, else the server's list (:meth:`fetch_models`, cached for
        :data:`MODELS_TTL` seconds; ``refresh`` asks again); when the server cannot say,
        ``[default_model]`` if there is one, else the error."""
        if cls.models:
            return list(cls.models)
        try:
            return await cls.fetch_models(refresh=refresh)
        except (PatchbayError, TimeoutError) as error:
            if not cls.default_model:
                raise
            log.warning("%s: could not list the models (%s); listing the default model", cls.name, error)
            return [cls.default_model]

    @classmethod
    async def fetch_models(cls, *, refresh: bool = False) -> list[str]:
        """The model ids from ``GET {base}/models``, reused for :data:`MODELS_TTL` seconds (per class);
        errors are raised. The implementation of :meth:`list_models`, which callers use."""
        cached = None if refresh else cls._cached_models()
        if cached is not None:
            return cached
        base = cls._base()
        limits = Timeout(connect=MODELS_TIMEOUT, first_byte=MODELS_TIMEOUT, idle=MODELS_TIMEOUT, total=MODELS_TIMEOUT)
        async with (
            HTTPSession(timeout=limits, verify_ssl=cls.verify_ssl, headers=cls.headers, provider=cls.name) as http,
            http.request("GET", f"{base}/models", headers=_auth(cls.credentials.current())) as response,
        ):
            if response.status >= 300:
                raise await cls._status_error(http, response)
            text = await http.read_body(response, MAX_BODY, whole=True)
        try:
            payload = json.loads(text)
            items = payload["data"] if isinstance(payload, dict) else payload
            models = [item["id"] if isinstance(item, dict) else str(item) for item in items]
        except (ValueError, KeyError, TypeError):
            raise ProtocolError(f"{cls.name}: the model list is not in the OpenAI shape: {clip(text, 80)!r}") from None
        cls._models_cache = (time.monotonic() + MODELS_TTL, models)
        return list(models)

    @classmethod
    def _default_models(cls) -> list[str]:
        return [cls.default_model] if cls.default_model else []

    @classmethod
    def _cached_models(cls) -> list[str] | None:
        cached = cls.__dict__.get("_models_cache")
        if cached is None or cached[0] < time.monotonic():
            return None
        return list(cached[1])

    # -- chat ----------------------------------------------------------------------------------

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Stream the answer: every field of the request goes upstream as the client sent it, and
        ``extra_body`` (the fields patchbay does not name) is merged into the JSON as-is."""
        register_secret(call.api_key)
        raw = request.prompt is not None  # a legacy text completion
        url = f"{cls._base(call.base_url)}/{'completions' if raw else 'chat/completions'}"
        body = completion_body(request, call.model, cls.extra_body) if raw else \
            upstream_body(request, call.model, cls.extra_body)
        cls.credentials.load_env()
        async with HTTPSession(
            timeout=call.timeout, proxy=call.proxy, verify_ssl=cls.verify_ssl, headers=cls.headers,
            provider=cls.name,
        ) as http:
            for _ in range(max(1, len(cls.credentials))):  # at most one attempt per key
                key = cls._key_for(call)
                mark = call.transcript.mark()
                try:
                    async with aclosing(cls._chat(http, url, body, key, text=raw)) as events:
                        async for event in events:
                            yield event
                    return
                except KEY_REJECTED as exc:
                    if call.transcript.since(mark):
                        raise
                    cls._next_key(exc, key, call)
            raise cls._no_key()  # other requests banned the remaining keys meanwhile

    # -- embeddings ----------------------------------------------------------------------------

    @classmethod
    async def embed(cls, request: EmbeddingRequest, call: Call) -> EmbeddingResult:
        """The vectors from ``POST {base}/embeddings``: the client's fields as given (``dimensions``
        too), floats asked for; a service that answers another number of dimensions than asked
        is UnsupportedFeature naming ``dimensions``. Keys rotate as for chat."""
        register_secret(call.api_key)
        url = f"{cls._base(call.base_url)}/embeddings"
        body = request.upstream_body(call.model)
        cls.credentials.load_env()
        async with HTTPSession(
            timeout=call.timeout, proxy=call.proxy, verify_ssl=cls.verify_ssl, headers=cls.headers,
            provider=cls.name,
        ) as http:
            for _ in range(max(1, len(cls.credentials))):  # at most one attempt per key
                key = cls._key_for(call)
                try:
                    async with http.request("POST", url, json=body, headers=_auth(key)) as response:
                        if response.status >= 300:
                            raise await cls._status_error(http, response)
                        payload = _parse_json(await http.read_body(response, MAX_BODY, whole=True))
                except KEY_REJECTED as exc:
                    cls._next_key(exc, key, call)
                    continue
                return _embedding_result(payload, request, call.model, cls.name)
            raise cls._no_key()

    @classmethod
    def _key_for(cls, call: Call) -> str | None:
        """The key of the next attempt: the call's own, else the pool's current one; none when
        the service takes requests without one (the pool is empty and needs_auth is false)."""
        key = call.api_key or cls.credentials.current()
        if key is None and (cls.needs_auth or len(cls.credentials)):
            raise cls._no_key()
        return key

    @classmethod
    def _next_key(cls, exc: PatchbayError, key: str | None, call: Call) -> None:
        """After ``key`` was rejected: ban it so that the next one is tried, or raise ``exc`` when
        there is no other (a per-call key, a single key, or every key banned)."""
        if call.api_key or key is None or len(cls.credentials) < 2:
            raise exc
        cls.credentials.ban(key)
        log.info("%s: API key %s was rejected (%s); trying the next one", cls.name, mask(key), exc.code)
        if cls.credentials.current() is None:
            raise AuthError(f"all {len(cls.credentials)} API keys were rejected: {exc.message}") from exc

    @classmethod
    async def _chat(
        cls, http: HTTPSession, url: str, body: dict[str, Any], key: str | None, *, text: bool = False
    ) -> AsyncGenerator[StreamEvent, None]:
        """The events of one chat (or, ``text``, legacy text completion) request."""
        headers = _auth(key)
        if body.get("stream"):
            headers["Accept"] = "text/event-stream"
        async with http.request("POST", url, json=body, headers=headers) as response:
            if response.status >= 300:
                raise await cls._status_error(http, response)
            content_type = response.headers.get("content-type", "").lower()
            if "html" in content_type:
                raise ProtocolError(f"the service answered with an HTML page ({content_type}) instead of an answer")
            if "json" in content_type or not body.get("stream"):  # a whole answer, asked for or not
                payload = _parse_json(await http.read_body(response, MAX_BODY, whole=True))
                for event in _completion_events(payload, "text" if text else "message"):
                    yield event
                return
            # Held back so that Finish comes last, after the usage chunk (docs/protocols.md#openai-streaming).
            finishes: dict[int, str] = {}
            events_in = http.iter_decoded(response, SSEDecoder())
            async with aclosing(events_in) as sse:
                async for item in sse:
                    if item.data.strip() == "[DONE]":
                        break
                    for event in _chunk_events(_parse_json(item.data), finishes, "text" if text else "delta"):
                        yield event
                else:
                    if not finishes:
                        raise ProtocolError("the stream ended before its last chunk (no finish_reason, no [DONE])")
            for choice, reason in sorted(finishes.items()):
                yield Finish(reason, choice)

    # -- helpers -------------------------------------------------------------------------------

    @classmethod
    def _base(cls, base_url: str | None = None) -> str:
        base = (base_url or cls.base_url).rstrip("/")
        if not base:
            raise InvalidRequest(f"{cls.name} has no base_url; use OpenAICompatible.configure()", param="base_url")
        return base

    @classmethod
    def _no_key(cls) -> AuthError:
        if len(cls.credentials):
            return AuthError(f"all {len(cls.credentials)} API keys were rejected")
        where = f" (set {cls.api_key_env})" if cls.api_key_env else ""
        return AuthError(f"{cls.name} needs an API key{where}")

    @classmethod
    async def _status_error(cls, http: HTTPSession, response: Response) -> PatchbayError:
        """The patchbay error for an upstream error answer (OpenAI error object or plain text), with its
        Retry-After (docs/protocols.md#openai-error-objects, docs/protocols.md#openai-retry-after)."""
        text = await http.read_body(response)
        message, param = _error_message(text)
        error = error_for_status(
            response.status, message, provider=cls.name, retry_after=parse_retry_after(response.headers)
        )
        error.param = param
        return error


def upstream_body(request: ChatCompletionRequest, model: str, extra_body: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for the upstream: every field the client gave, unchanged, under the target's
    model name; a stream also asks for the usage chunk (docs/protocols.md#openai-usage-chunk)."""
    body = {name: value for name in BODY_FIELDS if (value := getattr(request, name)) is not None}
    body["model"] = model
    return _with_stream_and_extras(body, request, extra_body)


def completion_body(request: ChatCompletionRequest, model: str, extra_body: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a legacy ``/completions`` request for ``request`` (its ``prompt`` set):
    the prompt and the options that API takes, under the target's model name; a stream asks for
    the usage chunk, as a chat stream does."""
    body: dict[str, Any] = {"model": model, "prompt": request.prompt}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    body.update({name: value for name in COMPLETION_FIELDS if (value := getattr(request, name)) is not None})
    return _with_stream_and_extras(body, request, extra_body)


def _with_stream_and_extras(body: dict[str, Any], request: ChatCompletionRequest, extra_body: dict[str, Any]
                            ) -> dict[str, Any]:
    """``body`` with ``stream`` (a stream also asks for the usage chunk), then the service's and
    the request's extra fields laid on top, in that order."""
    body["stream"] = request.stream
    if request.stream:
        options = msgspec.to_builtins(request.stream_options) if request.stream_options else {}
        body["stream_options"] = {**options, "include_usage": True}
    body.update(extra_body)
    if request.extra_body:
        body.update(request.extra_body)
    return body


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_message(text: str) -> tuple[str, str | None]:
    """The message (redacted, shortened) and ``param`` of an error body: JSON, HTML or plain text."""
    stripped = text.strip()
    try:
        payload = json.loads(stripped)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        return _error_fields(payload["error"])
    if stripped[:1] == "<":
        title = _TITLE.search(stripped)
        return f"an HTML error page ({clip(title.group(1).strip(), 80) if title else 'untitled'})", None
    return clip(stripped, 500), None


def _error_fields(error: object) -> tuple[str, str | None]:
    """The message (redacted, shortened) and ``param`` of an OpenAI error object."""
    if not isinstance(error, dict):
        return clip(str(error), 500), None
    param = error.get("param")
    return clip(str(error.get("message") or error.get("type") or ""), 500), param if isinstance(param, str) else None


def _error_from_object(error: object) -> PatchbayError:
    """The patchbay error for an error object sent with a 200 status (e.g. mid-stream)."""
    status = None
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            status = int(code) if 400 <= int(code) < 600 else None
        for name in (code, error.get("type")):
            if status is None and isinstance(name, str):
                status = ERROR_NAME_STATUS.get(name)
    message, param = _error_fields(error)
    result = UpstreamError(f"the service reported an error: {message}") if status is None else \
        error_for_status(status, message)
    result.param = param
    return result


_decode_json = msgspec.json.decode  # several times faster than json.loads on the request path


def _parse_json(text: str) -> dict[str, Any]:
    """A JSON object from the service; an ``error`` object in it is raised as its patchbay error."""
    try:
        payload = _decode_json(text)
    except (ValueError, msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        raise ProtocolError(f"the answer is not valid JSON: {clip(text, 80)!r}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"the answer is not a JSON object: {clip(text, 80)!r}")
    if payload.get("error"):
        raise _error_from_object(payload["error"])
    return payload


def _shape_checked(parse: Callable[P, R]) -> Callable[P, R]:
    """Turn a reply of an unexpected shape (a list where an object belongs...) into ProtocolError."""

    @functools.wraps(parse)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return parse(*args, **kwargs)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the answer does not have the OpenAI shape ({exc})") from exc

    return checked


@_shape_checked
def _completion_events(payload: dict[str, Any], field: str = "message") -> list[StreamEvent]:
    """The events of a whole (non-streamed) ``chat.completion`` (``field`` "text": a
    ``text_completion``), every choice."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProtocolError("the answer has no choices")
    events: list[StreamEvent] = []
    finishes: dict[int, str] = {}
    for position, choice in enumerate(choices):
        events.extend(_choice_events(choice, field, position, finishes))
    return events + _usage(payload) + [Finish(reason, index) for index, reason in finishes.items()]


@_shape_checked
def _chunk_events(payload: dict[str, Any], finishes: dict[int, str], field: str = "delta") -> list[StreamEvent]:
    """The events of one ``chat.completion.chunk`` (``field`` "text": of a streamed
    ``text_completion``); finish reasons go into ``finishes`` (sent last)."""
    events: list[StreamEvent] = []
    for position, choice in enumerate(payload.get("choices") or []):
        if isinstance(choice, dict):
            events.extend(_choice_events(choice, field, position, finishes))
    if "usage" in payload:
        events.extend(_usage(payload))
    return events


def _choice_events(choice: dict[str, Any], field: str, position: int, finishes: dict[int, str]) -> list[StreamEvent]:
    """The events of one choice (its ``message`` or ``delta``, or the ``text`` of a text
    completion); its finish reason goes into ``finishes``."""
    index = _choice_index(choice, position)
    events: list[StreamEvent] = []
    if field == "text":  # a text completion: its logprobs have another shape, and are not read
        if text := _string(choice.get("text"), "text"):
            events.append(TextDelta(text, index))
        if finish := _string(choice.get("finish_reason"), "finish_reason"):
            finishes[index] = finish
        return events
    part = choice.get(field) or {}
    if isinstance(part.get("content"), str) and part["content"]:
        events.append(TextDelta(part["content"], index))
    for call_position, call in enumerate(part.get("tool_calls") or []):
        events.append(_tool_call(call, call_position, index))
    if choice.get("logprobs"):
        events.extend(_logprobs(choice, index))
    if finish := _string(choice.get("finish_reason"), "finish_reason"):
        finishes[index] = finish
    return events


def _choice_index(choice: dict[str, Any], position: int) -> int:
    index = choice.get("index", position)
    if type(index) is not int or not 0 <= index < MAX_CHOICES:
        raise TypeError(f"choice index {index!r} is not an integer in [0, {MAX_CHOICES})")
    return index


def _logprobs(choice: dict[str, Any], index: int) -> list[StreamEvent]:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [Logprobs(content, index)] if isinstance(content, list) and content else []


def _tool_call(call: dict[str, Any], position: int, choice: int = 0) -> ToolCallDelta:
    """One tool call (fragment) of a reply; fields of the wrong type raise TypeError (-> ProtocolError)."""
    index = call.get("index", position)
    if type(index) is not int:
        raise TypeError(f"tool call index is a {type(index).__name__}, not an integer")
    function = call.get("function") or {}
    return ToolCallDelta(index, _string(call.get("id"), "tool call id"), _string(function.get("name"), "tool name"),
                         _string(function.get("arguments"), "tool arguments") or "", choice)


def _string(value: object, what: str) -> str | None:
    """A string field of a reply (None when absent or null); another type raises TypeError."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} is a {type(value).__name__}, not a string")


@_shape_checked
def _embedding_result(payload: dict[str, Any], request: EmbeddingRequest, model: str, provider: str
                      ) -> EmbeddingResult:
    """The vectors of an embeddings answer, in input order (by ``index``), checked: one per input,
    every number finite, ``dimensions`` honoured when asked for."""
    data = payload.get("data")
    wanted = len(request.inputs)
    if not isinstance(data, list) or len(data) != wanted:
        count = len(data) if isinstance(data, list) else "no"
        raise ProtocolError(f"the embeddings answer has {count} vectors for {wanted} inputs")
    vectors: list[list[float] | None] = [None] * wanted
    for position, item in enumerate(data):
        index = item.get("index", position)
        if type(index) is not int or not 0 <= index < wanted or vectors[index] is not None:
            raise ProtocolError(f"the embeddings answer has a wrong or repeated index {index!r}")
        vectors[index] = _vector(item.get("embedding"))
    done = [vector for vector in vectors if vector is not None]
    if request.dimensions is not None and any(len(vector) != request.dimensions for vector in done):
        raise UnsupportedFeature(f"{provider} does not honour dimensions: asked for {request.dimensions}, it answered "
                                 f"{len(done[0])}", param="dimensions", provider=provider)
    usage = payload.get("usage")
    tokens = _count(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
    answered = payload.get("model")
    return EmbeddingResult(done, answered if isinstance(answered, str) and answered else model, tokens)


def _vector(value: object) -> list[float]:
    """One embedding: a list of finite numbers, or base64 float32 (some services send it unasked)."""
    if isinstance(value, str):
        try:
            value = decode_base64_vector(value)
        except ValueError as exc:
            raise ProtocolError(f"an embedding is a string but not base64 float32 ({exc})") from None
    if not isinstance(value, list) or not value:
        raise ProtocolError("an embedding is not a non-empty list of numbers")
    vector = []
    for number in value:
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise ProtocolError(f"an embedding holds {clip(repr(number), 40)}, not a finite number")
        vector.append(float(number))
    return vector


def _usage(payload: dict[str, Any]) -> list[StreamEvent]:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return []
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    stated = usage.get("cost")  # OpenRouter states what the request cost it
    cost = float(stated) if isinstance(stated, int | float) and not isinstance(stated, bool) \
        and 0 <= stated < float("inf") else None
    return [Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), cached, cost)]


def _count(value: object) -> int:
    """A token count of a reply; what is not a non-negative number (or digit string) counts as 0."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0
    return int(value)
