"""Usage limits across calls: the salami attack (many small calls that each pass) stops at the limit,
atomically, per principal or pooled, and a call refused after its reservation gives its budget back."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from _policy_kit import make_signer, shop_source, write_bundle
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard, text_of
from mcp import Client

from guard_mcp._audit._query import calls
from guard_mcp._clock import FakeClock
from guard_mcp._config import LimitConfig
from guard_mcp._limits import PRUNE_MARGIN, UsageStore
from guard_mcp._state import StateDir
from guard_mcp._store import Tx

pytestmark = pytest.mark.anyio

LOW = "action: refund.create, category: read, reversibility: full, blast_radius: single, sensitivity: public"
FINANCIAL = (
    "action: refund.create, category: financial, reversibility: none, blast_radius: single, sensitivity: confidential"
)
MEDIUM = (
    "action: email.send, category: communicate, reversibility: none, blast_radius: single, sensitivity: confidential"
)


def shop_config(
    state: StateDir, limits: str, *, principal: str = "agent-a", schema: str = LOW, store: str | None = None
) -> Any:
    return config_from(
        f"""
guard:
  principal: {principal}
  {f'store: "{store}"' if store else ""}
  approvals: {{wait: 5s}}
upstreams:
  shop:
    command: unused-in-process
    tools:
      refund: {{{schema}, limits: {limits}}}
