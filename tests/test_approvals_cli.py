from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pyotp
import pytest
from _approvals_support import bundle, decision, open_store, served
from click.testing import CliRunner, Result

from guard_mcp._approvals import Approval, ApprovalState
from guard_mcp._clock import SystemClock
from guard_mcp._models import Tier
from guard_mcp._state import StateDir
from guard_mcp.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text("guard: {approvals: {expire: 2h, preauth_max: 1h}}\nupstreams: {}\n")
    return path


def cli(config: Path, state: StateDir, *args: str, as_json: bool = False) -> Result:
    extra = ["--config", str(config), "--state-dir", str(state.root)] + (["--json"] if as_json else [])
    return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False, env={"COLUMNS": "200"})


def create(state: StateDir, **kw: Any) -> Approval:
    async def work() -> Approval:
        async with open_store(state, SystemClock()) as store:
            return await store.create(bundle(**kw), decision(), tool="shop__refund")

    return anyio.run(work)


def current(state: StateDir, approval_id: str) -> Approval:
    async def work() -> Approval | None:
        async with open_store(state, SystemClock()) as store:
            return await store.get(approval_id)

    found = anyio.run(work)
    assert found is not None
    return found


def test_list_shows_the_pending_queue_with_countdowns(config: Path, state: StateDir) -> None:
    a = create(state)
    shown = cli(config, state, "approvals", "list", as_json=True)
    assert shown.exit_code == 0, shown.output
    [row] = json.loads(shown.output)
    assert row["id"] == a.id and row["state"] == "pending" and 0 < row["remaining"] <= 7200
    table = cli(config, state, "approvals", "list")
    assert table.exit_code == 0 and a.id in table.output and "Refund €350.00" in table.output
    assert "1h 59m" in table.output or "2h 00m" in table.output


def test_show_prints_every_argument(config: Path, state: StateDir) -> None:
    a = create(state)
    shown = cli(config, state, "approvals", "show", a.id)
    assert shown.exit_code == 0, shown.output
    for key in a.bundle.arguments:
        assert f"{key}:" in shown.output
    assert "State: pending" in shown.output


def test_approve_then_approve_again_fails_cleanly(config: Path, state: StateDir) -> None:
    a = create(state)
    ok = cli(config, state, "approvals", "approve", a.id, "--reason", "checked the order")
    assert ok.exit_code == 0, ok.output
    assert "approved" in ok.output
    decided = current(state, a.id)
    assert decided.state is ApprovalState.APPROVED and decided.reason == "checked the order"
    assert decided.approver is not None and decided.approver.startswith("local:")
    again = cli(config, state, "approvals", "deny", a.id)
    assert again.exit_code == 2 and "already approved" in again.output
    assert current(state, a.id).state is ApprovalState.APPROVED


