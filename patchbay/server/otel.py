"""OpenTelemetry behind :mod:`patchbay.routing.tracing`: the SDK's tracer provider, exporting spans in
batches over OTLP/HTTP to ``[tracing] endpoint``.

OpenTelemetry is an extra (``pip install 'patchbay[otel]'``): it is imported only when tracing is
configured, so the gateway runs without it, and a configured ``[tracing]`` without it fails at
startup saying what to install. The exporter runs in the batch processor's own thread, so the
request path only hands finished spans over; :meth:`Tracing.shutdown` exports what is left (within
the exporter's timeout) when the server stops. The provider is patchbay's own, not the global
one, so an application embedding patchbay keeps its own OpenTelemetry setup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import patchbay.routing.tracing as tracing
from patchbay import __version__
from patchbay.errors import InvalidRequest
from patchbay.redact import register_secret
from patchbay.routing.tracing import AttributeValue, Span, SpanKind
from patchbay.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OTelSpanObject

__all__ = ["INSTALL_HINT", "OTelTracer", "Tracing", "start_tracing"]

INSTALL_HINT = "pip install 'patchbay[otel]'"


class _OTelSpan:
    """One OpenTelemetry span as a :class:`patchbay.routing.tracing.Span`."""

    __slots__ = ("span",)

    def __init__(self, span: OTelSpanObject) -> None:
        self.span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        self.span.add_event(name, attributes)

    def set_error(self, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        self.span.end()


class OTelTracer:
    """A :class:`patchbay.routing.tracing.Tracer` recording through an OpenTelemetry tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind as Kind

        self.provider = provider
        self._tracer = provider.get_tracer("patchbay", __version__)
        self._kinds = {"server": Kind.SERVER, "client": Kind.CLIENT}

    def start(self, name: str, kind: SpanKind, parent: Span | None, attributes: Mapping[str, AttributeValue]
              ) -> Span:
        from opentelemetry.trace import set_span_in_context

        context = set_span_in_context(parent.span) if isinstance(parent, _OTelSpan) else None
        return _OTelSpan(self._tracer.start_span(name, context=context, kind=self._kinds[kind],
                                                 attributes=attributes))


class Tracing:
    """Tracing while the server runs: the installed tracer and its provider."""

    def __init__(self, tracer: OTelTracer) -> None:
        self.tracer = tracer

    def shutdown(self) -> None:
        """Stop recording and export the spans still queued (blocks up to the exporter's timeout)."""
        tracing.uninstall(self.tracer)
        self.tracer.provider.shutdown()


def start_tracing(settings: TracingSettings, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Install tracing as ``settings`` describe it; None when it is off (no endpoint). A missing
    extra or bad exporter headers are InvalidRequest saying so."""
    endpoint = settings.traces_endpoint(environ)
    if endpoint is None:
        return None
    headers = settings.headers(environ)
    for value in (headers or {}).values():
        register_secret(value)  # an exporter token never shows in a log line or an error
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise InvalidRequest(f"[tracing] is configured but OpenTelemetry is not installed ({error.name}); "
                             f"install it with: {INSTALL_HINT}") from None
    resource = Resource.create(_resource(settings))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=settings.timeout)
    provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=settings.timeout * 1000))
    tracer = OTelTracer(provider)
    tracing.install(tracer, content=settings.content)
    return Tracing(tracer)


def _resource(settings: TracingSettings) -> dict[str, Any]:
    return {"service.name": settings.service_name, "service.version": __version__}
