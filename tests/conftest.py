from __future__ import annotations

from pathlib import Path

import pytest

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
