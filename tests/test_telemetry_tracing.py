"""OpenTelemetry spans of guarded calls: one call span (the MCP SDK's request span, named by the guard),
one child per stage, the client's `traceparent` continued and handed on to the upstream, and never an
argument value in any attribute."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from _policy_kit import make_signer, write_bundle
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, meta_of, reason_of, running_guard
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once

from guard_mcp._errors import ConfigError
from guard_mcp._state import StateDir
from guard_mcp._telemetry import _tracing, configure_tracing, tracing_wanted

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
SECRET = "s3cr3t-argument-value"
ROOT = Path(__file__).resolve().parent.parent


def _reset_globals() -> None:
    """The process's tracer provider back to none (the API sets it once): other tests run untraced."""
    import mcp.shared._otel as sdk_otel

    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    sdk_otel._tracer._real_tracer = None  # type: ignore[attr-defined]  # the SDK's proxy caches the real tracer
    _tracing._installed = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_globals()
    _tracing.enable(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_globals()


def _children(all_spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in all_spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _no_value_in(all_spans: tuple[ReadableSpan, ...], value: str) -> None:
    for s in all_spans:
        for key, attr in (s.attributes or {}).items():
            assert value not in str(attr), (s.name, key)
        for event in s.events:
            assert value not in str(event.attributes), (s.name, event.name)


async def test_a_call_is_one_span_with_a_child_per_stage_continuing_the_clients_trace(
    state: StateDir, spans: InMemorySpanExporter
) -> None:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        assert guard.pipeline.tracing.on
        async with Client(guard.server) as client:  # the 2026-07-28 era: trace context rides in `_meta`
            result = await client.call_tool("echo__echo", {"text": SECRET}, meta=meta_of({"traceparent": TRACEPARENT}))
    assert not result.is_error
    finished = spans.get_finished_spans()
    [call] = [s for s in finished if s.name == "tools/call echo__echo"]  # the SDK's span, not a second one
    assert call.context is not None and f"{call.context.trace_id:032x}" == TRACE_ID
    assert call.parent is not None and f"{call.parent.span_id:016x}" == CLIENT_SPAN
    attrs = dict(call.attributes or {})
    assert attrs["guard.tool"] == "echo__echo" and attrs["guard.action"] == "echo.say"
    assert attrs["guard.tier"] == "LOW" and attrs["guard.effect"] == "allow"
    assert attrs["guard.decision.effect"] == "allow" and "guard.reason" in attrs
    assert not [s for s in finished if s.name == "guard.call"]  # no span doubling the SDK's request span
    stages = {s.name: s for s in _children(finished, call)}
    assert set(stages) == {"guard.validate", "guard.decide", "guard.permit", "guard.forward"}
    assert [s.name for s in _children(finished, stages["guard.permit"])] == ["guard.audit_commit"]
    forward = stages["guard.forward"]
    assert forward.context is not None
    # The upstream's hop hangs under `guard.forward` (the SDK's CLIENT span where its transport makes one).
    hops = {forward.context.span_id} | {
        c.context.span_id for c in _children(finished, forward) if c.kind is SpanKind.CLIENT and c.context is not None
    }
    # The upstream is told the trace in its own fresh `_meta`: the same trace, the guard's hop as parent.
    [(_, args, meta)] = up.calls
    assert args == {"text": SECRET}
    version, trace_id, parent, _ = str(meta["traceparent"]).split("-")
    assert (version, trace_id) == ("00", TRACE_ID) and int(parent, 16) in hops and parent != CLIENT_SPAN
    [upstream_side] = [s for s in finished if s.name == "tools/call echo"]  # the in-process upstream's own span
    assert upstream_side.parent is not None and upstream_side.parent.span_id == int(parent, 16)
    _no_value_in(finished, SECRET)


async def test_a_denied_call_carries_its_reason_and_a_forged_traceparent_starts_a_new_trace(
    state: StateDir, spans: InMemorySpanExporter
) -> None:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            denied = await client.call_tool(
                "echo__echo", {"text": 5, "extra": SECRET}, meta=meta_of({"traceparent": "00-zz-not-a-trace"})
            )
    assert reason_of(denied) == "schema_violation"
    finished = spans.get_finished_spans()
    [call] = [s for s in finished if s.name == "tools/call echo__echo"]
    assert call.parent is None  # a malformed traceparent is ignored, not an error
    attrs = dict(call.attributes or {})
    assert attrs["guard.effect"] == "deny" and attrs["guard.reason"] == "schema_violation"
    assert {s.name for s in _children(finished, call)} == {"guard.validate"}
    assert up.calls == []
    _no_value_in(finished, SECRET)


async def test_tracing_off_passes_the_clients_trace_on_untouched(state: StateDir) -> None:
    _reset_globals()
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        assert not guard.pipeline.tracing.on
        async with Client(guard.server) as client:
            await client.call_tool("echo__echo", {"text": "hi"}, meta=meta_of({"traceparent": TRACEPARENT}))
    [(_, _, meta)] = up.calls
    assert meta["traceparent"] == TRACEPARENT  # a hop that does not trace keeps the trace whole


def test_which_exporters_the_standard_variables_ask_for() -> None:
    assert tracing_wanted({}) == []
    assert tracing_wanted({"OTEL_SERVICE_NAME": "x"}) == []  # naming a service exports nothing
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp,console"}) == ["otlp", "console"]
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == []
    assert tracing_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == []


def test_an_exporter_the_guard_cannot_make_refuses_the_start() -> None:
    with pytest.raises(ConfigError, match="`zipkin`"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="`http/json`"):
        configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert _tracing._installed is None  # nothing half-installed


def test_unconfigured_tracing_never_imports_the_sdk() -> None:
    code = (
        "import sys; from guard_mcp._telemetry import configure_tracing, Tracing; "
        "assert configure_tracing({}) is None; t = Tracing.current(); assert not t.on; "
        "assert t.stage('a') is t.stage('b'); "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')], 'sdk imported'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)


async def test_a_policys_own_reason_is_on_the_span_and_only_policy_in_the_metric_label(
    state: StateDir, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    signer = make_signer(tmp_path / "keys")
    bundle = tmp_path / "p.bundle.json"
    write_bundle(
        bundle,
        "policy: p\nversion: 1\nrules:\n  - id: no-echo\n    match: {action: echo.say}\n"
        "    effect: deny\n    reason: echo_is_not_for_today\n",
        signer,
    )
    text = ECHO_CONFIG.replace(
        "upstreams:", f"guard:\n  policy: {bundle}\n  trusted_policy_keys: [{signer.public_pem}]\nupstreams:", 1
    )
    up = RecordingUpstream()
    async with running_guard(config_from(text, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            denied = await client.call_tool("echo__echo", {"text": SECRET})
        exposition = guard.metrics.exposition().decode()
    assert reason_of(denied) == "echo_is_not_for_today"
    [call] = [s for s in spans.get_finished_spans() if s.name == "tools/call echo__echo"]
    attrs = dict(call.attributes or {})
    assert attrs["guard.reason"] == "echo_is_not_for_today" and attrs["guard.decision.rule"] == "no-echo"
    assert 'guard_calls_total{effect="deny",reason="policy",tool="echo__echo"} 1.0' in exposition
    assert "echo_is_not_for_today" not in exposition  # a policy author's codes do not grow the label set


LIMITED = """
guard:
  approvals: {wait: 0.2s}
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public,
             limits: [{window: 1h, calls: 5}]}
      store: {action: note.store, category: write, reversibility: none, blast_radius: single,
              sensitivity: confidential, redact: [text]}
"""


async def test_a_limited_call_and_a_paused_call_have_their_stages_spans(
    state: StateDir, spans: InMemorySpanExporter
) -> None:
    tools = [
        types.Tool(name=n, input_schema={"type": "object", "properties": {"text": {"type": "string"}}})
        for n in ("echo", "store")
    ]
    up = RecordingUpstream(tools)
    async with running_guard(config_from(LIMITED, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            await client.call_tool("echo__echo", {"text": SECRET})
            paused = await client.call_tool("echo__store", {"text": SECRET})
    assert reason_of(paused) == "pending_approval"
    finished = spans.get_finished_spans()
    [echo] = [s for s in finished if s.name == "tools/call echo__echo"]
    [store] = [s for s in finished if s.name == "tools/call echo__store"]
    assert {s.name for s in _children(finished, echo)} == {
        "guard.validate",
        "guard.decide",
        "guard.limits",
        "guard.permit",
        "guard.forward",
    }
    assert {s.name for s in _children(finished, store)} == {"guard.validate", "guard.decide", "guard.approval_wait"}
    attrs = dict(store.attributes or {})
    assert attrs["guard.effect"] == "approve" and attrs["guard.reason"] == "pending_approval"
    assert attrs["guard.tier"] in ("MEDIUM", "HIGH") and attrs["guard.decision.effect"] == "approve"
    _no_value_in(finished, SECRET)


def test_outside_a_request_span_the_guard_opens_its_own_call_span(spans: InMemorySpanExporter) -> None:
    tracing = _tracing.Tracing.current()
    with tracing.call() as call, tracing.stage("guard.decide"):
        assert call is not None
    [stage, own] = spans.get_finished_spans()
    assert own.name == "guard.call" and stage.name == "guard.decide"
    assert stage.parent is not None and own.context is not None and stage.parent.span_id == own.context.span_id
