"""The pause stage through a running guard: what a client that leaves, a forged or moved requestState,
and a client without elicitation can and cannot make the guard do."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import anyio
import mcp_types as types
import pytest
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._approvals import ApprovalState, ApprovalStore, decision_event_data
from guard_mcp._audit import EventIn
from guard_mcp._audit._query import calls
from guard_mcp._clock import SystemClock
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

MEDIUM = (
    "{action: email.send, category: communicate, reversibility: none, blast_radius: single, sensitivity: confidential}"
)
CONFIG = f"""
guard:
  approvals: {{wait: 0.3s}}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {MEDIUM}
      shout: {MEDIUM}
"""
APPROVE = types.ElicitResult(action="accept", content={"decision": "approve"})


def two_tools() -> RecordingUpstream:
    up = RecordingUpstream()
    up.tools.append(up.tools[0].model_copy(update={"name": "shout"}))
    return up


def events(state: StateDir, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(state.database) as conn:
        return [json.loads(d) for (d,) in conn.execute("SELECT data FROM audit_events WHERE type = ?", (kind,))]


async def test_a_client_that_leaves_while_asked_cancels_its_approval_and_a_late_approver_cannot_revive_it(
    state: StateDir,
) -> None:
    asked = anyio.Event()

    async def never_answers(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    up = two_tools()
    cfg = config_from(CONFIG.replace("wait: 0.3s", "wait: 60s"), state)
    async with running_guard(cfg, state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode="legacy", elicitation_callback=never_answers) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "mail__echo", {"text": "send it"})
                with anyio.fail_after(10):
                    await asked.wait()
                tg.cancel_scope.cancel()  # the client gives up and goes away
        store = await ApprovalStore.open(state, clock=SystemClock(), config=cfg.guard.approvals)
        try:
            with anyio.fail_after(10):
                while not events(state, "approval.cancelled"):  # noqa: ASYNC110 (another task writes it)
                    await anyio.sleep(0.02)
            [approval] = await store.list()
            assert approval.state is ApprovalState.CANCELLED
            with pytest.raises(ApprovalError, match="already cancelled"):
                await store.decide(approval.id, approve=True, approver="local:ops")
        finally:
            await store.close()
    # The identical call, made again later (here to a restarted guard that waits less), is a new
    # question, not the old approval's execution.
    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode="legacy") as later:
            again = await later.call_tool("mail__echo", {"text": "send it"})
    assert reason_of(again) == "pending_approval" and up.calls == []
    assert events(state, "approval.cancelled")[0]["reason"] == "client_disconnected"
    with sqlite3.connect(state.database) as conn:  # `guard-mcp audit` reads the call as ended, not executed
        left = next(c for c in calls(conn) if "approval.cancelled" in c.types)
    assert (left.outcome, left.decision, left.reason) == ("cancelled", "deny", "approval_cancelled")


async def test_a_sealed_state_does_not_carry_its_approval_to_other_arguments_or_another_tool(state: StateDir) -> None:
    up = two_tools()
    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard:

        async def unused(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            raise AssertionError("the 2026-07-28 era asks through InputRequiredResult, not a request")

        # 2026-07-28 with elicitation: the question is returned, the answer comes back with the retry
        async with Client(guard.server, elicitation_callback=unused) as client:
            session = client.session
            asked = await session.call_tool("mail__echo", {"text": "hello"}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult) and asked.request_state
            sealed = asked.request_state
            responses: types.InputResponses = {"approval": APPROVE}
            swapped = await session.call_tool(
                "mail__echo",
                {"text": "wire the money"},
                request_state=sealed,
                input_responses=responses,
                allow_input_required=True,
            )
            moved = await session.call_tool(
                "mail__shout",
                {"text": "hello"},
                request_state=sealed,
                input_responses=responses,
                allow_input_required=True,
            )
            unsealed = await session.call_tool(
                "mail__echo", {"text": "hello"}, input_responses=responses, allow_input_required=True
            )
            assert up.calls == []
            genuine = await session.call_tool(
                "mail__echo",
                {"text": "hello"},
                request_state=sealed,
                input_responses=responses,
                allow_input_required=True,
            )
    assert reason_of(swapped) == "request_state_mismatch"  # type: ignore[arg-type]
    assert reason_of(moved) == "request_state_mismatch"  # type: ignore[arg-type]
    assert reason_of(unsealed) == "request_state_invalid"  # type: ignore[arg-type]
    assert isinstance(genuine, types.CallToolResult) and not genuine.is_error
    assert [(name, args["text"]) for name, args, _ in up.calls] == [("echo", "hello")]


async def test_without_elicitation_an_approved_call_runs_once_when_repeated_and_other_arguments_ask_again(
    state: StateDir,
) -> None:
    up = two_tools()
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    cfg = config_from(CONFIG.replace("wait: 0.3s", "wait: 0.5s, heartbeat: 0.1s"), state)
    async with running_guard(cfg, state, inprocess={"mail": up.server}, approval_poll=0.05) as guard:
        async with Client(guard.server, mode="legacy") as client:  # no elicitation capability
            first = await client.call_tool("mail__echo", {"text": "hello"}, progress_callback=on_progress)
            assert reason_of(first) == "pending_approval" and first.is_error
            approval_id = (first.meta or {})["dev.guard-mcp/decision"]["approval_id"]
            # the wait was a heartbeat that names the way out
            assert heard and all(f"guard-mcp approvals approve {approval_id}" in m for m in heard)
            store = await ApprovalStore.open(state, clock=SystemClock(), config=cfg.guard.approvals)
            try:
                decided = await store.decide(approval_id, approve=True, approver="local:ops")
            finally:
                await store.close()
            # what `guard-mcp approvals approve` records next
            await guard.audit.append(
                EventIn(
                    "operator.decided",
                    request_id=decided.request_id,
                    actor="operator:ops",
                    tool=decided.tool,
                    data=decision_event_data(decided),
                )
            )
            other = await client.call_tool("mail__echo", {"text": "hello, changed"})
            repeated = await client.call_tool("mail__echo", {"text": "hello"})
            once_more = await client.call_tool("mail__echo", {"text": "hello"})
    assert reason_of(other) == "pending_approval"
    assert not repeated.is_error
    assert reason_of(once_more) == "pending_approval"
    assert [args["text"] for _, args, _ in up.calls] == ["hello"]


async def test_a_state_sealed_before_the_call_became_high_risk_cannot_approve_it_in_band(state: StateDir) -> None:
    async def unused(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        raise AssertionError("the 2026-07-28 era asks through InputRequiredResult, not a request")

    up = two_tools()
    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, elicitation_callback=unused) as client:
            asked = await client.session.call_tool("mail__echo", {"text": "hello"}, allow_input_required=True)
    assert isinstance(asked, types.InputRequiredResult) and asked.request_state
    # the operator re-classifies the tool as HIGH risk and restarts; the agent retries with the old state
    high = CONFIG.replace("category: communicate", "category: financial").replace(
        "sensitivity: confidential", "sensitivity: restricted"
    )
    async with running_guard(config_from(high, state), state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, elicitation_callback=unused) as client:
            retried = await client.session.call_tool(
                "mail__echo",
                {"text": "hello"},
                request_state=asked.request_state,
                input_responses={"approval": APPROVE},
                allow_input_required=True,
            )
    assert reason_of(retried) == "step_up_required"  # type: ignore[arg-type]
    assert up.calls == []
