from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import anyio
import pytest
from _approvals_support import bundle, decision, open_store

from guard_mcp._approvals import ApprovalState, wait_for_decision
from guard_mcp._approvals._record import new_id
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


def fake_sleep(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    return sleep


async def test_wakes_on_a_decision_made_by_another_process(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as guard, open_store(state, clock) as cli:
        a = await guard.create(bundle(), decision(), tool="shop__refund")
        polled = anyio.Event()

        async def tick(_: float) -> None:
            polled.set()

        async def decide_when_waiting() -> None:
            await polled.wait()
            await cli.decide(a.id, approve=True, approver="local:ops", reason="ok")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(decide_when_waiting)
                result = await wait_for_decision(guard, a.id, timeout=3600, poll=0.01, on_tick=tick, tick_every=0.01)
        assert result.state is ApprovalState.APPROVED and result.reason == "ok"


async def test_wakes_with_ticks_then_returns_pending_at_the_timeout(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock, heartbeat="5s") as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        ticks: list[float] = []

        async def tick(elapsed: float) -> None:
            ticks.append(elapsed)

        start = clock.now()
        result = await wait_for_decision(store, a.id, timeout=60, clock_sleep=fake_sleep(clock), on_tick=tick)
        assert result.state is ApprovalState.PENDING
        assert clock.now() - start >= 60
        assert ticks and all(t2 - t1 >= 5 for t1, t2 in itertools.pairwise(ticks))
        assert ticks[0] == 0 and ticks[-1] < 60 and len(ticks) >= 60 // 5  # the first at once, then every 5 s


async def test_a_deadline_during_the_wait_expires_the_approval(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(ttl=30), tool="shop__refund")
        result = await wait_for_decision(store, a.id, timeout=3600, clock_sleep=fake_sleep(clock))
        assert result.state is ApprovalState.EXPIRED
        stored = await store.get(a.id)
        assert stored is not None and stored.state is ApprovalState.EXPIRED
        assert not await store.consume(a.id, payload_hash=a.payload_hash)


async def test_a_frozen_clock_cannot_make_the_wait_endless(state: StateDir, clock: FakeClock) -> None:
    async def sleep_without_time_passing(_: float) -> None:
        await anyio.lowlevel.checkpoint()

    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        with anyio.fail_after(10):
            result = await wait_for_decision(store, a.id, timeout=5, clock_sleep=sleep_without_time_passing, poll=1)
        assert result.state is ApprovalState.PENDING


async def test_an_already_decided_approval_returns_at_once(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        a = await store.create(bundle(), decision(), tool="shop__refund")
        await store.decide(a.id, approve=False, approver="local:ops")

        async def never(_: float) -> None:
            raise AssertionError("slept although the decision was there")

        result = await wait_for_decision(store, a.id, timeout=60, clock_sleep=never)
        assert result.state is ApprovalState.DENIED


async def test_waiting_on_an_unknown_id_fails(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        with pytest.raises(ApprovalError, match="unknown approval"):
            await wait_for_decision(store, new_id("apr"), timeout=1, clock_sleep=fake_sleep(clock))
