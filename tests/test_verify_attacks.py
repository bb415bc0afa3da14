"""Attacks on the permit that must fail, one test each (issue 4's list, and a few more)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from permit_kit import REFUND, Guard, header_of, permit_header, resign, segment, sign_es256

from guard_mcp._claims import PermitClaims
from guard_mcp._clock import FakeClock
from guard_mcp._jwk import b64url_encode, jwk_from_public_key
from guard_mcp.verify import PERMIT_TYP, PermitVerifier, SqliteReplayStore, VerifyResult


@pytest.fixture
def guard(tmp_path: Path, clock: FakeClock) -> Guard:
    return Guard.create(tmp_path / "keys", clock)


def refund_check(v: PermitVerifier, token: str, arguments: dict[str, object] | None = None) -> VerifyResult:
    return v.verify(token, action="refund.create", arguments=dict(REFUND) if arguments is None else arguments)


def test_alg_none(guard: Guard) -> None:
    claims = guard.mint().claims
    header = {**permit_header(guard.keys.current().kid), "alg": "none"}
    for token in (f"{segment(header)}.{segment(claims)}.", f"{segment(header)}.{segment(claims)}"):
        assert refund_check(guard.verifier(), token).reason == "malformed"


def test_hs256_signed_with_the_public_key_as_secret(guard: Guard) -> None:
    claims = guard.mint().claims
    kid = guard.keys.current().kid
    public = guard.keys.public_keys()[kid]
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
    ):
        signing_input = f"{segment({**permit_header(kid), 'alg': 'HS256'})}.{segment(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        # padded to ES256's length too, so only the algorithm can be what gives it away
        for sig in (mac, mac + mac):
            assert refund_check(guard.verifier(), f"{signing_input}.{b64url_encode(sig)}").reason == "malformed"


def test_kid_pointing_nowhere(guard: Guard) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = sign_es256(permit_header("gm-000000000000"), guard.mint().claims, attacker)
    assert refund_check(guard.verifier(), token).reason == "unknown_key"


def test_a_forged_permit_under_the_guards_kid(guard: Guard) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = sign_es256(permit_header(guard.keys.current().kid), guard.mint().claims, attacker)
    assert refund_check(guard.verifier(), token).reason == "bad_signature"


def test_kid_of_a_key_from_another_environment(tmp_path: Path, clock: FakeClock) -> None:
    production = Guard.create(tmp_path / "prod", clock, "production")
    sandbox = Guard.create(tmp_path / "sandbox", clock, "sandbox")
    # One JWKS lists both guards' keys (a shared endpoint); whoever holds the sandbox key signs
    # a permit that claims to be for production.
    shared = {"keys": production.keys.jwks()["keys"] + sandbox.keys.jwks()["keys"]}
    claims = {**production.mint().claims, "jti": "sandbox-made"}
    token = sign_es256(permit_header(sandbox.keys.current().kid), claims, sandbox.keys.current().private_key)
    assert refund_check(production.verifier(jwks=shared), token).reason == "unknown_key"
    # the shared set still verifies production's own permits
    assert refund_check(production.verifier(jwks=shared), production.mint().token).valid


def test_a_key_published_without_an_environment_is_trusted_for_none(guard: Guard) -> None:
    kid = guard.keys.current().kid
    unbound = {"keys": [jwk_from_public_key(guard.keys.public_keys()[kid], kid=kid, environment=None)]}
    assert refund_check(guard.verifier(jwks=unbound), guard.mint().token).reason == "unknown_key"


def test_a_sandbox_permit_in_production(tmp_path: Path, clock: FakeClock) -> None:
    sandbox = Guard.create(tmp_path / "sandbox", clock, "sandbox")
    production_verifier = PermitVerifier(
        sandbox.keys.jwks(), issuer="guard-mcp", audience="shop", environment="production", clock=clock
    )
    assert refund_check(production_verifier, sandbox.mint().token).reason == "unknown_key"


def test_a_permit_re_signed_for_another_environment_by_its_own_key(guard: Guard) -> None:
    assert refund_check(guard.verifier(), resign(guard, guard.mint().token, env="staging")).reason == (
        "wrong_environment"
    )


def test_refund_permit_used_for_delete_customer(guard: Guard) -> None:
    minted = guard.mint({"customer_id": "cus_42"}, action="refund.create")
    v = guard.verifier()
    assert v.verify(minted.token, action="customer.delete", arguments={"customer_id": "cus_42"}).reason == (
        "wrong_action"
    )


def test_permit_for_shop_presented_to_another_upstream(guard: Guard) -> None:
    minted = guard.mint()
    assert refund_check(guard.verifier(audience="billing"), minted.token).reason == "wrong_audience"


def test_amount_350_approved_3500_sent(guard: Guard) -> None:
    minted = guard.mint({**REFUND, "amount": 350}, approver="bob@example.com")
    assert refund_check(guard.verifier(), minted.token, {**REFUND, "amount": 3500}).reason == "payload_mismatch"


def test_an_added_argument_is_a_different_payload(guard: Guard) -> None:
    minted = guard.mint()
    assert refund_check(guard.verifier(), minted.token, {**REFUND, "notify": False}).reason == "payload_mismatch"


def test_claims_edited_after_signing(guard: Guard) -> None:
    header, _, sig = guard.mint().token.split(".")
    edited = {**guard.mint().claims, "aud": "billing"}
    assert refund_check(guard.verifier(), f"{header}.{segment(edited)}.{sig}").reason == "bad_signature"


def test_same_permit_twice(guard: Guard) -> None:
    minted = guard.mint()
    v = guard.verifier()
    assert refund_check(v, minted.token).valid
    assert refund_check(v, minted.token).reason == "replayed"


def test_same_permit_twice_concurrently_in_threads(guard: Guard) -> None:
    minted = guard.mint()
    v = guard.verifier()
    start = threading.Barrier(8)
    results: list[VerifyResult] = []

    def attempt() -> None:
        start.wait()
        results.append(refund_check(v, minted.token))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(r.reason) for r in results) == ["None"] + ["replayed"] * 7


@pytest.mark.anyio
async def test_same_permit_twice_concurrently_in_tasks(guard: Guard, tmp_path: Path) -> None:
    minted = guard.mint()
    store = SqliteReplayStore(tmp_path / "jti.db", clock=guard.clock)
    v = guard.verifier(replay_store=store)
    results: list[VerifyResult] = []

    async def attempt() -> None:
        results.append(await anyio.to_thread.run_sync(refund_check, v, minted.token))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(attempt)
    store.close()
    assert [r.valid for r in results].count(True) == 1
    assert {r.reason for r in results if not r.valid} == {"replayed"}


def test_same_permit_at_two_upstream_workers_sharing_a_store(guard: Guard, tmp_path: Path) -> None:
    minted = guard.mint()
    workers = [guard.verifier(replay_store=SqliteReplayStore(tmp_path / "jti.db", clock=guard.clock)) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[VerifyResult] = []

    def attempt(v: PermitVerifier) -> None:
        start.wait()
        results.append(refund_check(v, minted.token))

    threads = [threading.Thread(target=attempt, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(r.reason) for r in results) == ["None", "replayed"]


def test_expired_by_one_second(guard: Guard, clock: FakeClock) -> None:
    minted = guard.mint(ttl=300)
    v = guard.verifier()
    clock.advance(300 + 1)
    assert refund_check(v, minted.token).reason == "expired"


def test_valid_one_second_before_expiry(guard: Guard, clock: FakeClock) -> None:
    minted = guard.mint(ttl=300)
    clock.advance(299)
    assert refund_check(guard.verifier(), minted.token).valid


def test_nbf_in_the_future(guard: Guard, clock: FakeClock) -> None:
    token = resign(guard, guard.mint().token, nbf=int(clock.now()) + 30)
    assert refund_check(guard.verifier(), token).reason == "not_yet_valid"


@pytest.mark.parametrize("garbage", ["x", "A", "AA", "AAAA", ".", ".x", " ", "\n", "==", ".eyJ9"])
def test_trailing_garbage(guard: Guard, garbage: str) -> None:
    token = guard.mint().token
    assert refund_check(guard.verifier(), token + garbage).reason == "malformed"
    assert refund_check(guard.verifier(), token).valid  # the bad attempts did not burn it


def test_a_non_canonical_signature_encoding(guard: Guard) -> None:
    token = guard.mint().token
    # The last of 86 base64url characters carries 4 unused bits; setting one changes no byte.
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) | 1]
    assert twin != last
    assert refund_check(guard.verifier(), token[:-1] + twin).reason == "malformed"


def test_a_one_megabyte_header(guard: Guard) -> None:
    minted = guard.mint()
    header = {**permit_header(guard.keys.current().kid), "pad": "A" * (1 << 20)}
    token = sign_es256(header, minted.claims, guard.keys.current().private_key)
    assert refund_check(guard.verifier(), token).reason == "malformed"


def test_a_header_that_brings_its_own_key(guard: Guard) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    kid = guard.keys.current().kid
    jwk = jwk_from_public_key(attacker.public_key(), kid=kid, environment="production")
    for extra in ({"jwk": jwk}, {"jku": "https://evil.example/jwks.json"}, {"crit": ["exp"]}):
        token = sign_es256({**permit_header(kid), **extra}, guard.mint().claims, attacker)
        assert refund_check(guard.verifier(), token).reason == "malformed"


def test_a_permit_typed_as_something_else(guard: Guard) -> None:
    # Same key, another kind of token (say an audit checkpoint): not a permit.
    kid = guard.keys.current().kid
    token = sign_es256({**permit_header(kid), "typ": "JWT"}, guard.mint().claims, guard.keys.current().private_key)
    assert refund_check(guard.verifier(), token).reason == "malformed"
    assert header_of(guard.mint().token)["typ"] == PERMIT_TYP


def test_duplicate_claims(guard: Guard) -> None:
    minted = guard.mint()
    # A second `aud` after the real one: parsers disagree on which wins, so neither may.
    raw = json.dumps(minted.claims, separators=(",", ":")).encode()[:-1] + b',"aud":"billing"}'
    token = sign_es256(permit_header(guard.keys.current().kid), raw, guard.keys.current().private_key)
    assert refund_check(guard.verifier(), token).reason == "malformed"
    assert refund_check(guard.verifier(audience="billing"), token).reason == "malformed"


def test_a_claim_of_the_wrong_type(guard: Guard) -> None:
    v = guard.verifier()
    for change in (
        {"exp": "9999999999"},
        {"exp": True},
        {"aud": ["shop"]},
        {"jti": ""},
        {"jti": "j" * 500},
        {"approver": 1},
        {"policy_rule": None},
    ):
        assert refund_check(v, resign(guard, guard.mint().token, **change)).reason == "malformed"


def test_a_missing_claim(guard: Guard) -> None:
    minted = guard.mint()
    for name in sorted(PermitClaims.__required_keys__):  # every claim the contract requires, not a copy of the list
        claims = {k: v for k, v in minted.claims.items() if k != name}
        token = sign_es256(permit_header(guard.keys.current().kid), claims, guard.keys.current().private_key)
        assert refund_check(guard.verifier(), token).reason == "malformed", name


def test_junk_never_raises(guard: Guard) -> None:
    v = guard.verifier()
    for junk in (
        "...",
        "a.b.c",
        "\x00.\x00.\x00",
        "é.é.é",
        "eyJ9.eyJ9.",
        segment([1]) + "." + segment({}) + ".",
        "." * 10_000,
        "a" * 10_000_000,
    ):
        assert refund_check(v, junk).reason == "malformed"


_B64URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_single_character_edit_of_a_permit_verifies(guard: Guard, data: st.DataObject) -> None:
    token = guard.mint().token
    at = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(_B64URL_CHARS).filter(lambda c: c != token[at]))
    edited = token[:at] + char + token[at + 1 :]
    result = refund_check(guard.verifier(), edited)
    assert not result.valid
    assert result.reason in {"malformed", "bad_signature", "unknown_key"}
