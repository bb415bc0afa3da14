"""Signed bundles under attack: every way to slip a policy past verification must be refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from _policy_kit import Signer, make_signer, sha256, shop_source, write_bundle

from guard_mcp._errors import PolicyRefused
from guard_mcp._keys import generate_key_pair
from guard_mcp._policy import (
    MAX_BUNDLE_BYTES,
    VersionLedger,
    key_id,
    load_trusted_keys,
    sign_bundle,
    signature_path,
    verify_bundle,
)
from guard_mcp._state import StateDir


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path / "keys")


def _trusted(*signers: Signer) -> dict[str, object]:
    return dict(load_trusted_keys([s.public_pem for s in signers]))


def _refusal(path: Path, trusted: dict[str, object], ledger: VersionLedger | None = None) -> str:
    with pytest.raises(PolicyRefused) as info:
        verify_bundle(path, trusted, ledger=ledger)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return info.value.reason


def test_a_signed_bundle_verifies_and_names_its_signer(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "shop.bundle.json"
    data = write_bundle(path, shop_source(2), signer)
    verified = verify_bundle(path, _trusted(signer))  # type: ignore[arg-type]
    assert verified.data == data
    assert verified.sha256 == sha256(data)
    assert (verified.label, verified.rules) == ("shop@2", 4)
    assert verified.kid == key_id(signer.key.public_key())


def test_key_id_is_the_rfc7638_thumbprint(signer: Signer) -> None:
    numbers = signer.key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    # RFC 7638 §3: required members only, lexicographic order, no whitespace.
    jwk = f'{{"crv":"P-256","kty":"EC","x":"{b64(numbers.x)}","y":"{b64(numbers.y)}"}}'
    import hashlib

    expected = base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()
    assert key_id(signer.key.public_key()) == expected


def test_one_flipped_byte_is_refused(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "b.json"
    data = bytearray(write_bundle(path, shop_source(), signer))
    at = data.index(b"100")
    data[at] = ord("9")  # refund-small now allows up to 900
    path.write_bytes(bytes(data))
    assert _refusal(path, _trusted(signer)) == "digest_mismatch"


def test_a_missing_signature_is_refused(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), None)
    assert _refusal(path, _trusted(signer)) == "missing_signature"


def test_no_trusted_keys_means_nothing_loads(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), signer)
    assert _refusal(path, {}) == "no_trusted_keys"


def test_a_signature_by_an_unknown_key_is_refused(tmp_path: Path, signer: Signer) -> None:
    mallory = make_signer(tmp_path / "mallory", "mallory")
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), mallory)
    assert _refusal(path, _trusted(signer)) == "unknown_key"


def test_a_forged_kid_does_not_help(tmp_path: Path, signer: Signer) -> None:
    """Mallory signs with her key but writes the trusted signer's kid into the header."""
    mallory, _, _ = generate_key_pair()
    path = tmp_path / "b.json"
    data = write_bundle(path, shop_source(), None)
    token = sign_bundle(data, mallory)
    header, payload, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(header + "=="))
    forged["kid"] = key_id(signer.key.public_key())
    new_header = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    signature_path(path).write_text(f"{new_header}.{payload}.{sig}")
    assert _refusal(path, _trusted(signer)) == "bad_signature"


def test_a_signature_moved_to_another_bundle_is_refused(tmp_path: Path, signer: Signer) -> None:
    good = tmp_path / "good.json"
    write_bundle(good, shop_source(1), signer)
    evil = tmp_path / "evil.json"
    write_bundle(evil, shop_source(1).replace("le: 100", "le: 100000"), None)
    signature_path(evil).write_bytes(signature_path(good).read_bytes())
    assert _refusal(evil, _trusted(signer)) == "digest_mismatch"


@pytest.mark.parametrize("token", ["", "not a jws", "a.b.c", "x" * 10_000])
def test_garbage_signatures_are_refused(tmp_path: Path, signer: Signer, token: str) -> None:
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), None)
    signature_path(path).write_text(token)
    assert _refusal(path, _trusted(signer)) == "bad_signature"


