"""OpenTelemetry trace context from the webhook to the vendor call.

The ingress starts a span per webhook — continuing the sender's trace when it sent a W3C
``traceparent`` header — and writes that context into the NATS message headers
(``traceparent``/``tracestate``, kept in the outbox too). Each consumer continues it for the
delivery, and every vendor request carries it on as ``traceparent``. One trace therefore
spans webhook → stream → consumer → GHL/Aloware/Verity call, across processes.

Spans are always made, since their ids must exist to be carried; they are *exported* only
when ``OTEL_TRACES_EXPORTER`` asks: ``none`` (the default), ``console`` (stdout) or ``otlp``
(endpoint, headers and protocol details from the standard ``OTEL_EXPORTER_OTLP_*`` variables).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

EXPORTERS = ("none", "console", "otlp")
PROPAGATOR = TraceContextTextMapPropagator()

H = TypeVar("H", bound=MutableMapping[str, str])

_provider = TracerProvider()  # until configure(): spans with ids, exported nowhere
_tracer = _provider.get_tracer("dfm")


def configure(service: str, exporter: str) -> None:
    """Name this process's spans ``dfm-<service>`` and export them as ``exporter`` says."""
    global _provider, _tracer
    if exporter not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": f"dfm-{service}"}))
    if exporter != "none":
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    _provider, _tracer = provider, provider.get_tracer("dfm")
    trace.set_tracer_provider(provider)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # the stdout of now, not of import time
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The trace context in ``carrier`` (HTTP or NATS headers); empty when there is none."""
    return PROPAGATOR.extract(carrier or {})


def inject(headers: H) -> H:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    PROPAGATOR.inject(headers)
    return headers


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Mapping[str, str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A current span; a child of the context in ``parent`` headers when given, else of the
    current span (a new trace when there is none)."""
    context = extract(parent) if parent is not None else None
    with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield current
