"""A paused call links to its approval's console page, whatever the client can do, and wakes on a
console decision: URL-mode elicitation (the handshake's `elicitation/create`, or a URL-mode input
request in the 2026-07-28 `InputRequiredResult`), the link in the form (form-only clients) and in
the pending result (no elicitation). A step-up or `approval: authenticated` call is never decided
by an answer in the agent's own client, in either era."""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from console_kit import ORIGIN, SoftPasskey, csrf_of, form_only, sign_in, use_enrolment
from guard_kit import RecordingUpstream, approval_store, config_from, reason_of, running_guard, text_of
from mcp import Client

from guard_mcp._approvals import ApprovalState
from guard_mcp._console import open_guard_console
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

MEDIUM = (
    "{action: email.send, category: communicate, reversibility: none, blast_radius: single, sensitivity: confidential}"
)
HIGH = (
    "{action: refund.create, category: financial, reversibility: none, blast_radius: single, sensitivity: confidential}"
)
CONFIG = f"""
guard:
  approvals: {{wait: 60s, heartbeat: 0.05s}}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {MEDIUM}
"""
BANK = f"""
  bank:
    command: unused-in-process
    tools:
      echo: {HIGH}
"""
MODES = ["legacy", "auto"]
URL = f"{ORIGIN}/console"


