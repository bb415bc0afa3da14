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
