"""The console in a real browser: Debian's Chromium driven by Playwright, a Chrome DevTools virtual
authenticator for passkeys, a real guard process over stdio in front of the real demo shop, and a
real MCP client waiting on the call. Screenshots of the queue and the card land in a temporary
directory (`GUARD_SCREENSHOTS` to keep them), at 1280 and 390 px wide.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
import pytest
from guard_kit import reason_of, text_of
from mcp import Client, StdioServerParameters

from guard_mcp._state import StateDir

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.subprocess,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y --no-install-recommends chromium)",
    ),
]

DEMO = Path(__file__).parent.parent / "guard_mcp" / "demo"
REFUND = {
    "order_id": "ord_1003",
    "customer_id": "cus_456",
    "amount": 350,
    "currency": "EUR",
    "reason": "damaged in transit",
}
EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}  # MEDIUM: no step-up


def _config(tmp_path: Path) -> Path:
    text = (DEMO / "upstreams.yaml").read_text()
    text = text.replace("policy: policies/", f"policy: {DEMO}/policies/")
    text = text.replace("trusted_policy_keys: [policies/", f"trusted_policy_keys: [{DEMO}/policies/")
    text = text.replace(
        "approvals: {wait: 20s, expire: 2h}", "approvals: {wait: 90s, expire: 2h, heartbeat: 1s}\n  console: {port: 0}"
    )
    assert "console: {port: 0}" in text
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    return path


def _cli(config: Path, state: StateDir, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            *args,
            "--config",
            str(config),
            "--state-dir",
            str(state.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


class Asked:
    """The client's side of URL-mode elicitation: remembers the page it was sent, says it opened it."""

    def __init__(self) -> None:
        self.requests: list[types.ElicitRequestParams] = []
        self.arrived = anyio.Event()

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.requests.append(params)
        self.arrived.set()
        return types.ElicitResult(action="accept")

    @property
    def url(self) -> str:
        params = self.requests[0]
        assert isinstance(params, types.ElicitRequestURLParams), params
        return params.url


@asynccontextmanager
async def _guard(tmp_path: Path, state: StateDir, asked: Asked) -> AsyncIterator[tuple[Client, Path]]:
    config = _config(tmp_path)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(config), "--state-dir", str(state.root)],
    )
    async with Client(params, mode="legacy", elicitation_callback=asked) as client:
        with anyio.fail_after(30):
            while not (state.root / "console.url").exists():  # noqa: ASYNC110  (written once the console listens)
                await anyio.sleep(0.05)
        yield client, config


@asynccontextmanager
async def _browser(width: int = 1280, *, verified: bool = True) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": width, "height": 900})
            page = await context.new_page()
            cdp = await context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable")
            await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": verified,
                        "automaticPresenceSimulation": True,
                    }
                },
            )
            yield page
        finally:
            await browser.close()


