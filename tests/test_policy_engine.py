"""PolicyEngine: loading, refusing, hot reload, and denying whenever anything goes wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _policy_kit import Signer, action, config_for, make_signer, sha256, shop_source, write_bundle

from guard_mcp._config import load_config
from guard_mcp._models import ActionSchema, Category, Effect, Reversibility, Sensitivity, Tier
from guard_mcp._policy import (
    PolicyEngine,
    VersionLedger,
    bundle_bytes,
    compile_policy,
    load_verified,
    sign_bundle,
    signature_path,
)
from guard_mcp._policy._host import WasmEvaluator
from guard_mcp._state import StateDir


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.seen.append((name, data))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys")


def _engine(
    tmp_path: Path, state: StateDir, signer: Signer, version: int = 1, **kw: Any
) -> tuple[PolicyEngine, Path, Events]:
    path = tmp_path / "shop.bundle.json"
    if not path.exists():
        write_bundle(path, shop_source(version), signer)
    events = Events()
    engine = PolicyEngine.from_config(config_for(path, signer.public_pem), state, on_event=events, **kw)
    return engine, path, events


def _bump(path: Path, source: str, signer: Signer | None) -> None:
    write_bundle(path, source, signer)
    # make sure the change is visible even on filesystems with coarse timestamps
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_signed_policy_loads_and_decides(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, path, events = _engine(tmp_path, state, signer, version=4)
    assert engine.status == "loaded"
    assert "shop@4" in engine.describe()
    assert events.names() == ["policy_loaded"]
    assert events.seen[0][1]["sha256"] == sha256(path.read_bytes())

    risk, d = engine.decide(action(arguments={"amount": 50}))
    assert (d.effect, d.rule_id, d.policy, d.policy_sha256) == (
        Effect.ALLOW,
        "refund-small",
        "shop@4",
        sha256(path.read_bytes()),
    )
    assert risk.tier is Tier.HIGH  # financial is always HIGH
    _, d = engine.decide(action(arguments={"amount": 500}))
    assert (d.effect, d.approvers, d.approval_ttl) == (Effect.APPROVE, "support_leads", 7200)
    _, d = engine.decide(action(arguments={"amount": 5000}))
    assert (d.effect, d.reason) == (Effect.DENY, "amount_exceeds_policy_limit")
    assert [t.rule_id for t in d.trace] == ["refund-small", "refund-medium", "refund-large"]


def test_a_missing_argument_never_grants(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, _, _ = _engine(tmp_path, state, signer)
    for args in ({}, {"amount": "50"}, {"amount": None}, {"amount": {"value": 50}}, {"amount": True}):
        _, d = engine.decide(action(arguments=args))
        assert d.effect is Effect.DENY, args
        assert d.reason == "amount_exceeds_policy_limit"


def test_no_policy_means_loud_tier_defaults(state: StateDir) -> None:
    engine = PolicyEngine.from_config(config_for(None), state)
    assert engine.status == "defaults"
    assert "NO POLICY CONFIGURED" in engine.describe()
    read = action("order.read", category=Category.READ, reversibility=Reversibility.FULL)
    assert engine.decide(read)[1].effect is Effect.ALLOW
    _, d = engine.decide(
        action("x.write", category=Category.WRITE, reversibility=Reversibility.FULL, sensitivity=Sensitivity.RESTRICTED)
    )
    assert (d.effect, d.step_up) == (Effect.APPROVE, False)
    _, d = engine.decide(action())
    assert (d.effect, d.step_up, d.reason) == (Effect.APPROVE, True, "tier_default_high")


@pytest.mark.parametrize("attack", ["flip", "unsign", "foreign"])
def test_a_configured_policy_that_fails_is_refused_never_defaulted(
    tmp_path: Path, state: StateDir, signer: Signer, attack: str
) -> None:
    path = tmp_path / "shop.bundle.json"
    write_bundle(path, shop_source(), signer)
    if attack == "flip":
        path.write_bytes(path.read_bytes().replace(b'"le","value":100', b'"le","value":900'))
    elif attack == "unsign":
        signature_path(path).unlink()
    else:
        write_bundle(path, shop_source(), make_signer(tmp_path / "m", "mallory"))
    engine, _, events = _engine(tmp_path, state, signer)
    assert engine.status == "refused"
    assert events.names() == ["policy_refused"]
    assert "POLICY REFUSED" in engine.describe()
    for args in ({"amount": 1}, {"amount": 5000}):
        _, d = engine.decide(action(arguments=args))
        assert (d.effect, d.reason) == (Effect.DENY, "policy_unavailable")
    read = action("order.read", category=Category.READ, reversibility=Reversibility.FULL)
    assert engine.decide(read)[1].effect is Effect.DENY  # the defaults would have allowed it


def test_hot_reload_swaps_to_a_newer_signed_version(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, path, events = _engine(tmp_path, state, signer, version=1)
    assert engine.reload_if_changed() is False  # nothing changed
    _bump(path, shop_source(2).replace("le: 100}", "le: 10}"), signer)
    assert engine.reload_if_changed() is True
    assert events.names() == ["policy_loaded", "policy_loaded"]
    _, d = engine.decide(action(arguments={"amount": 50}))
    assert (d.effect, d.policy) == (Effect.APPROVE, "shop@2")


def test_a_refused_reload_keeps_the_old_version_serving(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, path, events = _engine(tmp_path, state, signer, version=2)
    _bump(path, shop_source(3).replace("le: 100}", "le: 100000}"), None)  # new bundle, old signature
    assert engine.reload_if_changed() is False
    assert events.names() == ["policy_loaded", "policy_refused"]
    assert events.seen[1][1]["reason"] == "digest_mismatch"
    assert events.seen[1][1]["serving"] == "shop@2"
    assert engine.status == "loaded" and "refused" in engine.describe()
    _, d = engine.decide(action(arguments={"amount": 5000}))
    assert (d.effect, d.policy) == (Effect.DENY, "shop@2")
    assert engine.reload_if_changed() is False  # the same refused files are not re-reported
    assert events.names() == ["policy_loaded", "policy_refused"]


def test_rollback_on_reload_is_refused(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, path, events = _engine(tmp_path, state, signer, version=5)
    _bump(path, shop_source(4), signer)
    assert engine.reload_if_changed() is False
    assert events.seen[-1][1]["reason"] == "rollback"
    # and after a restart too: the accepted version is persisted in the state directory
    restarted = PolicyEngine.from_config(config_for(path, signer.public_pem), state)
    assert restarted.status == "refused"


def test_a_refused_guard_recovers_when_a_good_bundle_appears(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    path = tmp_path / "shop.bundle.json"
    write_bundle(path, shop_source(1), None)
    engine, _, _ = _engine(tmp_path, state, signer)
    before = engine.status
    assert before == "refused"
    _bump(path, shop_source(1), signer)
    os.utime(signature_path(path), ns=(0, 10**18))
    assert engine.reload_if_changed() is True
    assert engine.status == "loaded"
    assert engine.decide(action(arguments={"amount": 1}))[1].effect is Effect.ALLOW


def test_an_in_flight_decision_keeps_its_version(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    """A reload during a decision: the call finishes on the evaluator it started with."""
    engine, path, _ = _engine(tmp_path, state, signer, version=1)
    serving = engine._serving
    assert serving is not None
    original = serving.evaluator.decide_raw

    def decide_while_reloading(request: bytes, *, full_trace: bool = False) -> bytes:
        _bump(path, shop_source(2).replace("le: 100}", "le: 1}"), signer)
        assert engine.reload_if_changed() is True
        return original(request, full_trace=full_trace)

    serving.evaluator.decide_raw = decide_while_reloading  # type: ignore[method-assign]
    _, d = engine.decide(action(arguments={"amount": 50}))
    assert (d.effect, d.policy) == (Effect.ALLOW, "shop@1")
    _, d = engine.decide(action(arguments={"amount": 50}))
    assert (d.effect, d.policy) == (Effect.APPROVE, "shop@2")


def test_fuel_exhaustion_denies_and_the_engine_recovers(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, _, _ = _engine(tmp_path, state, signer, fuel=500)
    _, d = engine.decide(action(arguments={"amount": 1}))
    assert (d.effect, d.reason) == (Effect.DENY, "policy_engine_error")
    assert "ran out of fuel" in d.trace[0].why
    assert d.policy == "shop@1"
    # the same engine with a sane budget decides normally after the trap (its Store was rebuilt)
    serving = engine._serving
    assert serving is not None
    serving.evaluator.fuel = 10_000_000
    assert engine.decide(action(arguments={"amount": 1}))[1].effect is Effect.ALLOW


def test_a_policy_too_costly_for_its_fuel_budget_denies(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    """A crafted (signed, under the size limit) bundle whose evaluation burns through the budget."""
    bundle = compile_policy("policy: heavy\nversion: 1\nrules:\n- {id: r, when: {arg: code, in: [a]}, effect: allow}")
    template = bundle["rules"][0]
    template["when"]["value"] = [f"k{i:05d}" for i in range(5000)]
    bundle["rules"] = [{**template, "id": f"r{i}"} for i in range(40)]
    path = tmp_path / "shop.bundle.json"
    data = bundle_bytes(bundle)
    path.write_bytes(data)
    signature_path(path).write_text(sign_bundle(data, signer.key))
    engine, _, _ = _engine(tmp_path, state, signer, fuel=2_000_000)
    assert engine.status == "loaded"
    _, d = engine.decide(action(arguments={"code": "nope"}))
    assert (d.effect, d.reason) == (Effect.DENY, "policy_engine_error")
    assert "ran out of fuel" in d.trace[0].why


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"not json",
        b"[]",
        b'{"error": "boom"}',
        b'{"policy": "shop@1", "effect": "allow"}',
        b'{"policy": "other@9", "risk": {"score": 1, "tier": "LOW", "factors": {}}, "effect": "allow", "rule": null,'
        b' "reason": "x", "approvers": null, "approval_ttl": null, "permit_ttl": 300, "step_up": false, "trace": []}',
        b'{"policy": "shop@1", "risk": {"score": 1, "tier": "LOW", "factors": {}}, "effect": "ALLOW", "rule": null,'
        b' "reason": "x", "approvers": null, "approval_ttl": null, "permit_ttl": 300, "step_up": false, "trace": []}',
        b'{"policy": "shop@1", "risk": {"score": 1, "tier": "LOW", "factors": {}}, "effect": "allow", "rule": null,'
        b' "reason": "x", "approvers": null, "approval_ttl": null, "permit_ttl": -1, "step_up": false, "trace": []}',
    ],
)
def test_malformed_module_output_denies(
    tmp_path: Path, state: StateDir, signer: Signer, answer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _, _ = _engine(tmp_path, state, signer)
    serving = engine._serving
    assert serving is not None
    monkeypatch.setattr(serving.evaluator, "decide_raw", lambda request, full_trace=False: answer)
    _, d = engine.decide(action(arguments={"amount": 1}))
    assert (d.effect, d.reason) == (Effect.DENY, "policy_engine_error")


def test_unencodable_arguments_deny(tmp_path: Path, state: StateDir, signer: Signer) -> None:
    engine, _, _ = _engine(tmp_path, state, signer)
    for args in ({"amount": float("nan")}, {"amount": 1, "x": "\ud800"}, {"amount": 1, "x": object()}):
        bundle = action(arguments={}).model_copy(update={"arguments": args})
        risk, d = engine.decide(bundle)
        assert (d.effect, d.reason) == (Effect.DENY, "policy_engine_error"), args
        assert risk.tier is Tier.HIGH


def test_score_matches_the_architecture_floors(state: StateDir) -> None:
    engine = PolicyEngine.from_config(config_for(None), state)
    assert engine.score(ActionSchema.unknown("shop", "mystery")).tier is Tier.HIGH
    unknown_but_mild = ActionSchema(
        action="a.b",
        category=Category.UNKNOWN,
        reversibility=Reversibility.FULL,
        blast_radius="single",
        sensitivity="public",
    )
    assert engine.score(unknown_but_mild).tier is Tier.MEDIUM
    mild_money = unknown_but_mild.model_copy(update={"category": Category.FINANCIAL})
    assert engine.score(mild_money).tier is Tier.HIGH
    read = unknown_but_mild.model_copy(update={"category": Category.READ})
    assert (engine.score(read).score, engine.score(read).tier) == (0, Tier.LOW)


def test_the_compiled_module_is_cached_in_the_state_dir(tmp_path: Path, state: StateDir) -> None:
    from guard_mcp._policy import _host

    _host._compiled.clear()
    PolicyEngine.from_config(config_for(None), state)
    cached = list((state.root / "cache").glob("policy-*.cwasm"))
    assert len(cached) == 1
    assert cached[0].stat().st_mode & 0o077 == 0
    _host._compiled.clear()
    cached[0].write_bytes(b"garbage")  # a damaged cache is recompiled, not trusted
    engine = PolicyEngine.from_config(config_for(None), state)
    assert engine.status == "defaults"
    assert cached[0].read_bytes() != b"garbage"


def test_the_embedded_demo_config_loads_the_signed_demo_policy(state: StateDir) -> None:
    demo = Path(__file__).parent.parent / "guard_mcp" / "demo" / "upstreams.yaml"
    config = load_config(demo, environ={"GUARD_STATE_DIR": str(state.root), "PYTHON": "python"})
    engine = PolicyEngine.from_config(config, state)
    assert engine.status == "loaded", engine.describe()
    refund = config.action_schema("shop", "refund")
    assert engine.score(refund).tier is Tier.HIGH
    _, d = engine.decide(action(arguments={"customer_id": "c-1", "amount": 100}))
    assert (d.effect, d.rule_id) == (Effect.ALLOW, "refund-small")
    _, d = engine.decide(action("role.grant", {"user": "bob", "role": "admin"}, category=Category.PERMISSION))
    assert (d.effect, d.step_up) == (Effect.APPROVE, True)


def test_a_module_that_will_not_load_the_bundle_is_refused(
    tmp_path: Path, state: StateDir, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from guard_mcp._errors import PolicyError
    from guard_mcp._policy import _engine as engine_module

    class Broken(WasmEvaluator):
        def __init__(self, *a: Any, **kw: Any) -> None:
            raise PolicyError("the policy module refused the bundle: test")

    monkeypatch.setattr(engine_module, "WasmEvaluator", Broken)
    engine, _, events = _engine(tmp_path, state, signer)
    assert engine.status == "refused"
    assert engine.decide(action(arguments={"amount": 1}))[1].reason == "policy_unavailable"
    assert engine.score(ActionSchema(action="a.b", category=Category.READ)).tier is Tier.HIGH  # worst case
    assert events.seen[-1][1]["reason"] in {"malformed", "bad_trusted_key"}


def test_a_swapped_in_policy_of_another_name_is_refused_and_served_once_accepted(
    tmp_path: Path, state: StateDir, signer: Signer
) -> None:
    engine, path, events = _engine(tmp_path, state, signer, version=5)
    _bump(path, shop_source(1).replace("policy: shop", "policy: lab").replace("le: 100}", "le: 100000}"), signer)
    assert engine.reload_if_changed() is False
    assert events.seen[-1][1]["reason"] == "policy_switched"
    _, d = engine.decide(action(arguments={"amount": 5000}))
    assert d.policy == "shop@5"
    # `guard-mcp policy accept` records the switch; the running engine notices the ledger change
    verified, _ = load_verified(path, config_for(path, signer.public_pem), state, switching=True)
    VersionLedger(state).record(verified)
    assert engine.reload_if_changed() is True
    assert engine.decide(action(arguments={"amount": 5000}))[1].policy == "lab@1"
