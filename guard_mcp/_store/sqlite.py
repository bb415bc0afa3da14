"""The embedded backend: the guard's SQLite file, one connection per store, used from worker threads.

A unit of work runs in one worker thread, start to commit: the store's work is an async function,
but every `await` on a SQLite `Tx` completes at once, so the coroutine is stepped to its end inside
the thread (one thread hop per unit, as the stores had before this layer). A unit that awaits
anything else is a bug and is refused.

Writes run in `BEGIN IMMEDIATE`: two processes on one file serialise on SQLite's write lock, which
is what makes every compare-and-set and check-then-insert atomic. `durable=True` is
`synchronous=FULL` (a power cut loses no commit); `False` is `NORMAL` (a crash of the process loses
nothing, one of the machine may lose the last commits), for stores whose rows are made durable by a
later fsynced commit to the same WAL. Busy waits are `BUSY_TIMEOUT`, everywhere the same.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from guard_mcp._store._base import Backend, Dialect, Result, RetryPolicy, Work, unavailable

__all__ = ["BUSY_TIMEOUT", "SqliteBackend"]

T = TypeVar("T")
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's write lock before the unit is retried


class _SqliteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = self._conn.execute(sql, params)
        rows = [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
        return Result(rows, cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def lock(self, key: str) -> None:
        return None  # BEGIN IMMEDIATE already holds the database's one write lock


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all complete at once, here, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a SQLite unit of work awaited something other than its transaction")


class SqliteBackend(Backend):
    dialect: Dialect = "sqlite"
    _hint = "check the state directory is writable and not on a network file system"

    def __init__(self, path: Path, conn: sqlite3.Connection, *, label: str, retry: RetryPolicy | None) -> None:
        super().__init__(label=label, where=str(path), retry=retry)
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = anyio.Lock()

    @classmethod
    async def open(
        cls, path: Path, *, label: str, durable: bool = True, retry: RetryPolicy | None = None
    ) -> SqliteBackend:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await anyio.to_thread.run_sync(connect)
        except sqlite3.Error as exc:
            raise unavailable(label, str(path), str(exc), cls._hint) from None
        return cls(path, conn, label=label, retry=retry)

    async def _attempt(self, work: Work[T], *, write: bool) -> T:
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = _drive(work(_SqliteTx(conn)))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            if self._conn is None:
                raise self.unavailable(RuntimeError("it is closed; open the store again"))
            # Not abandoned on cancellation: a started unit always commits or rolls back.
            return await anyio.to_thread.run_sync(transaction, self._conn)

    def _is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error)

    def _is_transient(self, exc: BaseException) -> bool:
        # Busy past the timeout (another process held the write lock that long): the unit did nothing.
        return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        )

    def _describe(self, exc: BaseException) -> str:
        return " ".join(str(exc).split()) or type(exc).__name__

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
