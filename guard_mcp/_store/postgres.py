"""The shared backend: a PostgreSQL server several guard instances use at once (psycopg 3, async, pooled).

Each unit of work borrows a pooled connection and runs in one transaction at READ COMMITTED.
Atomicity across instances comes from the statements themselves (`INSERT … ON CONFLICT`,
`UPDATE … WHERE state = 'pending'`) or, for a check-then-insert, from `tx.lock(key)`: a
transaction-scoped advisory lock, released by the commit. Serialization failures, deadlocks and
lock timeouts rerun the unit (`RetryPolicy`). A server that went away (a restart) is met at a unit's
`BEGIN`, before anything of it ran: the pool is replaced by a fresh one (whose first connection is
made at once, where the old pool's reconnecting would back off for seconds) and the unit runs again
on it once, waiting `RETRY_WAIT`. While the server is down a unit fails within `WAIT + RETRY_WAIT`
seconds (its call denies); a unit under way when it went fails too; once it is back, the next units
connect, so traffic resumes without restarting the guard.

`durable=False` sets `synchronous_commit = off` on the store's connections: a crash of the server
may lose the last commits (never corrupt them). Only stores whose rows a later durable commit
covers should ask for it.

psycopg is imported here only: without the `postgres` extra the embedded backend still works.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from guard_mcp._store._base import Backend, Dialect, Result, RetryPolicy, Work, unavailable
from guard_mcp._store._url import scrub, shown

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ["RETRY_WAIT", "STALE_RETRIES", "WAIT", "PostgresBackend", "server_gone", "to_pg"]

T = TypeVar("T")
_HINT = "check the PostgreSQL server named by `guard.store` is up and reachable"
_PLACEHOLDER = re.compile(r"%|\?")
_cache: dict[str, str] = {}
STALE_RETRIES = 1  # reruns of a unit that met a server gone away before it began
WAIT = 5.0  # seconds a unit waits for a pooled connection (all busy, or none while the server is away)
RETRY_WAIT = 1.0  # and the rerun on a fresh pool


def to_pg(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled). The stores' SQL has no `?` in literals."""
    out = _cache.get(sql)
    if out is None:
        out = _cache[sql] = _PLACEHOLDER.sub(lambda m: "%%" if m.group() == "%" else "%s", sql)
    return out


class _PgTx:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = await self._conn.execute(to_pg(sql), params)
        rows = [tuple(r) for r in await cur.fetchall()] if cur.description is not None else []
        return Result(rows, cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(to_pg(sql), rows)

    async def lock(self, key: str) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


class PostgresBackend(Backend):
    dialect: Dialect = "postgresql"
    _hint = _HINT

    def __init__(
        self, url: str, make_pool: Callable[[], AsyncConnectionPool[Any]], *, label: str, retry: RetryPolicy | None
    ) -> None:
        super().__init__(label=label, where=shown(url), retry=retry)
        self._url = url
        self._make_pool = make_pool
        self._pool = make_pool()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        label: str,
        durable: bool = True,
        retry: RetryPolicy | None = None,
        min_size: int = 1,
        max_size: int = 8,
        wait: float = WAIT,
    ) -> PostgresBackend:
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError:
            raise unavailable(
                label,
                shown(url),
                "psycopg is not installed",
                "install guard-mcp with the `postgres` extra: pip install 'guard-mcp[postgres]'",
            ) from None

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            if not durable:
                await conn.execute("SET synchronous_commit TO off")

        def make_pool() -> AsyncConnectionPool[Any]:
            return AsyncConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=wait,
                open=False,
                configure=configure,
                kwargs={"autocommit": True, "connect_timeout": max(1, int(wait))},
                name=label,
            )

        backend = cls(url, make_pool, label=label, retry=retry)
        try:
            await backend._pool.open(wait=True, timeout=wait)
        except Exception as exc:
            await backend._pool.close()
            if backend._is_driver_error(exc):
                raise backend.unavailable(exc) from None
            raise
        return backend

    async def _attempt(self, work: Work[T], *, write: bool) -> T:
        from psycopg import OperationalError
        from psycopg_pool import PoolClosed, PoolTimeout

        stale = 0
        while True:
            pool, began = self._pool, False
            try:
                async with pool.connection(timeout=RETRY_WAIT if stale else None) as conn, conn.transaction():
                    began = True
                    if not write:
                        await conn.execute("SET TRANSACTION READ ONLY")
                    return await work(_PgTx(conn))
            except (OperationalError, PoolTimeout, PoolClosed) as exc:
                # The server went away (a restart): connections it closed while they sat in the pool fail at
                # BEGIN, before anything of the unit ran, and the pool's own reconnecting backs off for
                # seconds. A fresh pool connects at once when the server is back; the unit runs again on it,
                # once, waiting briefly. A unit the failure met under way is not rerun: its call denies.
                if began or (self._pool is pool and not server_gone(pool, exc)):
                    raise  # under way, a busy pool, or this store closed (a pool another unit replaced: rerun)
                if self._pool is pool:
                    self._pool = self._make_pool()
                    await self._pool.open(wait=False)
                    await pool.close(timeout=0)
                if stale >= STALE_RETRIES:
                    raise
                stale += 1

    def _is_driver_error(self, exc: BaseException) -> bool:
        import psycopg
        import psycopg_pool

        return isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed)

    def _is_transient(self, exc: BaseException) -> bool:
        from psycopg import errors

        return isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected | errors.LockNotAvailable)

    def _describe(self, exc: BaseException) -> str:
        return scrub(str(exc), self._url) or type(exc).__name__

    async def close(self) -> None:
        await self._pool.close()


def server_gone(pool: Any, exc: BaseException) -> bool:
    """Whether a unit that failed before it began met a server that went away (not a busy pool)."""
    from psycopg import OperationalError
    from psycopg_pool import PoolClosed, PoolTimeout

    if isinstance(exc, PoolClosed):  # closed by its store (both are OperationalErrors)
        return False
    if isinstance(exc, PoolTimeout):  # a busy pool times out too: then it has its connections
        return int(pool.get_stats().get("pool_size", 0)) == 0
    return isinstance(exc, OperationalError)
