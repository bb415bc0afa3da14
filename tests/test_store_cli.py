"""`guard-mcp store check` / `store migrate` on both backends: what is missing, applied once, idempotent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from guard_mcp._state import StateDir
from guard_mcp.cli import main
from guard_mcp.cli._store import _migrations


def cli(tmp_path: Path, state: StateDir, store_url: str | None, *args: str) -> Result:
    config = tmp_path / "upstreams.yaml"
    config.write_text(("guard:\n  store: " + json.dumps(store_url) + "\n" if store_url else "") + "upstreams: {}\n")
    return CliRunner().invoke(main, ["store", *args, "--config", str(config), "--state-dir", str(state.root)])


def test_check_reports_missing_stores_and_migrate_applies_them_once(
    tmp_path: Path, state: StateDir, store_url: str | None
) -> None:
    dialect = "sqlite" if store_url is None else "postgresql"
    names = sorted(_migrations(dialect))
    before = cli(tmp_path, state, store_url, "check", "--json")
    assert before.exit_code == 1, before.output
    assert {r["store"]: r["status"] for r in json.loads(before.output)["stores"]} == dict.fromkeys(names, "missing")

    first = cli(tmp_path, state, store_url, "migrate", "--json")
    assert first.exit_code == 0, first.output
    assert sorted(json.loads(first.output)["applied"]) == names
    again = cli(tmp_path, state, store_url, "migrate")
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output

    after = cli(tmp_path, state, store_url, "check", "--json")
    assert after.exit_code == 0, after.output
    report = json.loads(after.output)
    assert report["dialect"] == dialect
    assert all(r["status"] == "current" and r["version"] == r["newest"] >= 1 for r in report["stores"])


def test_check_refuses_a_database_newer_than_this_guard_mcp(tmp_path: Path, state: StateDir, pg_url: str) -> None:
    import psycopg

    assert cli(tmp_path, state, pg_url, "migrate").exit_code == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE guard_schema SET version = 99 WHERE store = 'limits'")
    result = cli(tmp_path, state, pg_url, "check")
    assert result.exit_code == 2
    assert "limits" in result.output and "newer than this guard-mcp" in result.output


@pytest.mark.parametrize("command", ["check", "migrate"])
def test_an_unreachable_store_is_one_line_without_the_password(tmp_path: Path, state: StateDir, command: str) -> None:
    result = cli(tmp_path, state, "postgresql://guard:hunter2@127.0.0.1:1/guard", command)
    assert result.exit_code == 2
    assert "hunter2" not in result.output
    assert "`postgresql://guard:***@127.0.0.1:1/guard` failed" in result.output
    assert "Traceback" not in result.output


def test_copy_moves_the_queue_into_postgresql_where_it_still_verifies_and_runs_once(
    tmp_path: Path, state: StateDir, pg_url: str
) -> None:
    import anyio
    from _approvals_support import bundle, decision, open_store

    from guard_mcp._approvals import ApprovalState, ApprovalStore
    from guard_mcp._clock import SystemClock
    from guard_mcp._config import ApprovalsConfig

    async def before() -> tuple[str, str, str]:
        async with open_store(state, SystemClock()) as store:  # the SQLite state directory
            pending = await store.create(bundle(), decision(), tool="shop__refund")
            approved = await store.create(bundle(request_id="req-2"), decision(), tool="shop__refund")
            await store.decide(approved.id, approve=True, approver="local:ops")
            await store.approvers.enrol("bob", "finance")
            return pending.id, approved.id, approved.payload_hash

    pending_id, approved_id, payload = anyio.run(before)
    with sqlite3.connect(state.database) as conn:  # a grant's uses keep their order (SQLite's rowid)
        conn.executemany(
            "INSERT INTO approval_grant_uses VALUES (?, ?, ?, ?, ?)",
            [("grt_1", f"req-{i}", "shop__refund", "h", 1.0) for i in range(3)],
        )
    conn.close()
    copied = cli(tmp_path, state, pg_url, "copy", "--json")
    assert copied.exit_code == 0, copied.output
    counts = json.loads(copied.output)["copied"]
    assert counts["approvals"] == 2 and counts["approval_approvers"] == 1

    async def after() -> None:
        store = await ApprovalStore.open(state, clock=SystemClock(), config=ApprovalsConfig(), store=pg_url)
        try:
            pending = await store.get(pending_id)
            assert pending is not None and pending.state is ApprovalState.PENDING
            approved = await store.get(approved_id)
            assert approved is not None and approved.verified  # its decision record came along intact
            assert await store.consume(approved_id, payload_hash=payload)
            assert not await store.consume(approved_id, payload_hash=payload)
            assert [a.name for a in await store.approvers.list()] == ["bob"]
        finally:
            await store.close()

    anyio.run(after)
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute(
            "INSERT INTO approval_grant_uses (grant_id, request_id, tool, payload_hash, at) "
            "VALUES ('grt_1', 'req-new', 'shop__refund', 'h', 1.0)"
        )
        order = [r for (r,) in pg.execute("SELECT request_id FROM approval_grant_uses ORDER BY at, rowid")]
    assert order == ["req-0", "req-1", "req-2", "req-new"]
    again = cli(tmp_path, state, pg_url, "copy")  # a second copy would merge two histories
    assert again.exit_code == 2 and "already holds rows in `approvals`" in again.output, again.output
