"""Shadow mode: a candidate bundle decided beside the live one on every call; its disagreements are
audited, the live outcome never changes, and a broken or failing candidate changes nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from _policy_kit import make_signer, shop_source, write_bundle
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._clock import FakeClock
from guard_mcp._config import GuardConfig
from guard_mcp._errors import ConfigError
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

# The candidate allows refunds up to 10 on its own (the live policy: up to 100).
STRICTER = shop_source(2).replace("le: 100}", "le: 10}")


def shadowed(state: StateDir, tmp_path: Path, *, shadow_source: str = STRICTER, tamper: bool = False) -> GuardConfig:
    signer = make_signer(tmp_path / "keys")
    write_bundle(tmp_path / "live.bundle.json", shop_source(1), signer)
    write_bundle(tmp_path / "candidate.bundle.json", shadow_source, signer)
    if tamper:  # changed after signing: it does not verify
        path = tmp_path / "candidate.bundle.json"
        path.write_bytes(path.read_bytes().replace(b"refund-small", b"refund-smalI"))
    return config_from(
        """
guard:
  policy: {bundle: live.bundle.json, shadow: candidate.bundle.json}
  trusted_policy_keys: [keys/signer.pub.pem]
  approvals: {wait: 0.1s}
upstreams:
  shop:
    command: unused-in-process
    tools:
      refund: {action: refund.create, category: financial, reversibility: none, blast_radius: single,
               sensitivity: confidential, redact: [note]}
""",
        state,
        source_dir=tmp_path,
    )


def refund_upstream() -> RecordingUpstream:
    return RecordingUpstream(
        [
            types.Tool(
                name="refund",
                description="Refund.",
                input_schema={"type": "object", "properties": {"text": {"type": "string"}, "amount": {}, "note": {}}},
            )
        ]
    )


def events(state: StateDir, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
    with sqlite3.connect(state.database) as conn:
        return [
            (rid, json.loads(d))
            for rid, d in conn.execute("SELECT request_id, data FROM audit_events WHERE type = ? ORDER BY seq", (kind,))
        ]


async def refunds(cfg: GuardConfig, state: StateDir, amounts: list[Any], **kwargs: Any) -> list[str | None]:
    up = refund_upstream()
    async with running_guard(cfg, state, clock=FakeClock(), inprocess={"shop": up.server}, **kwargs) as guard:
        async with Client(guard.server) as client:
            reasons = [
                reason_of(await client.call_tool("shop__refund", {"text": "r", "amount": a, "note": "sekrit"}))
                for a in amounts
            ]
        assert guard.policy.describe().startswith("policy shop@1")
    assert [c[1]["amount"] for c in up.calls] == [a for a, r in zip(amounts, reasons, strict=True) if r is None]
    return reasons


async def test_disagreements_are_audited_and_the_live_outcome_is_unchanged(state: StateDir, tmp_path: Path) -> None:
    reasons = await refunds(shadowed(state, tmp_path), state, [5, 50, 500, 5000])
    # live (v1): 5 and 50 allowed, 500 waits for an approver, 5000 denied; exactly as without a shadow
    assert reasons == [None, None, "pending_approval", "amount_exceeds_policy_limit"]
    [(request_id, data)] = events(state, "policy.shadow_disagreed")  # only 50: the candidate would ask a human
    decided = dict(events(state, "call.decided"))
    assert decided[request_id]["effect"] == "allow" and decided[request_id]["rule_id"] == "refund-small"
    assert data["live"] == {
        "effect": "allow",
        "rule_id": "refund-small",
        "reason": "policy_allow",
        "policy": "shop@1",
        "step_up": False,
        "approvers": None,
    }
    assert data["shadow"] == {
        "effect": "approve",
        "rule_id": "refund-medium",
        "reason": "approval_required",
        "policy": "shop@2",
        "step_up": False,
        "approvers": "support_leads",
    }
    assert data["action"] == "refund.create" and data["payload_hash"].startswith("sha256:")
    with sqlite3.connect(state.database) as conn:  # no argument value in the record
        [(text,)] = conn.execute("SELECT data FROM audit_events WHERE type = 'policy.shadow_disagreed'").fetchall()
    assert "sekrit" not in text and "50" not in json.dumps([data["live"], data["shadow"], data["action"]])
    [(_, loaded)] = [e for e in events(state, "policy.loaded") if e[1].get("shadow")]
    assert loaded["policy"] == "shop@2"


async def test_a_candidate_that_does_not_verify_changes_nothing_and_is_reported(
    state: StateDir,
    tmp_path: Path,
) -> None:
    reasons = await refunds(shadowed(state, tmp_path, tamper=True), state, [5, 50, 5000])
    assert reasons == [None, None, "amount_exceeds_policy_limit"]
    assert events(state, "policy.shadow_disagreed") == []
    [(_, refused)] = events(state, "policy.refused")
    assert refused["shadow"] is True and refused["reason"] == "digest_mismatch"
    [(_, start)] = events(state, "guard.start")
    assert "shadow candidate refused" in start["policy"] and start["policy_status"] == "loaded"


async def test_a_candidate_that_fails_on_a_call_never_denies_it(
    state: StateDir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = shadowed(state, tmp_path)
    from guard_mcp._policy import _engine

    def broken(*args: Any) -> bool:
        raise RuntimeError("the shadow's comparison blew up")

    monkeypatch.setattr(_engine, "_differs", broken)
    assert await refunds(cfg, state, [5, 50]) == [None, None]
    assert events(state, "policy.shadow_disagreed") == [] and events(state, "call.error") == []


async def test_a_candidate_that_cannot_decide_counts_as_the_deny_a_live_engine_would_answer(
    state: StateDir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = shadowed(state, tmp_path)
    from guard_mcp._policy._host import WasmEvaluator

    real = WasmEvaluator.decide_raw

    def out_of_fuel(self: WasmEvaluator, request: bytes, **kw: Any) -> bytes:
        if self.label == "shop@2":
            raise RuntimeError("out of fuel")
        return real(self, request, **kw)

    monkeypatch.setattr(WasmEvaluator, "decide_raw", out_of_fuel)
    assert await refunds(cfg, state, [5]) == [None]
    [(_, data)] = events(state, "policy.shadow_disagreed")
    assert (data["live"]["effect"], data["shadow"]["effect"], data["shadow"]["reason"]) == (
        "allow",
        "deny",
        "policy_engine_error",
    )


def test_the_policy_mapping_takes_only_bundle_and_shadow(state: StateDir) -> None:
    cfg = config_from("guard: {policy: {shadow: c.json}}", state)
    assert (cfg.guard.policy, cfg.guard.shadow_policy) == (None, "c.json")
    with pytest.raises(ConfigError, match=r"unknown key `shdow` under `policy`; write `policy: \{bundle"):
        config_from("guard: {policy: {bundle: a.json, shdow: c.json}}", state)
