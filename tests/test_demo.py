"""`guard-mcp demo` runs every exit of the pipeline against the real shop; each step must hold."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from guard_mcp._config import load_config
from guard_mcp._state import StateDir
from guard_mcp.cli._common import embedded_config_path
from guard_mcp.demo._runner import run_demo

pytestmark = [pytest.mark.anyio, pytest.mark.subprocess]


async def test_the_demo_holds_at_every_step(state: StateDir) -> None:
    config = load_config(embedded_config_path(), builtins={"GUARD_STATE_DIR": str(state.root)})
    out = io.StringIO()
    ok = await run_demo(config, state, Console(file=out, width=120))
    text = out.getvalue()
    assert ok, text
    for evidence in ("amount_exceeds_policy_limit", "approval_denied", "approval_expired", "payload_mismatch",
                     "shop refused: missing", "chain, MACs and checkpoints intact"):
        assert evidence in text
    assert "unexpected" not in text


async def test_a_broken_audit_log_fails_the_demo(state: StateDir) -> None:
    import sqlite3

    from guard_mcp._audit import EventIn
    from guard_mcp._clock import FakeClock
    from guard_mcp.demo._runner import report_audit
    from tests._audit_helpers import open_log

    log = await open_log(state, FakeClock())
    await log.append(EventIn("guard.start"))
    await log.close()
    out = io.StringIO()
    assert report_audit(state, Console(file=out, width=120)) is True
    with sqlite3.connect(state.database) as conn:
        conn.execute("UPDATE audit_events SET data = '{\"edited\":true}' WHERE seq = 1")
    out = io.StringIO()
    assert report_audit(state, Console(file=out, width=120)) is False
    assert "✗ audit verify" in out.getvalue()
