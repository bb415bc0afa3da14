"""Two guard instances on one PostgreSQL share one approval queue: each with its own state directory
(sharing only the keys), created on one, decided on the other, run exactly once, woken by NOTIFY."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import psycopg
import pytest
from _approvals_support import bundle, decision

from guard_mcp._approvals import ApprovalState, ApprovalStore, wait_for_decision
from guard_mcp._clock import SystemClock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir
from guard_mcp._store import StoreUnavailable
from guard_mcp._store.pgsync import Listener

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[ApprovalStore, ApprovalStore]]:
    """Instance A and instance B: two state directories, one database, the same keys."""
    state_a = StateDir(tmp_path / "a").ensure()
    state_b = StateDir(tmp_path / "b").ensure()
    clock = SystemClock()
    a = await ApprovalStore.open(state_a, clock=clock, config=ApprovalsConfig(), store=pg_url)
    await a.approvers.enrol("ops", "finance")  # makes the approver key on A; B gets a copy, as deployed
    shutil.rmtree(state_b.keys)
    shutil.copytree(state_a.keys, state_b.keys)
    b = await ApprovalStore.open(state_b, clock=clock, config=ApprovalsConfig(), store=pg_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_created_on_a_decided_on_b_runs_once_on_either(pair: tuple[ApprovalStore, ApprovalStore]) -> None:
    a, b = pair
    pending = await a.create(bundle(), decision(), tool="shop__refund")
    assert [x.id for x in await b.list(states=[ApprovalState.PENDING])] == [pending.id]
    decided = await b.decide(pending.id, approve=True, approver="local:ops")
    assert decided.state is ApprovalState.APPROVED and decided.verified
    seen_on_a = await a.get(pending.id)
    assert seen_on_a is not None and seen_on_a.verified  # B's decision record verifies on A
    with pytest.raises(ApprovalError, match="already approved"):
        await a.decide(pending.id, approve=False, approver="local:other")

    # The attack: both instances race to run the one approval, many times over.
    outcomes: list[bool] = []

    async def spend(store: ApprovalStore) -> None:
        outcomes.append(await store.consume(pending.id, payload_hash=pending.payload_hash))

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(spend, (a, b)[i % 2])
    assert sorted(outcomes) == [False] * 15 + [True]


async def test_a_decision_through_a_wakes_the_call_waiting_on_b(pair: tuple[ApprovalStore, ApprovalStore]) -> None:
    a, b = pair
    pending = await b.create(bundle(), decision(), tool="shop__refund")
    got: list[ApprovalState] = []

    async def wait_on_b() -> None:
        # An hour between polls: only the NOTIFY can end this wait before the test's bound.
        record = await wait_for_decision(b, pending.id, timeout=3600, poll=3600)
        got.append(record.state)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_b)
            await _listening(b)
            await a.decide(pending.id, approve=True, approver="local:ops")
    assert got == [ApprovalState.APPROVED]
    listener = b._db.listener
    assert listener is not None and listener.heard >= 1
    assert await b.consume(pending.id, payload_hash=pending.payload_hash)
    assert not await a.consume(pending.id, payload_hash=pending.payload_hash)


async def test_a_lost_notification_never_loses_the_decision(
    pair: tuple[ApprovalStore, ApprovalStore], pg_url: str
) -> None:
    a, b = pair
    pending = await b.create(bundle(), decision(), tool="shop__refund")
    got: list[ApprovalState] = []

    async def wait_on_b() -> None:
        record = await wait_for_decision(b, pending.id, timeout=3600, poll=0.05)
        got.append(record.state)

    with psycopg.connect(pg_url, autocommit=True) as admin:  # the notification is lost: none is ever sent
        admin.execute("ALTER TABLE approvals DISABLE TRIGGER approvals_notify")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_b)
            await _listening(b)
            await a.decide(pending.id, approve=False, approver="local:ops")
    assert got == [ApprovalState.DENIED]  # the poll found it
    listener = b._db.listener
    assert listener is not None and listener.heard == 0


async def test_a_dropped_listening_connection_comes_back_and_still_wakes(
    pair: tuple[ApprovalStore, ApprovalStore], pg_url: str
) -> None:
    a, b = pair
    first = await b.create(bundle(), decision(), tool="shop__refund")
    second = await b.create(bundle(request_id="req-2"), decision(), tool="shop__refund")
    got: list[ApprovalState] = []

    async def wait_on_b(approval_id: str) -> None:
        got.append((await wait_for_decision(b, approval_id, timeout=3600, poll=3600)).state)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_b, first.id)
            listener = await _listening(b)
            pid = listener.backend_pid()
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await a.decide(first.id, approve=True, approver="local:ops")  # sent while B may not be listening
        # Woken by the reconnect (every waiter polls once), not by the poll an hour away.
        assert got == [ApprovalState.APPROVED]
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_b, second.id)
            await _listening(b)
            assert listener.backend_pid() != pid
            await a.decide(second.id, approve=False, approver="local:ops")
    assert got == [ApprovalState.APPROVED, ApprovalState.DENIED]


async def test_an_unreachable_server_is_one_line_naming_it_without_the_password(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s").ensure()
    url = "postgresql://guard:hunter2@127.0.0.1:1/guard"
    with pytest.raises(StoreUnavailable) as caught:
        await ApprovalStore.open(state, clock=SystemClock(), config=ApprovalsConfig(), store=url)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith("approvals store `postgresql://guard:***@127.0.0.1:1/guard` failed:")


async def _listening(store: ApprovalStore) -> Listener:
    """The store's listener once its LISTEN is in force (started by the waiter's first nap)."""
    while True:
        listener = store._db.listener
        if listener is not None and listener.connected.is_set():
            return listener
        await anyio.sleep(0.01)


async def test_a_notification_between_two_naps_is_not_missed(pg_url: str) -> None:
    # The waiter reads the row (still pending), the decision is notified, then the waiter naps: the nap
    # must end at once, not after its hour.
    listener = Listener(pg_url, "approvals")
    try:
        assert await anyio.to_thread.run_sync(listener.connected.wait, 30)
        mark = listener.mark()  # taken before the read
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("NOTIFY approvals, 'apr_1'")
        for _ in range(3000):  # the listener's thread has it within a moment
            if listener.heard:
                break
            await anyio.sleep(0.01)
        with anyio.fail_after(30):
            assert await listener.nap("apr_1", 3600, anyio.sleep, mark)
        assert not await listener.nap("apr_2", 0.01, anyio.sleep, mark)  # another approval's wait is not cut
        assert not await listener.nap("apr_1", 0.01, anyio.sleep, listener.mark())  # nor a later read's
    finally:
        await listener.close()


@pytest.mark.subprocess
async def test_approve_from_a_and_deny_from_b_in_two_processes_exactly_one_wins(
    pair: tuple[ApprovalStore, ApprovalStore], pg_url: str, tmp_path: Path
) -> None:
    a, _ = pair
    config = tmp_path / "upstreams.yaml"
    config.write_text(f'guard: {{store: "{pg_url}"}}\nupstreams: {{}}\n')
    approvals = [await a.create(bundle(request_id=f"r{i}"), decision(), tool="shop__refund") for i in range(3)]
    for approval in approvals:
        procs = [
            await anyio.open_process(
                [
                    sys.executable,
                    "-c",
                    "from guard_mcp.cli import main; main()",
                    "approvals",
                    verb,
                    approval.id,
                    "--config",
                    str(config),
                    "--state-dir",
                    str(tmp_path / instance),
                ]
            )
            for verb, instance in (("approve", "a"), ("deny", "b"))
        ]
        codes = [await p.wait() for p in procs]
        for p in procs:
            await p.aclose()
        assert sorted(codes) == [0, 2]  # one wins; the other is told (exit 2, "decided by someone else first")
        final = await a.get(approval.id)
        assert final is not None and final.verified
        assert final.state is (ApprovalState.APPROVED if codes[0] == 0 else ApprovalState.DENIED)
