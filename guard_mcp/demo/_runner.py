"""`guard-mcp demo`: a scripted agent and a scripted human, through a real guard, against the real
demo shop process, printed as a timeline. Every exit of the pipeline is shown once."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import pyotp
from mcp import Client, StdioServerParameters
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from guard_mcp._audit import load_audit_key, verify_log
from guard_mcp._config import GuardConfig
from guard_mcp._keys import KeyStore
from guard_mcp._server import open_guard
from guard_mcp._state import StateDir
from guard_mcp.demo._kit import reason_of, refund_permit, text_of, until_refused

__all__ = ["DemoClock", "DemoReport", "run_demo"]


class DemoClock:
    """Wall time, plus an offset the demo can push forward to show an approval expiring."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class Human:
    """The person answering elicitation prompts in the agent's client, scripted."""

    answers: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.prompts.append(getattr(params, "message", ""))
        answer = self.answers.pop(0) if self.answers else "ignore"
        if answer == "ignore":
            await anyio.sleep_forever()
        return types.ElicitResult(action="accept", content={"decision": answer, "reason": f"demo: {answer}"})


@dataclass
class DemoReport:
    """What the demo showed: every step with whether it held, and the audit's verdict (`demo --json`)."""

    state_dir: str
    policy: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    audit: str = ""
    audit_ok: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.audit_ok and all(s["ok"] for s in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "state_dir": self.state_dir,
            "policy": self.policy,
            "steps": self.steps,
            "audit": {"ok": self.audit_ok, "message": self.audit},
            "error": self.error,
        }


async def run_demo(config: GuardConfig, state: StateDir, console: Console) -> DemoReport:
    clock = DemoClock()
    human = Human()
    report = DemoReport(state_dir=str(state.root))

    def show(step: str, call: str, outcome: str, expected: bool, evidence: str) -> None:
        mark = "[green]✓[/]" if expected else "[red]✗ unexpected[/]"
        console.print(
            f"{mark} [bold]{escape(step)}[/]\n    agent → {escape(call)}\n    guard → {escape(outcome)}  "
            f"[dim]{escape(evidence)}[/]"
        )
        report.steps.append({"step": step, "call": call, "outcome": outcome, "ok": expected, "evidence": evidence})

    async with open_guard(config, state, clock=clock, approval_poll=0.1) as guard:
        report.policy = guard.policy.describe()
        console.rule("[bold]guard-mcp demo[/]")
        console.print(f"policy {escape(report.policy)}", highlight=False)  # wraps at spaces; a rule cuts it off
        shop_handle = guard.upstreams.handles.get("shop")
        if shop_handle is None or shop_handle.state != "ready":
            report.error = f"the demo shop did not start: {shop_handle.error if shop_handle else 'not configured'}"
            console.print(Text(report.error, style="red"))
            return report
        async with Client(guard.server, mode="legacy", elicitation_callback=human) as agent:
            tools = (await agent.list_tools()).tools
            table = Table("tool", "action", "category", "tier", title="what the agent sees")
            for t in tools:
                a = (t.meta or {}).get("dev.guard-mcp/action", {})
                table.add_row(
                    t.name,
                    a.get("action", ""),
                    a.get("category", ""),
                    f"{a.get('risk', {}).get('tier', '')} {a.get('risk', {}).get('score', '')}",
                )
            console.print(table)

            async def call(name: str, args: dict[str, Any]) -> types.CallToolResult:
                return await agent.call_tool(name, args)

            r = await call("shop__lookup_order", {"order_id": "ord_1001"})
            show(
                "read an order",
                "shop__lookup_order ord_1001",
                "allowed" if not r.is_error else reason_of(r),
                not r.is_error,
                text_of(r)[:80],
            )

            refund = {"order_id": "ord_1003", "customer_id": "cus_456", "currency": "EUR", "reason": "damaged"}
            r = await call("shop__refund", {**refund, "amount": 18})
            show(
                "€18 refund",
                "shop__refund amount=18",
                "auto-allowed, permit minted, shop verified it",
                not r.is_error,
                text_of(r)[:80],
            )

            r = await call("shop__refund", {**refund, "amount": 2400})
            show(
                "€2,400 refund (prompt-injected)",
                "shop__refund amount=2400",
                f"denied: {reason_of(r)}",
                reason_of(r) == "amount_exceeds_policy_limit",
                "no approval asked, shop never called",
            )

            email = {"to": "ada@example.com", "subject": "Your refund", "body": "We refunded your order."}
            human.answers.append("approve")
            r = await call("shop__send_email", email)
            show(
                "email to a customer (MEDIUM)",
                "shop__send_email",
                "human approved in the client → sent",
                not r.is_error and bool(human.prompts),
                (human.prompts[-1].splitlines() or [""])[0][:70] if human.prompts else "no prompt was shown",
            )

            human.answers.append("deny")
            r = await call("shop__send_email", {**email, "subject": "Another one"})
            show(
                "second email",
                "shop__send_email",
                f"human declined → {reason_of(r)}",
                reason_of(r) == "approval_denied",
                "",
            )

            # Nobody answers: the demo clock jumps past the 2 h approval deadline while the call waits.
            async def ignore_then_jump() -> types.CallToolResult:
                async with anyio.create_task_group() as tg:

                    async def jump() -> None:
                        await anyio.sleep(0.5)
                        clock.offset += 3 * 3600

                    tg.start_soon(jump)
                    result = await call("shop__refund", {**refund, "amount": 352})
                return result

            r = await ignore_then_jump()
            clock.offset = 0.0
            show(
                "€352 refund, nobody answers",
                "shop__refund amount=352",
                f"expired → {reason_of(r)}",
                reason_of(r) == "approval_expired",
                "2 h deadline passed (clock jumped)",
            )

            # A refund is HIGH risk: a click in the agent's client cannot approve it. A named approver
            # of the group approves out of band with a TOTP code (`guard-mcp approvals approve --as --code`).
            store = guard.pipeline.approvals.store if guard.pipeline.approvals else None
            approved_ok, prompts_before = False, len(human.prompts)
            if store is not None:
                secret, _ = await store.approvers.enrol("alice", "support_leads")
                async with anyio.create_task_group() as tg:

                    async def approve_out_of_band() -> None:
                        for _ in range(200):
                            pending = [a for a in await store.list() if a.state.value == "pending"]
                            if pending:
                                code = pyotp.TOTP(secret).at(clock.now())
                                await store.decide(
                                    pending[0].id,
                                    approve=True,
                                    approver="alice",
                                    reason="checked the order",
                                    totp_code=code,
                                )
                                return
                            await anyio.sleep(0.05)

                    tg.start_soon(approve_out_of_band)
                    r = await call("shop__refund", {**refund, "amount": 350})
                approved_ok = not r.is_error and len(human.prompts) == prompts_before
            show(
                "€350 refund (HIGH: step-up)",
                "shop__refund amount=350",
                "no in-client prompt; alice approved with TOTP from the CLI → executed",
                approved_ok,
                text_of(r)[:80] if not approved_ok else "",
            )

            # The salami attack: a loop of refunds, each under the auto-allow line. The refund tool's
            # limit (5 an hour, counting the €18 and €350 ones above) stops the loop.
            salami = await until_refused(lambda: call("shop__refund", {**refund, "amount": 20}), most=10)
            passed = sum(1 for x in salami if not x.is_error)
            show(
                "a loop of €20 refunds (salami)",
                "shop__refund amount=20, again and again",
                f"{passed} auto-allowed, then {reason_of(salami[-1])}",
                passed > 0 and reason_of(salami[-1]) == "limit_exceeded",
                text_of(salami[-1])[:80],
            )

        # Swap after approval at the upstream boundary: a permit for €353 presented with €3,530.
        swapped = await _swap_attack(guard, state)
        show(
            "payload swap after approval",
            "shop__refund with a €350 permit but amount=3500",
            f"shop refused: {swapped}",
            swapped == "payload_mismatch",
            "the upstream recomputes the payload hash",
        )

        direct = await _direct_call(config, state)
        show(
            "call the shop directly, around the guard",
            "refund without a permit",
            f"shop refused: {direct}",
            direct == "missing",
            "no permit, no action",
        )

    report.audit_ok, report.audit = await anyio.to_thread.run_sync(_verify_audit, state)
    console.rule("audit")
    console.print(f"{'✓' if report.audit_ok else '✗'} audit verify: {report.audit}", highlight=False)
    console.print(f"\nstate directory: {state.root}\n  guard-mcp audit tail --state-dir {state.root}", highlight=False)
    return report


