"""`guard-mcp limits` reports what each principal has used of each limit, from the guard's own database."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result
from guard_kit import config_from, running_guard
from mcp import Client
from test_limits import refund_upstream

from guard_mcp._state import StateDir
from guard_mcp.cli import main

CONFIG = """
guard: {principal: agent-a}
upstreams:
  shop:
    command: unused-in-process
    tools:
      refund:
        action: refund.create
        category: read
        reversibility: full
        blast_radius: single
        sensitivity: public
        limits:
          - {window: 1h, calls: 20}
          - {window: 24h, sum: amount, max: 2000, per: all}
      lookup: {action: order.read, category: read}
"""


def cli(config: Path, state: StateDir, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        ["limits", "--config", str(config), "--state-dir", str(state.root), *args],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text(CONFIG)
    return path


def test_limits_reports_usage_per_tool_and_principal(config: Path, state: StateDir) -> None:
    async def spend() -> None:
        up = refund_upstream()
        async with running_guard(config_from(CONFIG, state), state, inprocess={"shop": up.server}) as guard:
            async with Client(guard.server) as client:
                for amount in (99, 99, 0.5):
                    assert not (await client.call_tool("shop__refund", {"text": "x", "amount": amount})).is_error

    anyio.run(spend)
    shown = cli(config, state, "--json")
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)["limits"]
    assert [
        (r["tool"], r["actor"], r["measure"], r["window"], r["used"], r["limit"], r["remaining"]) for r in rows
    ] == [
        ("shop__refund", "agent-a", "calls", "1h", 3, 20, 17),
        ("shop__refund", "*", "amount", "24h", 198.5, 2000, 1801.5),
    ]
    table = cli(config, state)
    assert table.exit_code == 0, table.output
    assert "shop__refund" in table.output and "sum of `amount` ≤ 2,000" in table.output and "1,801.5" in table.output


def test_limits_with_nothing_used_shows_each_limit_at_zero(config: Path, state: StateDir) -> None:
    shown = cli(config, state, "--json")
    assert shown.exit_code == 0, shown.output
    assert [(r["actor"], r["used"], r["remaining"]) for r in json.loads(shown.output)["limits"]] == [
        ("agent-a", 0, 20),
        ("*", 0, 2000),
    ]


def test_limits_without_any_limit_says_so(tmp_path: Path, state: StateDir) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("upstreams: {}\n")
    assert json.loads(cli(path, state, "--json").output) == {"limits": []}
    assert "no tool has `limits`" in cli(path, state).output


def test_a_state_directory_no_guard_has_used_is_pointed_out(config: Path, tmp_path: Path) -> None:
    fresh = StateDir(tmp_path / "typo-in-the-path")
    shown = cli(config, fresh)
    assert shown.exit_code == 0
    assert "no guard has used the state directory" in shown.stderr and "--state-dir" in shown.stderr
    assert "no guard has used" not in shown.stdout  # the table itself is unchanged


def test_a_damaged_usage_row_is_one_clear_error(config: Path, state: StateDir) -> None:
    assert cli(config, state, "--json").exit_code == 0  # creates the table
    with sqlite3.connect(state.database) as conn:
        conn.execute(
            "INSERT INTO limit_usage VALUES ('shop__refund', 'agent-a', 'amount', 'abc', ?, 'req_x')", (time.time(),)
        )
    shown = cli(config, state)
    assert shown.exit_code == 2 and "not a number; restore guard.db" in shown.output
