"""A finished approval keeps no secret: the arguments the audit redacts are cleared from its row.

While an approval is pending its arguments stay in clear (the approver must read them); once it is
consumed, denied, expired or cancelled, what the audit log would redact is replaced by the audit's
digest, in the database and in `approvals list --all --json`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from _approvals_support import bundle, decision, open_store, refund_args
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client
from test_approvals_cli import cli

from guard_mcp._approvals import Approval, ApprovalStore, ApprovalUnverified
from guard_mcp._audit._redact import Redactor
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio
TOOL = "shop__refund"
SECRET = "sk_live_" + "Q7" * 12


def rows_hold(state: StateDir, needle: str) -> bool:
    """Whether any row of any table in the guard's database holds `needle`."""
    with sqlite3.connect(state.database) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return any(
            needle in str(value)
            for table in tables
            for row in conn.execute(f'SELECT * FROM "{table}"')  # names from sqlite_master
            for value in row
        )


async def consumed(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    await store.decide(a.id, approve=True, approver="local:ops")
    assert await store.consume(a.id, payload_hash=a.payload_hash)


async def denied(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    await store.decide(a.id, approve=False, approver="local:ops")


async def expired_unanswered(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    clock.advance(store.config.expire)
    assert [x.id for x in await store.expire_due()] == [a.id]


async def expired_on_a_late_decision(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    clock.advance(store.config.expire)
    with pytest.raises(ApprovalError, match="expired"):
        await store.decide(a.id, approve=True, approver="local:ops")


async def expired_while_waiting(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    clock.advance(store.config.expire)
    await store.expire(a.id)


async def approved_but_never_run(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    await store.decide(a.id, approve=True, approver="local:ops")
    clock.advance(store.config.expire)
    await store.expire_due()


async def cancelled(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    await store.cancel(a.id, "client_disconnected")


async def cancelled_after_approval(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    await store.decide(a.id, approve=True, approver="local:ops")
    await store.cancel(a.id, "client_disconnected")


async def refused_as_unverified(store: ApprovalStore, a: Approval, clock: FakeClock, state: StateDir) -> None:
    with sqlite3.connect(state.database) as conn:
        conn.execute("UPDATE approvals SET state = 'approved', approver = 'alice' WHERE id = ?", (a.id,))
    with pytest.raises(ApprovalUnverified):
        await store.consume(a.id, payload_hash=a.payload_hash)


@pytest.mark.parametrize(
    "finish",
    [
        consumed,
        denied,
        expired_unanswered,
        expired_on_a_late_decision,
        expired_while_waiting,
        approved_but_never_run,
        cancelled,
        cancelled_after_approval,
        refused_as_unverified,
    ],
)
async def test_a_finished_approval_keeps_the_digest_not_the_secret(
    state: StateDir, clock: FakeClock, finish: Callable[[ApprovalStore, Approval, FakeClock, StateDir], Awaitable[None]]
) -> None:
    args = refund_args(api_key=SECRET, reason=f"customer pasted {SECRET} in the chat")
    redacted = Redactor(b"k" * 32).arguments(args)
    assert SECRET not in json.dumps(redacted)
    async with open_store(state, clock) as store:
        a = await store.create(bundle(args), decision(), tool=TOOL, redacted=redacted)
        assert rows_hold(state, SECRET)  # pending: the approver reads the arguments in clear
        await finish(store, a, clock, state)
        assert not rows_hold(state, SECRET)
        after = await store.get(a.id)
        assert after is not None and after.to_json()["arguments"] == redacted
        assert after.payload_hash == a.payload_hash  # what was approved stays identifiable
    assert SECRET.encode() not in state.database.read_bytes()


async def test_approvals_still_open_keep_their_arguments_and_those_with_nothing_to_redact_are_untouched(
    state: StateDir, clock: FakeClock
) -> None:
    async with open_store(state, clock) as store:
        secret_args = refund_args(api_key=SECRET)
        pending = await store.create(
            bundle(secret_args, request_id="r1"),
            decision(),
            tool=TOOL,
            redacted=Redactor(b"k" * 32).arguments(secret_args),
        )
        approved = await store.create(
            bundle(secret_args, request_id="r2"),
            decision(),
            tool=TOOL,
            redacted=Redactor(b"k" * 32).arguments(secret_args),
        )
        await store.decide(approved.id, approve=True, approver="local:ops")
        plain = await store.create(bundle(request_id="r3"), decision(), tool=TOOL, redacted=refund_args())
        await store.decide(plain.id, approve=False, approver="local:ops")
        await store.expire_due()
        assert (await store.get(pending.id)).bundle.arguments == secret_args  # type: ignore[union-attr]
        assert (await store.get(approved.id)).bundle.arguments == secret_args  # type: ignore[union-attr]
        assert (await store.get(plain.id)).bundle.arguments == refund_args()  # type: ignore[union-attr]
        assert await store.consume(approved.id, payload_hash=approved.payload_hash)


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
"""


async def test_through_the_guard_a_denied_and_an_executed_approval_list_only_digests(
    state: StateDir, tmp_path: Path
) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text(CONFIG)
    other = "sk_live_" + "W4" * 12
    up = RecordingUpstream()

    async def terminal(*args: str, as_json: bool = False) -> Any:
        result = await anyio.to_thread.run_sync(lambda: cli(config, state, *args, as_json=as_json))
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if as_json else result.output

    async with running_guard(config_from(CONFIG, state), state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode="legacy") as client:
            first = await client.call_tool("mail__echo", {"text": f"rotate to {SECRET}"})
            second = await client.call_tool("mail__echo", {"text": f"rotate to {other}"})
            assert reason_of(first) == reason_of(second) == "pending_approval"
            ids = [(r["id"], r["arguments"]["text"]) for r in await terminal("approvals", "list", as_json=True)]
            assert [text for _, text in ids] == [f"rotate to {SECRET}", f"rotate to {other}"]  # the approver sees it
            await terminal("approvals", "deny", ids[0][0])
            await terminal("approvals", "approve", ids[1][0])
            executed = await client.call_tool("mail__echo", {"text": f"rotate to {other}"})
            assert not executed.is_error
            listed = await terminal("approvals", "list", "--all", as_json=True)
    assert [r["state"] for r in listed] == ["denied", "approved"] and listed[1]["consumed"]
    shown = json.dumps(listed)
    assert SECRET not in shown and other not in shown and shown.count("redacted:") == 2
    assert not rows_hold(state, SECRET) and not rows_hold(state, other)
