"""How the guard words what upstreams do: a failure is the upstream's, a clean stop is not a crash."""

from __future__ import annotations

import sqlite3

import mcp_types as types
import pytest
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, reason_of, running_guard, text_of
from mcp import Client, MCPError
from mcp.server import Server

from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


def _types(state: StateDir) -> list[str]:
    with sqlite3.connect(state.database) as conn:
        return [r[0] for r in conn.execute("SELECT type FROM audit_events ORDER BY seq")]


async def test_a_clean_stop_writes_no_upstream_down(state: StateDir) -> None:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}) as guard:
        async with Client(guard.server) as client:
            assert not (await client.call_tool("echo__echo", {"text": "hi"})).is_error
        assert guard.upstreams.handles["echo"].state == "ready"
    seen = _types(state)
    assert "upstream.ready" in seen and "guard.stop" in seen
    assert "upstream.down" not in seen


async def test_an_upstream_that_fails_a_call_is_worded_as_the_upstreams_failure_not_a_denial(state: StateDir) -> None:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema={"type": "object"})])

    async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
        raise MCPError(code=-32603, message="disk full")

    up = Server("failing", on_list_tools=list_tools, on_call_tool=call_tool)
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up}) as guard:
        async with Client(guard.server) as client:
            result = await client.call_tool("echo__echo", {})
    text = text_of(result)
    assert result.is_error and reason_of(result) == "upstream_error"
    assert text.startswith("upstream error: upstream `echo` failed `echo`: disk full (request req_")
    assert "denied" not in text and "guard-mcp allowed this call" in text
