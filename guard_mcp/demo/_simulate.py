"""`guard-mcp simulate`: attacks against a real guard, end to end, each in its own state directory.

Every scenario starts the guard the way a desktop client does (`python -m guard_mcp.cli serve
--config ... --state-dir ...` over stdio), in front of the real demo shop process, and talks to it
through a real MCP client. Attacks that go around the guard talk to a shop process configured
exactly like the guard's. Nothing is mocked: a scenario holds only if the running code refuses.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp_types as types
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from guard_mcp._approvals import ApprovalState, ApprovalStore
from guard_mcp._clock import SystemClock
from guard_mcp._config import GuardConfig, StdioUpstream, load_config
from guard_mcp._keys import KeyStore
from guard_mcp._policy import PolicyEngine
from guard_mcp._state import StateDir
from guard_mcp.demo import embedded_config_path
from guard_mcp.demo._kit import decision_of, reason_of, refund_permit, text_of, until_refused
from guard_mcp.demo._runner import DemoClock
from guard_mcp.verify import PERMIT_META_KEY, REFUSAL_META_KEY

__all__ = ["SCENARIOS", "ScenarioResult", "run_scenarios"]

POLICY_FILES = ("shop.bundle.json", "shop.bundle.json.sig", "policy-signer.pub.pem")
REFUND = {"order_id": "ord_1001", "customer_id": "cus_123", "currency": "EUR", "reason": "damaged in transit"}
EMAIL = {"to": "ada@example.com", "subject": "Your refund", "body": "We refunded your order."}
STEP_TIMEOUT = 30.0


@dataclass
class ScenarioResult:
    number: int
    title: str
    attack: str
    guard_did: str = ""
    evidence: str = ""
    held: bool = False
    seconds: float = 0.0
    state_dir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- a sandbox: one state directory, one upstreams.yaml ------------------------------------------


@dataclass
class Sandbox:
    root: Path
    logs: list[TextIO] = field(default_factory=list)

    @property
    def state(self) -> StateDir:
        return StateDir(self.root / "state").ensure()

    @property
    def config_path(self) -> Path:
        return self.root / "upstreams.yaml"

    def write_config(self, *, wait: str = "20s", shop_env: dict[str, str] | None = None, console: bool = True) -> Path:
        """The embedded demo config with its policy copied beside it, so a scenario may damage it;
        `console=False` turns the approval console off (approvals are then asked in the client)."""
        source = embedded_config_path()
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        policies = self.root / "policies"
        if not policies.exists():
            policies.mkdir()
            for name in POLICY_FILES:
                shutil.copyfile(source.parent / "policies" / name, policies / name)
        raw["guard"]["approvals"] = {"wait": wait, "expire": "2h"}
        raw["guard"]["policy"] = "policies/shop.bundle.json"
        raw["guard"]["trusted_policy_keys"] = ["policies/policy-signer.pub.pem"]
        raw["upstreams"]["shop"]["env"].update(shop_env or {})
        if not console:
            raw["guard"]["console"] = {"enabled": False}
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return self.config_path

    def config(self) -> GuardConfig:
        return load_config(
            self.config_path, builtins={"GUARD_STATE_DIR": str(self.state.root), "PYTHON": sys.executable}
        )

    def errlog(self, name: str) -> TextIO:
        f = open(self.root / f"{name}.stderr.log", "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.logs.append(f)
        return f

    def close(self) -> None:
        for f in self.logs:
            f.close()


@contextlib.asynccontextmanager
async def guard_client(sb: Sandbox, *, mode: str = "legacy", elicitation_callback: Any = None) -> AsyncIterator[Client]:
    """A real guard process over stdio, and a client connected to it once the shop's tools are listed."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.cli", "serve", "--config", str(sb.config_path), "--state-dir", str(sb.state.root)],
        cwd=str(sb.root),
    )
    async with Client(
        stdio_client(params, errlog=sb.errlog("guard")),
        mode=mode,
        elicitation_callback=elicitation_callback,
        read_timeout_seconds=STEP_TIMEOUT,
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def shop_client(sb: Sandbox) -> AsyncIterator[Client]:
    """The demo shop started exactly as the guard's config starts it, with no guard in between."""
    up = sb.config().upstreams["shop"]
    assert isinstance(up, StdioUpstream)
    params = StdioServerParameters(command=up.command, args=list(up.args), env=dict(up.env or {}), cwd=up.cwd)
    async with Client(stdio_client(params, errlog=sb.errlog("shop")), read_timeout_seconds=STEP_TIMEOUT) as shop:
        yield shop


async def _tool_names(client: Client) -> list[str]:
    return sorted(t.name for t in (await client.list_tools()).tools)


def _refusal(result: types.CallToolResult) -> str:
    """The reason the shop's verifier gave, or `executed` when the shop acted."""
    value = (result.meta or {}).get(REFUSAL_META_KEY)
    if isinstance(value, dict):
        return str(value.get("reason"))
    if value:
        return str(value)
    if result.is_error:  # the permit verified; the shop's own business rules answered
        return "permit accepted (the shop's own rules then answered)"
    return "executed"


def audit_rows(state: StateDir, request_id: str | None) -> list[tuple[int, str]]:
    if not request_id:
        return []
    conn = sqlite3.connect(f"file:{state.database}?mode=ro", uri=True)
    try:
        return [
            (int(s), str(t))
            for s, t in conn.execute(
                "SELECT seq, type FROM audit_events WHERE request_id = ? ORDER BY seq", (request_id,)
            )
        ]
    finally:
        conn.close()


def _seqs(rows: Sequence[tuple[int, str]], *types_: str) -> str:
    picked = [f"{t}#{s}" for s, t in rows if not types_ or t in types_]
    return ", ".join(picked) if picked else "no audit event"


def _permit_meta(token: str) -> Any:
    return {PERMIT_META_KEY: token}


def mint_permit(sb: Sandbox, args: dict[str, Any], *, approver: str | None) -> str:
    """A real permit from the state directory's key ring, for the decision the signed policy makes."""
    config = sb.config()
    return refund_permit(
        config,
        KeyStore(sb.state.keys, environment=config.guard.environment),
        PolicyEngine.from_config(config, sb.state),
        SystemClock(),
        args,
        request_id=f"req_sim_{time.monotonic_ns()}",
        approver=approver,
    )


async def _prime(sb: Sandbox) -> list[str]:
    """Run the guard once so the state directory holds its keys and published jwks.json."""
    async with guard_client(sb) as client:
        return await _tool_names(client)


# -- the scenarios ---------------------------------------------------------------------------------


async def s1_injected_refund(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    async with guard_client(sb) as client:
        result = await client.call_tool("shop__refund", {**REFUND, "amount": 2400})
    rows = audit_rows(sb.state, decision_of(result).get("request_id"))
    reason = reason_of(result)
    r.guard_did = f"denied: {reason}" + ("" if result.is_error else " (executed!)")
    r.evidence = f"{reason}; {_seqs(rows, 'call.decided')}; shop never called"
    r.held = reason == "amount_exceeds_policy_limit" and not any(t == "permit.issued" for _, t in rows)


async def s2_payload_swap(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    await _prime(sb)
    args = {**REFUND, "amount": 350}
    token = mint_permit(sb, args, approver="lead@example.com")
    async with shop_client(sb) as shop:
        swapped = await shop.call_tool("refund", {**args, "amount": 3500}, meta=_permit_meta(token))
        genuine = await shop.call_tool("refund", args, meta=_permit_meta(token))
    got = _refusal(swapped)
    r.guard_did = f"shop refused: {got}"
    r.evidence = f"{got}; the same permit with amount=350: {_refusal(genuine)}"
    r.held = got == "payload_mismatch"


async def s3_permit_replay(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    await _prime(sb)
    args = {**REFUND, "amount": 18}
    token = mint_permit(sb, args, approver=None)
    async with shop_client(sb) as shop:
        first = await shop.call_tool("refund", args, meta=_permit_meta(token))
    async with shop_client(sb) as shop:  # a fresh shop process: the used-jti table is on disk
        again = await shop.call_tool("refund", args, meta=_permit_meta(token))
    got = _refusal(again)
    r.guard_did = f"shop refused the second use: {got}"
    r.evidence = f"first use: {_refusal(first)}; second use (new shop process): {got}"
    r.held = _refusal(first) == "executed" and got == "replayed"


async def s4_direct_call(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    await _prime(sb)
    async with shop_client(sb) as shop:
        result = await shop.call_tool("refund", {**REFUND, "amount": 10})
    got = _refusal(result)
    r.guard_did = f"shop refused: {got}"
    r.evidence = f"{got}: {text_of(result)[:70]}"
    r.held = got == "missing"


async def s5_tampered_policy(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    bundle = sb.root / "policies" / "shop.bundle.json"
    data = bytearray(bundle.read_bytes())
    at = data.index(b"refund") + 1  # one byte inside the signed bundle
    data[at] ^= 0x01
    bundle.write_bytes(bytes(data))
    async with guard_client(sb) as client:
        read = await client.call_tool("shop__lookup_order", {"order_id": "ord_1001"})
        refund = await client.call_tool("shop__refund", {**REFUND, "amount": 18})
    reasons = (reason_of(read), reason_of(refund))
    rows = audit_rows(sb.state, decision_of(refund).get("request_id"))
    r.guard_did = f"every guarded call denied: {reasons[0]}"
    r.evidence = (
        f"byte {at} flipped; lookup_order → {reasons[0]}, €18 refund → {reasons[1]}; {_seqs(rows, 'call.decided')}"
    )
    r.held = reasons == ("policy_unavailable", "policy_unavailable") and read.is_error and refund.is_error


async def s6_rug_pull(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    before = await _prime(sb)
    sb.write_config(shop_env={"SHOP_VARIANT": "rugpull"})
    async with guard_client(sb) as client:
        after = await _tool_names(client)
        result = await client.call_tool("shop__send_email", EMAIL)
    conn = sqlite3.connect(f"file:{sb.state.database}?mode=ro", uri=True)
    try:
        pins = [
            int(s)
            for (s,) in conn.execute(
                "SELECT seq FROM audit_events WHERE type = 'tool.pin_changed' AND tool = 'shop__send_email'"
            )
        ]
    finally:
        conn.close()
    reason = reason_of(result)
    r.guard_did = f"send_email not listed; call denied: {reason}"
    r.evidence = (
        f"listed before: {'shop__send_email' in before}, after: {'shop__send_email' in after}; "
        f"tool.pin_changed#{pins[0] if pins else '-'}"
    )
    r.held = (
        "shop__send_email" in before and "shop__send_email" not in after and reason == "tool_withheld" and bool(pins)
    )


async def s7_approval_ignored(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config(wait="20s")
    config = sb.config()
    expired: list[str] = []

    async def time_passes() -> None:
        # Nobody answers; two hours later the approval is past its deadline and expires.
        store = await ApprovalStore.open(sb.state, clock=DemoClock(3 * 3600), config=config.guard.approvals)
        try:
            for _ in range(int(STEP_TIMEOUT * 10)):
                if await store.list(states=[ApprovalState.PENDING]):
                    break
                await anyio.sleep(0.1)
            expired.extend(a.id for a in await store.expire_due())
        finally:
            await store.close()

    async with guard_client(sb) as client:
        results: list[types.CallToolResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(time_passes)
            results.append(await client.call_tool("shop__refund", {**REFUND, "amount": 352}))
    result = results[0]
    rows = audit_rows(sb.state, decision_of(result).get("request_id"))
    reason = reason_of(result)
    r.guard_did = f"denied: {reason}"
    r.evidence = (
        f"approval {', '.join(expired) or '-'} expired; {_seqs(rows, 'approval.requested', 'approval.expired')}"
    )
    r.held = (
        reason == "approval_expired"
        and any(t == "approval.expired" for _, t in rows)
        and not any(t == "permit.issued" for _, t in rows)
    )


async def s8_audit_edit(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    async with guard_client(sb) as client:
        result = await client.call_tool("shop__refund", {**REFUND, "amount": 18})
    conn = sqlite3.connect(sb.state.database)
    try:
        found = conn.execute(
            "SELECT seq FROM audit_events WHERE type = 'call.received' AND tool = 'shop__refund' "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if found is None or result.is_error:
            r.guard_did, r.evidence = "no call.received event to edit", f"€18 refund → {reason_of(result)}"
            return
        target = int(found[0])
        (data,) = conn.execute("SELECT data FROM audit_events WHERE seq = ?", (target,)).fetchone()
        event = json.loads(data)
        event["arguments"]["amount"] = 1800
        edited = json.dumps(event, separators=(",", ":"))
        with conn:
            conn.execute("UPDATE audit_events SET data = ? WHERE seq = ?", (edited, target))
    finally:
        conn.close()
    proc = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            "audit",
            "verify",
            "--config",
            str(sb.config_path),
            "--state-dir",
            str(sb.state.root),
            "--json",
        ],
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {}
    r.guard_did = f"`audit verify` exit {proc.returncode}: {report.get('problem', '?')} at seq {report.get('bad_seq')}"
    r.evidence = f"UPDATE seq {target} (call.received: amount 18→1800); verify names seq {report.get('bad_seq')}"
    r.held = proc.returncode != 0 and report.get("ok") is False and report.get("bad_seq") == target


class _Elicitations:
    """An agent-side client that would say yes to anything asked in-band, and counts being asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        self.asked += 1
        return types.ElicitResult(action="accept", content={"decision": "approve", "reason": "looks fine"})


APPROVE = types.ElicitResult(action="accept", content={"decision": "approve", "reason": "ok"})


async def s9_request_state(sb: Sandbox, r: ScenarioResult) -> None:
    # The console off: the approval is asked in the client, so a genuine requestState carries the answer
    # (with the console served, a client that opens URLs is sent its page and no answer approves).
    sb.write_config(console=False)
    async with guard_client(sb, mode="auto", elicitation_callback=_Elicitations()) as client:
        session = client.session
        forged = await session.call_tool(
            "shop__send_email",
            EMAIL,
            request_state="gm1.forged-by-the-agent",
            input_responses={"approval": APPROVE},
            allow_input_required=True,
        )
        asked = await session.call_tool("shop__send_email", EMAIL, allow_input_required=True)
        if not isinstance(asked, types.InputRequiredResult) or not asked.request_state:
            r.guard_did = "no InputRequiredResult for send_email"
            r.evidence = f"forged → {reason_of(forged)}; first call → {type(asked).__name__} {reason_of(asked)}"
            return
        state = asked.request_state
        used = await session.call_tool(
            "shop__send_email",
            EMAIL,
            request_state=state,
            input_responses={"approval": APPROVE},
            allow_input_required=True,
        )
        replay = await session.call_tool(
            "shop__send_email",
            EMAIL,
            request_state=state,
            input_responses={"approval": APPROVE},
            allow_input_required=True,
        )
    reasons = (reason_of(forged), reason_of(used), reason_of(replay))
    rows = audit_rows(sb.state, decision_of(replay).get("request_id"))
    r.guard_did = f"forged → {reasons[0]}; replayed → {reasons[2]}"
    r.evidence = f"genuine state used once → {reasons[1]}; replay {_seqs(rows, 'call.denied')}"
    r.held = (
        reasons[0] == "request_state_invalid"
        and reasons[2] == "request_state_replayed"
        and not getattr(used, "is_error", True)
        and bool(getattr(forged, "is_error", False))
    )


async def s10_step_up_in_band(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config(wait="1s")
    agent = _Elicitations()
    async with guard_client(sb, mode="auto", elicitation_callback=agent) as client:
        result = await client.session.call_tool("shop__refund", {**REFUND, "amount": 350}, allow_input_required=True)
        if isinstance(result, types.InputRequiredResult):  # 2026-07-28: the console's link; answer it "approve"
            result = await client.session.call_tool(
                "shop__refund",
                {**REFUND, "amount": 350},
                request_state=result.request_state,
                input_responses={k: APPROVE for k in result.input_requests or {}},
                allow_input_required=True,
            )
    rows = audit_rows(sb.state, decision_of(result).get("request_id"))
    reason = reason_of(result)
    executed = any(t in ("permit.issued", "call.result") for _, t in rows)
    r.guard_did = f"no in-client prompt; {reason}" + (" (executed!)" if executed else ", never executed")
    r.evidence = (
        f"elicitations sent: {agent.asked}; result {type(result).__name__}; "
        f"{_seqs(rows, 'approval.requested', 'approval.pending')}"
    )
    r.held = (
        agent.asked == 0 and isinstance(result, types.CallToolResult) and reason == "pending_approval" and not executed
    )


async def s11_salami(sb: Sandbox, r: ScenarioResult) -> None:
    sb.write_config()
    async with guard_client(sb) as client:
        results = await until_refused(lambda: client.call_tool("shop__refund", {**REFUND, "amount": 20}), most=12)
    passed = sum(1 for x in results if not x.is_error)
    last = results[-1]
    rows = audit_rows(sb.state, decision_of(last).get("request_id"))
    reason = reason_of(last)
    r.guard_did = f"{passed} refunds of €20 auto-allowed, then {reason}"
    r.evidence = f"refund limit 5 an hour; {_seqs(rows, 'call.denied')}; the shop saw {passed}"
    r.held = passed == 5 and reason == "limit_exceeded" and not any(t == "permit.issued" for _, t in rows)


Scenario = tuple[str, str, Callable[[Sandbox, ScenarioResult], Awaitable[None]]]

SCENARIOS: dict[int, Scenario] = {
    1: ("prompt-injected refund", "shop__refund €2,400 through the guard", s1_injected_refund),
    2: ("payload swapped after approval", "a real €350 permit presented with amount=3500", s2_payload_swap),
    3: ("permit replayed", "a used €18 permit presented again", s3_permit_replay),
    4: ("upstream called directly", "shop refund with no guard and no permit", s4_direct_call),
    5: ("policy bundle tampered on disk", "one byte of the signed bundle flipped", s5_tampered_policy),
    6: ("tool description changed (rug pull)", "shop restarts with a poisoned send_email", s6_rug_pull),
    7: ("approval ignored", "€352 refund left waiting past its deadline", s7_approval_ignored),
    8: ("audit row edited", "sqlite UPDATE of one event's data", s8_audit_edit),
    9: ("forged / replayed requestState", "a made-up state, then a genuine one used twice", s9_request_state),
    10: ("HIGH risk approved in-band", "€350 refund; the agent's client answers approve", s10_step_up_in_band),
    11: ("salami: many small refunds", "€20 refunds in a loop, each under the auto-allow line", s11_salami),
}


async def run_scenario(number: int, *, keep: bool = False) -> ScenarioResult:
    title, attack, fn = SCENARIOS[number]
    result = ScenarioResult(number=number, title=title, attack=attack)
    root = Path(tempfile.mkdtemp(prefix=f"guard-mcp-sim{number}-"))
    sb = Sandbox(root)
    started = time.perf_counter()
    try:
        with anyio.fail_after(90):
            await fn(sb, result)
    except Exception as exc:  # a scenario that cannot run did not hold
        result.held = False
        result.guard_did = result.guard_did or "scenario error"
        result.evidence = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        sb.close()
        result.seconds = round(time.perf_counter() - started, 2)
        if keep or not result.held:
            result.state_dir = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


async def run_scenarios(
    numbers: Sequence[int] | None = None,
    *,
    keep: bool = False,
    concurrency: int = 2,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Run the scenarios (all by default), `concurrency` at a time; results in scenario order."""
    chosen = sorted(set(numbers or SCENARIOS))
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"no scenario {unknown[0]}; scenarios are 1..{max(SCENARIOS)}")
    results: dict[int, ScenarioResult] = {}
    limit = anyio.Semaphore(max(1, concurrency))

    async def one(n: int) -> None:
        async with limit:
            results[n] = await run_scenario(n, keep=keep)
            if on_result is not None:
                on_result(results[n])

    async with anyio.create_task_group() as tg:
        for n in chosen:
            tg.start_soon(one, n)
    return [results[n] for n in chosen]
