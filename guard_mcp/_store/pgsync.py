"""PostgreSQL for stores whose units of work are plain functions of a connection (the approvals').

The approvals, approvers and grants keep their queries as synchronous functions of a DB-API
connection, run one unit at a time in a worker thread (`guard_mcp/_approvals/_db.py`). On
PostgreSQL the same functions get a `SyncConn`: a psycopg 3 connection from a sync pool that
answers the subset of `sqlite3.Connection` the stores use: `execute(sql, params)` with `?` or
`:name` placeholders, a cursor with `fetchone`/`fetchall`/`rowcount`, rows readable by column
name, by index and as `dict(row)` like `sqlite3.Row`. `lock(conn, key)` is the one way such a
function serialises a read-then-update across instances (an advisory lock; nothing on SQLite).

Errors, retries and messages are the layer's (`RetryPolicy`, `unavailable`): a driver error never
leaves `SyncPostgres.run`. Schemas are migrated by the layer's `Backend.migrate` before the pool
opens (`open_backend`), as every other store's.

`Listener` is the wake-up hint across instances: one dedicated connection per instance that
`LISTEN`s on a channel in a thread of its own (a notifies loop blocks its connection, so it is never
a pooled one). A waiter naps until its delay passes or a notification names its key; polling the
row stays the truth, so a notification lost (the connection dropped, the server restarted) only
delays a wake-up. When the connection comes back every waiter is woken once to poll.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from guard_mcp._store._base import RetryPolicy, unavailable
from guard_mcp._store._url import scrub, shown
from guard_mcp._store.postgres import RETRY_WAIT, STALE_RETRIES, WAIT, server_gone, to_pg

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["Listener", "Row", "SyncConn", "SyncPostgres", "lock"]

T = TypeVar("T")
_HINT = "check the PostgreSQL server named by `guard.store` is up and reachable"
_NAMED = re.compile(r"%|(?<![:\w]):([A-Za-z_]\w*)")
_named_cache: dict[str, str] = {}


def _named_to_pg(sql: str) -> str:
    """`:name` placeholders as psycopg's `%(name)s` (a literal `%` doubled)."""
    out = _named_cache.get(sql)
    if out is None:
        out = _named_cache[sql] = _NAMED.sub(lambda m: "%%" if m.group() == "%" else f"%({m.group(1)})s", sql)
    return out


class Row(Sequence[Any]):
    """A result row as `sqlite3.Row` reads: `row["col"]`, `row[0]`, `row.keys()`, `dict(row)`."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: tuple[Any, ...]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


class _Cursor:
    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return self._rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


class SyncConn:
    """The part of `sqlite3.Connection` the approvals' units use, on one PostgreSQL transaction."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> _Cursor:
        query = _named_to_pg(sql) if isinstance(params, Mapping) else to_pg(sql)
        cur = self._conn.execute(query, params)
        if cur.description is None:
            return _Cursor([], cur.rowcount)
        index = {column.name: i for i, column in enumerate(cur.description)}
        return _Cursor([Row(index, tuple(values)) for values in cur.fetchall()], cur.rowcount)

    def lock(self, key: str) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def lock(conn: sqlite3.Connection | SyncConn, key: str) -> None:
    """Hold `key` until the unit commits: free on SQLite (`BEGIN IMMEDIATE` holds the write lock)."""
    if isinstance(conn, SyncConn):
        conn.lock(key)


class SyncPostgres:
    """A sync psycopg pool; `run(work)` runs `work(SyncConn)` in one transaction in a worker thread."""

    def __init__(
        self, url: str, make_pool: Callable[[], ConnectionPool[Any]], *, label: str, retry: RetryPolicy | None
    ) -> None:
        self.label = label
        self.where = shown(url)
        self.url = url
        self._url = url
        self._make_pool = make_pool
        self._pool = make_pool()
        self._swap = threading.Lock()
        self.retry = retry or RetryPolicy()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        label: str,
        retry: RetryPolicy | None = None,
        max_size: int = 8,
        wait: float = WAIT,
    ) -> SyncPostgres:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise unavailable(
                label,
                shown(url),
                "psycopg is not installed",
                "install guard-mcp with the `postgres` extra: pip install 'guard-mcp[postgres]'",
            ) from None

        def make_pool() -> ConnectionPool[Any]:
            return ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=wait,
                open=False,
                kwargs={"autocommit": True, "connect_timeout": max(1, int(wait))},
                name=label,
            )

        self = cls(url, make_pool, label=label, retry=retry)

        try:
            await anyio.to_thread.run_sync(self._guarded, lambda: self._pool.open(wait=True, timeout=wait))
        except BaseException:
            self._pool.close()
            raise
        return self

    async def run(self, work: Callable[[SyncConn], T], *, write: bool = True) -> T:
        """`work` in one transaction (read-only unless `write`), rerun after a transient conflict."""
        # Not abandoned on cancellation: a started decision always commits or rolls back.
        return await anyio.to_thread.run_sync(self._guarded, lambda: self._run_now(work, write=write))

    def _run_now(self, work: Callable[[SyncConn], T], *, write: bool) -> T:
        from psycopg import errors
        from psycopg_pool import PoolClosed, PoolTimeout

        attempt = stale = 0
        while True:
            pool, began = self._pool, False
            try:
                with pool.connection(timeout=RETRY_WAIT if stale else None) as conn, conn.transaction():
                    began = True
                    if not write:
                        conn.execute("SET TRANSACTION READ ONLY")
                    return work(SyncConn(conn))
            except (errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable):
                if attempt + 1 >= self.retry.attempts:
                    raise
                time.sleep(self.retry.delay(attempt))
                attempt += 1
            except (errors.OperationalError, PoolTimeout, PoolClosed) as exc:
                # as the async backend (postgres.py): a server gone away is met at BEGIN, before anything ran;
                # a fresh pool connects at once when it is back, and the unit runs again on it once
                if began or (self._pool is pool and not server_gone(pool, exc)):
                    raise  # under way, a busy pool, or this store closed (a pool another unit replaced: rerun)
                with self._swap:
                    if self._pool is pool:
                        self._pool = self._make_pool()
                        self._pool.open(wait=False)
                        threading.Thread(target=pool.close, name=f"{self.label} old pool", daemon=True).start()
                if stale >= STALE_RETRIES:
                    raise
                stale += 1

    def _guarded(self, call: Callable[[], T]) -> T:
        import psycopg
        import psycopg_pool

        try:
            return call()
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            detail = scrub(str(exc), self._url) or type(exc).__name__
            raise unavailable(self.label, self.where, detail, _HINT) from None

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)


