"""A client session is the client's connection, not one request: grants made for it cover its next calls."""

from __future__ import annotations

import sqlite3
from typing import Any

import mcp_types as types
import pytest
from guard_kit import RecordingUpstream, config_from, running_guard, text_of
from mcp import Client

from guard_mcp._approvals import ApprovalStore
from guard_mcp._clock import SystemClock
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

MAIL_CONFIG = """
guard:
  approvals: {wait: 5s}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {action: email.send, category: communicate, reversibility: none, blast_radius: single,
             sensitivity: confidential}
"""


def sessions_of_calls(state: StateDir) -> list[str | None]:
    with sqlite3.connect(state.database) as conn:
        rows = conn.execute(
            "SELECT json_extract(data, '$.session') FROM audit_events WHERE type = 'call.received' ORDER BY seq"
        ).fetchall()
    return [r[0] for r in rows]


async def test_every_request_of_one_connection_shares_its_session_and_another_connection_gets_its_own(
    state: StateDir,
) -> None:
    cfg = config_from(
        MAIL_CONFIG.replace("email.send, category: communicate", "echo.say, category: read")
        .replace("reversibility: none", "reversibility: full")
        .replace("sensitivity: confidential", "sensitivity: public"),
        state,
    )
    async with running_guard(cfg, state, inprocess={"mail": RecordingUpstream().server}) as guard:
        for _ in range(2):
            async with Client(guard.server, mode="legacy") as client:
                for _ in range(2):
                    assert not (await client.call_tool("mail__echo", {"text": "hi"})).is_error
        async with Client(guard.server) as stateless:  # 2026-07-28, in-process: each request stands alone
            await stateless.call_tool("mail__echo", {"text": "hi"})
    first, again, second, second_again, stateless_session = sessions_of_calls(state)
    assert first is not None and first.startswith("ses_")
    assert again == first and second_again == second and second != first
    assert stateless_session is None


async def test_a_session_grant_covers_the_next_medium_call_of_that_session_only(state: StateDir) -> None:
    prompts: list[str] = []

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        prompts.append(params.message)
        return types.ElicitResult(action="accept", content={"decision": "approve"})

    up = RecordingUpstream()
    cfg = config_from(MAIL_CONFIG, state)
    async with running_guard(cfg, state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode="legacy", elicitation_callback=approve) as client:
            first = await client.call_tool("mail__echo", {"text": "first"})
            assert not first.is_error, text_of(first)
            assert len(prompts) == 1
            [session] = {s for s in sessions_of_calls(state)}
            assert session is not None
            store = await ApprovalStore.open(state, clock=SystemClock(), config=cfg.guard.approvals)
            try:
                grant = await store.grants.grant(
                    session=session, tool="mail__echo", duration=600, granted_by="local:ops"
                )
                second = await client.call_tool("mail__echo", {"text": "second"})
                assert not second.is_error, text_of(second)
                assert len(prompts) == 1  # covered by the grant: nobody was asked again
                assert [u.tool for u in await store.grants.uses(grant.id)] == ["mail__echo"]
            finally:
                await store.close()
        async with Client(guard.server, mode="legacy", elicitation_callback=approve) as other:
            await other.call_tool("mail__echo", {"text": "from another session"})
        assert len(prompts) == 2  # the grant stayed with its session
    assert [c[1]["text"] for c in up.calls] == ["first", "second", "from another session"]
