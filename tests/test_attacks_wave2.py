"""Attacks on the wave-2 surfaces (traces and metrics, secrets by reference, the OAuth login, the console's
paths): each is the attack as a hostile agent, upstream or local user would make it, then the assert that it
was stopped."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guard_mcp._state import StateDir
from guard_mcp._telemetry import _tracing
from tests.guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, reason_of, running_guard, text_of
from tests.test_telemetry_tracing import _reset_globals

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(params=["tracing on", "tracing off"])
def tracing(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter | None]:
    _reset_globals()
    if request.param == "tracing off":
        yield None
        return
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracing.enable(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_globals()


# -- a hostile agent's _meta ----------------------------------------------------------------------------------

async def test_a_clients_baggage_does_not_reach_the_upstream(
        state: StateDir, tracing: InMemorySpanExporter | None) -> None:
    # The agent rides its own key-values to the upstream in W3C baggage, beside the trace it may continue.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            await client.call_tool("echo__echo", {"text": "hi"},
                                   meta={"traceparent": TRACEPARENT, "baggage": "role=admin,tenant=acme"})
    [(_, _, meta)] = up.calls
    assert meta["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert "baggage" not in meta and "role=admin" not in str(meta)


WEIRD: list[Any] = [5, True, 1.5, [1, 2], {"a": 1}, [TRACEPARENT] * 3, "x" * 100_000, "\u202e\x1b[31m"]


async def test_trace_context_that_is_not_text_still_reaches_the_guard_as_a_call(
        state: StateDir, tracing: InMemorySpanExporter | None) -> None:
    # A trace-context key that is a number, a list or an object made the SDK's span middleware raise:
    # a bare JSON-RPC error, no audit record, a traceback in the log per call.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for value in WEIRD:
                for key in ("traceparent", "tracestate", "baggage"):
                    meta = {"traceparent": TRACEPARENT, key: value}
                    result = await client.call_tool("echo__echo", {"text": "hi"}, meta=meta)
                    assert not result.is_error and text_of(result) == "hi", (key, value)
            refused = await client.call_tool("echo__echo", {"text": 5}, meta={"baggage": 5})
    assert reason_of(refused) == "schema_violation"  # the guard decided it, as any other call
    with sqlite3.connect(state.database) as conn:
        [(received,)] = conn.execute("SELECT count(*) FROM audit_events WHERE type = 'call.received'").fetchall()
    assert received == len(WEIRD) * 3 + 1
    for _, _, meta in up.calls:
        assert set(meta) & {"tracestate", "baggage"} <= {"tracestate"}
        assert "\x1b" not in str(meta) and "x" * 1000 not in str(meta)


@pytest.mark.parametrize("tracing", ["tracing on"], indirect=True)
async def test_made_up_tool_names_do_not_name_spans(state: StateDir, tracing: InMemorySpanExporter) -> None:
    # The agent calls tools that do not exist, each name new and long: every one would be a span name
    # (an operation in the trace backend) and a `gen_ai.tool.name` of unbounded size.
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            for i in range(5):
                denied = await client.call_tool(f"echo__{i}{'x' * 50_000}", {})
                assert reason_of(denied) == "unknown_tool"
            await client.call_tool("echo__echo", {"text": "hi"})
    calls = [s for s in tracing.get_finished_spans() if "guard.tool" in (s.attributes or {})]
    assert sorted({s.name for s in calls}) == ["tools/call (unknown tool)", "tools/call echo__echo"]
    for s in calls:
        assert all(len(str(v)) <= 128 for v in (s.attributes or {}).values()), s.name
