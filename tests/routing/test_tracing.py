"""OpenTelemetry traces (``[tracing]``, the ``patchbay[otel]`` extra): a real ``patchbay serve``
exports over OTLP/HTTP to a real receiver on 127.0.0.1 (tests/replicas/otlp.py), one request span
and one span per upstream attempt with the GenAI semantic conventions' attributes, the fallback as
an event, message content only with ``content = true``, and no credential anywhere in the bytes.
In this process: the no-op path when tracing is off, the settings, and the SDK adapter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import patchbay.routing.tracing as tracing
from patchbay.errors import InvalidRequest
from patchbay.events import EventStream
from patchbay.redact import encoded_forms
from patchbay.server.app import Gateway
from patchbay.server.otel import INSTALL_HINT, OTelTracer, start_tracing
from patchbay.settings import RouterSettings, ServerSettings, Settings, TracingSettings, load_settings, to_toml
from tests.replicas.base import refused_url
from tests.replicas.openai_fake import OpenAIFake, error_object
from tests.replicas.otlp import CLIENT, SERVER, STATUS_ERROR, OTLPReceiver, ReceivedSpan
from tests.support.asgi_client import ASGIClient
from tests.support.gateway_process import GatewayProcess

UPSTREAM_KEY = "sk-upstream-trace-7f3a9c2e41"
GATEWAY_KEY = "pb-gateway-trace-51d0e8b7aa"
SPAN_TIMEOUT = 60.0  # seconds for the batch processor to deliver the spans, on a busy machine
PRICES = {"input": 2.5, "output": 10.0}
QUESTION = "Which colour is the sky over Lisbon today?"


class EchoingUpstream(OpenAIFake):
    """An upstream whose error messages quote the key the request carried (as some real ones do),
    plain and URL-quoted: the gateway must keep it out of the spans' error descriptions."""

    def error_response(self, status: int) -> web.Response:
        key = self.api_key or ""
        body = error_object(status, f"upstream broke while serving key {key} ({urllib.parse.quote(key)})")
        return web.json_response(body, status=status)


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[EchoingUpstream]:
    async with EchoingUpstream() as fake:
        fake.api_key = UPSTREAM_KEY
        yield fake


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[OTLPReceiver]:
    async with OTLPReceiver() as otlp:
        yield otlp


def config(upstream: OpenAIFake, tracing_table: dict[str, Any]) -> dict[str, Any]:
    """Two targets on the upstream, one attempt each: a failure of the first falls back to the second."""
    provider = {"base_url": upstream.api_base, "api_key_env": "TRACE_UPSTREAM_KEY", "prices": PRICES}
    return {
        "server": {"request_log": False, "web_ui": False},
        "router": {"retries": 1, "first_byte_timeout": 30.0, "timeout": 60.0},
        "providers": {"first": {**provider, "models": ["fake-small"]},
                      "second": {**provider, "models": ["fake-large"]}},
        "routes": {"small": ["first/fake-small", "second/fake-large"]},
        "tracing": tracing_table,
    }


ENV = {"TRACE_UPSTREAM_KEY": UPSTREAM_KEY, "PATCHBAY_API_KEYS": GATEWAY_KEY,
       "OTEL_BSP_SCHEDULE_DELAY": "50"}  # the batch processor's standard variable: export within 50 ms


