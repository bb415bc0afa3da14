"""The tools, policy, grants and approvers pages, under attack and in use: changed tool definitions
shown as text and accepted only by an admin group, through the CLI's own code and on record; session
grants given only within one's own group, with CSRF; "explain this call" with the engine's trace."""

from __future__ import annotations

import re
from typing import Any

import pytest
from console_kit import ORIGIN, Harness, SoftPasskey, console_harness, csrf_of, enrol, page_csrf, sign_in
from guard_kit import RecordingUpstream, approval_store, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._approvals import ApprovalState
from guard_mcp._clock import FakeClock
from guard_mcp._console import open_guard_console
from guard_mcp._pins import PinStore
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert(1)</script>\u202egnp.exe\u200b<img src=x onerror=alert(2)> javascript:alert(3)"


async def _signed_in(h: Harness, name: str = "ana", groups: list[str] | None = None) -> SoftPasskey:
    passkey = SoftPasskey()
    await enrol(h, name, groups or ["finance"], passkey)
    assert (await sign_in(h.client, passkey)).status_code == 303
    return passkey


def _changed_tool(state: StateDir, description: str = HOSTILE) -> str:
    """Pin `shop.refund`, then see a changed definition of it: withheld, pending review. Returns its hash."""
    pins = PinStore(state.database)
    try:
        pins.observe("shop", "refund", {"name": "refund", "description": "Refund an order."}, 1.0)
        pins.observe("shop", "refund", {"name": "refund", "description": description}, 2.0)
        pending = pins.pending()[0].pending_hash
        assert pending is not None
        return pending
    finally:
        pins.close()


def _withheld(state: StateDir) -> bool:
    pins = PinStore(state.database)
    try:
        return bool(pins.pending())
    finally:
        pins.close()


