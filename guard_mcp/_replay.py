"""Single use of a permit: stores that consume each `jti` once, atomically, until it has expired.

A permit is only worth replaying while it is valid, so a store forgets a `jti` after the `exp`
it was consumed with (the verifier passes the permit's own `exp` plus a margin); memory stays
bounded by the number of permits of the last hours.

`MemoryReplayStore` is one process's, `SqliteReplayStore` one machine's (every worker opening the
file), `PostgresReplayStore` a fleet's: upstreams on several hosts verifying against one PostgreSQL
database accept each permit exactly once between them. The verifier is synchronous, so these are
too; psycopg is imported only when a PostgreSQL store is opened.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from guard_mcp._clock import Clock, SystemClock

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["MemoryReplayStore", "PostgresReplayStore", "ReplayStore", "SqliteReplayStore"]

_PURGE_EVERY = 60.0  # seconds between sweeps of expired entries
# One statement decides, on both engines: a new jti is inserted, an expired one is reclaimed in place,
# a live one is left alone (rowcount 0). Concurrent claims of one jti serialise on its key.
_CLAIM = (
    "INSERT INTO permit_jti (jti, exp) VALUES ({p}, {p}) "
    "ON CONFLICT (jti) DO UPDATE SET exp = excluded.exp WHERE permit_jti.exp <= {p}"
)


@runtime_checkable
class ReplayStore(Protocol):
    def consume(self, jti: str, exp: float) -> bool:
        """Record `jti` as used until `exp`; True only for the first caller while it is recorded.

        Must be atomic: of any number of concurrent calls with one `jti`, exactly one gets True.
        """
        ...


class MemoryReplayStore:
    """A replay store for one process (tests, a single-worker upstream). Thread-safe."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def consume(self, jti: str, exp: float) -> bool:
        now = self._clock.now()
        with self._lock:
            if now >= self._next_purge:
                self._used = {k: v for k, v in self._used.items() if v > now}
                self._next_purge = now + _PURGE_EVERY
            seen = self._used.get(jti)
            if seen is not None and seen > now:
                return False
            self._used[jti] = exp
            return True

    def __len__(self) -> int:
        return len(self._used)


class SqliteReplayStore:
    """A replay store in a SQLite file, shared by every worker and process that opens it.

    One `INSERT … ON CONFLICT DO UPDATE … WHERE expired` decides: SQLite serialises writers, so
    the row is claimed exactly once even across processes, and an expired row is reclaimed in the
    same statement.

    `durable=True` (the default) syncs every claim to disk, so not even a power cut forgets a used
    permit. `durable=False` survives a crash of the process but not of the machine, and costs a
    fraction of the time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        timeout: float = 10.0,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS permit_jti (jti TEXT PRIMARY KEY, exp REAL NOT NULL) WITHOUT ROWID"
            )

    def consume(self, jti: str, exp: float) -> bool:
        now = self._clock.now()
        with self._lock:
            cur = self._db.execute(_CLAIM.format(p="?"), (jti, float(exp), now))
            claimed = cur.rowcount == 1
            if now >= self._next_purge:
                self._next_purge = now + _PURGE_EVERY
                # The claim above is committed: a sweep that fails (another writer holds the lock) must
                # not turn this first use into a refusal. The next sweep catches up.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("DELETE FROM permit_jti WHERE exp <= ?", (now,))
            return claimed

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PostgresReplayStore:
    """A replay store in a PostgreSQL database, shared by every verifier on every host that opens it.

    `url` is a `postgresql://user:password@host:5432/db` URL (its password never appears in an error).
    The claim is the same single statement as SQLite's: PostgreSQL makes a second `INSERT` of a key
    wait for the first to commit and then take the `ON CONFLICT` path, so of any number of concurrent
    claims of one `jti` exactly one inserts. Each claim is committed before `consume` returns
    (`synchronous_commit` as the server has it; `durable=False` turns it off for these connections:
    a crash of the server may then forget the last claims).

    Needs the `postgres` extra (`pip install 'guard-mcp[postgres]'`).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        durable: bool = True,
        max_connections: int = 8,
        timeout: float = 10.0,
    ) -> None:
        from guard_mcp._store._url import scrub, shown  # here: `import guard_mcp.verify` stays light

        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise RuntimeError(
                f"PostgresReplayStore `{shown(url)}` needs psycopg: pip install 'guard-mcp[postgres]'"
            ) from None
        self.where = shown(url)
        self._clock = clock or SystemClock()
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()
        self._error: type[Exception] = psycopg.Error

        def configure(conn: psycopg.Connection[Any]) -> None:
            if not durable:
                conn.execute("SET synchronous_commit TO off")

        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            timeout=timeout,
            open=False,
            configure=configure,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            name="permit replay",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            with self._pool.connection() as conn, conn.transaction():
                # Concurrent first starts of several verifiers: one creates the table, the others wait.
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('guard_schema:permit_replay', 0))")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS guard_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS permit_jti (jti TEXT PRIMARY KEY, exp DOUBLE PRECISION NOT NULL)"
                )
                conn.execute("CREATE INDEX IF NOT EXISTS permit_jti_by_exp ON permit_jti (exp)")
                conn.execute("INSERT INTO guard_schema VALUES ('permit_replay', 1) ON CONFLICT (store) DO NOTHING")
        except Exception as exc:
            self._pool.close()
            raise RuntimeError(
                f"permit replay store `{self.where}` could not be opened: {scrub(str(exc), url)}; check the "
                "PostgreSQL server is up and the URL is right"
            ) from None

    def consume(self, jti: str, exp: float) -> bool:
        now = self._clock.now()
        with self._pool.connection() as conn:
            claimed: bool = conn.execute(_CLAIM.format(p="%s"), (jti, float(exp), now)).rowcount == 1
        with self._purge_lock:
            sweep = now >= self._next_purge
            if sweep:
                self._next_purge = now + _PURGE_EVERY
        if sweep:
            # The claim above is committed: a failed sweep must not turn this first use into a refusal.
            with contextlib.suppress(self._error), self._pool.connection() as conn:
                conn.execute("DELETE FROM permit_jti WHERE exp <= %s", (now,))
        return claimed

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
