"""`guard-mcp demo` runs every exit of the pipeline against the real shop; each step must hold."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from guard_mcp._config import load_config
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir
from guard_mcp.cli import main
from guard_mcp.cli._common import embedded_config_path
from guard_mcp.demo._runner import DemoReport, run_demo

ROOT = Path(__file__).resolve().parent.parent
USERS_OWN = "upstreams:\n  mine:\n    command: /nonexistent/my-server\n"


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def users_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's real setup around the demo: GUARD_MCP_HOME with a database, their own ./upstreams.yaml,
    a PYTHON of their own in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "guard.db").write_bytes(b"the user's own audit log")
    work = tmp_path / "work"
    work.mkdir()
    (work / "upstreams.yaml").write_text(USERS_OWN)
    monkeypatch.setenv("GUARD_MCP_HOME", str(home))
    monkeypatch.setenv("PYTHON", "/nonexistent/python")
    monkeypatch.chdir(work)
    scratch = tmp_path / "tmp"  # where the demo's own state directories go, removed with the test's
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    return home


def test_the_demo_never_uses_the_users_state_directory_config_or_environment(
    users_guard: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def fake_run_demo(config: Any, state: StateDir, console: Console) -> DemoReport:
        seen.update(config=config, state=state)
        return DemoReport(state_dir=str(state.root), audit_ok=True)

    monkeypatch.setattr("guard_mcp.demo._runner.run_demo", fake_run_demo)
    before = _snapshot(users_guard)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    state: StateDir = seen["state"]
    assert users_guard not in (state.root, *state.root.parents)
    assert state.root.is_relative_to(tempfile.gettempdir())
    assert state.database.stat().st_size == 0  # fresh
    assert seen["config"].source == embedded_config_path().resolve()
    assert "mine" not in seen["config"].upstreams
    assert seen["config"].upstreams["shop"].command == sys.executable
    assert seen["config"].upstreams["shop"].env["SHOP_DB"] == f"{state.root}/shop.db"
    line = [x for x in result.stderr.splitlines() if x.startswith("demo:")]
    assert len(line) == 1 and str(state.root) in line[0] and "GUARD_MCP_HOME" in line[0]
    assert _snapshot(users_guard) == before


def test_a_failure_inside_the_demo_is_one_line_not_a_task_group_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(config: Any, state: StateDir, console: Console) -> DemoReport:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ApprovalError("approver `alice` is already enrolled")])

    monkeypatch.setattr("guard_mcp.demo._runner.run_demo", failing)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "approver `alice` is already enrolled" in errors[0]


def test_demo_json_is_json_only_and_leaves_the_users_guard_alone(users_guard: Path) -> None:
    before = _snapshot(users_guard)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "guard_mcp.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # stdout holds the report and nothing else
    assert report["ok"] is True and report["audit"]["ok"] is True
    assert {s["step"] for s in report["steps"]} >= {"€18 refund", "payload swap after approval"}
    assert all(s["ok"] for s in report["steps"])
    assert not Path(report["state_dir"]).is_relative_to(users_guard)
    assert _snapshot(users_guard) == before


pytestmark = [pytest.mark.subprocess]


@pytest.mark.anyio
async def test_the_demo_holds_at_every_step(state: StateDir) -> None:
    config = load_config(embedded_config_path(), builtins={"GUARD_STATE_DIR": str(state.root)})
    out = io.StringIO()
    report = await run_demo(config, state, Console(file=out, width=80))
    text = out.getvalue()
    assert report.ok, text
    words = " ".join(text.split())  # at 80 columns lines wrap at spaces, never cut
    for evidence in (
        "amount_exceeds_policy_limit",
        "approval_denied",
        "approval_expired",
        "payload_mismatch",
        "shop refused: missing",
        "chain, MACs and checkpoints intact",
        f"policy {' '.join(report.policy.split())}",
        "Send an email to ada@example.com",
    ):
        assert evidence in words
    assert "unexpected" not in text


@pytest.mark.anyio
async def test_a_broken_audit_log_fails_the_demo(state: StateDir) -> None:
    import sqlite3

    from _audit_helpers import open_log

    from guard_mcp._audit import EventIn
    from guard_mcp._clock import FakeClock
    from guard_mcp.demo._runner import report_audit

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
