"""Traces of the gateway's requests: one span per request, one per upstream attempt.

The spans follow OpenTelemetry's GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...), but this module does not depend on
OpenTelemetry: it records through whatever :class:`Tracer` is :func:`install`-ed
(``patchbay.server.otel`` installs one over the OpenTelemetry SDK when ``[tracing]`` is
configured). With none installed, every call returns the shared :data:`NO_SPAN` after one global
check, so the request path pays nothing for tracing that is off.

What a span may hold is decided here, once: every string value passes through
:func:`~patchbay.redact.redact`, error descriptions are clipped, and message content is recorded
only when the tracer was installed with ``content=True`` (then as the GenAI conventions'
``gen_ai.client.inference.operation.details`` event, redacted). Upstream bodies and headers are
never recorded.

The request span is the current one for the task that serves the request (a context variable,
set and reset by the request's own coroutine), and an attempt span names it as its parent
explicitly: the router's attempts run inside async generators, where changing a context variable
would leak into the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Literal, Protocol

from patchbay.events import EventStream, Finish, ProviderInfo, StreamEvent, Usage
from patchbay.redact import clip, redact

__all__ = ["NO_SPAN", "AttemptSpan", "AttributeValue", "NoSpan", "RequestSpan", "Span", "SpanKind", "Tracer",
           "attempt_span", "current", "fallback", "finish_request", "install", "installed", "request_span",
           "uninstall"]

AttributeValue = str | bool | int | float | Sequence[str]
SpanKind = Literal["server", "client"]
ERROR_DESCRIPTION_CHARS = 300  # an error's message in a span's status, at most
DETAILS_EVENT = "gen_ai.client.inference.operation.details"  # the GenAI conventions' content event
FALLBACK_EVENT = "patchbay.fallback"


class Span(Protocol):
    """One span of the installed tracer."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None: ...

    def set_error(self, description: str) -> None:
        """Mark the span as failed (its status), saying why."""
        ...

    def end(self) -> None: ...


class Tracer(Protocol):
    """What records spans (``patchbay.server.otel`` adapts the OpenTelemetry SDK to this)."""

    def start(self, name: str, kind: SpanKind, parent: Span | None, attributes: Mapping[str, AttributeValue]
              ) -> Span:
        """A started span, a child of ``parent`` (None: a root span)."""
        ...


class _Installed:
    """The installed tracer and what it may record."""

    __slots__ = ("content", "tracer")

    def __init__(self, tracer: Tracer, content: bool) -> None:
        self.tracer = tracer
        self.content = content


_installed: _Installed | None = None
_request: ContextVar[RequestSpan | None] = ContextVar("patchbay_request_span", default=None)


def install(tracer: Tracer, *, content: bool = False) -> None:
    """Record spans through ``tracer`` from now on (message content too when ``content``)."""
    global _installed
    _installed = _Installed(tracer, content)


def uninstall(tracer: Tracer | None = None) -> None:
    """Stop recording spans (only if ``tracer``, when given, is the one installed)."""
    global _installed
    if tracer is None or (_installed is not None and _installed.tracer is tracer):
        _installed = None


def installed() -> Tracer | None:
    """The tracer spans are recorded through, if any."""
    return _installed.tracer if _installed is not None else None


class NoSpan:
    """The span when tracing is off (or outside a traced request): every method does nothing."""

    __slots__ = ()

    def observe(self, event: StreamEvent) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        pass


NO_SPAN = NoSpan()


def _attributes(values: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    """``values`` without the unknown ones, every string redacted."""
    clean: dict[str, AttributeValue] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, str):
            value = redact(value)
        elif isinstance(value, list | tuple):
            value = [redact(item) for item in value]
        clean[key] = value
    return clean


def _error_type(error: BaseException) -> str:
    return type(error).__name__


def _description(error: BaseException) -> str:
    """Why ``error`` happened, fit for a span: a patchbay error's (redacted) message, else only its class."""
    message = getattr(error, "message", None)
    text = f"{_error_type(error)}: {message}" if isinstance(message, str) else _error_type(error)
    return clip(text, ERROR_DESCRIPTION_CHARS)


def _closed_early(error: BaseException | None) -> bool:
    """Whether the span's work ended because its caller stopped reading (no failure of its own)."""
    return isinstance(error, GeneratorExit | asyncio.CancelledError)


class RequestSpan:
    """The span of one request to the gateway (kind SERVER), current while the request is served."""

    __slots__ = ("_ended", "_token", "content", "span")

    def __init__(self, span: Span, content: bool) -> None:
        self.span = span
        self.content = content
        self._ended = False
        self._token = _request.set(self)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        self.span.add_event(name, _attributes(attributes))

    def finish(self, status: int, events: EventStream, *, error: BaseException | None = None,
               messages: Callable[[], list[dict[str, Any]]] | None = None, prompt: str | None = None) -> None:
        """Record how the request ended: its status, who answered, what it used and cost (from its
        ``events``); the messages (or raw ``prompt``) and the answer too when content is recorded."""
        usage = events.usage
        finish_reason = events.finish_reason
        attributes: dict[str, AttributeValue | None] = {
            "http.response.status_code": status, "patchbay.cost_usd": events.ledger.cost,
            "gen_ai.response.model": events.provider_info.model if events.provider_info is not None else None}
        if usage is not None:
            attributes |= {"gen_ai.usage.input_tokens": usage.prompt_tokens,
                           "gen_ai.usage.output_tokens": usage.completion_tokens}
            if usage.cached_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [finish_reason]
        if error is not None and not _closed_early(error):
            attributes["error.type"] = _error_type(error)
            self.span.set_error(_description(error))
        for key, value in _attributes(attributes).items():
            self.span.set_attribute(key, value)
        if self.content:
            details = _attributes({
                "gen_ai.input.messages": _input_messages(messages, prompt),
                "gen_ai.output.messages": _output_messages(events.text, finish_reason),
            })
            if details:
                self.span.add_event(DETAILS_EVENT, details)

    def close(self) -> None:
        """End the span (once) and stop it being the current one."""
        if self._ended:
            return
        self._ended = True
        try:
            _request.reset(self._token)
        except ValueError:  # closed from another context than the one that opened it
            if _request.get() is self:
                _request.set(None)
        self.span.end()