async def chat(gateway: GatewayProcess, *, stream: bool, text: str = QUESTION) -> tuple[dict[str, Any], str]:
    """One chat request; (the answer's usage and text, the request id)."""
    body = {"model": "small", "messages": [{"role": "user", "content": text}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, \
            http.post(f"{gateway.api_base}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {GATEWAY_KEY}"}) as response:
        assert response.status == 200, await response.text()
        request_id = response.headers["x-request-id"]
        if not stream:
            answer = await response.json()
            return {"usage": answer["usage"], "text": answer["choices"][0]["message"]["content"]}, request_id
        usage: dict[str, Any] = {}
        text_parts: list[str] = []
        async for line in response.content:
            data = line.decode().strip().removeprefix("data: ")
            if not data.startswith("{"):
                continue
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            text_parts += [choice["delta"].get("content") or "" for choice in chunk["choices"]]
        return {"usage": usage, "text": "".join(text_parts)}, request_id


def tree(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The one request span and its attempt spans (in the order they started)."""
    roots = [span for span in spans if span.kind == SERVER]
    assert len(roots) == 1, [span.name for span in spans]
    root = roots[0]
    attempts = sorted((span for span in spans if span.kind == CLIENT), key=lambda span: span.start)
    assert len(attempts) + 1 == len(spans)
    return root, attempts


def assert_no_secret(receiver: OTLPReceiver) -> None:
    received = receiver.received_bytes
    assert received
    for key in (UPSTREAM_KEY, GATEWAY_KEY):
        for form in encoded_forms(key):
            assert form.encode() not in received, form


@pytest.mark.process
async def test_a_fallback_request_exports_its_span_and_one_per_attempt(
        upstream: EchoingUpstream, receiver: OTLPReceiver, tmp_path: Path) -> None:
    upstream.fail_next = 1  # the first target fails: the router falls back to the second
    table = {"endpoint": receiver.endpoint, "service_name": "gateway-under-test"}
    async with GatewayProcess(config(upstream, table), tmp_path, env=ENV) as gateway:
        answer, request_id = await chat(gateway, stream=False)
        await receiver.wait_until(lambda: len(receiver.spans) >= 3, timeout=SPAN_TIMEOUT)
    assert receiver.violations == []
    root, attempts = tree(receiver.spans)
    assert root.resource["service.name"] == "gateway-under-test"

    assert root.name == "chat small"
    assert root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.request.model"] == "small"
    assert root.attributes["gen_ai.response.model"] == "fake-large"
    assert root.attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert root.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["patchbay.request_id"] == request_id
    assert root.attributes["patchbay.cost_usd"] > 0
    assert "error.type" not in root.attributes

    failed, answered = attempts
    for attempt in attempts:
        assert attempt.trace_id == root.trace_id and attempt.parent_span_id == root.span_id
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert root.start <= attempt.start <= attempt.end <= root.end
    assert failed.name == "chat fake-small"
    assert failed.attributes["gen_ai.provider.name"] == "first"
    assert failed.attributes["gen_ai.request.model"] == "fake-small"
    assert failed.status_code == STATUS_ERROR and failed.attributes["error.type"]
    assert "gen_ai.response.model" not in failed.attributes  # it never answered
    assert "[REDACTED]" in failed.status_message  # the upstream quoted the key; the span does not
    assert answered.name == "chat fake-large"
    assert answered.attributes["gen_ai.provider.name"] == "second"
    assert answered.attributes["gen_ai.request.model"] == "fake-large"
    assert answered.attributes["gen_ai.response.model"] == "fake-large"
    assert answered.attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert answered.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert answered.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert answered.status_code != STATUS_ERROR and "error.type" not in answered.attributes

    fallbacks = [event for event in root.events if event.name == tracing.FALLBACK_EVENT]
    assert [event.attributes for event in fallbacks] == [{
        "gen_ai.provider.name": "first", "gen_ai.request.model": "fake-small",
        "error.type": failed.attributes["error.type"], "patchbay.delivered_chars": 0}]

    assert not any(event.name == tracing.DETAILS_EVENT for span in receiver.spans for event in span.events)
    assert QUESTION.encode() not in receiver.received_bytes  # no content unless enabled
    assert answer["text"] and answer["text"].encode() not in receiver.received_bytes
    assert_no_secret(receiver)
    for key in (UPSTREAM_KEY, GATEWAY_KEY):
        assert key not in gateway.log_text


@pytest.mark.process
async def test_content_is_recorded_redacted_only_when_enabled(
        upstream: EchoingUpstream, receiver: OTLPReceiver, tmp_path: Path) -> None:
    text = f"{QUESTION} (my key is {UPSTREAM_KEY})"
    async with GatewayProcess(config(upstream, {"endpoint": receiver.endpoint, "content": True}), tmp_path,
                              env=ENV) as gateway:
        answer, _ = await chat(gateway, stream=True, text=text)
        await receiver.wait_until(lambda: len(receiver.spans) >= 2, timeout=SPAN_TIMEOUT)
    root, attempts = tree(receiver.spans)
    assert [attempt.attributes["gen_ai.provider.name"] for attempt in attempts] == ["first"]
    assert root.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    details = [event for event in root.events if event.name == tracing.DETAILS_EVENT]
    assert len(details) == 1
    inputs = json.loads(details[0].attributes["gen_ai.input.messages"])
    outputs = json.loads(details[0].attributes["gen_ai.output.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": f"{QUESTION} (my key is [REDACTED])"}]}]
    assert outputs == [{"role": "assistant", "parts": [{"type": "text", "content": answer["text"]}],
                        "finish_reason": "stop"}]
    assert_no_secret(receiver)


@pytest.mark.process
async def test_without_an_endpoint_nothing_is_exported(upstream: EchoingUpstream, receiver: OTLPReceiver,
                                                       tmp_path: Path) -> None:
    """A ``[tracing]`` table without an endpoint is off, even where the generic OTLP variable
    names a collector (it may be meant for another program)."""
    env = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url or ""}
    async with GatewayProcess(config(upstream, {"content": True}), tmp_path, env=env) as gateway:
        answer, _ = await chat(gateway, stream=False)
    assert answer["text"]
    assert receiver.requests == []


@pytest.mark.process
async def test_a_collector_that_is_down_fails_no_request_and_the_server_still_stops(
        upstream: EchoingUpstream, tmp_path: Path) -> None:
    table = {"endpoint": refused_url() + "/v1/traces", "timeout": 2.0}
    gateway = GatewayProcess(config(upstream, table), tmp_path, env=ENV)
    async with gateway:
        for stream in (False, True):
            answer, _ = await chat(gateway, stream=stream)
            assert answer["text"]
    assert gateway.process is not None and gateway.process.returncode == -signal.SIGTERM  # not killed
    assert "Application shutdown complete" in gateway.log_text
    assert "Traceback" not in gateway.log_text
    assert UPSTREAM_KEY not in gateway.log_text and GATEWAY_KEY not in gateway.log_text


# -- in this process ---------------------------------------------------------------------------------


@contextlib.contextmanager
def installed(*, content: bool) -> Iterator[InMemorySpanExporter]:
    """Tracing installed over the OpenTelemetry SDK, every span exported at once into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = OTelTracer(provider)
    tracing.install(tracer, content=content)
    try:
        yield exporter
    finally:
        tracing.uninstall(tracer)
        provider.shutdown()


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    with installed(content=False) as exporter:
        yield exporter


def gateway_for(fake: OpenAIFake, routes: dict[str, list[str]] | None = None) -> ASGIClient:
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False), router=RouterSettings(retries=1),
                        providers={"fake": {"base_url": fake.api_base, "models": ["m", "n"]}},
                        routes=routes or {"small": ["fake/m"]})
    return ASGIClient(Gateway(settings))


