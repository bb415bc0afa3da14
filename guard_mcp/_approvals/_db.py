"""The approvals' tables in the guard's database and the one way to run work against them.

A store holds one sqlite3 connection, used from worker threads one unit of work at a time (an anyio
lock). Writes run inside `BEGIN IMMEDIATE`, so two processes sharing the database file serialise on
SQLite's write lock: a compare-and-set (`UPDATE ... WHERE state = 'pending'`) in one process cannot
interleave with another's. `synchronous=FULL` because a lost `consumed` flag after a power cut would
let one approval run twice. Other stores in the same database (usage limits, guard_mcp/_limits.py)
open it with a schema of their own.

With `guard.store` a PostgreSQL URL (`Database.open_shared`) the same units run on the shared
server instead (`guard_mcp/_store/pgsync.py`: a connection that reads like sqlite3's). The
compare-and-sets hold across instances as single statements at READ COMMITTED (a second updater
waits for the first's commit, re-checks its `WHERE` and updates nothing); a read-then-update takes
`lock(conn, key)` first. A trigger sends `NOTIFY approvals, '<id>'` when an approval's state changes,
committed with the change: the hint that wakes a call waiting on another instance (`_wait`).
The audit log stays in the state directory's SQLite file, read through `read_local`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import anyio
import anyio.to_thread

from guard_mcp._errors import StateError
from guard_mcp._store import Migration

if TYPE_CHECKING:
    from guard_mcp._store.pgsync import Listener, SyncConn, SyncPostgres

__all__ = ["NOTIFY_CHANNEL", "Database"]

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


# The same tables on PostgreSQL, at their newest shape (no database there predates them). Timestamps
# are DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes); `approval_grant_uses.rowid` stands in for
# SQLite's implicit rowid, so the one query orders both.
NOTIFY_CHANNEL = "approvals"
_PG_SCHEMA = (
    _SCHEMA.replace(" REAL", " DOUBLE PRECISION")
    .replace("secret     BLOB", "secret     BYTEA")
    .replace(
        "CREATE TABLE IF NOT EXISTS approval_grant_uses (",
        "CREATE TABLE IF NOT EXISTS approval_grant_uses (\n    rowid        BIGSERIAL,",
    )
    + ";".join(_ADDED_INDEXES)
    + f""";
CREATE OR REPLACE FUNCTION guard_approvals_notify() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.id);
    RETURN NULL;
END
$f$;
DROP TRIGGER IF EXISTS approvals_notify ON approvals;
CREATE TRIGGER approvals_notify AFTER UPDATE OF state ON approvals FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION guard_approvals_notify()
"""
)
PG_MIGRATIONS = (Migration(1, _SCHEMA, _PG_SCHEMA),)


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
    def __init__(
        self, path: Path, conn: sqlite3.Connection | None, label: str = "approvals", shared: SyncPostgres | None = None
    ) -> None:
        self.path = path
        self.label = label
        self._conn: sqlite3.Connection | None = conn
        self._lock = anyio.Lock()
        self._shared = shared
        self._local: Database | None = None  # on PostgreSQL: the state directory's file, for the audit
        self._listener: Listener | None = None  # on PostgreSQL: LISTEN approvals, started by the first nap

    @classmethod
    async def open_shared(cls, url: str, *, local: Path, label: str = "approvals") -> Database:
        """The approvals' tables on the PostgreSQL server at `url`, shared by every guard instance on it.

        `local` is the state directory's SQLite file, where `read_local` finds the audit log."""
        from guard_mcp._store import open_backend
        from guard_mcp._store.pgsync import SyncPostgres

        # the layer migrates the tables (once per start; the units then run on a sync pool of their own)
        await (
            await open_backend(url, sqlite_path=local, store="approvals", label=label, migrations=PG_MIGRATIONS)
        ).close()
        shared = await SyncPostgres.open(url, label=label)
        return cls(local, None, label, shared)

    @property
    def shared(self) -> SyncPostgres | None:
        """The PostgreSQL server the tables are on, or None for the state directory's file."""
        return self._shared

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
        if self._shared is not None:
            return await self._shared.run(_as_sqlite(work), write=False)
        async with self._lock:
            conn = self._connection()
            try:
                return await anyio.to_thread.run_sync(work, conn)
            except sqlite3.Error as exc:
                raise _db_error(self.path, exc, self.label) from None

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one IMMEDIATE transaction: committed if it returns, rolled back if it raises."""
        if self._shared is not None:
            return await self._shared.run(_as_sqlite(work))

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

    def wake_mark(self) -> int:
        """Taken before a waiter reads the row: a decision notified after it cuts the next `nap` short."""
        return 0 if self._listener is None else self._listener.mark()

    async def nap(
        self, approval_id: str, delay: float, sleep: Callable[[float], Awaitable[None]], since: int = 0
    ) -> bool:
        """Wait `delay` before the next look at `approval_id`; on PostgreSQL, less when it is decided meanwhile
        (True: cut short)."""
        if self._shared is None:
            await sleep(delay)
            return False
        if self._listener is None:  # its first connection wakes every waiter once: nothing before it is missed
            from guard_mcp._store.pgsync import Listener

            self._listener = Listener(self._shared.url, NOTIFY_CHANNEL)
        return await self._listener.nap(approval_id, delay, sleep, since)

    @property
    def listener(self) -> Listener | None:
        return self._listener

    async def read_local(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`read`, always on the state directory's SQLite file (the audit log is there on either backend)."""
        if self._shared is None:
            return await self.read(work)
        async with self._lock:
            if self._local is None:
                self._local = await Database.open(self.path, schema="", upgrade=None, label=self.label)
            local = self._local
        return await local.read(work)

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._shared is not None:
            shared, self._shared = self._shared, None
            await shared.close()
            self._conn = None
        if self._local is not None:
            await self._local.close()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)


def _as_sqlite(work: Callable[[sqlite3.Connection], T]) -> Callable[[SyncConn], T]:
    """The stores' units are typed for sqlite3; a `SyncConn` answers the part of it they use."""
    return cast("Callable[[SyncConn], T]", work)