def _verify_audit(state: StateDir) -> tuple[bool, str]:
    keys = KeyStore(state.keys).public_keys(include_retired=True)
    verdict = verify_log(state.database, hmac_key=load_audit_key(state), public_keys=keys)
    return verdict.ok, verdict.message


def report_audit(state: StateDir, console: Console) -> bool:
    """Verify the demo's audit log and say so; a broken log fails the demo like any other step."""
    ok, message = _verify_audit(state)
    console.rule("audit")
    console.print(f"{'✓' if ok else '✗'} audit verify: {message}", highlight=False)
    return ok


async def _swap_attack(guard: Any, state: StateDir) -> str:
    """Mint a real permit for one payload and present it with another, straight to the shop."""
    args = {"order_id": "ord_1001", "customer_id": "cus_123", "currency": "EUR", "reason": "damaged", "amount": 350}
    token = refund_permit(
        guard.config,
        guard.keys,
        guard.policy,
        guard.clock,
        args,
        request_id="req_demo_swap",
        approver="lead@example.com",
    )
    return await _shop_call({**args, "amount": 3500}, token, guard.config, state)


async def _direct_call(config: GuardConfig, state: StateDir) -> str:
    args = {"order_id": "ord_1001", "customer_id": "cus_123", "currency": "EUR", "reason": "direct", "amount": 10}
    return await _shop_call(args, None, config, state)


async def _shop_call(args: dict[str, Any], token: str | None, config: GuardConfig, state: StateDir) -> str:
    from guard_mcp._config import StdioUpstream
    from guard_mcp.verify import PERMIT_META_KEY, REFUSAL_META_KEY

    up = config.upstreams["shop"]
    assert isinstance(up, StdioUpstream)
    params = StdioServerParameters(command=up.command, args=up.args, env=up.env or None, cwd=up.cwd)
    meta: Any = {PERMIT_META_KEY: token} if token else None
    with contextlib.suppress(Exception):
        async with Client(params) as shop:
            r = await shop.call_tool("refund", args, meta=meta)
            refusal = (r.meta or {}).get(REFUSAL_META_KEY)
            if refusal:
                return str(refusal.get("reason") if isinstance(refusal, dict) else refusal)
            return text_of(r) if r.is_error else "executed (!)"
    return "error"