async def test_with_tracing_off_every_span_is_the_no_op_one(openai_fake: OpenAIFake) -> None:
    assert tracing.installed() is None
    assert tracing.request_span("chat", "small") is tracing.NO_SPAN
    assert tracing.attempt_span("chat", "fake", "m") is tracing.NO_SPAN
    assert tracing.current() is tracing.NO_SPAN
    async with gateway_for(openai_fake) as gateway:
        answer = await gateway.chat("small")
        streamed = await gateway.chat("small", stream=True)
    assert answer.status == 200 and streamed.status == 200
    assert tracing.current() is tracing.NO_SPAN


async def test_a_failed_text_completion_names_its_operation_and_error(openai_fake: OpenAIFake,
                                                                      exported: InMemorySpanExporter) -> None:
    openai_fake.fail_next = 2
    body = json.dumps({"model": "small", "prompt": "Once upon a time"}).encode()
    async with gateway_for(openai_fake, {"small": ["fake/m", "fake/n"]}) as gateway:
        response = await gateway.request("POST", "/v1/completions", body)
    assert response.status >= 500
    spans: tuple[ReadableSpan, ...] = exported.get_finished_spans()
    [root] = [span for span in spans if span.kind is SpanKind.SERVER]
    attempts = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert root.name == "text_completion small"
    assert root.attributes is not None and root.attributes["gen_ai.operation.name"] == "text_completion"
    assert root.attributes["http.response.status_code"] == response.status
    assert root.attributes["error.type"] == "AllProvidersFailed" and root.status.status_code is StatusCode.ERROR
    assert [a.attributes and a.attributes["gen_ai.request.model"] for a in attempts] == ["m", "n"]
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    assert all(a.parent is not None and root.context is not None and a.parent.span_id == root.context.span_id
               for a in attempts)
    assert tracing.current() is tracing.NO_SPAN  # the request's span is current only while it is served


