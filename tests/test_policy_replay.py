"""`policy replay`: a week of calls recorded by a guard on a FakeClock, decided again with a stricter
candidate; what would change, what cannot be known from redacted arguments, and what is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from _policy_kit import make_signer, shop_source, write_bundle
from click.testing import CliRunner, Result
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._clock import FakeClock
from guard_mcp._state import StateDir
from guard_mcp.cli import main

DAY = 86400.0
# Refunds up to 10 allowed (live: 100), up to 100 approved (live: 1000), the rest denied.
STRICTER = shop_source(2).replace("le: 100}", "le: 10}").replace("le: 1000}", "le: 100}")
CONFIG = """
guard:
  policy: live.bundle.json
  trusted_policy_keys: [keys/signer.pub.pem]
  approvals: {wait: 0.1s}
upstreams:
  shop:
    command: unused-in-process
    tools:
      refund: {action: refund.create, category: financial, reversibility: none, blast_radius: single,
               sensitivity: confidential, redact: [note]}
      payout: {action: refund.create, category: financial, reversibility: none, blast_radius: single,
               sensitivity: confidential, redact: [amount]}
"""


def upstream() -> RecordingUpstream:
    schema = {"type": "object", "properties": {"amount": {}, "note": {}}}
    return RecordingUpstream([types.Tool(name=n, description=n, input_schema=schema) for n in ("refund", "payout")])


async def record_week(tmp_path: Path, state: StateDir) -> list[str | None]:
    clock = FakeClock(time.time() - 9 * DAY)
    cfg = config_from(CONFIG, state, source_dir=tmp_path)
    reasons = []
    async with running_guard(cfg, state, clock=clock, inprocess={"shop": upstream().server}) as guard:
        async with Client(guard.server) as client:

            async def call(tool: str, amount: Any) -> None:
                result = await client.call_tool(f"shop__{tool}", {"amount": amount, "note": "card 4111"})
                reasons.append(reason_of(result))
                clock.advance(DAY)

            await call("refund", 50)  # nine days ago: before the window
            clock.advance(2 * DAY)
            for amount in (5, 50, 500, 5000):
                await call("refund", amount)
            await call("payout", 50)  # its amount is redacted, and the candidate reads it
    return reasons


def replay(tmp_path: Path, state: StateDir, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        ["policy", "replay", *args, "--config", str(tmp_path / "upstreams.yaml"), "--state-dir", str(state.root)],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )


def test_a_week_replayed_with_a_stricter_bundle_shows_what_would_change(tmp_path: Path, state: StateDir) -> None:
    signer = make_signer(tmp_path / "keys")
    write_bundle(tmp_path / "live.bundle.json", shop_source(1), signer)
    write_bundle(tmp_path / "candidate.bundle.json", STRICTER, signer)
    (tmp_path / "upstreams.yaml").write_text(CONFIG)
    reasons = anyio.run(record_week, tmp_path, state)
    assert reasons == [None, None, None, "pending_approval", "amount_exceeds_policy_limit", None]

    result = replay(tmp_path, state, str(tmp_path / "candidate.bundle.json"), "--since", "7d", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["candidate"], report["calls"], report["unchanged"]) == ("shop@2", 5, 2)
    assert report["transitions"] == {"allow → approve (support_leads)": 1, "approve (support_leads) → deny": 1}
    changed = {(c["live"]["rule_id"], c["candidate"]["rule_id"]) for c in report["changed"]}
    assert changed == {("refund-small", "refund-medium"), ("refund-medium", "refund-large")}
    [unknown] = report["unknowable"]
    assert (unknown["tool"], unknown["live"]["effect"], unknown["candidate"]) == ("shop__payout", "allow", None)
    assert unknown["redacted_arguments_read"] == ["amount"]  # `note` is redacted too, but no condition reads it
    assert "4111" not in result.output

    table = replay(tmp_path, state, str(tmp_path / "candidate.bundle.json"))
    assert table.exit_code == 0
    text = " ".join(table.output.split())
    assert "replayed 5 calls since 7d with shop@2: 2 would change, 1 unknowable, 2 unchanged" in text
    assert "allow → approve (support_leads): 1" in text and "unknowable (never guessed)" in text

    everything = replay(tmp_path, state, str(tmp_path / "candidate.bundle.json"), "--since", "30d", "--json")
    assert json.loads(everything.output)["calls"] == 6


def test_a_candidate_that_does_not_verify_is_refused(tmp_path: Path, state: StateDir) -> None:
    signer = make_signer(tmp_path / "keys")
    stranger = make_signer(tmp_path / "other", "stranger")
    write_bundle(tmp_path / "live.bundle.json", shop_source(1), signer)
    write_bundle(tmp_path / "candidate.bundle.json", STRICTER, stranger)
    (tmp_path / "upstreams.yaml").write_text(CONFIG)
    result = CliRunner().invoke(
        main,
        [
            "policy",
            "replay",
            str(tmp_path / "candidate.bundle.json"),
            "--config",
            str(tmp_path / "upstreams.yaml"),
            "--state-dir",
            str(state.root),
        ],
    )
    assert result.exit_code == 1
    assert "refused (unknown_key)" in result.output and "not in `guard.trusted_policy_keys`" in result.output
    # a trusted candidate, but no guard has recorded anything in this state directory yet
    empty = CliRunner().invoke(
        main,
        [
            "policy",
            "replay",
            str(tmp_path / "live.bundle.json"),
            "--config",
            str(tmp_path / "upstreams.yaml"),
            "--state-dir",
            str(state.root),
        ],
    )
    assert empty.exit_code == 2 and "cannot read the audit log" in empty.output, empty.output


def test_a_candidate_that_matches_on_caller_groups_is_unknowable_where_the_log_has_none(
    tmp_path: Path, state: StateDir
) -> None:
    signer = make_signer(tmp_path / "keys")
    write_bundle(tmp_path / "live.bundle.json", shop_source(1), signer)
    grouped = STRICTER.replace(
        "rules:\n", "rules:\n  - id: billing\n    match: {group: [billing]}\n    effect: allow\n", 1
    )
    write_bundle(tmp_path / "grouped.bundle.json", grouped, signer)
    (tmp_path / "upstreams.yaml").write_text(CONFIG)
    anyio.run(record_week, tmp_path, state)
    result = replay(tmp_path, state, str(tmp_path / "grouped.bundle.json"), "--json")
    report = json.loads(result.output)
    # the audit does not record a caller's groups: no call can be said to keep or change its outcome
    assert (report["calls"], report["unchanged"], report["changed"]) == (5, 0, [])
    assert all(u["groups_unknown"] and u["candidate"] is None for u in report["unknowable"])
    table = replay(tmp_path, state, str(tmp_path / "grouped.bundle.json"))
    assert "the caller's groups (not recorded)" in " ".join(table.output.split())
