"""`guard-mcp store check` / `store migrate` on both backends: what is missing, applied once, idempotent."""

from __future__ import annotations

import json
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
