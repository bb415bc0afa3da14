"""Copy a state directory's SQLite tables into a new PostgreSQL store (`guard-mcp store copy`).

All the tables go in one transaction on the target: the copy lands whole or not at all. The target
must hold none of their rows yet (a copy never merges two histories). Columns are matched by name,
so a SQLite file from before a column was added copies with the column's default. SQLite's implicit
`rowid`, where the PostgreSQL table keeps it as a column (`approval_grant_uses`), is copied too, and
its sequence moved past the copied rows. Rows are copied as stored: sealed secrets stay sealed and
decision records keep verifying with the same `keys/`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from guard_mcp._errors import StateError
from guard_mcp._store._base import Backend, Tx

__all__ = ["copy_tables"]

_Table = tuple[str, list[str], list[tuple[Any, ...]]]


def _read(source: Path, tables: Sequence[str]) -> list[_Table]:
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out: list[_Table] = []
        for table in tables:
            if table not in present:
                continue
            cur = conn.execute(f"SELECT rowid AS rowid, * FROM {table} ORDER BY rowid")  # noqa: S608 (our names)
            columns = [d[0] for d in cur.description]
            out.append((table, columns, cur.fetchall()))
        return out
    finally:
        conn.close()


async def copy_tables(source: Path, target: Backend, tables: Sequence[str]) -> dict[str, int]:
    """Copy `tables` from the SQLite file `source` into `target` (migrated, empty); answers rows per table."""
    try:
        read = await anyio.to_thread.run_sync(_read, source, tables)
    except sqlite3.Error as exc:
        raise StateError(f"cannot read `{source}`: {exc}; pass the state directory whose guard.db to copy") from None

    async def work(tx: Tx) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, columns, rows in read:
            wanted = {
                str(name)
                for (name,) in (
                    await tx.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                        "AND table_schema = current_schema()",
                        (table,),
                    )
                ).rows
            }
            if not wanted:
                raise StateError(f"the target has no table `{table}`; run `guard-mcp store migrate` first")
            if (await tx.execute(f"SELECT 1 FROM {table} LIMIT 1")).rows:  # noqa: S608
                raise StateError(f"the target already holds rows in `{table}`; copy only into a new database")
            keep = [i for i, name in enumerate(columns) if name in wanted and (name != "rowid" or "rowid" in wanted)]
            names = ", ".join(columns[i] for i in keep)
            marks = ", ".join("?" for _ in keep)
            if rows:
                await tx.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608
                    [[row[i] for i in keep] for row in rows],
                )
            if "rowid" in wanted and rows:
                top = f"SELECT max(rowid) FROM {table}"  # noqa: S608
                await tx.execute(f"SELECT setval(pg_get_serial_sequence(?, 'rowid'), ({top}))", (table,))
            counts[table] = len(rows)
        return counts

    return await target.run(work)
