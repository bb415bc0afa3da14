"""Property tests: the sandboxed evaluator agrees with the plain-Python reference, and no failure
inside an evaluation (fuel, corrupted output) ever turns into an allow."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import yaml
from _policy_kit import Signer, action, config_for, make_signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard_mcp._models import ActionBundle, BlastRadius, Category, Decision, Effect, Reversibility, Risk, Sensitivity
from guard_mcp._policy import PolicyEngine, bundle_bytes, compile_policy, sign_bundle, signature_path
from guard_mcp._policy._decision import request_dict
from guard_mcp._policy._reference import reference_decide
from guard_mcp._state import StateDir

ACTIONS = ["refund.create", "refund.void", "order.read", "email.send"]
GLOBS = [*ACTIONS, "refund.*", "*.read", "*", "order.*d", "*e*"]
ARG_PATHS = ["amount", "code", "nested.x", "nested"]
STRINGS = ["", "a", "ab", "gold", "silver", "k-1", "é"]

_SIGNER: Signer | None = None
_COUNTER = itertools.count()


def _signer() -> Signer:
    global _SIGNER
    if _SIGNER is None:
        _SIGNER = make_signer(Path(tempfile.mkdtemp()) / "keys")
    return _SIGNER


# Policies carry numbers JSON holds exactly (the compiler refuses others); arguments may be anything.
numbers = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.integers(-5, 2000),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)
wide_numbers = st.one_of(numbers, st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
strings = st.one_of(st.sampled_from(STRINGS), st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=4))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
# Paths for `under`: escapes, doubled and trailing slashes, relative ones, a NUL, and random ones of `/.ab`.
PATHS = [
    "/",
    "/a",
    "/a/b",
    "/ab",
    "/a/../b",
    "/a/b/../../a/c",
    "a/b",
    "//a/b",
    "/a/./b/",
    "/srv/data/x",
    "/srv/data/../etc",
    "/../a",
    "/a\x00",
]
paths = st.one_of(st.sampled_from(PATHS), st.text(alphabet="/.ab", max_size=8))
roots = st.sampled_from(["/", "/a", "/a/b", "/srv/data", "/a/", "//a", "/a/./b"])


@st.composite
def leaf_conditions(draw: st.DrawFn) -> dict[str, Any]:
    arg = draw(st.sampled_from(ARG_PATHS))
    op = draw(st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "prefix", "under", "exists"]))
    if op in ("lt", "le", "gt", "ge"):
        value: Any = draw(numbers)
    elif op in ("eq", "ne"):
        value = draw(scalars)
    elif op in ("in", "not_in"):
        kind = draw(st.sampled_from([numbers, strings, st.booleans(), st.none()]))
        value = draw(st.lists(kind, min_size=1, max_size=4))
    elif op == "prefix":
        value = draw(strings)
    elif op == "under":
        value = draw(roots)
    else:
        value = draw(st.booleans())
    return {"arg": arg, op: value}


conditions = st.recursive(
    leaf_conditions(),
    lambda inner: st.one_of(
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
    ),
    max_leaves=6,
)


@st.composite
def matches(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if draw(st.booleans()):
        m["action"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2))
    if draw(st.booleans()):
        m["upstream"] = draw(st.sampled_from(["shop", "sh*", "other"]))
    if draw(st.integers(0, 3)) == 0:
        m["tool"] = draw(st.sampled_from(["refund", "lookup", "*"]))
    if draw(st.integers(0, 3)) == 0:
        m["actor"] = draw(st.sampled_from(["alice", "b*"]))
    if draw(st.integers(0, 2)) == 0:
        m["category"] = draw(st.lists(st.sampled_from([c.value for c in Category]), min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        m["tier"] = draw(st.lists(st.sampled_from(["LOW", "MEDIUM", "HIGH"]), min_size=1, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        lo = draw(st.integers(0, 100))
        m["score"] = {"min": lo, "max": draw(st.integers(lo, 100))}
    return m


@st.composite
def effects(draw: st.DrawFn) -> dict[str, Any]:
    effect = draw(st.sampled_from(["allow", "deny", "approve"]))
    out: dict[str, Any] = {"effect": effect}
    if draw(st.booleans()):
        out["reason"] = draw(st.sampled_from(["r_one", "r_two", "limit_hit"]))
    if effect == "approve":
        if draw(st.booleans()):
            out["approvers"] = draw(st.sampled_from(["leads", "admins"]))
        if draw(st.booleans()):
            out["approval_ttl"] = draw(st.sampled_from(["90s", "2h", 30]))
        out["step_up"] = draw(st.booleans())
    if effect != "deny" and draw(st.booleans()):
        out["permit_ttl"] = draw(st.integers(1, 3600))
    return out


@st.composite
def policies(draw: st.DrawFn) -> str:
    rules = []
    for i in range(draw(st.integers(0, 6))):
        rule: dict[str, Any] = {"id": f"r{i}", "match": draw(matches()), **draw(effects())}
        if draw(st.booleans()):
            rule["when"] = draw(conditions)
        rules.append(rule)
    doc = {
        "policy": "prop",
        "version": next(_COUNTER) + 1,
        "default": draw(effects()),
        "tier_defaults": draw(st.booleans()),
        "rules": rules,
    }
    return yaml.safe_dump(doc, allow_unicode=True)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), wide_numbers, strings, paths),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2)
    ),
    max_leaves=4,
)


@st.composite
def requests(draw: st.DrawFn) -> ActionBundle:
    args = draw(st.dictionaries(st.sampled_from(["amount", "code", "nested", "other"]), json_values, max_size=4))
    return action(
        draw(st.sampled_from(ACTIONS)),
        args,
        category=draw(st.sampled_from(list(Category))),
        reversibility=draw(st.sampled_from(list(Reversibility))),
        blast_radius=draw(st.sampled_from(list(BlastRadius))),
        sensitivity=draw(st.sampled_from(list(Sensitivity))),
        upstream=draw(st.sampled_from(["shop", "other"])),
        tool=draw(st.sampled_from(["refund", "lookup"])),
        principal=draw(st.sampled_from(["alice", "bob"])),
    )


def _as_reference(risk: Risk, d: Decision, skipped: int) -> dict[str, Any]:
    return {
        "policy": d.policy,
        "risk": {"score": risk.score, "tier": risk.tier.value, "factors": risk.factors},
        "effect": d.effect.value,
        "rule": d.rule_id,
        "reason": d.reason,
        "approvers": d.approvers,
        "approval_ttl": d.approval_ttl,
        "permit_ttl": d.permit_ttl,
        "step_up": d.step_up,
        "trace": [{"rule": t.rule_id, "matched": t.matched, "why": t.why} for t in d.trace],
        "skipped": skipped,
    }


def _load(source: str, root: Path) -> tuple[PolicyEngine, dict[str, Any]]:
    """compile → sign → verify → load, exactly as the guard does it."""
    bundle = compile_policy(source)
    path = root / "p.bundle.json"
    data = bundle_bytes(bundle)
    path.write_bytes(data)
    signature_path(path).write_text(sign_bundle(data, _signer().key))
    engine = PolicyEngine.from_config(config_for(path, _signer().public_pem), StateDir(root / "state").ensure())
    assert engine.status == "loaded", engine.describe()
    return engine, bundle


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=policies(), reqs=st.lists(requests(), min_size=1, max_size=5))
def test_the_sandbox_agrees_with_the_reference(source: str, reqs: list[ActionBundle]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine, bundle = _load(source, Path(tmp))
        for req in reqs:
            expected = reference_decide(bundle, request_dict(req), full_trace=True)
            risk, d = engine.decide(req, full_trace=True)
            assert _as_reference(risk, d, 0) == expected
            # the short trace is the full one without the rules whose `match` did not fit
            risk, short = engine.decide(req)
            assert short.model_copy(update={"trace": d.trace}) == d
            assert [t for t in d.trace if t.why.endswith("does not match") or t.why == "score out of range"] == [
                t for t in d.trace if t not in short.trace
            ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=policies(),
    req=requests(),
    fuel=st.sampled_from([1, 300, 3_000, 30_000, 10_000_000]),
    corrupt=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(1, 255))),
)
def test_an_error_in_evaluation_never_allows(
    source: str, req: ActionBundle, fuel: int, corrupt: tuple[int, int] | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine, bundle = _load(source, Path(tmp))
        expected = reference_decide(bundle, request_dict(req))
        serving = engine._serving
        assert serving is not None
        serving.evaluator.fuel = fuel
        if corrupt is not None:
            original = serving.evaluator.decide_raw
            at, xor = corrupt

            def corrupted(request: bytes, *, full_trace: bool = False) -> bytes:
                raw = bytearray(original(request, full_trace=full_trace))
                raw[at % len(raw)] ^= xor
                return bytes(raw)

            serving.evaluator.decide_raw = corrupted  # type: ignore[method-assign]
        _, d = engine.decide(req)
        if d.reason == "policy_engine_error":
            assert d.effect is Effect.DENY
        elif d.effect is Effect.ALLOW:
            assert expected["effect"] == "allow"
            assert d.rule_id == expected["rule"]
        if corrupt is None and d.reason != "policy_engine_error":
            assert d.effect.value == expected["effect"]


def test_every_risk_combination_matches_the_reference() -> None:
    from guard_mcp._models import ActionSchema
    from guard_mcp._policy._reference import reference_risk

    with tempfile.TemporaryDirectory() as tmp:
        engine = PolicyEngine.from_config(config_for(None), StateDir(Path(tmp)).ensure())
        for c, r, b, s in itertools.product(Category, Reversibility, BlastRadius, Sensitivity):
            risk = engine.score(ActionSchema(action="a.b", category=c, reversibility=r, blast_radius=b, sensitivity=s))
            assert {"score": risk.score, "tier": risk.tier.value, "factors": risk.factors} == reference_risk(
                c.value, r.value, b.value, s.value
            )