""",
        state,
    )


def refund_upstream() -> RecordingUpstream:
    return RecordingUpstream(
        [
            types.Tool(
                name="refund",
                description="Refund.",
                input_schema={"type": "object", "properties": {"text": {"type": "string"}, "amount": {}}},
            )
        ]
    )


def denials(state: StateDir) -> list[dict[str, Any]]:
    with sqlite3.connect(state.database) as conn:
        return [
            json.loads(d)
            for (d,) in conn.execute("SELECT data FROM audit_events WHERE type = 'call.denied' ORDER BY seq")
        ]


async def test_the_salami_attack_stops_at_the_limit_and_the_upstream_never_sees_the_extra_call(
    state: StateDir,
    clock: FakeClock,
    store_url: str | None,
) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 5}]", store=store_url)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            for i in range(5):
                ok = await client.call_tool("shop__refund", {"text": f"r{i}", "amount": 99})
                assert not ok.is_error, text_of(ok)
                clock.advance(60)
            sixth = await client.call_tool("shop__refund", {"text": "r5", "amount": 99})
    assert sixth.is_error and reason_of(sixth) == "limit_exceeded"
    message = text_of(sixth)
    assert "`shop__refund`: 5 calls already permitted in the last 1h (limit 5)" in message, message
    assert "wait 55m" in message and "raise `limits`" in message and "\n" not in message
    assert [c[1]["text"] for c in up.calls] == ["r0", "r1", "r2", "r3", "r4"]
    [denied] = denials(state)
    assert denied["reason"] == "limit_exceeded" and denied["used"] == 5 and denied["asked"] == 1
    assert denied["limit"] == {"window": "1h", "per": "actor", "calls": 5} and denied["window_s"] == 3600
    with sqlite3.connect(state.database) as conn:
        last = calls(conn)[-1]
    assert (last.decision, last.reason) == ("deny", "limit_exceeded")


async def test_a_sum_limit_counts_the_calls_own_amount(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 24h, sum: amount, max: 2000}]", store=store_url)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            for amount in (1000, 900):
                assert not (await client.call_tool("shop__refund", {"text": "ok", "amount": amount})).is_error
            over = await client.call_tool("shop__refund", {"text": "over", "amount": 150})
            fits = await client.call_tool("shop__refund", {"text": "fits", "amount": 100})
            full = await client.call_tool("shop__refund", {"text": "full", "amount": 0.01})
            huge = await client.call_tool("shop__refund", {"text": "huge", "amount": 2500})
    assert reason_of(over) == "limit_exceeded", text_of(over)
    assert "1,900 of `amount` already permitted in the last 24h and this call asks 150 (limit 2,000)" in text_of(over)
    assert not fits.is_error, text_of(fits)  # exactly at the limit is within it
    assert reason_of(full) == "limit_exceeded"
    assert reason_of(huge) == "limit_exceeded" and "alone is more than the limit of 2,000" in text_of(huge)
    assert [c[1]["text"] for c in up.calls] == ["ok", "ok", "fits"]
    assert [(d["used"], d["asked"]) for d in denials(state)] == [(1900, 150), (2000, 0.01), (2000, 2500)]


async def test_decimal_amounts_add_up_as_written(state: StateDir, clock: FakeClock) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, sum: amount, max: 0.3}]")
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            results = [await client.call_tool("shop__refund", {"text": "x", "amount": 0.1}) for _ in range(4)]
    assert [r.is_error for r in results] == [False, False, False, True]


async def test_a_window_whose_float_total_is_off_at_the_edge_is_added_up_exactly(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    # As floats 1.1 + 0.05 + 0.05 is 1.2000000000000002, which would refuse the 0.1 that exactly fits.
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, sum: amount, max: 1.3}]", store=store_url)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            results = [
                await client.call_tool("shop__refund", {"text": "x", "amount": a}) for a in (1.1, 0.05, 0.05, 0.1, 0.01)
            ]
    assert [r.is_error for r in results] == [False, False, False, False, True]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"text": "x"}, "`amount` is missing"),
        ({"text": "x", "amount": "150"}, "`amount` is not a number"),
        ({"text": "x", "amount": True}, "`amount` is not a number"),
        ({"text": "x", "amount": -5}, "`amount` is negative"),
    ],
)
async def test_an_amount_that_cannot_be_counted_is_refused(
    state: StateDir,
    clock: FakeClock,
    arguments: dict[str, Any],
    problem: str,
) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 24h, sum: amount, max: 2000}]")
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            result = await client.call_tool("shop__refund", arguments)
    assert reason_of(result) == "limit_unmeasurable", text_of(result)
    assert problem in text_of(result)
    assert up.calls == []
    assert denials(state)[0]["reason"] == "limit_unmeasurable"


async def test_the_window_rolls(state: StateDir, clock: FakeClock, store_url: str | None) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 2}, {window: 1d, sum: amount, max: 500}]", store=store_url)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:

            async def refund(amount: float) -> types.CallToolResult:
                return await client.call_tool("shop__refund", {"text": str(amount), "amount": amount})

            assert not (await refund(100)).is_error
            assert not (await refund(100)).is_error
            assert reason_of(await refund(100)) == "limit_exceeded"  # two calls an hour
            clock.advance(3600)
            assert not (await refund(100)).is_error
            assert not (await refund(200)).is_error
            clock.advance(3600)
            daily = await refund(1)
            assert reason_of(daily) == "limit_exceeded"  # 500 a day, the hourly budget is back
            assert "500 of `amount` already permitted in the last 24h" in text_of(daily)
            assert "wait 22h 00m" in text_of(daily)
            clock.advance(22 * 3600)
            assert not (await refund(100)).is_error  # the first two refunds left the day


async def test_per_actor_keeps_principals_apart_and_per_all_pools_them(tmp_path: Path, clock: FakeClock) -> None:
    async def spend(state: StateDir, limits: str, principal: str, n: int) -> list[str | None]:
        up = refund_upstream()
        cfg = shop_config(state, limits, principal=principal)
        async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
            async with Client(guard.server) as client:
                return [reason_of(await client.call_tool("shop__refund", {"text": "x", "amount": 1})) for _ in range(n)]

    apart = StateDir(tmp_path / "apart").ensure()
    assert await spend(apart, "[{window: 1h, calls: 2}]", "alice", 3) == [None, None, "limit_exceeded"]
    assert await spend(apart, "[{window: 1h, calls: 2}]", "bob", 2) == [None, None]

    pooled = StateDir(tmp_path / "pooled").ensure()
    assert await spend(pooled, "[{window: 1h, calls: 2, per: all}]", "alice", 1) == [None]
    assert await spend(pooled, "[{window: 1h, calls: 2, per: all}]", "bob", 2) == [None, "limit_exceeded"]
    assert denials(pooled)[0]["limit"]["per"] == "all"


async def test_concurrent_calls_at_the_edge_let_exactly_the_limit_through(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 5}]", store=store_url)
    results: list[types.CallToolResult] = []
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:

            async def one(i: int) -> None:
                results.append(await client.call_tool("shop__refund", {"text": f"r{i}", "amount": 1}))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(one, i)
    assert sum(not r.is_error for r in results) == 5
    assert {reason_of(r) for r in results if r.is_error} == {"limit_exceeded"}
    assert len(up.calls) == 5


async def test_two_stores_on_one_database_admit_exactly_the_limit(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    limit = LimitConfig(window=3600, sum="amount", max=10)
    first = await UsageStore.open(state, clock, store=store_url)
    second = await UsageStore.open(state, clock, store=store_url)
    admitted: list[str] = []
    try:

        async def reserve(store: UsageStore, request_id: str) -> None:
            hit = await store.reserve("shop__refund", "agent", request_id, [limit], {"amount": Decimal(1)})
            if hit is None:
                admitted.append(request_id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(15):
                    tg.start_soon(reserve, first, f"req_a{i}")
                    tg.start_soon(reserve, second, f"req_b{i}")
        assert len(admitted) == 10
        [usage] = await first.usage("shop__refund", limit)
        assert (usage.actor, usage.used) == ("agent", Decimal(10))
    finally:
        await first.close()
        await second.close()


async def test_a_limit_of_5_an_hour_holds_at_5_across_two_guard_instances_sharing_postgresql(
    tmp_path: Path, clock: FakeClock, pg_url: str
) -> None:
    # Two guards, each with its own state directory, one PostgreSQL store: 20 concurrent refunds spread over
    # both. Counted per instance (each its own guard.db) ten would go through.
    ups = [refund_upstream(), refund_upstream()]
    results: list[types.CallToolResult] = []
    states = [StateDir(tmp_path / name).ensure() for name in ("a", "b")]
    cfgs = [shop_config(s, "[{window: 1h, calls: 5}]", store=pg_url) for s in states]
    async with (
        running_guard(cfgs[0], states[0], clock=clock, inprocess={"shop": ups[0].server}) as a,
        running_guard(cfgs[1], states[1], clock=clock, inprocess={"shop": ups[1].server}) as b,
    ):
        async with Client(a.server) as client_a, Client(b.server) as client_b:

            async def one(client: Client, i: int) -> None:
                results.append(await client.call_tool("shop__refund", {"text": f"r{i}", "amount": 1}))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(one, (client_a, client_b)[i % 2], i)
    assert sum(not r.is_error for r in results) == 5
    assert {reason_of(r) for r in results if r.is_error} == {"limit_exceeded"}
    assert len(ups[0].calls) + len(ups[1].calls) == 5


async def test_a_store_that_cannot_be_reached_denies_limited_calls(
    state: StateDir, clock: FakeClock, pg_url: str
) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 5}]", store=pg_url)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        assert guard.pipeline.limits is not None
        await guard.pipeline.limits.store.close()  # the pool is gone: as good as a server that went away
        async with Client(guard.server) as client:
            result = await client.call_tool("shop__refund", {"text": "x", "amount": 1})
    assert reason_of(result) == "limit_unavailable", text_of(result)
    assert up.calls == []


async def test_a_call_refused_after_its_reservation_gives_the_budget_back(state: StateDir, clock: FakeClock) -> None:
    answers = ["deny", "approve"]
    prompts: list[str] = []

    async def human(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        prompts.append(params.message)
        return types.ElicitResult(action="accept", content={"decision": answers.pop(0)})

    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 1}]", schema=MEDIUM)
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server, mode="legacy", elicitation_callback=human) as client:
            denied = await client.call_tool("shop__refund", {"text": "no", "amount": 1})
            approved = await client.call_tool("shop__refund", {"text": "yes", "amount": 1})
            over = await client.call_tool("shop__refund", {"text": "again", "amount": 1})
    assert reason_of(denied) == "approval_denied"
    assert not approved.is_error, text_of(approved)
    assert reason_of(over) == "limit_exceeded"
    assert len(prompts) == 2  # the limit refused the third call before anyone was asked
    assert [c[1]["text"] for c in up.calls] == ["yes"]


async def test_a_failed_permit_record_gives_the_budget_back(state: StateDir, clock: FakeClock) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 1}]")
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        real_prepare = guard.pipeline.permits.prepare

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("signing key unavailable")

        guard.pipeline.permits.prepare = broken  # type: ignore[method-assign]
        async with Client(guard.server) as client:
            failed = await client.call_tool("shop__refund", {"text": "lost", "amount": 1})
            guard.pipeline.permits.prepare = real_prepare  # type: ignore[method-assign]
            ok = await client.call_tool("shop__refund", {"text": "ok", "amount": 1})
    assert reason_of(failed) == "internal_error"
    assert not ok.is_error, text_of(ok)
    assert [c[1]["text"] for c in up.calls] == ["ok"]


async def test_a_call_the_upstream_failed_still_counts(state: StateDir, clock: FakeClock) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, calls: 1}]")
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:

        async def failing(*args: Any, **kwargs: Any) -> Any:
            from guard_mcp._errors import UpstreamError

            raise UpstreamError("upstream `shop` went away")

        real_call = guard.upstreams.call
        guard.upstreams.call = failing  # type: ignore[method-assign]
        async with Client(guard.server) as client:
            failed = await client.call_tool("shop__refund", {"text": "maybe", "amount": 1})
            guard.upstreams.call = real_call  # type: ignore[method-assign]
            after = await client.call_tool("shop__refund", {"text": "again", "amount": 1})
    assert reason_of(failed) == "upstream_error"
    assert reason_of(after) == "limit_exceeded"  # the upstream may have acted on the first


async def test_a_policy_denial_keeps_its_own_reason_and_uses_no_budget(
    state: StateDir,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    signer = make_signer(tmp_path / "keys")
    write_bundle(tmp_path / "shop.bundle.json", shop_source(), signer)  # refunds up to 100 auto-allowed
    cfg = shop_config(state, "[{window: 1h, sum: amount, max: 150}]", schema=FINANCIAL)
    cfg = cfg.model_copy(
        update={
            "guard": cfg.guard.model_copy(
                update={"policy": str(tmp_path / "shop.bundle.json"), "trusted_policy_keys": [str(signer.public_pem)]}
            )
        }
    )
    up = refund_upstream()
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:

            async def refund(amount: int) -> str | None:
                return reason_of(await client.call_tool("shop__refund", {"text": str(amount), "amount": amount}))

            assert await refund(100) is None
            assert await refund(5000) == "amount_exceeds_policy_limit"  # the policy's word, not the limit's
            assert await refund(50) is None
            assert await refund(1) == "limit_exceeded"
    assert [c[1]["amount"] for c in up.calls] == [100, 50]


async def test_a_redacted_amount_is_digested_in_the_audit_of_a_denial(state: StateDir, clock: FakeClock) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[{window: 1h, sum: amount, max: 5}]")
    cfg = cfg.model_copy(
        update={
            "guard": cfg.guard.model_copy(update={"audit": cfg.guard.audit.model_copy(update={"redact": ["amount"]})})
        }
    )
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            assert not (await client.call_tool("shop__refund", {"text": "a", "amount": 4})).is_error
            over = await client.call_tool("shop__refund", {"text": "b", "amount": 2})
    assert reason_of(over) == "limit_exceeded"
    [denied] = denials(state)
    assert str(denied["asked"]).startswith("redacted:") and str(denied["used"]).startswith("redacted:")


async def test_tools_without_limits_never_open_the_usage_table(state: StateDir, clock: FakeClock) -> None:
    up = refund_upstream()
    cfg = shop_config(state, "[]")
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": up.server}) as guard:
        assert guard.pipeline.limits is None
        async with Client(guard.server) as client:
            for _ in range(3):
                assert not (await client.call_tool("shop__refund", {"text": "x", "amount": 1})).is_error
    with sqlite3.connect(state.database) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'limit_usage'").fetchone() is None


async def test_rows_older_than_the_longest_window_are_pruned(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    limit = LimitConfig(window=3600, calls=10)
    store = await UsageStore.open(state, clock, horizon=3600, store=store_url)
    try:
        assert await store.reserve("shop__refund", "agent", "req_old", [limit], {}) is None
        clock.advance(3600 + PRUNE_MARGIN + 1)
        assert await store.reserve("shop__refund", "agent", "req_new", [limit], {}) is None

        async def kept(tx: Tx) -> list[str]:
            return [r for (r,) in (await tx.execute("SELECT request_id FROM limit_usage")).rows]

        assert await store._db.run(kept, write=False) == ["req_new"]
    finally:
        await store.close()


async def test_a_guard_with_shorter_windows_does_not_prune_rows_another_guard_still_counts(
    state: StateDir, clock: FakeClock, store_url: str | None
) -> None:
    # Two guards on one database (a rolling restart after the window was raised to a day).
    hourly, daily = LimitConfig(window=3600, calls=10), LimitConfig(window=86_400, calls=3)
    short = await UsageStore.open(state, clock, horizon=3600, store=store_url)
    long = await UsageStore.open(state, clock, horizon=86_400, store=store_url)
    try:
        for i in range(3):
            assert await long.reserve("shop__refund", "agent", f"req_{i}", [daily], {}) is None
        clock.advance(3600 + PRUNE_MARGIN + 1)
        assert await short.reserve("shop__refund", "agent", "req_short", [hourly], {}) is None  # sweeps
        refused = await long.reserve("shop__refund", "agent", "req_4", [daily], {})
        assert refused is not None and refused.used == 4  # the day's three and the short guard's one
    finally:
        await short.close()
        await long.close()
