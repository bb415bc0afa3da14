"""The approvals' tables in the guard's SQLite database and the one way to run work against them.

A store holds one sqlite3 connection, used from worker threads one unit of work at a time (an anyio
lock). Writes run inside `BEGIN IMMEDIATE`, so two processes sharing the database file serialise on
SQLite's write lock: a compare-and-set (`UPDATE ... WHERE state = 'pending'`) in one process cannot
interleave with another's. `synchronous=FULL` because a lost `consumed` flag after a power cut would
let one approval run twice. Other stores in the same database (usage limits, guard_mcp/_limits.py)
open it with a schema of their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from guard_mcp._errors import StateError

__all__ = ["Database"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL,
    bundle         TEXT NOT NULL,
    payload_hash   TEXT NOT NULL,
    principal      TEXT NOT NULL,
    session        TEXT,
    tool           TEXT NOT NULL,
    action         TEXT NOT NULL,
    rule_id        TEXT,
    policy         TEXT NOT NULL,
    policy_reason  TEXT NOT NULL,
    owner          TEXT NOT NULL,
    escalated_from TEXT,
    step_up        INTEGER NOT NULL,
    created        REAL NOT NULL,
    deadline       REAL NOT NULL,
    state          TEXT NOT NULL,
    approver       TEXT,
    reason         TEXT,
    decided_at     REAL,
    consumed       INTEGER NOT NULL DEFAULT 0,
    consumed_at    REAL,
    escalated      INTEGER NOT NULL DEFAULT 0,
    factor         TEXT,
    decision_mac   TEXT,
    redacted_arguments TEXT,
    authenticated  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, deadline);
CREATE INDEX IF NOT EXISTS approvals_by_payload ON approvals (payload_hash, tool, principal);
CREATE TABLE IF NOT EXISTS approval_approvers (
    name       TEXT PRIMARY KEY,
    groups     TEXT NOT NULL,
    secret     BLOB NOT NULL,
    created    REAL NOT NULL,
    last_step  INTEGER NOT NULL DEFAULT -1,
    failures   INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS approval_grants (
    id          TEXT PRIMARY KEY,
    session     TEXT NOT NULL,
    tool        TEXT,
    owner       TEXT,
    granted_by  TEXT NOT NULL,
    reason      TEXT,
    created     REAL NOT NULL,
    expires     REAL NOT NULL,
    revoked_at  REAL,
    factor      TEXT,
    grant_mac   TEXT
);
CREATE INDEX IF NOT EXISTS approval_grants_by_session ON approval_grants (session);
CREATE TABLE IF NOT EXISTS approval_grant_uses (
    grant_id     TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    tool         TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    at           REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_grant_uses_by_grant ON approval_grant_uses (grant_id);
"""


# Columns added after a table was first shipped: (table, column, definition).
_ADDED_COLUMNS = (
    ("approval_approvers", "failures", "INTEGER NOT NULL DEFAULT 0"),
    ("approval_approvers", "locked_until", "REAL NOT NULL DEFAULT 0"),
    # A decided row from before these columns has no record: it no longer authorises anything.
    ("approvals", "factor", "TEXT"),
    ("approvals", "decision_mac", "TEXT"),
    ("approvals", "redacted_arguments", "TEXT"),
    ("approvals", "authenticated", "INTEGER NOT NULL DEFAULT 0"),  # `approval: authenticated`
    ("approval_grants", "factor", "TEXT"),
    ("approval_grants", "grant_mac", "TEXT"),
)


# Indexes on added columns, made once the columns exist. Only approvals whose arguments are still to
# be cleared are in this one, so the housekeeping that looks for them stays cheap as the table grows.
_ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS approvals_to_clear ON approvals (deadline) WHERE redacted_arguments IS NOT NULL",
)


def _upgrade(conn: sqlite3.Connection) -> None:
    """Add missing columns to tables made by an older version (inside the schema transaction)."""
    for table, column, definition in _ADDED_COLUMNS:
        existing = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in existing:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    for statement in _ADDED_INDEXES:
        conn.execute(statement)


def _db_error(path: Path, exc: sqlite3.Error, label: str) -> StateError:
    return StateError(
        f"{label} database `{path}` failed: {exc}; check the state directory is writable and not on a "
        "network file system"
    )


class Database:
    def __init__(self, path: Path, conn: sqlite3.Connection, label: str = "approvals") -> None:
        self.path = path
        self.label = label
        self._conn: sqlite3.Connection | None = conn
        self._lock = anyio.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        schema: str = _SCHEMA,
        upgrade: Callable[[sqlite3.Connection], None] | None = _upgrade,
        label: str = "approvals",
        synchronous: str = "FULL",
        secure_delete: bool = False,
    ) -> Database:
        """Connect and create `schema`'s tables (the approvals' by default; other stores pass their own).

        `secure_delete` zeroes what a write frees instead of leaving it in free space in the file
        (the approvals' cleared arguments)."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous `{synchronous}` must be FULL or NORMAL")
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                if secure_delete:
                    conn.execute("PRAGMA secure_delete = ON")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in schema.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    if upgrade is not None:
                        upgrade(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await anyio.to_thread.run_sync(connect)
        except sqlite3.Error as exc:
            raise _db_error(path, exc, label) from None
        return cls(path, conn, label)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"{self.label} database `{self.path}` is closed; open the store again")
        return self._conn

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` outside an explicit transaction (each statement sees the latest commit)."""
        async with self._lock:
            conn = self._connection()
            try:
                return await anyio.to_thread.run_sync(work, conn)
            except sqlite3.Error as exc:
                raise _db_error(self.path, exc, self.label) from None

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one IMMEDIATE transaction: committed if it returns, rolled back if it raises."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            conn = self._connection()
            try:
                # Not abandoned on cancellation: a started decision always finishes or rolls back.
                return await anyio.to_thread.run_sync(transaction, conn)
            except sqlite3.Error as exc:
                raise _db_error(self.path, exc, self.label) from None

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