def request_span(operation: str, model: str, *, request_id: str | None = None) -> RequestSpan | NoSpan:
    """The span of a request for ``model`` (``operation``: ``chat`` or ``text_completion``), made
    the current one until :meth:`RequestSpan.close`; :data:`NO_SPAN` when tracing is off."""
    if _installed is None:
        return NO_SPAN
    span = _installed.tracer.start(f"{operation} {model}".strip(), "server", None, _attributes({
        "gen_ai.operation.name": operation, "gen_ai.request.model": model, "patchbay.request_id": request_id}))
    return RequestSpan(span, _installed.content)


def current() -> RequestSpan | NoSpan:
    """The span of the request being served, else :data:`NO_SPAN`."""
    if _installed is None:
        return NO_SPAN
    return _request.get() or NO_SPAN


def finish_request(status: int, events: EventStream, *, error: BaseException | None = None,
                   messages: Callable[[], list[dict[str, Any]]] | None = None, prompt: str | None = None) -> None:
    """:meth:`RequestSpan.finish` on the current request's span, if any (one global check when
    tracing is off)."""
    if _installed is not None and (span := _request.get()) is not None:
        span.finish(status, events, error=error, messages=messages, prompt=prompt)


def fallback(provider: str, model: str, error: str, delivered: int) -> None:
    """Note on the current request's span that the router left ``provider``/``model`` after an
    ``error`` (its class name), ``delivered`` characters having reached the caller."""
    if _installed is not None and (span := _request.get()) is not None:
        span.add_event(FALLBACK_EVENT, {"gen_ai.provider.name": provider, "gen_ai.request.model": model,
                                        "error.type": error, "patchbay.delivered_chars": delivered})


class AttemptSpan:
    """The span of one upstream attempt (kind CLIENT), a child of the request's span. Use it as a
    context manager around the attempt and pass it every event (:meth:`observe`): it notes the
    usage and the finish reason, the model that answered (unless the attempt failed), and on an
    exception the error."""

    __slots__ = ("_model", "_reasons", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._reasons: list[str] = []
        self._model: str | None = None

    def observe(self, event: StreamEvent) -> None:
        kind = type(event)
        if kind is Usage:
            assert isinstance(event, Usage)
            self.span.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
            self.span.set_attribute("gen_ai.usage.output_tokens", event.completion_tokens)
            if event.cached_tokens:
                self.span.set_attribute("gen_ai.usage.cache_read.input_tokens", event.cached_tokens)
        elif kind is ProviderInfo:
            assert isinstance(event, ProviderInfo)
            self._model = event.model  # announced before the upstream answers: recorded if it does
        elif kind is Finish:
            assert isinstance(event, Finish)
            if event.reason not in self._reasons:
                self._reasons.append(event.reason)
                self.span.set_attribute("gen_ai.response.finish_reasons", list(self._reasons))

    def __enter__(self) -> AttemptSpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None and not _closed_early(error):
            self.span.set_attribute("error.type", _error_type(error))
            self.span.set_error(_description(error))
        elif self._model is not None:
            self.span.set_attribute("gen_ai.response.model", redact(self._model))
        self.span.end()


def attempt_span(operation: str, provider: str, model: str) -> AttemptSpan | NoSpan:
    """The span of one attempt at ``provider``'s ``model``; :data:`NO_SPAN` when tracing is off."""
    if _installed is None:
        return NO_SPAN
    parent = _request.get()
    span = _installed.tracer.start(f"{operation} {model}".strip(), "client",
                                   parent.span if parent is not None else None, _attributes({
                                       "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                                       "gen_ai.request.model": model}))
    return AttemptSpan(span)


# -- content, in the GenAI conventions' message shapes ----------------------------------------------


def _input_messages(messages: Callable[[], list[dict[str, Any]]] | None, prompt: str | None) -> str | None:
    """The request's messages as ``gen_ai.input.messages`` (JSON): roles and parts; a raw prompt
    as one user message."""
    if prompt is not None:
        return _json([{"role": "user", "parts": [{"type": "text", "content": prompt}]}])
    if messages is None:
        return None
    return _json([_message(message) for message in messages()])


def _output_messages(text: str, finish_reason: str | None) -> str:
    output: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        output["finish_reason"] = finish_reason
    return _json([output])


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI-style message as the conventions' ``{"role", "parts"}``: text parts kept, other
    parts (images, audio, files) named by their type only, tool calls and results as such."""
    role = message.get("role") or "user"
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if role == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": _text_of(content)})
    elif isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "content": part.get("text", "")})
            elif isinstance(part, dict):
                parts.append({"type": str(part.get("type", "unknown"))})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                      "arguments": function.get("arguments")})
    return {"role": role, "parts": parts}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
