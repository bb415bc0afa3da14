"""The writer: one stdlib sqlite3 connection, batched transactions (group commit).

Two ways in. When nothing is queued, nothing is committing and the last commit ended more than
`_INLINE_GAP` ago, `commit_inline` commits on the caller's thread at once, trying the database's
write lock exactly once: a lone call pays one fsync and no thread hand-off. Otherwise (another
commit running or just finished, which is what concurrent callers look like; rows queued; the
write lock held by another process; a WAL checkpoint due) the request goes to the writer thread, which takes
everything queued since its last commit, chains and MACs it, and commits it in one transaction,
so concurrent callers share one fsync instead of paying one each. While a commit is in its fsync
(the GIL is released) the next batch gathers. Waiters are woken with one `call_soon_threadsafe`
per loop per batch. Every commit re-reads the head inside its transaction, so a second process
appending to the same file cannot fork the chain, and compares it with the head this writer left
(`_head.py`): a head that went back or was rewritten stops the writer for good (`broken`), after
it records `audit.broken` chained to the head it knows and signs that.

Checkpoints are signed every `checkpoint_every` events, once the oldest unsealed event is
`checkpoint_interval` old (by the injected clock, checked at each commit), and when asked. A writer
that must not seal others' events (`seal_others=False`, an operator command) signs only when
everything after the newest checkpoint is its own.

The connection has no busy timeout of its own (an inline attempt must never block the event loop
on another process's lock); the thread waits for the lock itself, up to `lock_timeout`. WAL
checkpoints run on the thread only, every `_WAL_EVERY` commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guard_mcp._audit._chain import GENESIS, EventEncoder, EventMac, chain_hash
from guard_mcp._audit._checkpoint import Checkpoint, public_jwk, sign_checkpoint, signer_mac
from guard_mcp._audit._head import HEAD_MISMATCH, Divergence, Head, follow
from guard_mcp._canonical import canonical_json
from guard_mcp._clock import Clock
from guard_mcp._errors import AuditError, AuditIntegrityError, GuardError
from guard_mcp._keys import SigningKey
from guard_mcp._state import write_private

__all__ = ["Request", "Row", "Writer"]

log = logging.getLogger("guard_mcp.audit")

# A commit this soon after the previous one is treated as concurrent load and goes to the thread,
# where it shares a transaction (and an fsync) with whatever queues behind it.
_INLINE_GAP = 0.0005
_WAL_EVERY = 100  # commits between WAL checkpoints: a small WAL is rewritten in place (cheaper fsyncs)
_HEAD = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_INSERT = "INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?,?)"


class _Busy(Exception):
    """The database's write lock is held by another connection; an inline attempt gives way."""


@dataclass(frozen=True, slots=True)
class Row:
    ts: int
    type: str
    request_id: str | None
    actor: str | None
    upstream: str | None
    tool: str | None
    data_json: str


@dataclass(eq=False, slots=True)
class Request:
    """Rows that must land in one transaction, and how to wake whoever waits for them."""

    rows: Sequence[Row]
    checkpoint: bool = False
    seqs: list[int] = field(default_factory=list)
    error: GuardError | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    event: threading.Event | None = None


