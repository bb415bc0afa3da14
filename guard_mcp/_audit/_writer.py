"""The writer thread: one stdlib sqlite3 connection, batched transactions (group commit).

Callers on the event loop hand over prepared rows and wait; the thread takes everything queued
since its last commit, chains and MACs it, and commits it in one transaction, so concurrent
callers share one fsync instead of paying one each. While a commit is in its fsync (the GIL is
released) the next batch gathers. Waiters are woken with one `call_soon_threadsafe` per loop per
batch. The thread re-reads the head inside each transaction, so a second process appending to the
same file cannot fork the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guard_mcp._audit._chain import GENESIS, EventEncoder, EventMac, chain_hash
from guard_mcp._audit._checkpoint import Checkpoint, public_jwk, sign_checkpoint, signer_mac
from guard_mcp._canonical import canonical_json
from guard_mcp._clock import Clock
from guard_mcp._errors import AuditError, GuardError
from guard_mcp._keys import SigningKey
from guard_mcp._state import write_private

__all__ = ["Request", "Row", "Writer"]


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
    ) -> None:
        self._conn = conn
        self._key = hmac_key
        self._signer = signer
        self._clock = clock
        self._every = checkpoint_every
        self._head_file = head_file
        self._where = where
        self._enc = EventEncoder()
        self._mac = EventMac(hmac_key)
        # SimpleQueue: put and get are C calls that release the GIL while waiting (a Condition costs
        # more per handoff). The lock only orders `submit` against `close`.
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = False
        self._recorded_signers: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="guard-mcp-audit-writer", daemon=True)
        # Set when a periodic checkpoint could not be signed; events are still committed.
        self.checkpoint_error: GuardError | None = None

    def start(self) -> None:
        self._thread.start()

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
        self._commit([request])
        if request.error is not None:
            raise request.error

    def mark_verified(self, seq: int, hash_hex: str, mac: str) -> None:
        """Record where the next start's incremental verification begins; only before `start()`."""
        try:
            self._conn.execute("INSERT OR REPLACE INTO audit_verified VALUES (1, ?, ?, ?)", (seq, hash_hex, mac))
        except sqlite3.Error as exc:
            raise AuditError(f"cannot write to the audit log `{self._where}`: {exc}; check the state directory") \
                from None

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
                self._commit(batch)
                self._settle(batch)
            if stop:
                return

    def _settle(self, batch: list[Request]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Request]] = {}
        for r in batch:
            if r.loop is not None:
                by_loop.setdefault(r.loop, []).append(r)
            elif r.event is not None:
                r.event.set()
        for loop, requests in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting any more
                loop.call_soon_threadsafe(_wake, requests)

    def _commit(self, batch: list[Request]) -> None:
        conn = self._conn
        cp: Checkpoint | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                head = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev_hex = head if head is not None else (0, GENESIS)
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
                        rows.append((seq, e.ts, e.type, e.request_id, e.actor, e.upstream, e.tool, e.data_json,
                                     prev_hex, hash_hex, mac_of(digest).hex()))
                        prev, prev_hex = digest, hash_hex
                        r.seqs.append(seq)
                conn.executemany("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                forced = any(r.checkpoint for r in batch)
                cp = self._maybe_checkpoint(seq, prev_hex, forced)
                conn.execute("COMMIT")
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
            return
        except GuardError as exc:  # signing a requested checkpoint failed, or an unencodable field
            for r in batch:
                r.error, r.seqs = exc, []
            return
        except Exception as exc:
            # A damaged head row (say, a hash that is not hex) must fail these appends, not kill the
            # thread: waiters are shielded from cancellation and would wait forever.
            error = AuditError(f"cannot append to the audit log `{self._where}`: {exc!r}; run `guard-mcp audit "
                               "verify` and restore the database from backup")
            for r in batch:
                r.error, r.seqs = error, []
            return
        if cp is not None:
            self._write_head_file(cp)

    def _maybe_checkpoint(self, seq: int, head_hash: str, forced: bool) -> Checkpoint | None:
        if seq == 0:
            return None
        last = self._conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0] or 0
        if seq <= last or (not forced and seq - last < self._every):
            return None
        try:
            signer = self._signer()
            cp = sign_checkpoint(signer, self._key, seq=seq, head_hash=head_hash, ts=int(self._clock.now() * 1000))
        except GuardError as exc:
            self.checkpoint_error = exc
            if forced:
                raise
            return None
        self.checkpoint_error = None
        if signer.kid not in self._recorded_signers:
            jwk = canonical_json(public_jwk(signer.kid, signer.private_key.public_key())).decode()
            self._conn.execute("INSERT OR IGNORE INTO audit_signers VALUES (?,?,?)",
                               (signer.kid, jwk, signer_mac(self._key, signer.kid, jwk)))
            self._recorded_signers.add(signer.kid)
        self._conn.execute("INSERT INTO audit_checkpoints VALUES (?,?,?,?,?,?)",
                           (cp.seq, cp.hash, cp.ts, cp.kid, cp.jws, cp.mac))
        return cp

    def _write_head_file(self, cp: Checkpoint) -> None:
        # A second copy of the head outside the database: deleting the newest events *and* their
        # checkpoints from the database still leaves this behind. Best effort: the database is the record.
        with contextlib.suppress(OSError):
            write_private(self._head_file, json.dumps(cp.as_dict(), sort_keys=True).encode())
