"""Replay stores: one use per jti, atomic under concurrency, forgotten after expiry; on PostgreSQL, across
verifiers on several hosts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from permit_kit import REFUND, Guard

from guard_mcp._clock import FakeClock
from guard_mcp.verify import (
    MemoryReplayStore,
    PermitVerifier,
    PostgresReplayStore,
    ReplayStore,
    SqliteReplayStore,
    VerifyResult,
)

StoreFactory = Callable[[], ReplayStore]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> StoreFactory:
    """Each call opens another handle on the same store (another worker for SQLite, another host for PostgreSQL)."""
    if request.param == "memory":
        shared = MemoryReplayStore(clock)
        return lambda: shared
    opened: list[SqliteReplayStore | PostgresReplayStore] = []
    url: str | None = request.getfixturevalue("pg_url") if request.param == "postgresql" else None

    def open_one() -> ReplayStore:
        store = (
            SqliteReplayStore(tmp_path / "jti.db", clock=clock)
            if url is None
            else PostgresReplayStore(url, clock=clock)
        )
        opened.append(store)
        return store

    request.addfinalizer(lambda: [s.close() for s in opened])
    return open_one


def test_first_use_only(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store()
    exp = clock.now() + 300
    assert store.consume("a", exp) is True
    assert store.consume("a", exp) is False
    assert store.consume("b", exp) is True


def test_a_jti_is_forgotten_after_its_expiry(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store()
    exp = clock.now() + 300
    assert store.consume("a", exp)
    clock.advance(299)
    assert not store.consume("a", exp)
    clock.advance(1)
    assert store.consume("a", clock.now() + 300)  # the verifier refuses such a permit as expired anyway


def test_concurrent_consumers_across_handles(make_store: StoreFactory, clock: FakeClock) -> None:
    stores = [make_store() for _ in range(4)]
    exp = clock.now() + 300
    start = threading.Barrier(16)
    wins: list[bool] = []

    def attempt(store: ReplayStore) -> None:
        start.wait()
        for n in range(20):
            wins.append(store.consume(f"jti-{n}", exp))

    threads = [threading.Thread(target=attempt, args=(stores[i % 4],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 20


def test_the_sqlite_store_forgets_expired_rows(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteReplayStore(tmp_path / "jti.db", clock=clock)
    for n in range(50):
        store.consume(f"old-{n}", clock.now() + 10)
    clock.advance(3600)
    store.consume("new", clock.now() + 10)
    rows = store._db.execute("SELECT count(*) FROM permit_jti").fetchone()[0]
    store.close()
    assert rows == 1


def test_the_sqlite_store_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    with SqliteReplayStore(tmp_path / "jti.db", clock=clock) as store:
        assert store.consume("a", clock.now() + 300)
    with SqliteReplayStore(tmp_path / "jti.db", clock=clock) as store:
        assert not store.consume("a", clock.now() + 300)


def test_the_memory_store_stays_bounded(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock)
    for n in range(100):
        store.consume(f"old-{n}", clock.now() + 10)
    clock.advance(3600)
    store.consume("new", clock.now() + 10)
    assert len(store) == 1


def test_a_sweep_that_fails_does_not_turn_a_first_use_into_a_refusal(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteReplayStore(tmp_path / "jti.db", clock=clock)
    real = store._db

    class LockedForSweeps:
        """Another writer holds the lock just when the periodic sweep runs."""

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # as sqlite3.Connection.execute
            if sql.startswith("DELETE"):
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, *args)

        def close(self) -> None:
            real.close()

    store._db = LockedForSweeps()  # type: ignore[assignment]
    try:
        assert store.consume("fresh", clock.now() + 300) is True  # the claim committed: it is this caller's
        assert store.consume("fresh", clock.now() + 300) is False
    finally:
        store.close()


def test_one_permit_at_two_verifiers_on_one_postgresql_store_is_accepted_exactly_once(
    pg_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    # Two upstream hosts, each its own verifier and connection pool, the same permit presented to both at once.
    guard = Guard.create(tmp_path / "keys", clock)
    stores = [PostgresReplayStore(pg_url, clock=clock) for _ in range(2)]
    verifiers = [guard.verifier(replay_store=s) for s in stores]
    try:
        for _ in range(10):
            minted = guard.mint()
            start = threading.Barrier(8)
            results: list[VerifyResult] = []

            def attempt(
                v: PermitVerifier,
                token: str = minted.token,
                barrier: threading.Barrier = start,
                out: list[VerifyResult] = results,
            ) -> None:
                barrier.wait()
                out.append(v.verify(token, action="refund.create", arguments=REFUND))

            threads = [threading.Thread(target=attempt, args=(verifiers[i % 2],)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(str(r.reason) for r in results) == ["None"] + ["replayed"] * 7
    finally:
        for s in stores:
            s.close()


def test_a_postgresql_store_that_cannot_be_reached_says_so_without_its_password() -> None:
    with pytest.raises(RuntimeError) as caught:
        PostgresReplayStore("postgresql://shop:hunter2-s3cret@127.0.0.1:1/permits", timeout=1)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith("permit replay store `postgresql://shop:***@127.0.0.1:1/permits` could not be opened")


def test_importing_the_verifier_does_not_import_the_postgresql_driver() -> None:
    probe = (
        "import sys, guard_mcp.verify; "
        "print(sorted(m for m in ('psycopg', 'psycopg_pool', 'anyio', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
