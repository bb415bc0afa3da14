"""The contract every backend keeps: units of work in transactions, retries, schema versions, one error edge.

A store (usage limits, replay, request state, ...) owns its tables and its queries; a backend owns
the connections. A store hands `Backend.run` an async function of a `Tx` and gets its result back:
committed if the function returns, rolled back if it raises. Queries are written once with `?`
placeholders; where the two engines' SQL differs, the store asks `tx.dialect`.

`tx.lock(key)` serialises the units that name the same key until they commit: SQLite's write
transaction (`BEGIN IMMEDIATE`) already serialises every writer, so it is free there; PostgreSQL
takes a transaction-scoped advisory lock. A check-then-insert (a usage limit's count) takes it first.

Errors: a driver's exceptions never leave a backend. Transient ones (SQLite busy, PostgreSQL
serialization failures and deadlocks) rerun the whole unit under `RetryPolicy`; anything else, and a
transient error that outlasts the retries, is `StoreUnavailable` (a `StateError`), one line, naming
the store with no password in it. Callers deny on it: fail closed.
"""

from __future__ import annotations

import abc
import random
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio

from guard_mcp._errors import StateError

__all__ = ["Backend", "Dialect", "Migration", "Result", "RetryPolicy", "StoreUnavailable", "Tx", "Work", "unavailable"]

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]


class StoreUnavailable(StateError):
    """The guard's store could not be reached or could not complete a unit of work; nothing of it was kept."""


@dataclass(frozen=True)
class Result:
    rows: list[tuple[Any, ...]]
    rowcount: int

    def one(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class Tx(Protocol):
    """One transaction of one unit of work."""

    dialect: Dialect

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def lock(self, key: str) -> None:
        """Hold `key` until this transaction ends: units naming the same key run one after another."""
        ...


Work = Callable[[Tx], Coroutine[Any, Any, T]]


@dataclass(frozen=True)
class Migration:
    """One step of a store's schema: `version` n is applied once, in order, in one transaction.

    The SQL is `;`-separated statements per dialect (most are the same text: pass one string); a `;`
    inside a dollar-quoted body (`$f$ … $f$`, a PostgreSQL function) does not end its statement.
    """

    version: int
    sqlite: str
    postgresql: str | None = None

    def statements(self, dialect: Dialect) -> list[str]:
        text = self.sqlite if dialect == "sqlite" or self.postgresql is None else self.postgresql
        statements, start, quote = [], 0, None
        for mark in _STATEMENT_MARKS.finditer(text):
            if quote is not None:
                quote = None if mark.group() == quote else quote
            elif mark.group() == ";":
                statements.append(text[start : mark.start()])
                start = mark.end()
            else:
                quote = mark.group()
        statements.append(text[start:])
        return [s.strip() for s in statements if s.strip()]


_STATEMENT_MARKS = re.compile(r"\$[A-Za-z_]*\$|;")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a unit that met a transient conflict is run again, and how long to back off between."""

    attempts: int = 6
    first_delay: float = 0.002
    max_delay: float = 0.2

    def delay(self, attempt: int) -> float:
        # Full jitter: two instances that collided once must not collide again in lockstep.
        return random.uniform(0, min(self.max_delay, self.first_delay * 2**attempt))  # noqa: S311


def unavailable(label: str, where: str, detail: str, hint: str) -> StoreUnavailable:
    """The one place a driver error becomes the guard's: one line, no password (`where` is already shown)."""
    return StoreUnavailable(f"{label} store `{where}` failed: {' '.join(detail.split())}; {hint}")


class Backend(abc.ABC):
    dialect: Dialect
    label: str  # what the store is, for messages: `usage limits`
    where: str  # the database as an operator would find it: a path, or a URL without its password

    def __init__(self, *, label: str, where: str, retry: RetryPolicy | None = None) -> None:
        self.label = label
        self.where = where
        self.retry = retry or RetryPolicy()

    async def run(self, work: Work[T], *, write: bool = True) -> T:
        """Run `work` in one transaction, again from the start after a transient conflict."""
        attempt = 0
        while True:
            try:
                return await self._attempt(work, write=write)
            except StoreUnavailable:
                raise
            except Exception as exc:
                if not self._is_driver_error(exc):
                    raise
                if self._is_transient(exc) and attempt + 1 < self.retry.attempts:
                    await anyio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        return unavailable(self.label, self.where, self._describe(exc), self._hint)

    async def migrate(self, store: str, migrations: Sequence[Migration]) -> int:
        """Bring `store`'s tables to the newest of `migrations`; answers the version now in force.

        Concurrent guards starting on one database serialise here, and only one applies each step."""
        newest = max((m.version for m in migrations), default=0)

        async def step(tx: Tx) -> int:
            await tx.lock(f"guard_schema:{store}")
            for sql in _SCHEMA_TABLE:
                await tx.execute(sql)
            current = int(
                (await tx.execute("SELECT version FROM guard_schema WHERE store = ?", (store,))).scalar() or 0
            )
            if current > newest:
                raise StoreUnavailable(
                    f"{self.label} store `{self.where}` is at schema version {current}, newer than this guard-mcp "
                    f"knows ({newest}); upgrade guard-mcp on this instance"
                )
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version > current:
                    for sql in migration.statements(self.dialect):
                        await tx.execute(sql)
            if newest > current:
                await tx.execute(
                    "INSERT INTO guard_schema (store, version) VALUES (?, ?) ON CONFLICT (store) "
                    "DO UPDATE SET version = excluded.version",
                    (store, newest),
                )
            return max(current, newest)

        return await self.run(step)

    async def versions(self) -> dict[str, int]:
        """Every store's schema version in this database (`store check`)."""

        async def read(tx: Tx) -> dict[str, int]:
            for sql in _SCHEMA_TABLE:
                await tx.execute(sql)
            rows = (await tx.execute("SELECT store, version FROM guard_schema ORDER BY store")).rows
            return {str(name): int(version) for name, version in rows}

        return await self.run(read)

    @abc.abstractmethod
    async def _attempt(self, work: Work[T], *, write: bool) -> T: ...

    @abc.abstractmethod
    def _is_driver_error(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def _is_transient(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def _describe(self, exc: BaseException) -> str: ...

    _hint: str = "check the store is reachable"

    @abc.abstractmethod
    async def close(self) -> None: ...


_SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS guard_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)",)
