"""The storage layer on both backends: units of work commit or roll back whole, migrations run once and
in order, `tx.lock` makes a check-then-insert atomic across instances, and driver errors become one
`StoreUnavailable` line that never shows a password."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from guard_mcp._errors import StateError
from guard_mcp._state import StateDir
from guard_mcp._store import Backend, Migration, StoreUnavailable, Tx, open_backend

pytestmark = pytest.mark.anyio

V1 = Migration(1, "CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
V2 = Migration(2, "ALTER TABLE things ADD COLUMN note TEXT")


async def backend(store_url: str | None, state: StateDir, *migrations: Migration) -> Backend:
    return await open_backend(
        store_url, sqlite_path=state.database, store="things", label="things", migrations=migrations or (V1,)
    )


async def count(db: Backend) -> int:
    async def work(tx: Tx) -> int:
        return int((await tx.execute("SELECT count(*) FROM things")).scalar())

    return await db.run(work, write=False)


async def test_a_unit_commits_when_it_returns_and_leaves_nothing_when_it_raises(
    store_url: str | None, state: StateDir
) -> None:
    db = await backend(store_url, state)
    try:

        async def add(tx: Tx) -> int:
            await tx.execute("INSERT INTO things (name, n) VALUES (?, ?)", ("a", 1))
            return (await tx.execute("UPDATE things SET n = n + 1 WHERE name = ?", ("a",))).rowcount

        assert await db.run(add) == 1

        async def half(tx: Tx) -> None:
            await tx.execute("INSERT INTO things (name, n) VALUES (?, ?)", ("b", 1))
            raise ValueError("the caller changed its mind")

        with pytest.raises(ValueError, match="changed its mind"):
            await db.run(half)
        assert await count(db) == 1
    finally:
        await db.close()


async def test_migrations_run_once_in_order_and_a_newer_schema_is_refused(
    store_url: str | None, state: StateDir
) -> None:
    first = await backend(store_url, state, V1)
    second = await backend(store_url, state, V2, V1)  # an upgraded instance on the same database
    again = await backend(store_url, state, V1, V2)  # a restart: nothing to apply (ALTER would fail twice)
    try:

        async def noted(tx: Tx) -> None:
            await tx.execute("INSERT INTO things (name, n, note) VALUES (?, ?, ?)", ("a", 1, "v2"))

        await second.run(noted)
        assert (await again.versions())["things"] == 2
        with pytest.raises(StoreUnavailable, match=r"schema version 2, newer than this guard-mcp knows \(1\)"):
            await backend(store_url, state, V1)
    finally:
        for db in (first, second, again):
            await db.close()


async def test_lock_makes_a_check_then_insert_atomic_across_instances(store_url: str | None, state: StateDir) -> None:
    # Two guard instances, 40 concurrent calls, room for 10: without the lock PostgreSQL's READ COMMITTED
    # lets several units count 9 at once and all insert.
    instances = [await backend(store_url, state) for _ in range(2)]
    admitted: list[str] = []
    try:

        async def claim(db: Backend, name: str) -> None:
            async def work(tx: Tx) -> bool:
                await tx.lock("things")
                used = int((await tx.execute("SELECT count(*) FROM things")).scalar())
                if used >= 10:
                    return False
                if tx.dialect == "postgresql":
                    await anyio.lowlevel.checkpoint()  # widen the race (SQLite runs a unit in one go)
                await tx.execute("INSERT INTO things (name, n) VALUES (?, ?)", (name, used))
                return True

            if await db.run(work):
                admitted.append(name)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(claim, instances[i % 2], f"c{i}")
        assert len(admitted) == 10
        assert await count(instances[0]) == 10
    finally:
        for db in instances:
            await db.close()


async def test_a_driver_error_is_one_store_unavailable_line(store_url: str | None, state: StateDir) -> None:
    db = await backend(store_url, state)
    try:

        async def broken(tx: Tx) -> None:
            await tx.execute("SELECT x FROM nowhere")

        with pytest.raises(StoreUnavailable) as caught:
            await db.run(broken)
        message = str(caught.value)
        assert isinstance(caught.value, StateError) and "\n" not in message
        assert message.startswith(f"things store `{db.where}` failed: ") and "nowhere" in message
        assert "check" in message.rsplit(";", 1)[1]
    finally:
        await db.close()


async def test_a_transient_conflict_reruns_the_whole_unit(store_url: str | None, state: StateDir) -> None:
    db = await backend(store_url, state)
    runs: list[int] = []
    try:

        async def flaky(tx: Tx) -> str:
            runs.append(1)
            await tx.execute("INSERT INTO things (name, n) VALUES (?, ?)", (f"try{len(runs)}", 1))
            if len(runs) < 3:
                raise transient(tx.dialect)
            return "done"

        assert await db.run(flaky) == "done"
        assert len(runs) == 3 and await count(db) == 1  # the failed attempts left nothing behind
    finally:
        await db.close()


def transient(dialect: str) -> Exception:
    if dialect == "postgresql":
        from psycopg import errors

        return errors.SerializationFailure("could not serialize access due to concurrent update")
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return busy


async def test_a_sqlite_unit_that_awaits_anything_else_is_refused(state: StateDir) -> None:
    db = await backend(None, state)
    try:

        async def sleeps(tx: Tx) -> None:
            await asyncio.sleep(0)  # would let another unit run between this one's statements

        with pytest.raises(RuntimeError, match="awaited something other than its transaction"):
            await db.run(sleeps)
    finally:
        await db.close()


async def test_an_unreachable_server_is_store_unavailable_without_its_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg_pool")
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://guard:hunter2-s3cret@127.0.0.1:{port}/guard"
    from guard_mcp._store.postgres import PostgresBackend

    with pytest.raises(StoreUnavailable) as caught:
        await PostgresBackend.open(url, label="usage limits", wait=1)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert f"`postgresql://guard:***@127.0.0.1:{port}/guard`" in message


def test_guard_store_takes_a_postgresql_url_with_its_password_from_the_environment() -> None:
    from guard_mcp._config import load_config

    text = "guard:\n  store: postgresql://guard:${PGPASSWORD}@127.0.0.1:5432/guard\nupstreams: {}\n"
    cfg = load_config(text=text, environ={"PGPASSWORD": "s3cret-pw"}, builtins={})
    assert cfg.guard.store == "postgresql://guard:s3cret-pw@127.0.0.1:5432/guard"
    assert load_config(text="upstreams: {}\n", environ={}, builtins={}).guard.store is None


def test_a_guard_store_that_is_not_a_postgresql_url_is_refused_without_echoing_it() -> None:
    from guard_mcp._config import load_config
    from guard_mcp._errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(
            text="guard:\n  store: mysql://guard:${PGPASSWORD}@db/guard\nupstreams: {}\n",
            environ={"PGPASSWORD": "s3cret-pw"},
            builtins={},
        )
    message = str(caught.value)
    assert "s3cret-pw" not in message and "\n" not in message
    assert "at `guard.store`" in message and "leave it unset" in message