async def _approver(guard: Any, app: Any) -> httpx2.AsyncClient:
    stage = guard.pipeline.approvals
    await stage.store.approvers.enrol("ana", ["approvers"])
    browser = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=ORIGIN, headers={"origin": ORIGIN})
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
    state: StateDir,
) -> None:
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

    async with (
        running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL) as app,
    ):
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
                decided = await browser.post(
                    f"/console/approvals/{approval_id}/decide", data={"csrf": csrf_of(page.text), "decision": "approve"}
                )
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
    async with (
        running_guard(cfg, state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        for mode in ("legacy", "auto"):
            async with Client(guard.server, mode=mode) as client:
                result = await client.call_tool("mail__echo", {"text": "hi"})
            assert reason_of(result) == "pending_approval"
            decision = (result.meta or {})["dev.guard-mcp/decision"]
            assert decision["approve_url"] == f"{URL}/approvals/{decision['approval_id']}"
            assert decision["approve_url"] in text_of(result)
            assert decision["approve_command"] in text_of(result)
    assert up.calls == []


async def test_a_2026_era_form_only_client_gets_the_link_in_the_form_it_is_asked(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    form_only(monkeypatch)
    up = RecordingUpstream()
    shown: list[types.ElicitRequestParams] = []

    async def declines(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        shown.append(params)
        return types.ElicitResult(action="decline")

    async with (
        running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        async with Client(guard.server, elicitation_callback=declines) as client:
            result = await client.call_tool("mail__echo", {"text": "hi"})
    assert reason_of(result) == "approval_denied"  # a MEDIUM call keeps its in-band decision
    assert isinstance(shown[0], types.ElicitRequestFormParams)
    assert f"{URL}/approvals/apr_" in shown[0].message


async def test_a_2026_era_url_mode_client_is_sent_the_approval_page_and_its_retry_waits_for_the_console(
    state: StateDir,
) -> None:
    up = RecordingUpstream()
    asked: list[types.ElicitRequestParams] = []
    arrived = anyio.Event()

    async def opens_the_page(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        arrived.set()
        return types.ElicitResult(action="accept")  # consent to open it: not a decision

    ticks: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        ticks.append((progress, total, message))

    async with (
        running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL) as app,
    ):
        browser = await _approver(guard, app)
        async with Client(guard.server, mode="auto", elicitation_callback=opens_the_page) as client:
            result: list[types.CallToolResult] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    result.append(await client.call_tool("mail__echo", {"text": "hi"}, progress_callback=on_progress))

                tg.start_soon(call)
                with anyio.fail_after(10):
                    await arrived.wait()
                params = asked[0]
                assert isinstance(params, types.ElicitRequestURLParams)
                approval_id = params.url.rsplit("/", 1)[1]
                assert params.url == f"{URL}/approvals/{approval_id}"  # no secret: the page asks who is there
                store = approval_store(guard)
                with anyio.fail_after(10):  # the retry came back (its requestState is spent) and waits, counting down
                    while not (_claimed(state) and ticks):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert ticks[0][1] == 60.0 and URL in (ticks[0][2] or "")
                record = await store.get(approval_id)
                assert record is not None and record.state is ApprovalState.PENDING and up.calls == []
                page = await browser.get(f"/console/approvals/{approval_id}")
                decided = await browser.post(
                    f"/console/approvals/{approval_id}/decide", data={"csrf": csrf_of(page.text), "decision": "approve"}
                )
                assert decided.status_code == 303
        assert not result[0].is_error
        assert len(up.calls) == 1 and len(asked) == 1  # resumed exactly once
        record = await store.get(approval_id)
        assert record is not None and record.approver == "ana" and record.factor == "console" and record.consumed
        await browser.aclose()


def _claimed(state: StateDir) -> int:
    conn = sqlite3.connect(state.database)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM request_state_used").fetchone()[0])
    except sqlite3.OperationalError:  # not created before the first retry
        return 0
    finally:
        conn.close()


async def _accepts_with_approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """An auto-accepting client: says yes to anything, with the form's approve answer attached."""
    return types.ElicitResult(action="accept", content={"decision": "approve"})


@pytest.mark.parametrize("mode", MODES)
async def test_attack_an_auto_accepting_client_sent_the_page_approves_nothing(state: StateDir, mode: str) -> None:
    up = RecordingUpstream()
    cfg = config_from(CONFIG.replace("wait: 60s", "wait: 0.3s"), state)
    async with (
        running_guard(cfg, state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        async with Client(guard.server, mode=mode, elicitation_callback=_accepts_with_approve) as client:
            result = await client.call_tool("mail__echo", {"text": "hi"})
        assert reason_of(result) == "pending_approval"
        record = await approval_store(guard).get((result.meta or {})["dev.guard-mcp/decision"]["approval_id"])
    assert record is not None and record.state is ApprovalState.PENDING
    assert up.calls == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("declares", ["url", "form"])
async def test_attack_a_step_up_call_is_never_decided_by_an_answer_in_the_agents_client(
    state: StateDir, mode: str, declares: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the client declares and whichever era: it is sent the page, or a form that only carries
    the link and asks nothing; answering it with `approve` leaves the approval to the console."""
    if declares == "form":
        form_only(monkeypatch)
    up = RecordingUpstream()
    shown: list[types.ElicitRequestParams] = []

    async def accepts(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        shown.append(params)
        return await _accepts_with_approve(context, params)

    cfg = config_from(CONFIG.replace("wait: 60s", "wait: 0.3s") + BANK, state)
    async with (
        running_guard(cfg, state, inprocess={"mail": RecordingUpstream().server, "bank": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        async with Client(guard.server, mode=mode, elicitation_callback=accepts) as client:
            result = await client.call_tool("bank__echo", {"text": "pay"})
        assert reason_of(result) == "pending_approval", result
        approval_id = (result.meta or {})["dev.guard-mcp/decision"]["approval_id"]
        record = await approval_store(guard).get(approval_id)
    assert record is not None and record.state is ApprovalState.PENDING and record.step_up
    assert up.calls == []
    assert len(shown) == 1
    link = f"{URL}/approvals/{approval_id}"
    if declares == "url":
        assert isinstance(shown[0], types.ElicitRequestURLParams) and shown[0].url == link
    else:
        assert isinstance(shown[0], types.ElicitRequestFormParams)
        assert shown[0].requested_schema.get("properties") == {} and link in shown[0].message


@pytest.mark.parametrize("mode", MODES)
async def test_attack_a_denial_reason_reaches_the_waiting_client_as_text_with_its_hidden_characters_coded(
    state: StateDir, mode: str
) -> None:
    up = RecordingUpstream()
    hostile = "no\u202egnp.exe\u200b <script>x</script>"
    arrived = anyio.Event()
    asked: list[types.ElicitRequestParams] = []

    async def opens_the_page(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        arrived.set()
        return types.ElicitResult(action="accept")

    async with (
        running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        store = approval_store(guard)
        async with Client(guard.server, mode=mode, elicitation_callback=opens_the_page) as client:
            result: list[types.CallToolResult] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    result.append(await client.call_tool("mail__echo", {"text": "hi"}))

                tg.start_soon(call)
                with anyio.fail_after(10):
                    await arrived.wait()
                params = asked[0]
                assert isinstance(params, types.ElicitRequestURLParams)
                await store.decide(params.url.rsplit("/", 1)[1], approve=False, approver="ana", reason=hostile)
    assert reason_of(result[0]) == "approval_denied" and up.calls == []
    text = result[0].content[0].text  # type: ignore[union-attr]
    said = (result[0].meta or {})["dev.guard-mcp/decision"]["approver_reason"]
    for shown in (text, said):
        assert "\u202e" not in shown and "\u200b" not in shown
        assert "no\\u202egnp.exe\\u200b <script>x</script>" in shown  # the whole reason, coded, as text
