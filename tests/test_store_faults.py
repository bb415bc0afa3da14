"""PostgreSQL stopped and started again under a running guard (a server of the test's own): while it is
down calls deny with a reason code, nothing is forwarded without its record, and afterwards traffic
resumes with no guard restart and nothing that was committed lost."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from _approvals_support import bundle, decision
from _pg import PgCluster
from guard_kit import reason_of, running_guard, text_of
from mcp import Client
from test_limits import FINANCIAL, refund_upstream, shop_config

from guard_mcp._approvals import ApprovalState, ApprovalStore
from guard_mcp._clock import FakeClock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._state import StateDir
from guard_mcp._store import StoreUnavailable

pytestmark = pytest.mark.anyio


async def test_limited_calls_deny_while_postgresql_is_down_and_resume_after_with_the_count_kept(
    tmp_path: Path, clock: FakeClock, own_pg_cluster: PgCluster
) -> None:
    state = StateDir(tmp_path / "s").ensure()
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 3}]", store=own_pg_cluster.database())
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            before = await client.call_tool("shop__refund", {"text": "before", "amount": 1})
            own_pg_cluster.stop_server()
            down = await client.call_tool("shop__refund", {"text": "down", "amount": 1})
            own_pg_cluster.start_server()
            after = [await client.call_tool("shop__refund", {"text": f"after{i}", "amount": 1}) for i in range(3)]
    assert not before.is_error, text_of(before)
    assert down.is_error and reason_of(down) == "limit_unavailable", text_of(down)
    # The limit is 3: the call before the restart still counts, the refused one does not.
    assert [r.is_error for r in after] == [False, False, True], [text_of(r) for r in after]
    assert reason_of(after[2]) == "limit_exceeded"
    assert [c[1]["text"] for c in up.calls] == ["before", "after0", "after1"]


async def test_a_call_needing_approval_denies_with_store_unavailable_while_postgresql_is_down(
    tmp_path: Path, clock: FakeClock, own_pg_cluster: PgCluster
) -> None:
    state = StateDir(tmp_path / "s").ensure()
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 100}]", schema=FINANCIAL, store=own_pg_cluster.database())
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        assert guard.pipeline.limits is not None
        own_pg_cluster.stop_server()
        await guard.pipeline.limits.store.close()  # only the approvals' store is left to meet the outage
        async with Client(guard.server) as client:
            guard.pipeline.limits = None
            down = await client.call_tool("shop__refund", {"text": "down", "amount": 1})
        own_pg_cluster.start_server()
    assert down.is_error and reason_of(down) == "store_unavailable", text_of(down)
    assert "Traceback" not in text_of(down)
    assert up.calls == []


async def test_the_approval_queue_survives_a_restart_of_postgresql_under_an_open_store(
    tmp_path: Path, own_pg_cluster: PgCluster
) -> None:
    state = StateDir(tmp_path / "s").ensure()
    clock = FakeClock()
    store = await ApprovalStore.open(state, clock=clock, config=ApprovalsConfig(), store=own_pg_cluster.database())
    try:
        pending = await store.create(bundle(), decision(), tool="shop__refund")
        approved = await store.create(bundle(request_id="req-2"), decision(), tool="shop__refund")
        await store.decide(approved.id, approve=True, approver="local:ops")
        async with anyio.create_task_group() as tg:  # several connections in the pool, all broken by the stop
            for _ in range(6):
                tg.start_soon(store.list)
        own_pg_cluster.stop_server()
        with pytest.raises(StoreUnavailable) as caught:
            await store.consume(approved.id, payload_hash=approved.payload_hash)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("approvals store `postgresql://")
        own_pg_cluster.start_server()
        # Nothing committed was lost, the refused consume spent nothing, and the store works again as it was.
        again = await store.get(pending.id)
        assert again is not None and again.state is ApprovalState.PENDING
        assert await store.consume(approved.id, payload_hash=approved.payload_hash)
        assert not await store.consume(approved.id, payload_hash=approved.payload_hash)
    finally:
        await store.close()
