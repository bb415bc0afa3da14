"""The guard's storage layer: one way to reach the database, for every store that keeps state in it.

A store keeps its own tables and queries and reaches them only through a `Backend`: `run` a unit of
work in a transaction (retried on transient conflicts), `migrate` its schema to a version, and get
`StoreUnavailable` (a `StateError`) instead of any driver's exception. `open_backend` picks the
backend from `guard.store`: unset, the SQLite file in the state directory; a `postgresql://` URL, a
PostgreSQL server several guard instances share. docs/storage.md says which stores are on it.
"""

from __future__ import annotations

from pathlib import Path

from guard_mcp._store._base import Backend, Migration, Result, RetryPolicy, StoreUnavailable, Tx
from guard_mcp._store._copy import copy_tables
from guard_mcp._store._url import is_postgres, shown

__all__ = [
    "Backend",
    "Migration",
    "Result",
    "RetryPolicy",
    "StoreUnavailable",
    "Tx",
    "copy_tables",
    "is_postgres",
    "open_backend",
    "shown",
]


async def open_backend(
    url: str | None,
    *,
    sqlite_path: Path,
    store: str,
    label: str,
    migrations: tuple[Migration, ...],
    durable: bool = True,
    retry: RetryPolicy | None = None,
) -> Backend:
    """Connect to `url` (or the SQLite file at `sqlite_path` when it is None) and migrate `store`'s tables."""
    backend: Backend
    if url is None:
        from guard_mcp._store.sqlite import SqliteBackend

        backend = await SqliteBackend.open(sqlite_path, label=label, durable=durable, retry=retry)
    elif is_postgres(url):
        from guard_mcp._store.postgres import PostgresBackend

        backend = await PostgresBackend.open(url, label=label, durable=durable, retry=retry)
    else:  # the config refuses these; a caller passing one is a bug
        raise StoreUnavailable(
            f"{label} store `{shown(url)}` is not a postgresql:// URL; leave `guard.store` unset "
            "for the state directory's SQLite database"
        )
    try:
        await backend.migrate(store, migrations)
    except BaseException:
        await backend.close()
        raise
    return backend
