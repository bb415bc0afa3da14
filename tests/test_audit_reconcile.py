"""A permit whose outcome never reached the log is written down, never left implicit.

Two ways a permitted call loses its outcome: the client cancels while the upstream holds the
permit, or the guard dies before the result is recorded. Both end as `call.unresolved`, and a
start never calls a live guard's in-flight permits unresolved.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import anyio
import mcp_types as types
import pytest
from _audit_helpers import call_story, open_log
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard
from mcp.server import Server, ServerRequestContext

from guard_mcp._audit import EventIn, RunLock
from guard_mcp._audit._query import story, summarize
from guard_mcp._audit._store import connect_reader
from guard_mcp._clock import FakeClock
from guard_mcp._models import Actor
from guard_mcp._pipeline import CallContext
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


def _events(state: StateDir, kind: str) -> list[tuple[int, str | None, dict[str, Any]]]:
    with sqlite3.connect(state.database) as conn:
        rows = conn.execute(
            "SELECT seq, request_id, data FROM audit_events WHERE type = ? ORDER BY seq", (kind,)
        ).fetchall()
    return [(seq, rid, json.loads(data)) for seq, rid, data in rows]


async def _crashed_run(state: StateDir, clock: FakeClock) -> None:
    """A run that recorded r1 whole, and r2 up to its permit, then died (no `guard.stop`)."""
    log = await open_log(state, clock)
    await log.append(EventIn("guard.start"))
    await log.append_many(call_story("r1"))
    await log.append(EventIn("call.result", "r1", "alice", "shop", "refund", {"is_error": False}))
    await log.append_many(call_story("r2"))
    await log.close()


async def _start_and_stop(state: StateDir) -> None:
    up = RecordingUpstream()
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": up.server}):
        pass


async def test_a_start_records_the_permits_a_dead_guard_left_without_outcome(state: StateDir, clock: FakeClock) -> None:
    await _crashed_run(state, clock)
    await _start_and_stop(state)

    [(_, request_id, data)] = _events(state, "call.unresolved")
    assert request_id == "r2"  # r1 has its result
    [(permit_seq, _, _)] = [e for e in _events(state, "permit.issued") if e[1] == "r2"]
    assert data == {"reason": "guard_stopped", "jti": "j-r2", "permit_seq": permit_seq}
    starts = _events(state, "guard.start")
    assert starts[-1][2]["reconciled_through"] >= permit_seq
    conn = connect_reader(state.database)
    try:
        summary = summarize(story(conn, "r2"))
    finally:
        conn.close()
    assert summary.outcome == "unknown" and summary.decision == "allow" and summary.reason == "guard_stopped"

    await _start_and_stop(state)  # looked at once: a second start adds nothing
    assert len(_events(state, "call.unresolved")) == 1


async def test_a_start_beside_a_running_guard_does_not_call_its_permits_unresolved(
    state: StateDir, clock: FakeClock
) -> None:
    await _crashed_run(state, clock)
    live = RunLock(state.root / "serve.lock")  # another guard, serving from this state directory
    assert live.sole
    live.share()
    try:
        await _start_and_stop(state)
        assert _events(state, "call.unresolved") == []  # r2 might be that guard's call in flight
        assert "reconciled_through" not in _events(state, "guard.start")[-1][2]
    finally:
        live.release()
    await _start_and_stop(state)  # now alone: it looks
    assert [rid for _, rid, _ in _events(state, "call.unresolved")] == ["r2"]


async def test_a_call_cancelled_while_the_upstream_holds_its_permit_is_recorded_unresolved(state: StateDir) -> None:
    entered = anyio.Event()

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=RecordingUpstream().tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    slow: Server[Any] = Server("slow", on_list_tools=list_tools, on_call_tool=call_tool)
    async with running_guard(config_from(ECHO_CONFIG, state), state, inprocess={"echo": slow}) as guard:
        assert guard.catalog.lookup("echo__echo") is not None  # in-process upstreams are ready at open
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                guard.pipeline.call,
                "echo__echo",
                {"text": "hi"},
                CallContext(actor=Actor(principal="agent"), session=None),
            )
            with anyio.fail_after(10):
                await entered.wait()
            tg.cancel_scope.cancel()
    [(_, request_id, data)] = _events(state, "call.unresolved")
    [(_, permit_request, permit)] = _events(state, "permit.issued")
    assert request_id == permit_request and data == {"reason": "cancelled", "jti": permit["jti"]}
    assert _events(state, "call.result") == []
