from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from permit_kit import ENV, ISSUER, REFUND, Guard, bundle, decision, header_of

from guard_mcp._canonical import payload_hash
from guard_mcp._claims import OPTIONAL_STR_CLAIMS, STR_CLAIMS, TIME_CLAIMS, PermitClaims
from guard_mcp._clock import FakeClock
from guard_mcp._errors import PermitError
from guard_mcp._keys import KeyStore
from guard_mcp._models import Effect
from guard_mcp._permits import MAX_PERMIT_TTL, PermitIssuer
from guard_mcp.verify import PERMIT_TYP


@pytest.fixture
def guard(tmp_path: Path, clock: FakeClock) -> Guard:
    return Guard.create(tmp_path / "keys", clock)


def test_claims_bind_the_call(guard: Guard, clock: FakeClock) -> None:
    minted = guard.issuer.mint(bundle(), decision(ttl=120), approver="bob@example.com")
    now = int(clock.now())
    assert minted.claims == {
        "jti": minted.jti,
        "iss": ISSUER,
        "sub": "alice@example.com",
        "aud": "shop",
        "act": "refund.create",
        "tool": "refund",
        "payload_hash": payload_hash(REFUND),
        "policy": "shop@3",
        "policy_rule": "small-refunds",
        "approver": "bob@example.com",
        "env": ENV,
        "iat": now,
        "nbf": now,
        "exp": now + 120,
    }
    assert minted.exp == now + 120


def test_the_claims_are_those_of_the_one_contract_and_the_verifier_checks_each(guard: Guard) -> None:
    # The minter and the verifier both take the names from guard_mcp._claims: a claim added to one side
    # only would be minted unchecked, or required and never minted.
    minted = guard.issuer.mint(bundle(), decision(), approver="bob@example.com")
    assert set(minted.claims) == set(PermitClaims.__required_keys__) | set(PermitClaims.__optional_keys__)
    assert sorted([*STR_CLAIMS, *OPTIONAL_STR_CLAIMS, *TIME_CLAIMS]) == sorted(PermitClaims.__annotations__)
    assert set(OPTIONAL_STR_CLAIMS) == set(PermitClaims.__optional_keys__)


def test_auto_allowed_permit_names_no_approver(guard: Guard) -> None:
    assert "approver" not in guard.mint().claims


def test_header_names_the_current_key(guard: Guard) -> None:
    header = header_of(guard.mint().token)
    assert header == {"alg": "ES256", "kid": guard.keys.current().kid, "typ": PERMIT_TYP}


def test_output_is_a_standard_jws_pyjwt_verifies(guard: Guard, clock: FakeClock) -> None:
    minted = guard.mint()
    public = guard.keys.public_keys()[guard.keys.current().kid]
    claims = jwt.decode(
        minted.token,
        public,
        algorithms=["ES256"],
        audience="shop",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims == minted.claims


def test_the_signature_covers_the_claims(guard: Guard) -> None:
    header, _, sig = guard.mint().token.split(".")
    other_claims = guard.mint({**REFUND, "amount": 3500}).token.split(".")[1]
    public = guard.keys.public_keys()[guard.keys.current().kid]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{other_claims}.{sig}", public, algorithms=["ES256"], options={"verify_aud": False})


def test_every_permit_has_its_own_jti(guard: Guard) -> None:
    assert len({guard.mint().jti for _ in range(50)}) == 50


def test_a_denial_gets_no_permit(guard: Guard) -> None:
    with pytest.raises(PermitError, match="denied"):
        guard.issuer.mint(bundle(), decision(Effect.DENY))


def test_an_approval_without_an_approver_gets_no_permit(guard: Guard) -> None:
    with pytest.raises(PermitError, match="approver"):
        guard.issuer.mint(bundle(), decision(Effect.APPROVE))
    assert guard.issuer.mint(bundle(), decision(Effect.APPROVE), approver="bob").claims["approver"] == "bob"


def test_a_call_from_another_environment_gets_no_permit(guard: Guard) -> None:
    with pytest.raises(PermitError, match="`sandbox`"):
        guard.issuer.mint(bundle(environment="sandbox"), decision())


def test_a_key_made_for_another_environment_never_signs(tmp_path: Path, clock: FakeClock) -> None:
    KeyStore(tmp_path, clock, environment="sandbox").ensure()
    issuer = PermitIssuer(KeyStore(tmp_path, clock), issuer=ISSUER, environment=ENV, clock=clock)
    with pytest.raises(PermitError, match="belongs to environment `sandbox`"):
        issuer.mint(bundle(), decision())


def test_ttl_is_capped(tmp_path: Path, clock: FakeClock) -> None:
    keys = KeyStore(tmp_path, clock, environment=ENV)
    keys.ensure()
    issuer = PermitIssuer(keys, issuer=ISSUER, environment=ENV, clock=clock, max_ttl=MAX_PERMIT_TTL * 10)
    minted = issuer.mint(bundle(), decision(ttl=MAX_PERMIT_TTL * 10))
    assert minted.exp == int(clock.now()) + MAX_PERMIT_TTL


@pytest.mark.parametrize(("rule_ttl", "lives"), [(0, 90), (300, 90), (30, 30)])
def test_the_configured_ttl_is_the_longest_a_permit_lives_and_a_rule_may_ask_for_less(
    tmp_path: Path, clock: FakeClock, rule_ttl: int, lives: int
) -> None:
    keys = KeyStore(tmp_path, clock, environment=ENV)
    keys.ensure()
    issuer = PermitIssuer(keys, issuer=ISSUER, environment=ENV, clock=clock, max_ttl=90)  # guard.permits.ttl: 90s
    minted = issuer.mint(bundle(), decision(ttl=rule_ttl))
    assert minted.exp - minted.claims["iat"] == lives


def test_a_negative_ttl_is_refused(guard: Guard) -> None:
    with pytest.raises(PermitError, match="positive"):
        guard.issuer.mint(bundle(), decision(ttl=-5))


def test_minting_follows_a_rotation_made_elsewhere(guard: Guard, tmp_path: Path, clock: FakeClock) -> None:
    before = header_of(guard.mint().token)["kid"]
    new, old = KeyStore(tmp_path / "keys", clock).rotate(300)  # as `guard-mcp keys rotate` would
    assert old == before
    assert header_of(guard.mint().token)["kid"] == new


def test_without_a_key_minting_says_how_to_make_one(tmp_path: Path, clock: FakeClock) -> None:
    issuer = PermitIssuer(KeyStore(tmp_path, clock), issuer=ISSUER, environment=ENV, clock=clock)
    with pytest.raises(PermitError, match="keys init"):
        issuer.mint(bundle(), decision())


def test_permits_stay_small(guard: Guard) -> None:
    token = guard.mint(approver="bob@example.com").token
    # Verification cost grows with length; a permit that grew past a kilobyte would be a regression.
    assert len(token) < 1024