async def test_a_client_that_leaves_mid_stream_is_no_error(openai_fake: OpenAIFake,
                                                           exported: InMemorySpanExporter) -> None:
    openai_fake.scenario = "endless"
    async with gateway_for(openai_fake) as gateway:
        status = await leave_after(gateway.app, 3)
    assert status == 200
    spans = exported.get_finished_spans()
    assert sorted(span.kind.name for span in spans) == ["CLIENT", "SERVER"]
    for span in spans:
        assert span.status.status_code is not StatusCode.ERROR
        assert span.attributes is not None and "error.type" not in span.attributes


async def leave_after(app: Any, events: int) -> int:
    """A streamed chat whose client disconnects after ``events`` body pieces; the status it got."""
    body = json.dumps({"model": "small", "messages": [{"role": "user", "content": "go"}], "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()
    statuses: list[int] = []
    pieces = 0

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal pieces
        if gone.is_set():
            raise OSError("the client is gone")
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message.get("body"):
            pieces += 1
            if pieces >= events:
                gone.set()

    await asyncio.wait_for(app(scope, receive, send), 30)
    return statuses[0]


def test_content_takes_the_conventions_message_shapes_without_binary_data() -> None:
    image = "data:image/png;base64," + "iVBORw0KGgo" * 20
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": image}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]

    async def nothing() -> AsyncIterator[Any]:
        return
        yield

    with installed(content=True) as exporter:
        span = tracing.request_span("chat", "small")
        tracing.finish_request(200, EventStream(nothing()), messages=lambda: messages)
        span.close()
    [recorded] = exporter.get_finished_spans()
    [details] = [event for event in recorded.events if event.name == tracing.DETAILS_EVENT]
    assert details.attributes is not None
    assert json.loads(str(details.attributes["gen_ai.input.messages"])) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "What is this?"}, {"type": "image_url"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "look", "arguments": "{}"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "a cat"}]},
    ]
    assert json.loads(str(details.attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": ""}]}]


# -- settings --------------------------------------------------------------------------------------


def test_the_tracing_table_and_its_variables(tmp_path: Path) -> None:
    path = tmp_path / "patchbay.toml"
    path.write_text(to_toml({"tracing": {"endpoint": "http://127.0.0.1:4318/v1/traces", "content": True}}))
    settings = load_settings(path, environ={"PATCHBAY_TRACING_SERVICE_NAME": "edge-1"})
    assert settings.tracing == TracingSettings(endpoint="http://127.0.0.1:4318/v1/traces", content=True,
                                               service_name="edge-1")
    assert load_settings(path, environ={}).tracing.traces_endpoint({}) == "http://127.0.0.1:4318/v1/traces"
    off = load_settings(None, environ={"PATCHBAY_CONFIG": ""}).tracing
    assert off.traces_endpoint({}) is None
    assert off.traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == \
        "http://c:4318/v1/traces"
    assert off.headers({"PATCHBAY_TRACING_HEADERS": "x-token=abc=d, team = core"}) == {"x-token": "abc=d",
                                                                                       "team": "core"}
    assert off.headers({}) is None


@pytest.mark.parametrize(("table", "named"), [
    ({"endpoint": "127.0.0.1:4318"}, "tracing.endpoint"),
    ({"timeout": 0}, "tracing.timeout"),
    ({"content": "yes"}, "tracing.content"),
    ({"sampling": 0.5}, "unknown options ['sampling']"),
])
def test_a_mistake_in_the_tracing_table_names_it(tmp_path: Path, table: dict[str, Any], named: str) -> None:
    path = tmp_path / "patchbay.toml"
    path.write_text(to_toml({"tracing": table}))
    with pytest.raises(InvalidRequest, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_settings(path, environ={})


def test_bad_exporter_headers_are_named() -> None:
    with pytest.raises(InvalidRequest, match="PATCHBAY_TRACING_HEADERS"):
        TracingSettings().headers({"PATCHBAY_TRACING_HEADERS": "no-equals-sign"})


def test_configured_tracing_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(InvalidRequest, match=r"pip install 'patchbay\[otel\]'") as raised:
        start_tracing(TracingSettings(endpoint="http://127.0.0.1:4318/v1/traces"))
    assert INSTALL_HINT in raised.value.message
    assert tracing.installed() is None
    assert start_tracing(TracingSettings(), environ={}) is None  # off: nothing imported, nothing installed
