"""The verifier's contract: what a valid permit is, the order of the checks, and the result shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from permit_kit import REFUND, Guard, resign

from guard_mcp._clock import FakeClock
from guard_mcp.verify import (
    MAX_LEEWAY,
    MAX_PERMIT_TTL,
    REASONS,
    REPLAY_MEMORY,
    MemoryReplayStore,
    PermitVerifier,
    SqliteReplayStore,
    VerifyResult,
)


@pytest.fixture
def guard(tmp_path: Path, clock: FakeClock) -> Guard:
    return Guard.create(tmp_path / "keys", clock)


def test_a_permit_is_valid_for_its_own_call(guard: Guard) -> None:
    minted = guard.mint()
    result = guard.verifier().verify(minted.token, action="refund.create", arguments=dict(REFUND))
    assert result == VerifyResult(valid=True, reason=None, claims=minted.claims)


def test_argument_order_and_spelling_of_numbers_do_not_matter(guard: Guard) -> None:
    minted = guard.mint()
    reordered = {"reason": REFUND["reason"], "amount": 350.0, "customer_id": REFUND["customer_id"]}
    assert guard.verifier().verify(minted.token, action="refund.create", arguments=reordered).valid


def test_no_permit_is_missing(guard: Guard) -> None:
    for token in (None, ""):
        result = guard.verifier().verify(token, action="refund.create", arguments=REFUND)
        assert (result.valid, result.reason, result.claims) == (False, "missing", None)


def test_a_non_string_permit_is_malformed(guard: Guard) -> None:
    for token in (42, {"permit": "x"}, b"abc.def.ghi"):
        assert guard.verifier().verify(token, action="refund.create", arguments=REFUND).reason == "malformed"  # type: ignore[arg-type]


def test_the_earliest_failing_check_names_the_reason(guard: Guard, clock: FakeClock) -> None:
    minted = guard.mint()
    v = guard.verifier()
    # wrong issuer and expired: the issuer is checked first
    clock.advance(1000)
    assert v.verify(resign(guard, minted.token, iss="evil"), action="refund.create", arguments=REFUND).reason == (
        "wrong_issuer"
    )
    clock.advance(-1000)
    # wrong environment and wrong audience
    token = resign(guard, minted.token, env="sandbox", aud="crm")
    assert v.verify(token, action="refund.create", arguments=REFUND).reason == "wrong_environment"
    # wrong audience and wrong action
    token = resign(guard, minted.token, aud="crm")
    assert v.verify(token, action="customer.delete", arguments=REFUND).reason == "wrong_audience"
    # expired and wrong action
    clock.advance(301)
    assert v.verify(minted.token, action="customer.delete", arguments=REFUND).reason == "expired"
    clock.advance(-301)
    # wrong action and other arguments
    assert v.verify(minted.token, action="customer.delete", arguments={}).reason == "wrong_action"


def test_a_refused_attempt_does_not_burn_the_permit(guard: Guard) -> None:
    minted = guard.mint()
    v = guard.verifier()
    assert v.verify(minted.token, action="refund.create", arguments={**REFUND, "amount": 3500}).reason == (
        "payload_mismatch"
    )
    assert v.verify(minted.token, action="customer.delete", arguments=REFUND).reason == "wrong_action"
    assert v.verify(minted.token, action="refund.create", arguments=REFUND).valid


def test_claims_are_only_handed_out_once_the_signature_verified(guard: Guard) -> None:
    minted = guard.mint()
    v = guard.verifier()
    forged = minted.token[:-4] + ("AAAA" if not minted.token.endswith("AAAA") else "BBBA")
    assert v.verify(forged, action="refund.create", arguments=REFUND).claims is None
    refused = v.verify(minted.token, action="customer.delete", arguments=REFUND)
    assert refused.reason == "wrong_action"
    assert refused.claims == minted.claims


def test_leeway_tolerates_that_much_skew_and_no_more(guard: Guard, clock: FakeClock) -> None:
    v = guard.verifier(leeway=5)
    early = resign(guard, guard.mint().token, nbf=int(clock.now()) + 4, iat=int(clock.now()) + 4)
    assert v.verify(early, action="refund.create", arguments=REFUND).valid
    late = guard.mint()
    clock.advance(304)
    assert v.verify(late.token, action="refund.create", arguments=REFUND).valid
    clock.advance(-304)
    too_late = guard.mint()
    clock.advance(305)
    assert v.verify(too_late.token, action="refund.create", arguments=REFUND).reason == "expired"


def test_a_permit_issued_in_the_future_is_not_yet_valid(guard: Guard, clock: FakeClock) -> None:
    token = resign(guard, guard.mint().token, iat=int(clock.now()) + 60)
    assert guard.verifier().verify(token, action="refund.create", arguments=REFUND).reason == "not_yet_valid"


def test_arguments_json_cannot_carry_match_nothing(guard: Guard) -> None:
    minted = guard.mint()
    result = guard.verifier().verify(minted.token, action="refund.create", arguments={"amount": float("nan")})
    assert result.reason == "payload_mismatch"


def test_a_crashing_replay_store_refuses(guard: Guard) -> None:
    class Broken(MemoryReplayStore):
        def consume(self, jti: str, exp: float) -> bool:
            raise OSError("disk full")

    result = guard.verifier(replay_store=Broken()).verify(guard.mint().token, action="refund.create", arguments=REFUND)
    assert (result.valid, result.reason) == (False, "replayed")


def test_inspect_checks_what_does_not_depend_on_the_call(guard: Guard, clock: FakeClock) -> None:
    minted = guard.mint()
    v = guard.verifier(audience="somewhere-else")
    assert v.inspect(minted.token).valid
    assert v.inspect(minted.token).valid  # consumes nothing
    assert v.inspect(resign(guard, minted.token, iss="evil")).reason == "wrong_issuer"
    clock.advance(300)
    assert v.inspect(minted.token).reason == "expired"


def test_reason_codes_are_a_pinned_contract() -> None:
    assert {
        "missing",
        "malformed",
        "bad_signature",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "wrong_environment",
        "wrong_action",
        "wrong_tool",
        "payload_mismatch",
        "replayed",
    } == REASONS


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("leeway", -1),
        ("leeway", float("nan")),
        ("leeway", float("inf")),
        ("leeway", MAX_LEEWAY + 1),
        ("jwks_ttl", 0),
        ("jwks_ttl", float("nan")),
        ("jwks_ttl", float("inf")),
    ],
)
def test_bad_settings_are_refused_at_construction(guard: Guard, setting: str, value: float) -> None:
    # NaN compares false with everything: as a leeway it would switch expiry off.
    with pytest.raises(ValueError, match=f"{setting} `"):
        settings: dict[str, Any] = {setting: value}
        PermitVerifier(guard.keys.jwks(), issuer="i", audience="a", environment="e", **settings)


def test_the_tool_is_checked_when_the_caller_names_it(guard: Guard) -> None:
    minted = guard.mint(tool="refund")
    v = guard.verifier()
    assert v.verify(minted.token, action="refund.create", arguments=REFUND, tool="goodwill_credit").reason == (
        "wrong_tool"
    )
    assert v.verify(minted.token, action="refund.create", arguments=REFUND, tool="refund").valid


def test_attack_a_permit_living_longer_than_any_guard_mints_is_malformed(guard: Guard) -> None:
    # Only someone holding a signing key makes one; the cap bounds what a leaked key can do.
    iat = guard.mint().claims["iat"]
    v = guard.verifier()
    too_long = resign(guard, guard.mint().token, exp=iat + MAX_PERMIT_TTL + 1)
    assert v.verify(too_long, action="refund.create", arguments=REFUND).reason == "malformed"
    longest = resign(guard, guard.mint().token, exp=iat + MAX_PERMIT_TTL)
    assert v.verify(longest, action="refund.create", arguments=REFUND).valid


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_attack_a_used_permit_stays_used_for_verifiers_with_more_leeway_and_after_the_clock_steps_back(
    guard: Guard, clock: FakeClock, tmp_path: Path, store: str
) -> None:
    shared = MemoryReplayStore(clock) if store == "memory" else SqliteReplayStore(tmp_path / "jti.db", clock=clock)
    minted = guard.mint()
    strict = guard.verifier(replay_store=shared)
    lenient = guard.verifier(replay_store=shared, leeway=60)
    clock.advance(299)
    assert strict.verify(minted.token, action="refund.create", arguments=REFUND).valid
    clock.advance(10)  # past `exp` for the strict worker, inside the lenient one's leeway
    assert lenient.verify(minted.token, action="refund.create", arguments=REFUND).reason == "replayed"
    clock.advance(REPLAY_MEMORY - 100)  # long after: both have swept the expired entries
    assert strict.verify(guard.mint().token, action="refund.create", arguments=REFUND).valid
    clock.advance(-(REPLAY_MEMORY - 100) - 200)  # an NTP step back: the permit is inside its window again
    assert strict.verify(minted.token, action="refund.create", arguments=REFUND).reason == "replayed"


def test_importing_the_verifier_pulls_in_neither_pydantic_nor_the_mcp_sdk() -> None:
    # An upstream imports only `guard_mcp.verify`; the docstring promises cryptography and rfc8785 only.
    probe = (
        "import sys, guard_mcp.verify; "
        "print(sorted(m for m in ('pydantic', 'mcp', 'wasmtime', 'aiosqlite', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_still_exports_its_contracts() -> None:
    import guard_mcp
    from guard_mcp._models import Decision, Tier

    assert guard_mcp.Decision is Decision and guard_mcp.Tier is Tier
    with pytest.raises(AttributeError, match="no attribute `Nope`"):
        guard_mcp.Nope  # noqa: B018
