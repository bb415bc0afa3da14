"""`AuditLog`: the async face of the audit log that the pipeline appends to.

An append is durable when it returns (WAL, `synchronous` from the config, FULL by default) and is
shielded from cancellation: once an event was handed to the writer, the caller waits for the
commit even if its own call is being cancelled, so "the decision is durable before the upstream
is called" holds on every path.

The head is signed every `checkpoint_every` events and, while events wait unsigned, within
`checkpoint_interval` seconds: each commit checks the time, and a timer on the loop asks for a seal
when no commit comes. So a running guard leaves at most that many seconds of events that a
database writer could cut off without a signed head saying so (a cut while it runs is refused
anyway at its next commit; see `_head.py`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from guard_mcp._audit._chain import GENESIS
from guard_mcp._audit._checkpoint import verified_mac
from guard_mcp._audit._events import EventIn
from guard_mcp._audit._redact import Redactor
from guard_mcp._audit._store import connect_writer, ensure_audit_key, load_audit_key
from guard_mcp._audit._verify import HEAD_FILE, VerifyReport, verify_log
from guard_mcp._audit._writer import Request, Row, Writer
from guard_mcp._canonical import canonical_json
from guard_mcp._clock import Clock
from guard_mcp._config import AuditConfig
from guard_mcp._errors import AuditError, ConfigError
from guard_mcp._keys import KeyStore
from guard_mcp._state import StateDir

__all__ = ["DEFER_SECONDS", "HEAD_FILE", "AuditLog", "seal_head"]

DEFER_SECONDS = 0.01  # the longest a deferred event waits for another append to carry it

log = logging.getLogger("guard_mcp.audit")


def _read_verified(conn: sqlite3.Connection, key: bytes) -> tuple[int, str] | None:
    row = conn.execute("SELECT seq, hash, mac FROM audit_verified WHERE id = 1").fetchone()
    if row is None or verified_mac(key, row[0], row[1]) != row[2]:
        return None  # never verified, or the marker was forged: verify everything
    return int(row[0]), str(row[1])


class AuditLog:
    """Append-only, hash-chained, MAC'd, checkpointed. Open with `await AuditLog.open(...)`."""

    def __init__(
        self,
        state: StateDir,
        clock: Clock,
        writer: Writer,
        redactor: Redactor,
        startup_verification: VerifyReport,
        checkpoint_interval: float | None = None,
    ) -> None:
        self.state = state
        self._clock = clock
        self._writer = writer
        self._redactor = redactor
        self._closed = False
        self._deferred: list[Row] = []  # rows that ride along with the next commit
        self._flush_timer: asyncio.TimerHandle | None = None  # armed while rows may be deferred
        self._deferred_since = 0.0  # loop time the oldest deferred row was deferred
        self._interval = checkpoint_interval
        self._seal_timer: asyncio.TimerHandle | None = None  # armed while events may wait unsigned
        self.startup_verification = startup_verification

    @property
    def path(self) -> Path:
        return self.state.database

    def observe_commits(self, observe: Callable[[float], None]) -> None:
        """Call `observe(seconds)` after each transaction that appended events (on the committing thread)."""
        self._writer.on_commit = observe

    @classmethod
    async def open(
        cls, state: StateDir, *, clock: Clock, keys: KeyStore, config: AuditConfig, seal_others: bool = True
    ) -> AuditLog:
        """Open (creating tables and the deployment key on first use) and verify incrementally.

        Verification starts at the last checkpoint that verified at a previous start; a broken
        chain does not stop the open: it is in `startup_verification` for the guard to report.
        `seal_others=False` (an operator command) signs no event it did not write: not the unsigned
        head it finds, and at close only when everything after the newest checkpoint is its own.
        """
        return await anyio.to_thread.run_sync(
            functools.partial(cls._open_sync, state, clock, keys, config, seal_others)
        )

    @classmethod
    def _open_sync(
        cls, state: StateDir, clock: Clock, keys: KeyStore, config: AuditConfig, seal_others: bool = True
    ) -> AuditLog:
        state.ensure()
        hmac_key = ensure_audit_key(state)
        keys.current()  # no signing key: fail at start, not at the first checkpoint
        conn = connect_writer(state.database, synchronous=config.synchronous)
        writer = Writer(
            conn,
            hmac_key=hmac_key,
            signer=keys.current,
            clock=clock,
            checkpoint_every=config.checkpoint_every,
            head_file=state.root / HEAD_FILE,
            where=state.database,
            checkpoint_interval=config.checkpoint_interval,
            seal_others=seal_others,
        )
        try:
            start = _read_verified(conn, hmac_key)
            report = verify_log(
                state.database,
                hmac_key=hmac_key,
                public_keys=keys.public_keys(include_retired=True),
                from_seq=start[0] if start else None,
                from_hash=start[1] if start else None,
                head_file=state.root / HEAD_FILE,
            )
            if report.ok:  # from here on, the head must stay where verification left it, or grow from there
                writer.expect_head(report.last_seq or 0, report.last_hash or GENESIS)
            if seal_others and report.ok and report.unsealed:
                # The guard stopped without its final checkpoint: seal what verified.
                writer.commit_now(Request((), checkpoint=True))
                report = verify_log(
                    state.database,
                    hmac_key=hmac_key,
                    public_keys=keys.public_keys(include_retired=True),
                    from_seq=report.first_seq,
                    head_file=state.root / HEAD_FILE,
                )
            if report.ok and report.head_checkpoint is not None and report.head_checkpoint_hash is not None:
                writer.mark_verified(
                    report.head_checkpoint,
                    report.head_checkpoint_hash,
                    verified_mac(hmac_key, report.head_checkpoint, report.head_checkpoint_hash),
                )
        except BaseException:
            writer.close()
            raise
        writer.start()
        return cls(state, clock, writer, Redactor(hmac_key, config.redact), report, config.checkpoint_interval)

    # -- writing ---------------------------------------------------------------------------------

    def _row(self, event: EventIn, ts: int) -> Row:
        try:
            data = event.data if event.redacted else self._redactor.value(event.data)
            data_json = canonical_json(data).decode()
        except ConfigError as exc:
            raise AuditError(f"event `{event.type}` carries data the log cannot store: {exc}") from None
        return Row(ts, event.type, event.request_id, event.actor, event.upstream, event.tool, data_json)

    def _rows(self, events: Sequence[EventIn]) -> tuple[list[Row], int]:
        """The events' rows behind the deferred ones, which ride in front of them; and how many those are."""
        ts = int(self._clock.now() * 1000)
        rows = [self._row(e, ts) for e in events]
        carried = len(self._deferred)
        if carried:
            rows[:0] = self._take_deferred()
        return rows, carried

    def _outcome(self, request: Request, carried: int) -> list[int]:
        """The seqs of a settled request's own events, or its error."""
        if request.error is not None:
            if carried:  # not written: they wait for the next append, in front, as before
                self._deferred[:0] = list(request.rows[:carried])
            raise request.error
        if request.rows:
            self._arm_seal()
        return request.seqs[carried:]

    async def _submit(self, events: Sequence[EventIn], *, checkpoint: bool = False) -> list[int]:
        rows, carried = self._rows(events)
        request = Request(rows, checkpoint)
        # The writer was idle: committed here, one fsync, no hand-off (and no await, so nothing
        # to shield). Otherwise the commit is the thread's, and the wait is shielded.
        if checkpoint or not self._writer.commit_inline(request):
            await self._hand_off(request)
        return self._outcome(request, carried)

    async def _hand_off(self, request: Request) -> None:
        with anyio.CancelScope(shield=True):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                request.loop, request.future = loop, loop.create_future()
                self._writer.submit(request)
                await request.future
            else:  # another anyio backend: wait in a worker thread
                request.event = threading.Event()
                self._writer.submit(request)
                await anyio.to_thread.run_sync(request.event.wait)

    def _take_deferred(self) -> list[Row]:
        # The timer stays armed: under steady traffic it fires once per DEFER_SECONDS, not once a call.
        rows, self._deferred = self._deferred, []
        return rows

    def _flush_deferred(self) -> None:
        """Commit deferred rows that no later append picked up (the loop is idle: inline is cheap)."""
        self._flush_timer = None
        if not self._deferred:
            return
        loop = asyncio.get_running_loop()
        wait = self._deferred_since + DEFER_SECONDS - loop.time()
        if wait > 0:  # deferred after an earlier row was carried off: give it its own time
            self._flush_timer = loop.call_later(wait, self._flush_deferred)
            return
        request = Request(self._take_deferred())
        try:
            if not self._writer.commit_inline(request):
                self._writer.submit(request)  # nobody waits: the writer logs a failure
            elif request.error is not None:
                log.error("%s", request.error)
        except AuditError as exc:
            log.error("%s", exc)

    async def append(self, event: EventIn) -> int:
        """Append one event; durable when this returns. Returns its seq."""
        return (await self._submit((event,)))[0]

    async def append_many(self, events: Sequence[EventIn]) -> list[int]:
        """Append events in one transaction (all or none); durable when this returns."""
        if not events:
            return []
        return await self._submit(events)

    def begin_many(self, events: Sequence[EventIn], *, inline: bool = True) -> Coroutine[Any, Any, list[int]]:
        """Start appending `events` in one transaction; await the result for their seqs, durable then
        (or the error). When the writer is idle and `inline` holds (the caller knows of no other call
        in flight) they are committed here and now, one fsync and no hand-off: a thread hand-off and
        the loop's wake-up cost more than the work the caller could do meanwhile (under the GIL, the writer's own Python waits for the caller's
        anyway). Under concurrent load they go to the writer thread, to share a transaction with
        what queues behind them, and the caller's loop runs on until it awaits. Await it on every
        path: the events are written either way. An event the log cannot store raises AuditError
        here, and nothing is written.
        """
        if not events:
            raise ValueError("begin_many needs at least one event")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend: nothing runs meanwhile, the whole append on await
            return self._submit(events)
        rows, carried = self._rows(events)
        request = Request(rows)
        if not (inline and self._writer.commit_inline(request)):  # committed here: one fsync, no hand-off
            request.loop, request.future = loop, loop.create_future()
            try:
                self._writer.submit(request)
            except BaseException:
                self._deferred[:0] = rows[:carried]
                raise
        return self._settled(request, carried)

    async def _settled(self, request: Request, carried: int) -> list[int]:
        if request.future is not None:
            with anyio.CancelScope(shield=True):  # handed to the writer: wait for it even when cancelled
                await request.future
        return self._outcome(request, carried)

    def append_deferred(self, event: EventIn) -> None:
        """Append one event without waiting for a commit of its own.

        For what follows an action that already happened (a call's result): the response need
        not wait for an fsync. The event rides in the transaction of the next append (the next
        call's decision, usually), in order, or is committed `DEFER_SECONDS` later if no append
        comes first; `close()` commits it too. If its commit fails, the next append fails with it
        (fail closed); a failure of the timed commit is logged.
        """
        row = self._row(event, int(self._clock.now() * 1000))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an asyncio loop: hand it to the writer thread now
            self._writer.submit(Request([row]))
            return
        if not self._deferred:
            self._deferred_since = loop.time()
        self._deferred.append(row)
        if self._flush_timer is None:
            self._flush_timer = loop.call_later(DEFER_SECONDS, self._flush_deferred)
        self._arm_seal()

    def _arm_seal(self) -> None:
        """Make sure a seal is asked for `checkpoint_interval` after events started waiting unsigned
        (under steady traffic: one timer an interval, not one a call)."""
        if self._seal_timer is not None or self._interval is None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an asyncio loop: the commits' own time check still seals
            return
        since = self._writer.unsealed_since
        delay = self._interval if since is None else since + self._interval - self._clock.now()
        self._seal_timer = loop.call_later(max(delay, 0.0), self.seal_if_due)

    def seal_if_due(self) -> None:
        """Sign the head if events have waited unsigned for `checkpoint_interval` (by the injected
        clock); what the timer runs. Never waits: a busy writer takes the request on its thread."""
        self._seal_timer = None
        if self._closed:
            return
        request = Request(())  # commits nothing; the commit's checkpoint rule sees the time
        try:
            if not self._writer.commit_inline(request):
                self._writer.submit(request)  # nobody waits: the writer logs a failure
            elif request.error is not None and request.error is not self._writer.broken:
                log.error("%s", request.error)
        except AuditError as exc:
            log.error("%s", exc)
            return
        if self._writer.unsealed_since is not None and self._writer.broken is None:
            self._arm_seal()

    def redact(self, arguments: Mapping[str, Any], extra_fields: Sequence[str] = ()) -> dict[str, Any]:
        """Arguments as the log may keep them: configured and secret-named fields, and values that
        look like credentials, replaced by a keyed digest."""
        return self._redactor.arguments(arguments, extra_fields)

    async def checkpoint(self) -> None:
        """Sign the current head now (it is signed every `checkpoint_every` events anyway)."""
        await self._submit((), checkpoint=True)

    async def close(self) -> None:
        """Write the final checkpoint and stop the writer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._seal_timer is not None:
            self._seal_timer.cancel()
            self._seal_timer = None
        with anyio.CancelScope(shield=True):
            try:
                if self._writer.broken is None:  # a broken log was reported when it broke; it signs nothing more
                    await self.checkpoint()
            except AuditError as exc:
                if exc is not self._writer.broken:  # found broken by this very checkpoint: logged already
                    raise
            finally:
                await anyio.to_thread.run_sync(self._writer.close)

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def seal_head(state: StateDir, *, clock: Clock, keys: KeyStore) -> None:
    """Sign the head now, as the guard does when it stops, from a process that is not the guard
    (`guard-mcp audit anchor`). Verify first: this signs whatever the head is.

    The commit re-reads the head inside its own transaction, like every writer's, so a guard
    appending to the same database meanwhile is sealed up to wherever it had got, and its next
    commit follows on. Nothing new is appended when the head is already signed.
    """
    hmac_key = load_audit_key(state)
    if hmac_key is None:
        raise AuditError(
            f"no deployment key at `{state.keys}`: the head cannot be sealed; restore `audit.key` from backup"
        )
    conn = connect_writer(state.database, synchronous="full")
    writer = Writer(
        conn,
        hmac_key=hmac_key,
        signer=keys.current,
        clock=clock,
        checkpoint_every=1,
        head_file=state.root / HEAD_FILE,
        where=state.database,
    )
    try:
        writer.commit_now(Request((), checkpoint=True))
    finally:
        writer.close()
