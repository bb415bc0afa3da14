"""What leaves the guard in a span: never an error's text (imported only when tracing is on).

An error's message is often the upstream's own words, and those quote the call's arguments (`invalid
card 4111...`), redacted ones included, or the credential it refused. The MCP SDK writes them into the
status of its spans (the upstream's JSON-RPC error on its client span) and OpenTelemetry into an
exception event (message and stack trace) of a span an error left. Every exporter the guard makes sees
its spans through `without_error_text`: a status keeps its code, an exception event its type.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

__all__ = ["without_error_text"]

_KEPT = ("exception.type", "exception.escaped")


def _plain(span: ReadableSpan) -> ReadableSpan:
    said = [e for e in span.events if e.name == "exception"]
    if span.status.description is None and not said:
        return span
    events = [
        Event(e.name, {k: v for k, v in (e.attributes or {}).items() if k in _KEPT}, e.timestamp)
        if e.name == "exception"
        else e
        for e in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class _WithoutErrorText(SpanExporter):
    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_plain(s) for s in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def without_error_text(exporter: SpanExporter) -> SpanExporter:
    """`exporter`, given each span with no error's text in its status or exception events."""
    return _WithoutErrorText(exporter)
