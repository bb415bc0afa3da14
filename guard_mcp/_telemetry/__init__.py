"""Traces and metrics of the running guard: OpenTelemetry spans per call and stage (`_tracing`), and the
Prometheus `/metrics` endpoint (`_metrics`, `_endpoint`). Neither ever carries an argument value.

Tracing is off unless the standard `OTEL_*` variables ask for an exporter (docs/operations.md); off,
a stage costs one shared no-op context manager and the OpenTelemetry SDK is never imported.
"""

from guard_mcp._telemetry._endpoint import with_metrics
from guard_mcp._telemetry._metrics import Metrics, outcome
from guard_mcp._telemetry._tracing import Tracing, configure_tracing, trace_context_gate, tracing_wanted

__all__ = ["Metrics", "Tracing", "configure_tracing", "outcome", "trace_context_gate", "tracing_wanted", "with_metrics"]
