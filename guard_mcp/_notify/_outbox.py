"""The outbox: notifications owed to each target, in `guard.db`, beside the audit log they come from.

    notify_cursor   the seq of the last audit event turned into notifications (one row)
    notify_outbox   one row per (target, notice): id (the webhook-id, the same on every attempt), the
                    message fixed when the row was made, attempts, next_try, delivered_at, dropped_at

The audit log is already durable and totally ordered, so the outbox is derived from it: rows are
inserted in the same transaction that moves the cursor past the events they come from, and that
transaction only commits if the cursor is still where the rows were read from. Several guards
serving one state directory therefore derive each event once, and `UNIQUE (target, key)` keeps a
notice that two events tell (the CLI's `operator.decided` and the waiting call's `approval.decided`)
to one message. A row is claimed before it is sent (`next_try` moves to the end of a lease): a guard
that dies mid-send leaves it to be sent again when the lease ends, so delivery is at least once and
the receiver de-duplicates by the id.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from guard_mcp._approvals._db import Database
from guard_mcp._audit import AuditEvent
from guard_mcp._audit._chain import canonical_event, chain_hash, event_mac
from guard_mcp._audit._store import SCHEMA as AUDIT_SCHEMA

__all__ = ["SCHEMA", "Build", "Outbox", "Pending", "Queued", "Story", "new_message_id"]

log = logging.getLogger("guard_mcp.notify")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id           TEXT PRIMARY KEY,
    target       TEXT NOT NULL,
    key          TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created      REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try     REAL NOT NULL,
    last_error   TEXT,
    delivered_at REAL,
    dropped_at   REAL,
    UNIQUE (target, key)
);
CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox (next_try)
    WHERE delivered_at IS NULL AND dropped_at IS NULL;
"""

_COLUMNS = "seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac"


def new_message_id() -> str:
    """`msg_` + 128 random bits in base32: the webhook-id a receiver de-duplicates by."""
    return "msg_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


@dataclass(frozen=True)
class Queued:
    """A notification to add: for `target`, telling `key` once, with this fixed message."""

    target: str
    key: str
    seq: int
    kind: str
    payload: dict[str, Any]


Story = Callable[[str], list[AuditEvent]]
Build = Callable[[list[AuditEvent], Story], list[Queued]]


@dataclass(frozen=True)
class Pending:
    """A claimed row, to be sent now."""

    id: str
    target: str
    kind: str
    payload: str
    created: float
    attempts: int


