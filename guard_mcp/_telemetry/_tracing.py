"""OpenTelemetry spans of guarded calls.

The MCP SDK already opens a SERVER span per inbound request (continuing the `traceparent` a client
sends in `_meta`); its client does not carry the context into every upstream request, so the guard
writes it into the upstream's fresh `_meta` itself (`carry`). The guard does not open a second span per call: it names the SDK's
`tools/call` span with the call's tool, action, tier, effect and reason, and hangs one child span per
pipeline stage under it. Outside a request (a pipeline called directly) it opens `guard.call` itself.

Off (no `OTEL_*` exporter asked for), every method returns one shared no-op context manager and the
SDK is never imported: `opentelemetry-api`'s default no-op tracer, which the MCP SDK uses, still carries
an incoming trace context on to the upstream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate, trace

from guard_mcp._errors import ConfigError

__all__ = ["Tracing", "configure_tracing", "trace_context_gate", "tracing_wanted"]

_OFF = contextlib.nullcontext(None)  # reusable: the cost of a stage when tracing is off
_NAME = "guard-mcp"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_LENGTH_LIMITS = ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
_MAX_ATTRIBUTE = 1024  # characters of a span attribute's value, unless those variables say otherwise
_installed: Any = None  # the tracer provider `configure_tracing` (or `enable`) installed, if any


class Tracing:
    """The spans of one guard; `Tracing()` is off, `Tracing.current()` follows `configure_tracing`."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer

    @classmethod
    def current(cls) -> Tracing:
        return cls(None if _installed is None else _installed.get_tracer(_NAME))

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def call(self) -> contextlib.AbstractContextManager[trace.Span | None]:
        """The span of one guarded call: the SDK's request span when there is one, else a new `guard.call`."""
        if self._tracer is None:
            return _OFF
        return self._call(self._tracer)

    @contextlib.contextmanager
    def _call(self, tracer: trace.Tracer) -> Iterator[trace.Span]:
        current = trace.get_current_span()
        if current.is_recording():
            yield current
            return
        with tracer.start_as_current_span("guard.call", kind=trace.SpanKind.INTERNAL) as span:
            yield span

    def stage(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A child span of the current call for one stage (`guard.validate`, `guard.decide`, ...)."""
        if self._tracer is None:
            return _OFF
        return self._tracer.start_as_current_span(name)

    @staticmethod
    def carry(meta: MutableMapping[str, Any]) -> None:
        """The current trace context (W3C `traceparent`, `tracestate`) into an upstream's fresh `_meta`:
        the guard's hop when tracing is on, the caller's own context unchanged when it is off, nothing
        when the caller sent none."""
        if trace.get_current_span().get_span_context().is_valid:
            propagate.inject(meta)


async def trace_context_gate(ctx: Any, call_next: Any) -> Any:
    """Server middleware, outermost: a request's trace-context keys in `_meta` (`traceparent`, `tracestate`,
    `baggage`: the propagators' fields) that are not text are dropped before the MCP SDK reads them. A client
    sending `baggage: 5` would otherwise make the SDK's own span middleware raise, and the call end in a bare
    JSON-RPC error with a traceback in the log instead of reaching the guard."""
    meta = ctx.meta
    if meta:
        fields = propagate.get_global_textmap().fields
        bad = [k for k in fields if k in meta and not isinstance(meta[k], str)]
        if bad:
            ctx = dataclasses.replace(ctx, meta={k: v for k, v in meta.items() if k not in bad})
    return await call_next(ctx)


def tracing_wanted(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the standard variables ask for (`otlp`, `console`); none: tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER")
    if named is not None:
        wanted = [n.strip().lower() for n in named.split(",") if n.strip()]
        return [] if wanted in ([], ["none"]) else wanted
    return ["otlp"] if any(environ.get(v) for v in _ENDPOINTS) else []


def configure_tracing(environ: Mapping[str, str] | None = None) -> Any:
    """Install an SDK tracer provider exporting where `OTEL_*` says (endpoint, headers, protocol, service
    name, resource attributes, sampler and batching are the SDK's own readings of the standard
    variables); the provider (to shut down at exit), or None when no exporter is asked for."""
    env = os.environ if environ is None else environ
    wanted = tracing_wanted(env)
    if not wanted:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        raise ConfigError(
            "the `OTEL_*` variables ask for trace export and the OpenTelemetry SDK is not installed: "
            "`pip install 'guard-mcp[otel]'`, or unset `OTEL_TRACES_EXPORTER` and "
            "`OTEL_EXPORTER_OTLP_ENDPOINT`"
        ) from None
    exporters: list[SpanExporter] = []
    for name in wanted:
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr))  # stdout is the MCP wire under stdio
        elif name == "otlp":
            exporters.append(_otlp_exporter(env))
        else:
            raise ConfigError(
                f"`OTEL_TRACES_EXPORTER` names `{name}`; guard-mcp exports spans with `otlp` or `console` (or `none`)"
            )
    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": _NAME})
    from opentelemetry.sdk.trace import SpanLimits

    from guard_mcp._telemetry._export import without_error_text

    # A client's JSON-RPC id is an attribute of the SDK's span: no string a client sends is kept unbounded.
    limited = any(env.get(v) for v in _LENGTH_LIMITS)
    limits = SpanLimits() if limited else SpanLimits(max_span_attribute_length=_MAX_ATTRIBUTE)
    provider = TracerProvider(resource=resource, span_limits=limits)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(without_error_text(exporter)))  # no error's words leave
    enable(provider)
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        .strip()
        .lower()
    )
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,no-redef]
                OTLPSpanExporter,
            )
        else:
            raise ConfigError(
                f"`OTEL_EXPORTER_OTLP_PROTOCOL` is `{protocol}`; guard-mcp exports spans over `http/protobuf` or `grpc`"
            )
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else "'guard-mcp[otel]'"
        raise ConfigError(f"OTLP export over `{protocol}` needs `pip install {package}`") from None
    return OTLPSpanExporter()


def enable(provider: Any) -> None:
    """Make `provider` the process's tracer provider: the guard's spans and the MCP SDK's go to it."""
    global _installed
    trace.set_tracer_provider(provider)
    _installed = trace.get_tracer_provider()
