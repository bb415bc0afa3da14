"""Replay stores: one use per jti, atomic under concurrency, forgotten after expiry."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from guard_mcp._clock import FakeClock
from guard_mcp.verify import MemoryReplayStore, ReplayStore, SqliteReplayStore

StoreFactory = Callable[[], ReplayStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> StoreFactory:
    """Each call opens another handle on the same store (another worker, for SQLite)."""
    if request.param == "memory":
        shared = MemoryReplayStore(clock)
        return lambda: shared
    opened: list[SqliteReplayStore] = []

    def open_one() -> ReplayStore:
        store = SqliteReplayStore(tmp_path / "jti.db", clock=clock)
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

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
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