def _assert_inert(body: str) -> None:
    assert "<script>alert" not in body and "<img" not in body
    assert "\u202e" not in body and "\u200b" not in body
    assert not re.search(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", body, re.I)


# -- tools -------------------------------------------------------------------------------------------


async def test_a_changed_tool_definition_is_shown_as_a_diff_of_plain_text(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        _changed_tool(state)
        page = await h.client.get("/console/tools")
        assert page.status_code == 200
        _assert_inert(page.text)
        assert "shop__refund" in page.text
        assert '<span class="add">+  &#34;description&#34;: &#34;&lt;script&gt;' in page.text
        assert "\\u202egnp.exe\\u200b" in page.text  # the hidden characters, as visible codes
        assert "Accept this definition" not in page.text  # not an admin: the page says how in a terminal
        assert "guard-mcp tools accept shop__refund" in page.text


async def test_accepting_a_tool_definition_needs_an_admin_group_and_none_is_configured_by_default(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        digest = _changed_tool(state)
        csrf = await page_csrf(h.client, "/console/tools")
        response = await h.client.post(
            "/console/tools/accept", data={"csrf": csrf, "name": "shop__refund", "hash": digest}
        )
        assert response.status_code == 403 and "guard.console.admins" in response.text
        assert _withheld(state)
        assert [e.type for e in h.events if e.type == "tool.pin_accepted"] == []


async def test_an_admin_accepts_the_definition_they_saw_and_it_is_on_record(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock, admins=["platform"]) as h:
        await _signed_in(h, groups=["platform"])
        digest = _changed_tool(state)
        page = await h.client.get("/console/tools")
        assert "Accept this definition" in page.text
        csrf = csrf_of(page.text)
        for refused in (
            {"csrf": "", "name": "shop__refund", "hash": digest},
            {"csrf": "guessed", "name": "shop__refund", "hash": digest},
        ):
            assert (await h.client.post("/console/tools/accept", data=refused)).status_code == 403
        foreign = await h.client.post(
            "/console/tools/accept",
            data={"csrf": csrf, "name": "shop__refund", "hash": digest},
            headers={"origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        assert _withheld(state)
        response = await h.client.post(
            "/console/tools/accept", data={"csrf": csrf, "name": "shop__refund", "hash": digest}
        )
        assert response.status_code == 303
        assert not _withheld(state)
        event = next(e for e in h.events if e.type == "tool.pin_accepted")
        assert event.actor == "approver:ana" and event.tool == "shop__refund" and event.upstream == "shop"
        assert event.data["hash"] == digest and event.data["exposed"] == "shop__refund"


async def test_a_definition_that_changed_again_after_the_admin_looked_is_not_accepted(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock, admins=["platform"]) as h:
        await _signed_in(h, groups=["platform"])
        seen = _changed_tool(state, "first change")
        csrf = await page_csrf(h.client, "/console/tools")
        _changed_tool(state, "a second, different change")  # the upstream changed it again meanwhile
        response = await h.client.post(
            "/console/tools/accept", data={"csrf": csrf, "name": "shop__refund", "hash": seen}
        )
        assert response.status_code == 409 and "changed again" in response.text
        assert _withheld(state)


# -- grants ------------------------------------------------------------------------------------------


async def test_a_grant_for_ones_own_group_is_given_with_its_record_and_revoked(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        csrf = await page_csrf(h.client, "/console/grants")
        response = await h.client.post(
            "/console/grants",
            data={
                "csrf": csrf,
                "session": "sess-1",
                "scope": "group",
                "target": "finance",
                "minutes": "30",
                "reason": HOSTILE,
            },
        )
        assert response.status_code == 303, response.text
        [grant] = await h.approvals.grants.list()
        assert grant.granted_by == "ana" and grant.group == "finance" and grant.factor == "console" and grant.verified
        event = next(e for e in h.events if e.type == "console.granted")
        assert event.actor == "approver:ana" and event.data["grant_id"] == grant.id
        page = await h.client.get("/console/grants")
        _assert_inert(page.text)
        assert grant.id in page.text
        # revoking needs the token too
        assert (await h.client.post(f"/console/grants/{grant.id}/revoke", data={"csrf": "x"})).status_code == 403
        assert await h.approvals.grants.list() != []
        response = await h.client.post(f"/console/grants/{grant.id}/revoke", data={"csrf": csrf})
        assert response.status_code == 303
        assert await h.approvals.grants.list() == []
        assert next(e for e in h.events if e.type == "console.revoked").data["revoked_by"] == "ana"


async def test_a_grant_is_refused_outside_ones_groups_for_a_tool_without_admin_and_without_csrf(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h, "sam", ["sales"])
        csrf = await page_csrf(h.client, "/console/grants")
        base = {"csrf": csrf, "session": "sess-1", "minutes": "30"}
        other_group = await h.client.post("/console/grants", data={**base, "scope": "group", "target": "finance"})
        assert other_group.status_code == 403 and "not in group `finance`" in other_group.text
        one_tool = await h.client.post("/console/grants", data={**base, "scope": "tool", "target": "shop__refund"})
        assert one_tool.status_code == 403 and "guard.console.admins" in one_tool.text
        no_token = await h.client.post(
            "/console/grants", data={**base, "csrf": "", "scope": "group", "target": "sales"}
        )
        assert no_token.status_code == 403
        foreign = await h.client.post(
            "/console/grants",
            data={**base, "scope": "group", "target": "sales"},
            headers={"origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        too_long = await h.client.post(
            "/console/grants", data={**base, "minutes": "100000", "scope": "group", "target": "sales"}
        )
        assert too_long.status_code == 400
        assert await h.approvals.grants.list(active_only=False) == []


async def test_signed_out_the_pages_ask_for_sign_in_and_show_nothing(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        _changed_tool(state)
        for path in ("/console/tools", "/console/policy", "/console/grants", "/console/approvers"):
            response = await h.client.get(path)
            assert response.status_code == 303 and response.headers["location"].startswith("/console/signin")
        response = await h.client.post(
            "/console/grants", data={"session": "s", "scope": "group", "target": "x", "minutes": "5"}
        )
        assert response.status_code == 303 and await h.approvals.grants.list(active_only=False) == []


async def test_the_approvers_page_lists_names_groups_and_passkeys(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock, admins=["platform"]) as h:
        await _signed_in(h, groups=["finance", "platform"])
        await h.approvals.approvers.enrol("tom", ["sales"])
        page = await h.client.get("/console/approvers")
        assert page.status_code == 200
        assert "tom" in page.text and "sales" in page.text and "finance, platform" in page.text
        assert "admin" in page.text


# -- policy and "explain this call", on a running guard ------------------------------------------------

MEDIUM = (
    "{action: email.send, category: communicate, reversibility: none, blast_radius: single, sensitivity: confidential}"
)
MAIL_POLICY = """
policy: mail
version: 1
rules:
  - id: mail-to-ceo-denied
    match: {action: email.send}
    when: {arg: to, eq: ceo@example.com}
    effect: deny
  - id: mail-needs-a-look
    match: {action: email.send}
    effect: approve
    approvers: approvers
"""
CONFIG = """
guard:
  policy: {policy}
  trusted_policy_keys: [{key}]
  approvals: {{wait: 0.2s, heartbeat: 0.05s}}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {medium}
"""


async def test_the_policy_page_and_explain_this_call_show_the_engines_own_trace(state: StateDir) -> None:
    import httpx2
    from _policy_kit import make_signer, write_bundle
    from console_kit import use_enrolment

    from guard_mcp._console._store import ConsoleStore

    signer = make_signer(state.root.parent / "signer")
    bundle = state.root.parent / "mail.bundle.json"
    write_bundle(bundle, MAIL_POLICY, signer)
    config = config_from(CONFIG.format(policy=bundle, key=signer.public_pem, medium=MEDIUM), state)
    up = RecordingUpstream()
    async with (
        running_guard(config, state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=f"{ORIGIN}/console") as app,
    ):
        async with Client(guard.server, mode="legacy") as client:
            result = await client.call_tool("mail__echo", {"text": HOSTILE})
        assert reason_of(result) == "pending_approval"
        approval_id = (result.meta or {})["dev.guard-mcp/decision"]["approval_id"]
        await approval_store(guard).approvers.enrol("ana", ["approvers"])
        store = await ConsoleStore.open(guard.state, guard.clock)
        try:
            token = await store.issue_enrolment("ana", 600)
        finally:
            await store.close()
        assert token is not None
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url=ORIGIN, headers={"origin": ORIGIN}
        ) as browser:
            passkey = SoftPasskey()
            assert (await use_enrolment(browser, token, passkey)).status_code == 303
            assert (await sign_in(browser, passkey)).status_code == 303
            policy = await browser.get("/console/policy")
            assert policy.status_code == 200
            serving = guard.policy.serving
            assert serving is not None and serving.kid and serving.kid in policy.text
            assert "mail@1" in policy.text and "mail-to-ceo-denied" in policy.text
            assert "mail-needs-a-look" in policy.text and "group approvers" in policy.text
            explained = await browser.get(f"/console/approvals/{approval_id}/explain")
            assert explained.status_code == 200
            _assert_inert(explained.text)
            _, decision = guard.policy.decide(await _bundle_of(guard, approval_id), full_trace=True)
            assert decision.trace, "the engine gave a trace"
            for entry in decision.trace:
                assert entry.rule_id in explained.text
            assert "Decision:" in explained.text and decision.reason in explained.text
            tools = await browser.get("/console/tools")
            assert "mail__echo" in tools.text and "MEDIUM" in tools.text
        record = await approval_store(guard).get(approval_id)
        assert record is not None and record.state is ApprovalState.PENDING


async def _bundle_of(guard: Any, approval_id: str) -> Any:
    record = await guard.pipeline.approvals.store.get(approval_id)
    assert record is not None
    return record.bundle