def _shots() -> Path:
    where = Path(os.environ.get("GUARD_SCREENSHOTS") or Path(os.environ.get("TMPDIR", "/tmp")) / "guard-console-shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def _enrol_and_sign_in(page: Any, link: str) -> None:
    await page.goto(link)
    await page.click("#passkey-enrol")
    await page.wait_for_url(lambda url: "/console/signin" in url and "enrolled=1" in url)
    await page.click("#passkey-signin")
    # the queue itself, not the sign-in page whose `next=/console/` ends the same way
    await page.wait_for_url(lambda url: urlsplit(url).path == "/console/")


async def test_a_350_euro_refund_is_approved_in_the_browser_with_a_passkey_while_the_client_waits(
    tmp_path: Path, state: StateDir
) -> None:
    asked = Asked()
    async with _guard(tmp_path, state, asked) as (client, config), _browser() as page:
        added = _cli(config, state, "approvers", "add", "ana", "--group", "support_leads")
        assert added["enrolment_link"].startswith("http://localhost:")
        await _enrol_and_sign_in(page, added["enrolment_link"])

        result: list[types.CallToolResult] = []
        ticks: list[tuple[float, float | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            ticks.append((progress, total))

        async with anyio.create_task_group() as tg:

            async def call() -> None:
                result.append(await client.call_tool("shop__refund", REFUND, progress_callback=on_progress))

            tg.start_soon(call)
            with anyio.fail_after(30):
                await asked.arrived.wait()
            url = asked.url
            assert "/console/approvals/apr_" in url and "token" not in url  # the page asks who is there
            await page.goto("http://" + url.split("://", 1)[1].split("/console")[0] + "/console/")
            await page.wait_for_selector("tr.tier-high")
            shots = _shots()
            await page.screenshot(path=str(shots / "queue-1280.png"), full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=str(shots / "queue-390.png"), full_page=True)
            await page.set_viewport_size({"width": 1280, "height": 900})
            await page.goto(url)
            assert "Refund €350.00 to customer cus_456" in await page.inner_text("h1")
            await page.screenshot(path=str(shots / "card-1280.png"), full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=str(shots / "card-390.png"), full_page=True)
            await page.set_viewport_size({"width": 1280, "height": 900})
            await page.fill("input[name=reason]", "customer sent photos")
            await page.click("button.approve")  # a fresh passkey assertion bound to this approval
            await page.wait_for_selector("p.state-approved")
            with anyio.fail_after(30):
                while not result:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        outcome = result[0]
        assert not outcome.is_error, text_of(outcome)
        assert "ref_" in text_of(outcome) or "refund" in text_of(outcome).lower()
        assert any(total is not None for _, total in ticks)

    conn = sqlite3.connect(state.database)
    try:
        decided = [
            json.loads(r[0]) for r in conn.execute("SELECT data FROM audit_events WHERE type = 'console.decided'")
        ]
        kinds = [r[0] for r in conn.execute("SELECT type FROM audit_events ORDER BY seq")]
    finally:
        conn.close()
    assert decided and decided[0]["factor"] == "passkey" and decided[0]["approver"] == "ana"
    assert decided[0]["credential_id"]
    assert "permit.issued" in kinds and "call.result" in kinds


def _audit(state: StateDir) -> list[tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(state.database)
    try:
        return [(r[0], json.loads(r[1])) for r in conn.execute("SELECT type, data FROM audit_events ORDER BY seq")]
    finally:
        conn.close()


async def _while_waiting(
    client: Client, asked: Asked, tool: str, arguments: dict[str, Any], decide: Any
) -> types.CallToolResult:
    """Call `tool` and, once the client was sent the approval's page, run `decide(url)` in the browser;
    the call's own result, once it resumed."""
    result: list[types.CallToolResult] = []
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            result.append(await client.call_tool(tool, arguments))

        tg.start_soon(call)
        with anyio.fail_after(30):
            await asked.arrived.wait()
        await decide(asked.url)
        with anyio.fail_after(30):
            while not result:  # noqa: ASYNC110
                await anyio.sleep(0.05)
    return result[0]


async def test_a_refund_denied_from_the_queue_reaches_the_waiting_client_as_a_denial_with_its_reason(
    tmp_path: Path, state: StateDir
) -> None:
    asked = Asked()
    async with _guard(tmp_path, state, asked) as (client, config), _browser() as page:
        added = _cli(config, state, "approvers", "add", "ana", "--group", "support_leads")
        await _enrol_and_sign_in(page, added["enrolment_link"])
        queue = page.url

        async def deny(url: str) -> None:
            await page.goto(queue)
            await page.click(f"tr.tier-high a[href$='{url.rsplit('/', 1)[1]}']")  # from the queue to its card
            await page.wait_for_selector("#decide-form")
            await page.fill("input[name=reason]", "already refunded on ord_1001")
            await page.click("button.deny")  # a denial grants nothing: no passkey is asked
            await page.wait_for_selector("p.state-denied")
            assert "already refunded on ord_1001" in await page.inner_text("p.state-denied")

        outcome = await _while_waiting(client, asked, "shop__refund", REFUND, deny)
        assert outcome.is_error and reason_of(outcome) == "approval_denied"
        assert "already refunded on ord_1001" in text_of(outcome)
        assert (outcome.meta or {})["dev.guard-mcp/decision"]["approver_reason"] == "already refunded on ord_1001"

    events = _audit(state)
    kinds = [k for k, _ in events]
    decided = [d for k, d in events if k == "console.decided"]
    assert len(decided) == 1 and decided[0]["state"] == "denied" and decided[0]["approver"] == "ana"
    assert decided[0]["factor"] == "session" and decided[0]["reason"] == "already refunded on ord_1001"
    closed = [d for k, d in events if k == "approval.decided"]
    assert len(closed) == 1 and closed[0]["state"] == "denied" and closed[0]["approver"] == "ana"
    refund_ids = {d.get("approval_id") for k, d in events if k == "approval.requested"}
    assert closed[0]["approval_id"] in refund_ids
    # nothing ran: no permit was issued for the refund, and the upstream never answered it
    assert "permit.issued" not in kinds and "call.result" not in kinds
    shop = sqlite3.connect(state.root / "shop.db")
    try:
        assert shop.execute("SELECT COUNT(*) FROM refunds").fetchone()[0] == 0
    finally:
        shop.close()


async def test_a_medium_email_approved_from_the_queue_needs_no_passkey_and_the_client_call_completes(
    tmp_path: Path, state: StateDir
) -> None:
    asked = Asked()
    async with _guard(tmp_path, state, asked) as (client, config), _browser() as page:
        added = _cli(config, state, "approvers", "add", "ana", "--group", "support_leads")
        await _enrol_and_sign_in(page, added["enrolment_link"])
        queue = page.url

        async def approve(url: str) -> None:
            await page.goto(queue)
            row = page.locator(f"tr[data-id='{url.rsplit('/', 1)[1]}']")
            assert "MEDIUM" in await row.inner_text() and "step-up" not in await row.inner_text()
            await row.locator("a").click()
            await page.wait_for_selector("#decide-form")
            assert await page.get_attribute("#decide-form", "data-stepup") == ""
            assert await page.locator("input[name=code]").count() == 0  # no second factor is asked
            await page.click("button.approve")
            await page.wait_for_selector("p.state-approved")

        outcome = await _while_waiting(client, asked, "shop__send_email", EMAIL, approve)
        assert not outcome.is_error, text_of(outcome)

    events = _audit(state)
    decided = [d for k, d in events if k == "console.decided"]
    assert len(decided) == 1 and decided[0]["state"] == "approved" and decided[0]["approver"] == "ana"
    assert decided[0]["factor"] == "session" and decided[0]["credential_id"] is None
    assert decided[0]["step_up"] is False
    closed = [d for k, d in events if k == "approval.decided"]
    assert len(closed) == 1 and closed[0]["state"] == "approved" and closed[0]["factor"] == "console"
    kinds = [k for k, _ in events]
    assert kinds.index("console.decided") < kinds.index("permit.issued") < kinds.index("call.result")


async def test_the_audit_page_shows_broken_after_one_row_is_edited(tmp_path: Path, state: StateDir) -> None:
    asked = Asked()
    async with _guard(tmp_path, state, asked) as (client, config), _browser() as page:
        added = _cli(config, state, "approvers", "add", "ana", "--group", "support_leads")
        await _enrol_and_sign_in(page, added["enrolment_link"])
        await client.call_tool("shop__lookup_order", {"order_id": "ord_1001"})
        await page.goto(page.url.replace("/console/", "/console/audit"))
        assert "intact" in await page.inner_text("#chain")
        conn = sqlite3.connect(state.database)
        try:
            conn.execute(
                "UPDATE audit_events SET data = replace(data, 'ord_1001', 'ord_9999') WHERE type = 'call.received'"
            )
            conn.commit()
        finally:
            conn.close()
        await page.click("text=Verify the whole log now")
        await page.wait_for_selector("#chain.broken")
        assert "BROKEN" in await page.inner_text("#chain")


async def test_an_authenticator_that_cannot_verify_the_user_enrols_no_passkey(tmp_path: Path, state: StateDir) -> None:
    asked = Asked()
    async with _guard(tmp_path, state, asked) as (_, config), _browser(verified=False) as page:
        added = _cli(config, state, "approvers", "add", "ana", "--group", "support_leads")
        await page.goto(added["enrolment_link"])
        await page.click("#passkey-enrol")
        # a locator, not wait_for_function: the page's CSP refuses the string eval that one polls with
        await page.locator("#passkey-status", has_text="not created").wait_for()
        assert "/console/enrol/" in page.url
    conn = sqlite3.connect(state.database)
    try:
        assert conn.execute("SELECT COUNT(*) FROM console_credentials").fetchone()[0] == 0
    finally:
        conn.close()
