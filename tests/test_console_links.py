"""A paused call links to its approval's console page, whatever the client can do, and wakes on a
console decision: URL-mode elicitation (handshake era), the link in the form (2026-07-28 era) and
in the pending result (no elicitation)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from console_kit import ORIGIN, SoftPasskey, csrf_of, sign_in, use_enrolment
from guard_kit import RecordingUpstream, approval_store, config_from, reason_of, running_guard, text_of
from mcp import Client

from guard_mcp._console import open_guard_console
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

MEDIUM = "{action: email.send, category: communicate, reversibility: none, blast_radius: single, " \
         "sensitivity: confidential}"
CONFIG = f"""
guard:
  approvals: {{wait: 60s, heartbeat: 0.05s}}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {MEDIUM}
"""
URL = f"{ORIGIN}/console"


async def _approver(guard: Any, app: Any) -> httpx2.AsyncClient:
    stage = guard.pipeline.approvals
    await stage.store.approvers.enrol("ana", ["approvers"])
    browser = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=ORIGIN,
                                 headers={"origin": ORIGIN})
    from guard_mcp._console._store import ConsoleStore

    store = await ConsoleStore.open(guard.state, guard.clock)
    try:
        token = await store.issue_enrolment("ana", 600)
    finally:
        await store.close()
    assert token is not None
    passkey = SoftPasskey()
    assert (await use_enrolment(browser, token, passkey)).status_code == 303
    assert (await sign_in(browser, passkey)).status_code == 303
    return browser


async def test_a_url_mode_client_is_sent_the_approval_page_and_resumes_once_on_the_console_decision(
        state: StateDir) -> None:
    up = RecordingUpstream()
    asked: list[types.ElicitRequestParams] = []
    ticks: list[tuple[float, float | None, str | None]] = []
    arrived = anyio.Event()

    async def opens_the_page(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        arrived.set()
        return types.ElicitResult(action="accept")  # consent to open it: not a decision

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        ticks.append((progress, total, message))

    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard, \
            open_guard_console(guard, listen_host="127.0.0.1", url=URL) as app:
        browser = await _approver(guard, app)
        async with Client(guard.server, mode="legacy", elicitation_callback=opens_the_page) as client:
            result: list[types.CallToolResult] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    result.append(await client.call_tool("mail__echo", {"text": "hi"}, progress_callback=on_progress))

                tg.start_soon(call)
                with anyio.fail_after(10):
                    await arrived.wait()
                params = asked[0]
                assert isinstance(params, types.ElicitRequestURLParams)
                approval_id = params.elicitation_id
                assert params.url == f"{URL}/approvals/{approval_id}"
                assert up.calls == []  # accepting the page approved nothing
                with anyio.fail_after(10):
                    while not ticks:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                page = await browser.get(f"/console/approvals/{approval_id}")
                decided = await browser.post(f"/console/approvals/{approval_id}/decide",
                                             data={"csrf": csrf_of(page.text), "decision": "approve"})
                assert decided.status_code == 303
        assert not result[0].is_error
        assert len(up.calls) == 1 and len(asked) == 1
        assert ticks[0][1] == 60.0 and URL in (ticks[0][2] or "")  # a total to count down, and the link
        assert approval_id is not None
        record = await approval_store(guard).get(approval_id)
        assert record is not None and record.approver == "ana" and record.consumed
        await browser.aclose()


async def test_without_elicitation_the_pending_result_carries_the_link_beside_the_command(state: StateDir) -> None:
    up = RecordingUpstream()
    cfg = config_from(CONFIG.replace("wait: 60s", "wait: 0.2s"), state)
    async with running_guard(cfg, state, inprocess={"mail": up.server}) as guard, \
            open_guard_console(guard, listen_host="127.0.0.1", url=URL):
        for mode in ("legacy", "auto"):
            async with Client(guard.server, mode=mode) as client:
                result = await client.call_tool("mail__echo", {"text": "hi"})
            assert reason_of(result) == "pending_approval"
            decision = (result.meta or {})["dev.guard-mcp/decision"]
            assert decision["approve_url"] == f"{URL}/approvals/{decision['approval_id']}"
            assert decision["approve_url"] in text_of(result)
            assert decision["approve_command"] in text_of(result)
    assert up.calls == []


async def test_a_2026_era_client_gets_the_link_in_the_form_it_is_asked(state: StateDir) -> None:
    up = RecordingUpstream()
    shown: list[types.ElicitRequestParams] = []

    async def declines(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        shown.append(params)
        return types.ElicitResult(action="decline")

    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard, \
            open_guard_console(guard, listen_host="127.0.0.1", url=URL):
        async with Client(guard.server, elicitation_callback=declines) as client:
            result = await client.call_tool("mail__echo", {"text": "hi"})
    assert reason_of(result) == "approval_denied"
    assert isinstance(shown[0], types.ElicitRequestFormParams)
    assert f"{URL}/approvals/apr_" in shown[0].message
