"""The shared backend: a PostgreSQL server several guard instances use at once (psycopg 3, async, pooled).

Each unit of work borrows a pooled connection and runs in one transaction at READ COMMITTED.
Atomicity across instances comes from the statements themselves (`INSERT … ON CONFLICT`,
`UPDATE … WHERE state = 'pending'`) or, for a check-then-insert, from `tx.lock(key)`: a
transaction-scoped advisory lock, released by the commit. Serialization failures, deadlocks and
lock timeouts rerun the unit (`RetryPolicy`). A broken connection (the server restarted) fails its
unit, which then denies, and is dropped by the pool; later units get fresh connections, so traffic
resumes without restarting the guard.

`durable=False` sets `synchronous_commit = off` on the store's connections: a crash of the server
may lose the last commits (never corrupt them). Only stores whose rows a later durable commit
covers should ask for it.

psycopg is imported here only: without the `postgres` extra the embedded backend still works.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from guard_mcp._store._base import Backend, Dialect, Result, RetryPolicy, Work, unavailable
from guard_mcp._store._url import scrub, shown

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresBackend", "to_pg"]

T = TypeVar("T")
_HINT = "check the PostgreSQL server named by `guard.store` is up and reachable"
_PLACEHOLDER = re.compile(r"%|\?")
_cache: dict[str, str] = {}


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

    def __init__(self, url: str, pool: AsyncConnectionPool[Any], *, label: str, retry: RetryPolicy | None) -> None:
        super().__init__(label=label, where=shown(url), retry=retry)
        self._url = url
        self._pool = pool

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
        wait: float = 10.0,
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

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=wait,
            open=False,
            configure=configure,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(wait))},
            name=label,
        )
        backend = cls(url, pool, label=label, retry=retry)
        try:
            await pool.open(wait=True, timeout=wait)
        except Exception as exc:
            await pool.close()
            if backend._is_driver_error(exc):
                raise backend.unavailable(exc) from None
            raise
        return backend

    async def _attempt(self, work: Work[T], *, write: bool) -> T:
        async with self._pool.connection() as conn, conn.transaction():
            if not write:
                await conn.execute("SET TRANSACTION READ ONLY")
            return await work(_PgTx(conn))

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
