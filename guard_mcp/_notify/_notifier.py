"""The notifier: a task of the running guard that turns audit events into outbox rows and sends them.

One `step()` derives every audit event written since the last step (by this guard, another guard
on the same state directory, or `guard-mcp approvals approve` in a terminal) into outbox rows, then
sends each row whose time has come. A failed attempt is tried again after `retry.first`, doubling up
to `retry.max`, until `retry.give_up` after the row was queued; then it is dropped and logged. Time
comes from the injected clock, so a test drives the retries with a FakeClock and explicit steps;
`run()` only adds the pause between steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc
import httpx2

from guard_mcp._audit import ensure_audit_key
from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig, NotifyConfig
from guard_mcp._errors import GuardError
from guard_mcp._notify._messages import build_queue
from guard_mcp._notify._outbox import Outbox, Pending
from guard_mcp._notify._targets import DeliveryError, Target, open_targets
from guard_mcp._state import StateDir

__all__ = ["Notifier", "Step", "open_notifier", "run_notifier"]

log = logging.getLogger("guard_mcp.notify")

_BATCH = 100  # rows claimed per step
_PARALLEL = 4  # deliveries in flight at once
_LEASE_MARGIN = 30.0  # seconds a claim outlives the attempt's own timeout


@dataclass(frozen=True)
class Step:
    """What one step did: audit events read, rows queued, and attempts that succeeded, failed, gave up."""

    read: int = 0
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class Notifier:
    def __init__(
        self, config: NotifyConfig, outbox: Outbox, targets: Mapping[str, Target], clock: Clock, audit_key: bytes
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.targets = dict(targets)
        self.clock = clock
        self._key = audit_key
        self._lease = max(t.timeout for t in config.targets.values()) + _LEASE_MARGIN if config.targets else 60.0

    def _delay(self, attempts: int) -> float:
        retry = self.config.retry
        return float(min(retry.max, retry.first * 2 ** max(0, attempts - 1)))

    async def _derive(self) -> tuple[int, int]:
        read = queued = 0
        while True:
            done = await self.outbox.derive(
                self._key,
                lambda events, story: build_queue(self.config, events, story, self.clock.now()),
                now=self.clock.now(),
            )
            if done is None:  # another guard derived these first: read on from where it left the cursor
                continue
            read, queued = read + done[0], queued + done[1]
            if done[0] == 0:
                return read, queued

    async def _attempt(self, row: Pending, outcomes: list[str]) -> None:
        target = self.targets[row.target]
        now = self.clock.now()
        try:
            await target.send(row.id, row.payload, now)
        except DeliveryError as exc:
            now = self.clock.now()
            retry_at = now + self._delay(row.attempts)
            if retry_at - row.created > self.config.retry.give_up:
                await self.outbox.dropped(row.id, str(exc), now)
                log.error(
                    "notification %s (%s) to target `%s` dropped after %d attempts: %s",
                    row.id,
                    row.kind,
                    row.target,
                    row.attempts,
                    exc,
                )
                outcomes.append("dropped")
            else:
                await self.outbox.failed(row.id, str(exc), retry_at)
                log.warning(
                    "notification %s (%s) to target `%s` failed (attempt %d): %s; trying again in %gs",
                    row.id,
                    row.kind,
                    row.target,
                    row.attempts,
                    exc,
                    retry_at - now,
                )
                outcomes.append("failed")
            return
        await self.outbox.delivered(row.id, self.clock.now())
        outcomes.append("delivered")

    async def _deliver(self) -> list[str]:
        rows = await self.outbox.claim_due(sorted(self.targets), self.clock.now(), self._lease, _BATCH)
        by_target: dict[str, list[Pending]] = {}
        for row in rows:  # claimed oldest first
            by_target.setdefault(row.target, []).append(row)
        outcomes: list[str] = []
        limiter = anyio.CapacityLimiter(_PARALLEL)

        async def one_target(queue: list[Pending]) -> None:
            # in order within a target (a decision does not overtake its request), targets side by side
            async with limiter:
                for row in queue:
                    await self._attempt(row, outcomes)

        async with anyio.create_task_group() as tg:
            for queue in by_target.values():
                tg.start_soon(one_target, queue)
        return outcomes

    async def prepare(self) -> None:
        """Make sure the cursor exists, so every event written from now on is derived by some step."""
        await self.outbox.start_cursor()

    async def step(self) -> Step:
        """Derive what the audit log owes, then send what is due now."""
        read, queued = await self._derive()
        outcomes = await self._deliver()
        return Step(read, queued, outcomes.count("delivered"), outcomes.count("failed"), outcomes.count("dropped"))

    async def run(self, poll: float = 1.0) -> None:
        """Step, pause `poll` seconds, step again, until cancelled. A failing step is logged, not fatal:
        the outbox and the cursor are where the next step starts."""
        while True:
            try:
                await self.step()
            except GuardError as exc:
                log.error("notifications: %s", exc)
            except Exception:
                log.exception("notifications: unexpected error; trying again")
            await anyio.sleep(poll)


@contextlib.asynccontextmanager
async def open_notifier(config: GuardConfig, state: StateDir, clock: Clock) -> AsyncIterator[Notifier]:
    key = ensure_audit_key(state)  # what tells the guard's own events from rows written into the file
    notify = config.guard.notify
    if notify.link_base is None and config.guard.console.public_url is not None:
        notify = notify.model_copy(update={"link_base": config.guard.console.public_url})  # the console's own links
    outbox = await Outbox.open(state.database)
    try:
        async with httpx2.AsyncClient(headers={"user-agent": "guard-mcp-notify/1"}) as client:
            yield Notifier(notify, outbox, open_targets(notify.targets, client), clock, key)
    finally:
        await outbox.close()


async def run_notifier(
    config: GuardConfig,
    state: StateDir,
    clock: Clock,
    poll: float = 1.0,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The guard's notifier task (nothing to do without `guard.notify.targets`). Started with `tg.start`,
    it reports started once the cursor is in place, so no event the guard writes after that is missed; a
    backlog (the guard was down) is derived by the steps that follow, while the guard serves."""
    if not config.guard.notify.targets:
        task_status.started()
        return
    started = False
    try:
        async with open_notifier(config, state, clock) as notifier:
            await notifier.prepare()
            task_status.started()
            started = True
            await notifier.run(poll)
    except GuardError as exc:  # the guard serves on; approvals are still in `guard-mcp approvals list`
        log.error("notifications are off: %s", exc)
    except Exception:  # never the guard's end: it decides and audits without its notifier
        log.exception("notifications are off after an unexpected error")
    finally:
        if not started:
            task_status.started()
