"""AuditLog: appends are chained, durable when they return, grouped, shielded, and checkpointed."""

from __future__ import annotations

import os
import stat
from typing import Any

import anyio
import pytest
from _audit_helpers import call_story, connect, db, filled_log, head_file, key_store, open_log

from guard_mcp._audit import AuditLog, EventIn, load_audit_key, verify_log
from guard_mcp._audit import _writer as writer_module
from guard_mcp._clock import FakeClock
from guard_mcp._errors import AuditError
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


async def test_append_returns_consecutive_seqs_and_is_committed_when_it_returns(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock)
    try:
        first = await log.append(EventIn("guard.start", data={"version": "0.1.0"}))
        many = await log.append_many(call_story("r1"))
        # A second, independent connection sees the rows: they were committed, not buffered.
        with db(state) as other:
            rows = other.execute("SELECT seq, type, request_id, ts FROM audit_events ORDER BY seq").fetchall()
    finally:
        await log.close()
    assert [first, *many] == [1, 2, 3, 4]
    assert [r[1] for r in rows] == ["guard.start", "call.received", "call.decided", "permit.issued"]
    assert rows[1][2] == "r1"
    assert rows[0][3] == int(clock.now() * 1000)


async def test_append_many_is_all_or_nothing(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    try:
        bad = [*call_story("r1"), EventIn("call.result", "r1", data={"ratio": float("nan")})]
        with pytest.raises(AuditError, match=r"call\.result"):
            await log.append_many(bad)
        assert await log.append(EventIn("guard.stop")) == 1
    finally:
        await log.close()


async def test_the_deployment_key_is_created_private_on_first_open(state: StateDir, clock: FakeClock) -> None:
    assert load_audit_key(state) is None
    log = await open_log(state, clock)
    await log.close()
    key = load_audit_key(state)
    assert key is not None and len(key) == 32
    assert stat.S_IMODE(os.stat(state.keys / "audit.key").st_mode) == 0o600
    # A second open keeps it: the MACs written before must still verify.
    log = await open_log(state, clock)
    await log.close()
    assert load_audit_key(state) == key


async def test_concurrent_callers_share_transactions(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    commit = writer_module.Writer._commit

    def counting(self: writer_module.Writer, batch: list[writer_module.Request], *, wait: bool) -> bool:
        done = commit(self, batch, wait=wait)
        if done:  # an inline attempt that found the lock taken commits nothing
            batches.append(len(batch))
        return done

    monkeypatch.setattr(writer_module.Writer, "_commit", counting)
    log = await open_log(state, clock)
    blocker = connect(state)
    blocker.execute("BEGIN IMMEDIATE")  # another module holding the write lock for a moment
    seqs: list[int] = []

    async def caller(i: int) -> None:
        seqs.extend(await log.append_many(call_story(f"r{i}")))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(caller, i)
            await anyio.wait_all_tasks_blocked()
            blocker.rollback()
    finally:
        blocker.close()
        await log.close()
    assert sorted(seqs) == list(range(1, 97))
    # The first transaction waited on the lock while the other callers queued behind it: 32 callers,
    # at most two transactions (the last batch is the closing checkpoint).
    *calls, closing = batches
    assert sum(calls) == 32 and len(calls) <= 2 and closing == 1


async def test_an_append_is_shielded_from_cancellation(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    blocker = connect(state)
    blocker.execute("BEGIN IMMEDIATE")
    seen_when_cancelled: list[int] = []

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await log.append(EventIn("call.decided", "r1", data={"effect": "allow"}))
                await anyio.sleep_forever()
            finally:
                with db(state) as other:
                    seen_when_cancelled.append(other.execute("SELECT count(*) FROM audit_events").fetchone()[0])

    scope = anyio.CancelScope()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, scope)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # the caller is cancelled while its event waits for the lock
            await anyio.wait_all_tasks_blocked()
            blocker.rollback()
    finally:
        blocker.close()
        await log.close()
    assert seen_when_cancelled == [1]


async def test_checkpoints_are_written_every_n_events_and_at_close(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock, calls=5, checkpoint_every=6)
    with db(state) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_checkpoints ORDER BY seq")]
        kids = {r[0] for r in conn.execute("SELECT kid FROM audit_checkpoints")}
    # append_many(3) then append(1) per call; a checkpoint once 6 events accumulated, and one at close.
    expected, last = [], 0
    for head in [h for i in range(5) for h in (4 * i + 3, 4 * i + 4)]:
        if head - last >= 6:
            expected.append(head)
            last = head
    assert seqs == [*expected, 20]
    assert kids == {keys.current().kid}
    assert (state.root / "audit.head.json").exists()


async def test_append_after_close_fails(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        await log.append(EventIn("guard.stop"))


async def test_a_crash_leaves_an_unsealed_tail_that_the_next_start_verifies_and_seals(
    state: StateDir, clock: FakeClock
) -> None:
    keys = key_store(state, clock)
    log = await open_log(state, clock, keys, checkpoint_every=1000)
    await log.append_many(call_story("r1"))
    await anyio.to_thread.run_sync(log._writer.close)  # the process died: no final checkpoint
    before = verify_log(state.database, hmac_key=load_audit_key(state), public_keys=keys.public_keys())
    assert before.ok and before.unsealed == 3 and before.head_checkpoint is None
    log = await open_log(state, clock, keys)
    await log.close()
    assert log.startup_verification.ok and log.startup_verification.head_checkpoint == 3


async def test_checkpoints_by_a_rotated_key_still_verify(state: StateDir, clock: FakeClock) -> None:
    keys = key_store(state, clock)
    log = await open_log(state, clock, keys)
    await log.append_many(call_story("r1"))
    await log.checkpoint()
    old, _ = keys.current().kid, None
    keys.rotate(max_permit_ttl=0)
    clock.advance(3600)  # the old key is no longer published for permits
    await log.append_many(call_story("r2"))
    await log.close()
    assert old not in keys.public_keys()
    report = verify_log(
        state.database, hmac_key=load_audit_key(state), public_keys=keys.public_keys(), head_file=head_file(state)
    )
    assert report.ok, report.message
    assert report.checkpoints == 2


async def test_a_closed_log_reopens_and_continues_the_chain(state: StateDir, clock: FakeClock) -> None:
    keys = await filled_log(state, clock, calls=2)
    log = await open_log(state, clock, keys)
    seq = await log.append(EventIn("guard.start"))
    await log.close()
    assert seq == 9
    report = verify_log(state.database, hmac_key=load_audit_key(state), public_keys=keys.public_keys())
    assert report.ok and report.last_seq == 9


async def test_async_context_manager_closes(state: StateDir, clock: FakeClock) -> None:
    keys = key_store(state, clock)
    log: AuditLog
    async with await open_log(state, clock, keys) as log:
        await log.append(EventIn("guard.start"))
    with pytest.raises(AuditError):
        await log.append(EventIn("guard.stop"))


async def test_a_damaged_head_fails_the_append_instead_of_hanging(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    await log.append(EventIn("guard.start"))
    with db(state) as conn:
        conn.execute("UPDATE audit_events SET hash = 'not hex' WHERE seq = 1")
    with anyio.fail_after(10), pytest.raises(AuditError, match="verify"):
        await log.append(EventIn("call.received", "r1"))
    # The writer survived: the next append gets the same answer instead of hanging, and close
    # ends (the log was reported broken when the head was found damaged; nothing more is signed).
    with anyio.fail_after(10), pytest.raises(AuditError):
        await log.append(EventIn("call.received", "r2"))
    with anyio.fail_after(10):
        await log.close()
    report = verify_log(state.database, hmac_key=load_audit_key(state), public_keys={})
    assert (report.ok, report.bad_seq) == (False, 1)


def _types(state: StateDir) -> list[str]:
    with db(state) as other:
        return [r[0] for r in other.execute("SELECT type FROM audit_events ORDER BY seq")]


async def test_an_idle_writer_commits_on_the_callers_thread(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_INLINE_GAP", 0.0)  # one caller, back to back: still "idle"
    handed_off: list[int] = []
    submit = writer_module.Writer.submit

    def spying(self: writer_module.Writer, request: writer_module.Request) -> None:
        handed_off.append(len(request.rows))
        submit(self, request)

    monkeypatch.setattr(writer_module.Writer, "submit", spying)
    log = await open_log(state, clock)
    try:
        for i in range(5):
            await log.append_many(call_story(f"r{i}"))
        types = _types(state)
    finally:
        await log.close()
    assert len(types) == 15
    assert handed_off == [0]  # only the closing checkpoint went through the thread


async def test_an_inline_attempt_never_waits_for_another_processes_lock(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_INLINE_GAP", 0.0)
    log = await open_log(state, clock)
    blocker = connect(state)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        request = writer_module.Request([log._row(EventIn("guard.start"), 0)])
        assert log._writer.commit_inline(request) is False  # gives way at once, nothing written
        assert request.seqs == [] and request.error is None
        blocker.rollback()
        assert log._writer.commit_inline(request) is True and request.seqs == [1]
    finally:
        blocker.close()
        await log.close()


async def test_a_deferred_event_rides_in_front_of_the_next_append(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    try:
        log.append_deferred(EventIn("call.result", "r0", data={"is_error": False}))
        assert _types(state) == []  # not on its own commit
        seqs = await log.append_many(call_story("r1"))
        types = _types(state)
    finally:
        await log.close()
    assert seqs == [2, 3, 4]  # the caller gets its own seqs, after the carried event's
    assert types == ["call.result", "call.received", "call.decided", "permit.issued"]


def _timed_flushes(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """Set once a firing of the deferred-row timer leaves nothing deferred."""
    flushed = anyio.Event()
    flush = log._flush_deferred

    def flushing() -> None:
        flush()
        if not log._deferred:
            flushed.set()

    monkeypatch.setattr(log, "_flush_deferred", flushing)
    return flushed


async def test_a_deferred_event_with_nothing_after_it_is_committed_by_itself(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await open_log(state, clock)
    flushed = _timed_flushes(log, monkeypatch)
    try:
        log.append_deferred(EventIn("call.result", "r0"))
        with anyio.fail_after(5):
            await flushed.wait()  # the timer fired, with no other append to carry the event
        assert _types(state) == ["call.result"]
    finally:
        await log.close()


async def test_a_row_deferred_after_an_earlier_one_was_carried_waits_its_own_delay(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timer armed for r0 is not cancelled when r0 is carried off. When it fires early for r1
    # (deferred later), r1 is neither committed at once nor forgotten: the timer is armed again.
    log = await open_log(state, clock)
    flushed = _timed_flushes(log, monkeypatch)
    try:
        log.append_deferred(EventIn("call.result", "r0"))
        await log.append(EventIn("call.received", "r1"))  # carries r0
        log.append_deferred(EventIn("call.result", "r1"))
        stale = log._flush_timer
        assert stale is not None
        stale.cancel()
        log._flush_deferred()  # r0's timer, firing now: r1 is younger than DEFER_SECONDS
        assert _types(state) == ["call.result", "call.received"]
        assert log._flush_timer is not None and log._flush_timer is not stale
        with anyio.fail_after(5):
            await flushed.wait()
        types = _types(state)
    finally:
        await log.close()
    assert types == ["call.result", "call.received", "call.result"]


async def test_close_commits_deferred_events(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock)
    log.append_deferred(EventIn("call.result", "r0"))
    await log.close()
    assert _types(state) == ["call.result"]
    assert verify_log(
        state.database,
        hmac_key=load_audit_key(state) or b"",
        public_keys=key_store(state, clock).public_keys(include_retired=True),
    ).ok


async def test_a_deferred_event_is_not_lost_when_the_append_carrying_it_fails(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock)
    log._writer._lock_timeout = 0.05  # the thread gives up on the lock quickly
    blocker = connect(state)
    try:
        log.append_deferred(EventIn("call.result", "r0"))
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(AuditError, match="locked"):
            await log.append(EventIn("call.received", "r1"))
        blocker.rollback()
        await log.append(EventIn("call.received", "r2"))
        types = _types(state)
    finally:
        blocker.close()
        await log.close()
    assert types == ["call.result", "call.received"]


async def test_an_unexpected_error_in_the_writer_thread_fails_the_append_instead_of_hanging(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await open_log(state, clock)
    monkeypatch.setattr(writer_module.Writer, "commit_inline", lambda self, request: False)
    checkpoint = writer_module.Writer._maybe_checkpoint
    broken = [True]

    def once(self: writer_module.Writer, *args: Any) -> object:
        if broken.pop() if broken else False:  # inside the transaction, on the thread
            raise RuntimeError("disk on fire")
        return checkpoint(self, *args)

    monkeypatch.setattr(writer_module.Writer, "_maybe_checkpoint", once)
    try:
        with anyio.fail_after(5), pytest.raises(AuditError, match="disk on fire"):
            await log.append(EventIn("call.received", "r1"))
        assert await log.append(EventIn("call.received", "r2")) == 1  # the thread lives on
    finally:
        await log.close()


async def test_wal_checkpoints_run_on_the_writer_thread(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_WAL_EVERY", 3)
    on_thread: list[str] = []
    checkpoint = writer_module.Writer._wal_checkpoint

    def spying(self: writer_module.Writer) -> None:
        import threading

        on_thread.append(threading.current_thread().name)
        checkpoint(self)

    monkeypatch.setattr(writer_module.Writer, "_wal_checkpoint", spying)
    log = await open_log(state, clock)
    try:
        for i in range(7):
            await log.append(EventIn("call.received", f"r{i}"))
    finally:
        await log.close()
    assert on_thread and set(on_thread) == {"guard-mcp-audit-writer"}
    assert len(_types(state)) == 7


async def test_callers_that_arrive_together_share_a_transaction_instead_of_committing_one_by_one(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_INLINE_GAP", 3600.0)  # "just committed" for the whole test
    batches: list[int] = []
    commit = writer_module.Writer._commit

    def counting(self: writer_module.Writer, batch: list[writer_module.Request], *, wait: bool) -> bool:
        done = commit(self, batch, wait=wait)
        if done and batch[0].rows:
            batches.append(len(batch))
        return done

    monkeypatch.setattr(writer_module.Writer, "_commit", counting)
    log = await open_log(state, clock)
    try:
        await log.append(EventIn("guard.start"))  # the first commit: nothing before it, so inline

        async def caller(i: int) -> None:
            await log.append_many(call_story(f"r{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(caller, i)
    finally:
        await log.close()
    first, *rest = batches
    assert first == 1 and sum(rest) == 32
    assert len(rest) <= 3  # group commit: 32 callers, a handful of transactions, not 32


async def test_begin_many_of_a_lone_caller_is_committed_before_it_returns_with_the_deferred_in_front(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock)
    try:
        await anyio.sleep(0.01)  # the open's own commit is well past: the writer is idle
        log.append_deferred(EventIn("call.result", "r0", data={"is_error": False}))
        pending = log.begin_many(call_story("r1"))
        with db(state) as other:  # on record already: no hand-off to the writer thread, no loop wake-up
            types = [r[0] for r in other.execute("SELECT type FROM audit_events ORDER BY seq")]
        seqs = await pending
    finally:
        await log.close()
    assert seqs == [2, 3, 4]
    assert types[:4] == ["call.result", "call.received", "call.decided", "permit.issued"]


async def test_begin_many_told_of_other_calls_in_flight_leaves_the_commit_to_the_writer_thread(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await open_log(state, clock)
    inline: list[object] = []

    def commit_inline(request: object) -> bool:
        inline.append(request)
        return True

    monkeypatch.setattr(log._writer, "commit_inline", commit_inline)
    try:
        await anyio.sleep(0.01)  # the writer is idle: only `inline=False` keeps the commit off this thread
        seqs = await log.begin_many(call_story("r1"), inline=False)
        with db(state) as other:
            types = [r[0] for r in other.execute("SELECT type FROM audit_events ORDER BY seq")]
    finally:
        await log.close()
    assert not inline and seqs == [1, 2, 3]  # group commit with whatever queues behind it, the loop free
    assert types[:3] == ["call.received", "call.decided", "permit.issued"]


async def test_begin_many_under_load_commits_on_the_writer_while_the_caller_goes_on_and_carries_the_deferred(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock)
    try:
        log.append_deferred(EventIn("call.result", "r0", data={"is_error": False}))
        await log.append(EventIn("guard.start"))  # a commit that just ended: what concurrent callers look like
        pending = log.begin_many(call_story("r1"))
        meanwhile = sum(range(1000))  # the caller's own work, before it needs the events on record
        seqs = await pending
        with db(state) as other:  # committed when the await returns, the deferred row in front
            types = [r[0] for r in other.execute("SELECT type FROM audit_events ORDER BY seq")]
    finally:
        await log.close()
    assert meanwhile == 499500 and seqs == [3, 4, 5]
    assert types[:5] == ["call.result", "guard.start", "call.received", "call.decided", "permit.issued"]


async def test_begin_many_of_events_the_log_cannot_store_writes_none_and_keeps_the_deferred_for_the_next(
    state: StateDir, clock: FakeClock
) -> None:
    log = await open_log(state, clock)
    try:
        log.append_deferred(EventIn("call.result", "r0"))
        with pytest.raises(AuditError, match=r"call\.decided"):
            _ = log.begin_many(
                [*call_story("r1")[:1], EventIn("call.decided", "r1", data={"x": float("nan")})]
            )  # raises at the call
        await log.append(EventIn("guard.stop"))
        with db(state) as other:
            types = [r[0] for r in other.execute("SELECT type FROM audit_events ORDER BY seq")]
    finally:
        await log.close()
    assert types[:2] == ["call.result", "guard.stop"]
