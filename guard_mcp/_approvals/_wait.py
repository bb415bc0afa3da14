"""Waiting for a human: poll the store until an approval leaves PENDING, its deadline, or a timeout.

The decision usually comes from another process (`guard-mcp approvals approve` in a terminal), so
the database is the only channel: a cheap indexed read every `poll` seconds wakes the call well
within a second. On a shared PostgreSQL store a decision's `NOTIFY` wakes the wait at once
(`ApprovalStore.nap`); the poll stays the truth, so a lost notification only delays the wake-up.
The sleep is injectable, so tests drive the wait with a fake clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from guard_mcp._approvals._record import Approval, ApprovalState
from guard_mcp._approvals._store import ApprovalStore, unknown_approval

__all__ = ["wait_for_decision"]


async def wait_for_decision(
    store: ApprovalStore,
    approval_id: str,
    *,
    timeout: float,  # noqa: ASYNC109  (at the timeout the pending record is returned, not an error)
    clock_sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    poll: float = 0.25,
    on_tick: Callable[[float], Awaitable[None]] | None = None,
    tick_every: float | None = None,
) -> Approval:
    """The approval as soon as it is decided, expired or cancelled; else the PENDING record at `timeout`.

    A deadline passing during the wait expires the approval here (so the caller sees EXPIRED, a
    denial). `on_tick(elapsed)` runs at once (the client learns at the start where the call can be
    decided), then every `tick_every` seconds (default `approvals.heartbeat`), for progress
    heartbeats. Elapsed time is the larger of the store's clock and the time slept, so a
    frozen or stepped-back clock cannot make the wait endless.
    """
    if poll <= 0 or timeout < 0:
        raise ValueError("poll must be positive and timeout non-negative")
    interval = store.config.heartbeat if tick_every is None else tick_every
    start = store.clock.now()
    slept = 0.0
    next_tick = 0.0
    while True:
        mark = store.wake_mark()  # before the read: a decision after it ends the next nap at once
        record = await store.get(approval_id)
        if record is None:
            raise unknown_approval(approval_id)
        if record.state is not ApprovalState.PENDING:
            return record
        now = store.clock.now()
        if now >= record.deadline:
            return await store.expire(approval_id) or record
        elapsed = max(now - start, slept)
        if elapsed >= timeout:
            return record
        if on_tick is not None and interval > 0 and elapsed >= next_tick:
            await on_tick(elapsed)
            next_tick = elapsed + interval
        delay = max(min(poll, timeout - elapsed, record.deadline - now), 0.001)
        # On PostgreSQL a NOTIFY cuts the nap short: then only the clock counts the time it took.
        if not await store.nap(approval_id, delay, clock_sleep, mark):
            slept += delay
