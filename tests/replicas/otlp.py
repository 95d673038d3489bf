"""An OTLP/HTTP trace receiver (what an OpenTelemetry Collector's ``otlphttp`` receiver does).

``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` in protobuf (``application/x-protobuf``,
gzip or not) and answers an empty ``ExportTraceServiceResponse``; anything else is refused 400
and listed in ``violations``. Every body is kept as it arrived (``requests``, for asserting that
no secret is anywhere in the bytes) and its spans decoded into :class:`ReceivedSpan` values.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.replicas.base import ReplicaServer

TRACES_PATH = "/v1/traces"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind values
STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


def value_of(value: AnyValue) -> Any:
    """An attribute's value as plain Python (arrays as lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class ReceivedEvent:
    name: str
    attributes: dict[str, Any]


@dataclass
class ReceivedSpan:
    """One span as the receiver decoded it (ids as hex)."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[ReceivedEvent]
    status_code: int
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)
    start: int = 0
    end: int = 0


class OTLPReceiver(ReplicaServer):
    """Receives trace exports; ``spans`` are every span received, in arrival order."""

    SCENARIOS: ClassVar[frozenset[str]] = frozenset({"normal"})

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []

    @property
    def endpoint(self) -> str:
        return self.url(TRACES_PATH)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(TRACES_PATH, self.traces)]

    def violation_response(self, reason: str) -> web.StreamResponse:
        return web.json_response({"code": 3, "message": reason}, status=400)

    async def traces(self, request: web.Request) -> web.StreamResponse:
        self.check(request.content_type == "application/x-protobuf",
                   f"content type must be application/x-protobuf, got {request.content_type}")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)  # aiohttp decompresses on its own; this is for a raw body
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except DecodeError as error:
            self.check(False, f"not an ExportTraceServiceRequest: {error}")
        for resource_spans in export.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        name=span.name, kind=span.kind, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), attributes=attributes_of(span.attributes),
                        events=[ReceivedEvent(e.name, attributes_of(e.attributes)) for e in span.events],
                        status_code=span.status.code, status_message=span.status.message, resource=resource,
                        start=span.start_time_unix_nano, end=span.end_time_unix_nano))
        self._notify()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    @property
    def received_bytes(self) -> bytes:
        """Every export body, as received."""
        return b"".join(r.body for r in self.requests_to(TRACES_PATH))