def test_unknown_id_is_an_error(config: Path, state: StateDir) -> None:
    result = cli(config, state, "approvals", "approve", "apr_aaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert result.exit_code == 2 and "unknown approval" in result.output
    # the usual cause at a terminal: the guard the client started keeps its state somewhere else
    assert f"in the state directory `{state.root}`" in result.output
    assert "pass the `--state-dir` of the guard that asked" in result.output


def test_step_up_needs_a_named_approver_and_a_totp_code(config: Path, state: StateDir) -> None:
    enrolled = cli(config, state, "approvers", "add", "bob", "--group", "finance", as_json=True)
    assert enrolled.exit_code == 0, enrolled.output
    secret = json.loads(enrolled.output)["secret"]
    a = create(state, tier=Tier.HIGH)
    refused = cli(config, state, "approvals", "approve", a.id)
    assert refused.exit_code == 2 and "--as NAME --code CODE" in refused.output
    totp = pyotp.TOTP(secret)
    window = {totp.at(time.time(), counter_offset=k) for k in (-2, -1, 0, 1, 2)}
    bad_code = next(c for c in (f"{n:06d}" for n in range(10)) if c not in window)
    wrong = cli(config, state, "approvals", "approve", a.id, "--as", "bob", "--code", bad_code)
    assert wrong.exit_code == 2 and "wrong" in wrong.output
    assert current(state, a.id).state is ApprovalState.PENDING
    ok = cli(config, state, "approvals", "approve", a.id, "--as", "bob", "--code", pyotp.TOTP(secret).now())
    assert ok.exit_code == 0, ok.output
    decided = current(state, a.id)
    assert decided.state is ApprovalState.APPROVED and decided.approver == "bob"


def test_approvers_add_prints_a_qr_code_and_the_secret_once(config: Path, state: StateDir) -> None:
    added = cli(config, state, "approvers", "add", "carol", "--group", "finance", "--group", "ops")
    assert added.exit_code == 0, added.output
    assert "█" in added.output and "otpauth://totp/" in added.output
    listed = cli(config, state, "approvers", "list", as_json=True)
    assert json.loads(listed.output) == [
        {"name": "carol", "groups": ["finance", "ops"], "created": pytest.approx(time.time(), abs=60)}
    ]
    secret_line = next(line for line in added.output.splitlines() if line.startswith("secret:"))
    assert secret_line.split()[1] not in cli(config, state, "approvers", "list").output
    removed = cli(config, state, "approvers", "remove", "carol")
    assert removed.exit_code == 0
    assert json.loads(cli(config, state, "approvers", "list", as_json=True).output) == []


def test_grant_grants_and_revoke(config: Path, state: StateDir) -> None:
    served(state)
    too_long = cli(config, state, "approvals", "grant", "sess-1", "--tool", "shop__refund", "--for", "2h")
    assert too_long.exit_code == 2 and "at most 3600s" in too_long.output
    made = cli(config, state, "approvals", "grant", "sess-1", "--tool", "shop__refund", "--for", "30m", as_json=True)
    assert made.exit_code == 0, made.output
    grant_id = json.loads(made.output)["id"]
    listed = json.loads(cli(config, state, "approvals", "grants", as_json=True).output)
    assert [g["id"] for g in listed] == [grant_id] and listed[0]["active"]
    revoked = cli(config, state, "approvals", "revoke", grant_id)
    assert revoked.exit_code == 0
    assert json.loads(cli(config, state, "approvals", "grants", as_json=True).output) == []


@pytest.mark.subprocess
def test_two_cli_processes_racing_approve_and_deny_exactly_one_wins(config: Path, state: StateDir) -> None:
    a = create(state)
    base = [sys.executable, "-c", "from guard_mcp.cli import main; main()", "approvals"]
    tail = [a.id, "--config", str(config), "--state-dir", str(state.root)]
    procs = [
        subprocess.Popen([*base, verb, *tail], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for verb in ("approve", "deny")
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    # on a new state directory both create the audit key: one key, or the second calls the first's events forged
    assert sorted(codes) == [0, 2], outs
    winner = ("approve", "deny")[codes.index(0)]
    final = current(state, a.id)
    assert final.state is (ApprovalState.APPROVED if winner == "approve" else ApprovalState.DENIED)


def test_a_grant_for_a_tool_this_guard_never_served_is_refused(config: Path, state: StateDir) -> None:
    served(state)
    typo = cli(config, state, "approvals", "grant", "sess-1", "--tool", "shop__refnud", "--for", "30m")
    assert typo.exit_code == 2 and "no tool `shop__refnud` has been served" in typo.output


def test_a_name_with_control_characters_is_echoed_as_codes(config: Path, state: StateDir) -> None:
    removed = cli(config, state, "approvers", "remove", "bo\x1b[31mb\nx")
    assert removed.exit_code == 2 and "\x1b" not in removed.output and "\\u001b" in removed.output


def test_an_approver_row_with_damaged_groups_is_one_clear_error(config: Path, state: StateDir) -> None:
    assert cli(config, state, "approvers", "add", "carol", "--group", "ops").exit_code == 0
    with sqlite3.connect(state.database) as conn:
        conn.execute("UPDATE approval_approvers SET groups = 'not json' WHERE name = 'carol'")
    listed = cli(config, state, "approvers", "list")
    assert listed.exit_code == 2 and "damaged groups" in listed.output