def _wake(requests: list[Request]) -> None:
    for r in requests:
        if r.future is not None and not r.future.done():
            r.future.set_result(None)


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        hmac_key: bytes,
        signer: Callable[[], SigningKey],
        clock: Clock,
        checkpoint_every: int,
        head_file: Path,
        where: Path,
        lock_timeout: float = 5.0,
        checkpoint_interval: float | None = None,
        seal_others: bool = True,
    ) -> None:
        self._conn = conn
        self._key = hmac_key
        self.on_commit: Callable[[float], None] | None = None  # seconds each durable transaction took (metrics)
        self._signer = signer
        self._clock = clock
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._seal_others = seal_others
        # The newest event this writer committed or verified; None: take the database's at the first commit.
        self._head: Head | None = None
        self._own_from: int | None = None  # first seq of this writer's own events since the newest checkpoint
        self._unsealed_since: float | None = None  # clock time an event after the newest checkpoint was first seen
        self._head_file = head_file
        self._where = where
        self._enc = EventEncoder()
        self._mac = EventMac(hmac_key)
        # SimpleQueue: put and get are C calls that release the GIL while waiting (a Condition costs
        # more per handoff). The lock only orders `submit` against `close`.
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Held for the whole of every commit, by the thread or by an inline caller.
        self._busy = threading.Lock()
        self._lock_timeout = lock_timeout
        self._since_wal = 0
        self._last_end = 0.0  # monotonic time the last commit ended
        self._closing = False
        self._recorded_signers: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="guard-mcp-audit-writer", daemon=True)
        # Set when a periodic checkpoint could not be signed; events are still committed.
        self.checkpoint_error: GuardError | None = None
        # Set when the database's head stopped being the one this writer left: every append fails with it.
        self.broken: AuditError | None = None

    @property
    def unsealed_since(self) -> float | None:
        """When (clock time) events after the newest checkpoint were first seen; None when all are signed."""
        return self._unsealed_since

    def start(self) -> None:
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise AuditError(
                f"cannot configure the audit log `{self._where}`: {exc}; check the state directory"
            ) from None
        self._thread.start()

    def commit_inline(self, request: Request) -> bool:
        """Commit `request` on this thread if the writer is idle; False means: submit it instead.

        Never waits: not for the thread, not for another process's write lock. True means the
        request is settled (committed, or failed with `request.error` set).
        """
        if not self._busy.acquire(blocking=False):
            return False
        try:
            if (
                self._closing
                or not self._queue.empty()
                or self._since_wal >= _WAL_EVERY
                or time.monotonic() - self._last_end < _INLINE_GAP
            ):
                return False
            return self._commit([request], wait=False)
        finally:
            self._busy.release()

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._closing:
                raise AuditError("the audit log is closed; no event can be written after `close()`")
            self._queue.put(request)

    def close(self) -> None:
        """Drain what is queued, stop the thread, close the connection (blocking)."""
        with self._lock:
            if not self._closing:
                self._closing = True
                self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        self._conn.close()

    def commit_now(self, request: Request) -> None:
        """Commit on the calling thread; only before `start()` (sealing at open)."""
        assert not self._thread.is_alive()
        self._commit([request], wait=True)
        if request.error is not None:
            raise request.error

    def expect_head(self, seq: int, hash_hex: str) -> None:
        """The head a verification just walked to: the first commit must find it, or events that follow
        it. Only before `start()`."""
        self._head = (seq, hash_hex)

    def mark_verified(self, seq: int, hash_hex: str, mac: str) -> None:
        """Record where the next start's incremental verification begins; only before `start()`."""
        try:
            self._conn.execute("INSERT OR REPLACE INTO audit_verified VALUES (1, ?, ?, ?)", (seq, hash_hex, mac))
        except sqlite3.Error as exc:
            raise AuditError(
                f"cannot write to the audit log `{self._where}`: {exc}; check the state directory"
            ) from None

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            batch: list[Request] = []
            stop = False
            # Everything queued while the previous commit was in its fsync goes into this one.
            while True:
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._busy:
                    self._commit(batch, wait=True)  # settles every request, whatever goes wrong
                    if self._since_wal >= _WAL_EVERY:
                        self._wal_checkpoint()
                self._settle(batch)
            if stop:
                return

    def _wal_checkpoint(self) -> None:
        self._since_wal = 0
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the log is intact either way; the WAL just grows until the next try
            log.warning("audit WAL checkpoint failed: %s", exc)

    def _begin(self, wait: bool) -> None:
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.0005
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) != sqlite3.SQLITE_BUSY:
                    raise
                if not wait:
                    raise _Busy from None
                if time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _settle(self, batch: list[Request]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Request]] = {}
        for r in batch:
            if r.loop is not None:
                by_loop.setdefault(r.loop, []).append(r)
            elif r.event is not None:
                r.event.set()
            elif r.error is not None:  # nobody waits for a deferred write: its failure must still be seen
                log.error("%s", r.error)
        for loop, requests in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting any more
                loop.call_soon_threadsafe(_wake, requests)

    def _commit(self, batch: list[Request], *, wait: bool) -> bool:
        """Commit `batch` in one transaction; False only when `wait` is off and the lock is taken."""
        try:
            return self._commit_once(batch, wait=wait)
        finally:
            self._last_end = time.monotonic()

    def _commit_once(self, batch: list[Request], *, wait: bool) -> bool:
        if self.broken is not None:  # refused without touching the database
            for r in batch:
                r.error, r.seqs = self.broken, []
            return True
        conn = self._conn
        cp: Checkpoint | None = None
        started = time.perf_counter()
        try:
            try:
                self._begin(wait)
            except _Busy:
                return False
            try:
                row = conn.execute(_HEAD).fetchone()
                found: Head = (row[0], row[1]) if row is not None else (0, GENESIS)
                if found != self._head:  # the only cost of the check on the common path
                    moved = (
                        found
                        if self._head is None
                        else follow(conn, self._head, found, self._enc, self._mac, str(self._where))
                    )
                    if isinstance(moved, Divergence):
                        return self._refuse(batch, moved)
                    self._head, self._own_from = moved, None  # another writer's events, checked: go on from them
                seq, prev_hex = self._head
                first = seq + 1
                prev = bytes.fromhex(prev_hex)
                rows = []
                enc, mac_of = self._enc, self._mac
                for r in batch:
                    r.seqs = []
                    for e in r.rows:
                        seq += 1
                        digest = chain_hash(
                            prev, enc.event(seq, e.ts, e.type, e.request_id, e.actor, e.upstream, e.tool, e.data_json)
                        )
                        hash_hex = digest.hex()
                        rows.append(
                            (
                                seq,
                                e.ts,
                                e.type,
                                e.request_id,
                                e.actor,
                                e.upstream,
                                e.tool,
                                e.data_json,
                                prev_hex,
                                hash_hex,
                                mac_of(digest).hex(),
                            )
                        )
                        prev, prev_hex = digest, hash_hex
                        r.seqs.append(seq)
                if rows:
                    conn.executemany(_INSERT, rows)
                own_from = self._own_from if self._own_from is not None or not rows else first
                forced = any(r.checkpoint for r in batch)
                cp = self._maybe_checkpoint(seq, prev_hex, forced, own_from)
                conn.execute("COMMIT")
                self._since_wal += 1
                observe = self.on_commit
                if observe is not None and rows:
                    observe(time.perf_counter() - started)
                self._head, self._own_from = (seq, prev_hex), own_from
                if cp is not None:
                    self._own_from = self._unsealed_since = None
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = AuditError(
                f"cannot write to the audit log `{self._where}`: {exc}; nothing after this event may act: "
                "check disk space and that no other process holds the database locked"
            )
            for r in batch:
                r.error, r.seqs = error, []
            return True
        except GuardError as exc:  # signing a requested checkpoint failed, or an unencodable field
            for r in batch:
                r.error, r.seqs = exc, []
            return True
        except Exception as exc:
            # A damaged head row (say, a hash that is not hex) must fail these appends, not kill the
            # thread: waiters are shielded from cancellation and would wait forever.
            error = AuditError(
                f"cannot append to the audit log `{self._where}`: {exc!r}; run `guard-mcp audit "
                "verify` and restore the database from backup"
            )
            for r in batch:
                r.error, r.seqs = error, []
            return True
        if cp is not None:
            self._write_head_file(cp)
        return True

    def _refuse(self, batch: list[Request], diverged: Divergence) -> bool:
        """Stop for good: record the divergence as best we can, inside the open transaction, and fail `batch`.

        The `audit.broken` event goes right after the head this writer knows (leaving the gap where
        events were deleted for `audit verify` to name), and a checkpoint signs it, in the database
        and in `audit.head.json`: deleting the event as well still leaves a signed head that the
        log no longer reaches.
        """
        self.broken = AuditIntegrityError(
            f"{diverged.message}; the guard records nothing more, so no call runs: "
            "run `guard-mcp audit verify`, then restart the guard",
            seq=diverged.bad_seq,
            problem=HEAD_MISMATCH,
        )
        log.error("%s", self.broken)
        cp: Checkpoint | None = None
        try:
            cp = self._record_break(diverged)
            self._conn.execute("COMMIT")
        except Exception as exc:  # the database refuses even this: the log line above is what remains
            log.error("could not record `audit.broken` in `%s`: %s", self._where, exc)
            cp = None
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        if cp is not None:
            self._write_head_file(cp)
        for r in batch:
            r.error, r.seqs = self.broken, []
        return True

    def _record_break(self, diverged: Divergence) -> Checkpoint | None:
        conn = self._conn
        seq, head_hash = diverged.known
        ts = int(self._clock.now() * 1000)
        if conn.execute("SELECT 1 FROM audit_events WHERE seq = ?", (seq + 1,)).fetchone() is None:
            data_json = canonical_json(diverged.data()).decode()
            digest = chain_hash(
                bytes.fromhex(head_hash),
                self._enc.event(seq + 1, ts, "audit.broken", None, None, None, None, data_json),
            )
            conn.execute(
                _INSERT,
                (
                    seq + 1,
                    ts,
                    "audit.broken",
                    None,
                    None,
                    None,
                    None,
                    data_json,
                    head_hash,
                    digest.hex(),
                    self._mac(digest).hex(),
                ),
            )
            seq, head_hash = seq + 1, digest.hex()
        if seq == 0:
            return None
        signer = self._signer()
        cp = sign_checkpoint(signer, self._key, seq=seq, head_hash=head_hash, ts=ts)
        self._record_signer(signer)
        # REPLACE: a checkpoint another writer put at this seq signed a head that is not this one.
        conn.execute(
            "INSERT OR REPLACE INTO audit_checkpoints VALUES (?,?,?,?,?,?)",
            (cp.seq, cp.hash, cp.ts, cp.kid, cp.jws, cp.mac),
        )
        return cp

    def _maybe_checkpoint(self, seq: int, head_hash: str, forced: bool, own_from: int | None) -> Checkpoint | None:
        if seq == 0:
            return None
        last = self._conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0] or 0
        if seq <= last:
            self._unsealed_since = None
            return None
        now = self._clock.now()
        since = self._unsealed_since
        if since is None:
            since = self._unsealed_since = now
        due = forced or seq - last >= self._every or (self._interval is not None and now - since >= self._interval)
        if not due:
            return None
        if not self._seal_others and (own_from is None or own_from > last + 1):
            return None  # events after the newest checkpoint that another process wrote: it signs them itself
        try:
            signer = self._signer()
            cp = sign_checkpoint(signer, self._key, seq=seq, head_hash=head_hash, ts=int(now * 1000))
        except GuardError as exc:
            self.checkpoint_error = exc
            if forced:
                raise
            return None
        self.checkpoint_error = None
        self._record_signer(signer)
        self._conn.execute(
            "INSERT INTO audit_checkpoints VALUES (?,?,?,?,?,?)", (cp.seq, cp.hash, cp.ts, cp.kid, cp.jws, cp.mac)
        )
        return cp

    def _record_signer(self, signer: SigningKey) -> None:
        if signer.kid not in self._recorded_signers:
            jwk = canonical_json(public_jwk(signer.kid, signer.private_key.public_key())).decode()
            self._conn.execute(
                "INSERT OR IGNORE INTO audit_signers VALUES (?,?,?)",
                (signer.kid, jwk, signer_mac(self._key, signer.kid, jwk)),
            )
            self._recorded_signers.add(signer.kid)

    def _write_head_file(self, cp: Checkpoint) -> None:
        # A second copy of the head outside the database: deleting the newest events *and* their
        # checkpoints from the database still leaves this behind. Best effort: the database is the record.
        with contextlib.suppress(OSError):
            write_private(self._head_file, json.dumps(cp.as_dict(), sort_keys=True).encode())
