from __future__ import annotations

from pathlib import Path

import pytest
from _pg import own_pg_cluster, pg_cluster, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL server)

from guard_mcp._clock import FakeClock
from guard_mcp._state import StateDir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state").ensure()


# Every store test runs on both backends through this one fixture.
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None for the embedded SQLite database in the state directory, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url
