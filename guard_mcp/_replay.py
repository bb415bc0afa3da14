"""Single use of a permit: stores that consume each `jti` once, atomically, until it has expired.

A permit is only worth replaying while it is valid, so a store forgets a `jti` after the `exp`
it was consumed with (the verifier passes the permit's own `exp` plus a margin); memory stays
bounded by the number of permits of the last hours.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = ["MemoryReplayStore", "ReplayStore", "SqliteReplayStore"]

_PURGE_EVERY = 60.0  # seconds between sweeps of expired entries


class _Clock(Protocol):
    def now(self) -> float: ...


class _WallClock:
    def now(self) -> float:
        return time.time()


@runtime_checkable
class ReplayStore(Protocol):
    def consume(self, jti: str, exp: float) -> bool:
        """Record `jti` as used until `exp`; True only for the first caller while it is recorded.

        Must be atomic: of any number of concurrent calls with one `jti`, exactly one gets True.
        """
        ...


class MemoryReplayStore:
    """A replay store for one process (tests, a single-worker upstream). Thread-safe."""

    def __init__(self, clock: _Clock | None = None) -> None:
        self._clock = clock or _WallClock()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def consume(self, jti: str, exp: float) -> bool:
        now = self._clock.now()
        with self._lock:
            if now >= self._next_purge:
                self._used = {k: v for k, v in self._used.items() if v > now}
                self._next_purge = now + _PURGE_EVERY
            seen = self._used.get(jti)
            if seen is not None and seen > now:
                return False
            self._used[jti] = exp
            return True

    def __len__(self) -> int:
        return len(self._used)


class SqliteReplayStore:
    """A replay store in a SQLite file, shared by every worker and process that opens it.

    One `INSERT … ON CONFLICT DO UPDATE … WHERE expired` decides: SQLite serialises writers, so
    the row is claimed exactly once even across processes, and an expired row is reclaimed in the
    same statement.

    `durable=True` (the default) syncs every claim to disk, so not even a power cut forgets a used
    permit. `durable=False` survives a crash of the process but not of the machine, and costs a
    fraction of the time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: _Clock | None = None,
        timeout: float = 10.0,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self._clock = clock or _WallClock()
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS permit_jti (jti TEXT PRIMARY KEY, exp REAL NOT NULL) WITHOUT ROWID"
            )

    def consume(self, jti: str, exp: float) -> bool:
        now = self._clock.now()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO permit_jti (jti, exp) VALUES (?, ?) "
                "ON CONFLICT (jti) DO UPDATE SET exp = excluded.exp WHERE permit_jti.exp <= ?",
                (jti, float(exp), now),
            )
            claimed = cur.rowcount == 1
            if now >= self._next_purge:
                self._next_purge = now + _PURGE_EVERY
                # The claim above is committed: a sweep that fails (another writer holds the lock) must
                # not turn this first use into a refusal. The next sweep catches up.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("DELETE FROM permit_jti WHERE exp <= ?", (now,))
            return claimed

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