class Listener:
    """`LISTEN channel` on a dedicated connection; `nap(key, …)` returns early on `NOTIFY channel, key`.

    A waiter takes `mark()` before it reads the row and passes it to `nap`: a notification that came
    while it was reading (after the mark) ends the nap at once, so no wake-up falls between two naps."""

    RECONNECT = 1.0  # seconds between attempts to get the listening connection back
    REMEMBERED = 4096  # keys whose newest notification is kept for waiters that were reading meanwhile

    def __init__(self, url: str, channel: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", channel):
            raise ValueError(f"channel `{channel}` must be a lower-case SQL identifier")
        self._url = url
        self._channel = channel
        self._waiters: dict[str, set[tuple[anyio.Event, anyio.lowlevel.EventLoopToken]]] = {}
        self._mutex = threading.Lock()
        self._seq = 0  # one per notification or reconnection
        self._notes: OrderedDict[str, int] = OrderedDict()  # key -> seq of its newest notification
        self._reconnected = 0  # seq of the newest (re)connection: anything before may have been missed
        self._stop = threading.Event()
        self._conn: Any = None
        self.connected = threading.Event()
        self.heard = 0  # notifications received (the tests read it)
        self._thread = threading.Thread(target=self._listen, name=f"guard LISTEN {channel}", daemon=True)
        self._thread.start()

    def mark(self) -> int:
        with self._mutex:
            return self._seq

    async def nap(self, key: str, delay: float, sleep: Callable[[float], Awaitable[None]], since: int) -> bool:
        """`sleep(delay)`, cut short (True) by a notification naming `key` after `since` (or a reconnection)."""
        event = anyio.Event()
        entry = (event, anyio.lowlevel.current_token())
        with self._mutex:
            if self._notes.get(key, 0) > since or self._reconnected > since:
                return True
            self._waiters.setdefault(key, set()).add(entry)
        try:
            async with anyio.create_task_group() as tg:

                async def doze() -> None:
                    await sleep(delay)
                    tg.cancel_scope.cancel()

                tg.start_soon(doze)
                await event.wait()
                tg.cancel_scope.cancel()
            return event.is_set()
        finally:
            with self._mutex:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[key]

    def _wake(self, key: str | None) -> None:
        with self._mutex:
            self._seq += 1
            if key is None:
                self._reconnected = self._seq
                entries = [e for waiting in self._waiters.values() for e in waiting]
            else:
                self._notes[key] = self._seq
                self._notes.move_to_end(key)
                if len(self._notes) > self.REMEMBERED:
                    self._notes.popitem(last=False)
                entries = list(self._waiters.get(key, ()))
        for event, token in entries:
            with contextlib.suppress(RuntimeError):  # that waiter's event loop has ended
                anyio.from_thread.run_sync(event.set, token=token)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {self._channel}")
                    self.connected.set()
                    self._wake(None)  # anything sent while not listening: every waiter polls once now
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.heard += 1
                            self._wake(note.payload)
            except (psycopg.Error, OSError):  # the server went away: get the connection back, then wake all
                pass
            finally:
                self._conn = None
                self.connected.clear()
            self._stop.wait(self.RECONNECT)

    def backend_pid(self) -> int | None:
        """The server process of the listening connection (tests cut it to lose notifications)."""
        conn = self._conn
        return None if conn is None else int(conn.info.backend_pid)

    async def close(self) -> None:
        self._stop.set()
        await anyio.to_thread.run_sync(self._thread.join, 5.0)