def _event(row: Sequence[Any], key: bytes) -> AuditEvent | None:
    """The stored event, or None when it does not carry its own hash and the deployment's MAC: a row
    written into the file by anything but the guard is never announced as the guard's word."""
    seq, ts, type_, request_id, actor, upstream, tool, data, prev_hash, hash_, mac = row
    try:
        digest = chain_hash(
            bytes.fromhex(prev_hash), canonical_event(seq, ts, type_, request_id, actor, upstream, tool, data)
        )
        parsed = json.loads(data)
    except (TypeError, ValueError):
        return None
    if digest.hex() != hash_ or not hmac.compare_digest(event_mac(key, digest).hex(), str(mac)):
        return None
    return AuditEvent(
        seq,
        ts,
        type_,
        request_id,
        actor,
        upstream,
        tool,
        parsed if isinstance(parsed, dict) else {},
        prev_hash,
        hash_,
        mac,
    )


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, db_path: Any) -> Outbox:
        # the audit's tables too (each statement is IF NOT EXISTS): the outbox is read from them
        return cls(await Database.open(db_path, schema=AUDIT_SCHEMA + SCHEMA, upgrade=None, label="notifications"))

    async def close(self) -> None:
        await self._db.close()

    async def rows(self) -> list[dict[str, Any]]:
        """Every outbox row, oldest first (for tests and for an operator's look at what is owed)."""

        def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute("SELECT * FROM notify_outbox ORDER BY seq, target").fetchall()]

        found: list[dict[str, Any]] = await self._db.read(work)
        return found

    # -- deriving -----------------------------------------------------------------------------------

    async def start_cursor(self) -> None:
        """Put the cursor at the head of the log, unless it is somewhere already: turning notifications on
        does not send the history, and from here no event is missed."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO notify_cursor VALUES (1, (SELECT coalesce(max(seq), 0) FROM audit_events))"
            )

        await self._db.write(work)

    async def derive(self, key: bytes, build: Build, *, now: float, limit: int = 500) -> tuple[int, int] | None:
        """Turn the next audit events after the cursor into outbox rows, and move the cursor past them, in
        one transaction: (events read, rows queued), or None when another guard moved the cursor first.

        `build` gets the intact events and a way to read a request's other intact events (to say what an
        approval was about), and runs on the database's thread. `key` is the deployment's audit key.
        Without a cursor yet, it is put at the head (`start_cursor`) and nothing is read.
        """

        def read(conn: sqlite3.Connection) -> tuple[int, int, int, list[Queued]] | None:
            row = conn.execute("SELECT seq FROM notify_cursor WHERE id = 1").fetchone()
            if row is None:
                return None
            cursor = int(row[0])
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (cursor, limit),
            ).fetchall()
            events = [e for e in (_event(r, key) for r in rows) if e is not None]
            if len(events) < len(rows):
                log.warning(
                    "%d audit event(s) after seq %d do not verify and are not notified; run `guard-mcp audit verify`",
                    len(rows) - len(events),
                    cursor,
                )

            def story(request_id: str) -> list[AuditEvent]:
                found = conn.execute(
                    f"SELECT {_COLUMNS} FROM audit_events WHERE request_id = ? ORDER BY seq",  # noqa: S608
                    (request_id,),
                ).fetchall()
                return [e for e in (_event(r, key) for r in found) if e is not None]

            through = int(rows[-1][0]) if rows else cursor
            return cursor, through, len(rows), build(events, story) if events else []

        found = await self._db.read(read)
        if found is None:
            await self.start_cursor()
            return 0, 0
        cursor, through, count, queued = found
        if through == cursor:
            return 0, 0

        def work(conn: sqlite3.Connection) -> bool:
            moved = conn.execute("UPDATE notify_cursor SET seq = ? WHERE id = 1 AND seq = ?", (through, cursor))
            if moved.rowcount != 1:
                return False
            conn.executemany(
                "INSERT OR IGNORE INTO notify_outbox (id, target, key, seq, kind, payload, created, next_try) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        new_message_id(),
                        q.target,
                        q.key,
                        q.seq,
                        q.kind,
                        json.dumps(q.payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
                        now,
                        now,
                    )
                    for q in queued
                ],
            )
            return True

        if not await self._db.write(work):
            return None
        return count, len(queued)

    # -- delivering ---------------------------------------------------------------------------------

    async def claim_due(self, targets: Sequence[str], now: float, lease: float, limit: int) -> list[Pending]:
        """Rows of `targets` whose time has come, each claimed until `now + lease` by this guard alone."""
        if not targets:
            return []
        marks = ", ".join("?" for _ in targets)

        def work(conn: sqlite3.Connection) -> list[Pending]:
            rows = conn.execute(
                "SELECT id, target, kind, payload, created, attempts FROM notify_outbox "  # noqa: S608
                f"WHERE delivered_at IS NULL AND dropped_at IS NULL AND next_try <= ? AND target IN ({marks}) "
                "ORDER BY next_try, seq LIMIT ?",
                (now, *targets, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE notify_outbox SET next_try = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease, r[0]) for r in rows],
            )
            return [Pending(r[0], r[1], r[2], r[3], float(r[4]), int(r[5]) + 1) for r in rows]

        claimed: list[Pending] = await self._db.write(work)
        return claimed

    async def delivered(self, message_id: str, now: float) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE notify_outbox SET delivered_at = ?, last_error = NULL WHERE id = ?", (now, message_id)
            )
        )

    async def failed(self, message_id: str, error: str, next_try: float) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE notify_outbox SET next_try = ?, last_error = ? WHERE id = ?",
                (next_try, error[:300], message_id),
            )
        )

    async def dropped(self, message_id: str, error: str, now: float) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE notify_outbox SET dropped_at = ?, last_error = ? WHERE id = ?", (now, error[:300], message_id)
            )
        )