def test_a_ten_megabyte_bundle_is_refused_before_it_is_read(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as fh:
        fh.truncate(10 * 1024 * 1024)
    signature_path(path).write_text("irrelevant")
    assert MAX_BUNDLE_BYTES < 10 * 1024 * 1024
    assert _refusal(path, _trusted(signer)) == "too_large"


def test_rollback_to_an_older_signed_version_is_refused(tmp_path: Path, signer: Signer, state: StateDir) -> None:
    ledger = VersionLedger(state)
    v1, v2 = tmp_path / "v1.json", tmp_path / "v2.json"
    write_bundle(v1, shop_source(1), signer)
    write_bundle(v2, shop_source(2), signer)
    ledger.record(verify_bundle(v2, _trusted(signer), ledger=ledger))  # type: ignore[arg-type]
    assert _refusal(v1, _trusted(signer), ledger) == "rollback"
    # the ledger survives a restart: it is a file in the state directory
    assert VersionLedger(state).accepted("shop") == (2, sha256(v2.read_bytes()))


def test_the_same_version_with_other_content_is_refused(tmp_path: Path, signer: Signer, state: StateDir) -> None:
    ledger = VersionLedger(state)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_bundle(a, shop_source(3), signer)
    write_bundle(b, shop_source(3).replace("le: 100}", "le: 999}"), signer)
    ledger.record(verify_bundle(a, _trusted(signer), ledger=ledger))  # type: ignore[arg-type]
    assert _refusal(b, _trusted(signer), ledger) == "version_reused"
    verify_bundle(a, _trusted(signer), ledger=ledger)  # type: ignore[arg-type]  # the accepted one still loads


def test_a_corrupt_ledger_refuses_rather_than_forgets(tmp_path: Path, signer: Signer, state: StateDir) -> None:
    ledger = VersionLedger(state)
    ledger.path.write_text("{not json")
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), signer)
    assert _refusal(path, _trusted(signer), ledger) == "ledger_unreadable"


def test_a_bundle_that_is_not_a_bundle_is_refused(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "b.json"
    data = b'{"hello": "world"}'
    path.write_bytes(data)
    signature_path(path).write_text(_sign_raw(data, signer))
    assert _refusal(path, _trusted(signer)) == "malformed"


def _sign_raw(data: bytes, signer: Signer) -> str:
    import jwt

    from guard_mcp._canonical import canonical_json

    claims = {"policy": "x", "version": 1, "sha256": sha256(data), "size": len(data)}
    return jwt.PyJWS().encode(
        canonical_json(claims), signer.key, algorithm="ES256", headers={"kid": key_id(signer.key.public_key())}
    )


def test_another_policy_the_same_key_signed_is_refused_until_switched_to(
    tmp_path: Path, signer: Signer, state: StateDir
) -> None:
    # The attack: drop a permissive policy of another name (signed once, for a lab) where the served
    # one lives; per-name rollback protection alone would take it as that policy's first version.
    ledger = VersionLedger(state)
    shop, lab = tmp_path / "shop.json", tmp_path / "lab.json"
    write_bundle(shop, shop_source(2), signer)
    write_bundle(lab, shop_source(1).replace("policy: shop", "policy: lab"), signer)
    ledger.record(verify_bundle(shop, _trusted(signer), ledger=ledger))  # type: ignore[arg-type]
    assert _refusal(lab, _trusted(signer), ledger) == "policy_switched"
    # an operator switches on purpose; then the old name is the stranger
    ledger.record(verify_bundle(lab, _trusted(signer), ledger=ledger, switching=True))  # type: ignore[arg-type]
    assert VersionLedger(state).serving() == "lab"
    assert _refusal(shop, _trusted(signer), ledger) == "policy_switched"


def test_a_hand_edited_ledger_entry_refuses_rather_than_crashes(
    tmp_path: Path, signer: Signer, state: StateDir
) -> None:
    ledger = VersionLedger(state)
    ledger.path.write_text('{"shop": {"v": 2}}')
    path = tmp_path / "b.json"
    write_bundle(path, shop_source(), signer)
    assert _refusal(path, _trusted(signer), ledger) == "ledger_unreadable"


def test_attack_another_policy_dropped_in_on_a_ledger_written_before_names_were_pinned_is_refused(
    tmp_path: Path, signer: Signer, state: StateDir
) -> None:
    # A guard that served `shop` before the served name was recorded has a ledger of `shop` alone; the
    # first load after the upgrade must not take a `lab` bundle as the policy to serve from now on.
    shop, lab = tmp_path / "shop.json", tmp_path / "lab.json"
    write_bundle(shop, shop_source(2), signer)
    write_bundle(lab, shop_source(1).replace("policy: shop", "policy: lab"), signer)
    served = verify_bundle(shop, _trusted(signer))  # type: ignore[arg-type]
    ledger = VersionLedger(state)
    ledger.path.write_text(json.dumps({"shop": {"version": served.version, "sha256": served.sha256}}))
    assert _refusal(lab, _trusted(signer), ledger) == "policy_switched"
    assert verify_bundle(shop, _trusted(signer), ledger=ledger).name == "shop"  # type: ignore[arg-type]
