"""Passkeys: WebAuthn registration and assertion, through the `webauthn` package (never by hand).

User verification is required everywhere (a PIN or a fingerprint, not just a touch). The relying
party is the console's host name (`localhost` on loopback: browsers refuse WebAuthn on a bare IP
address), and the origin is checked against the one the request arrived on.

A step-up challenge is bound to one approval: its bytes are 32 random bytes followed by the SHA-256
of the approval id and the payload hash it authorises, and it is stored under that approval id for
the session that asked. An assertion made for approval A therefore cannot decide approval B: B's
stored challenge is not the one A's assertion signed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from guard_mcp._errors import ApprovalError

__all__ = [
    "Registered",
    "assertion_credential_id",
    "authentication_options",
    "registration_options",
    "step_up_challenge",
    "step_up_matches",
    "verify_assertion",
    "verify_registration",
]

RP_NAME = "guard-mcp"
TIMEOUT_MS = 120_000
MAX_RESPONSE = 64 * 1024  # bytes of a credential's JSON; a real one is a few hundred


@dataclass(frozen=True)
class Registered:
    credential_id: str
    public_key: bytes
    sign_count: int


def _binding(approval_id: str, payload_hash: str) -> bytes:
    return hashlib.sha256(f"guard-mcp step-up\x00{approval_id}\x00{payload_hash}".encode()).digest()


def step_up_challenge(approval_id: str, payload_hash: str) -> bytes:
    return secrets.token_bytes(32) + _binding(approval_id, payload_hash)


def step_up_matches(challenge: bytes, approval_id: str, payload_hash: str) -> bool:
    return len(challenge) == 64 and secrets.compare_digest(challenge[32:], _binding(approval_id, payload_hash))


def registration_options(*, rp_id: str, name: str, user_handle: bytes, exclude: list[str]) -> tuple[str, bytes]:
    """The JSON `navigator.credentials.create` takes, and the challenge it carries."""
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=RP_NAME,
        user_name=name,
        user_id=user_handle,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=_bytes(c)) for c in exclude],
    )
    return options_to_json(options), options.challenge


def authentication_options(*, rp_id: str, challenge: bytes, allow: list[str] | None = None) -> str:
    """The JSON `navigator.credentials.get` takes; `allow` None lets the browser offer any passkey."""
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        allow_credentials=None if allow is None else [PublicKeyCredentialDescriptor(id=_bytes(c)) for c in allow],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json(options)


def _parse(response: str) -> dict[str, Any]:
    if len(response) > MAX_RESPONSE:
        raise ApprovalError("the passkey's answer is too large; try again")
    try:
        parsed = json.loads(response)
    except ValueError:
        raise ApprovalError("the passkey's answer is not JSON; try again") from None
    if not isinstance(parsed, dict):
        raise ApprovalError("the passkey's answer is not a credential; try again")
    return parsed


def _bytes(credential_id: str) -> bytes:
    from webauthn import base64url_to_bytes

    return base64url_to_bytes(credential_id)


def assertion_credential_id(response: str) -> str | None:
    """The credential id an assertion names (to look up its public key before verifying it)."""
    try:
        value = _parse(response).get("id")
    except ApprovalError:
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 1024 else None


def verify_registration(response: str, *, challenge: bytes, rp_id: str, origin: str) -> Registered:
    try:
        verified = verify_registration_response(
            credential=_parse(response),
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise ApprovalError(f"the passkey was not enrolled: {_why(exc)}; open the enrolment link again") from None
    return Registered(bytes_to_base64url(verified.credential_id), verified.credential_public_key, verified.sign_count)


def verify_assertion(
    response: str, *, challenge: bytes, rp_id: str, origin: str, public_key: bytes, sign_count: int
) -> int:
    """Verify a passkey assertion for `challenge`; return the authenticator's new signature counter.

    A counter that did not move past the stored one means a second copy of the authenticator signed
    (a cloned key), and is refused.
    """
    try:
        verified = verify_authentication_response(
            credential=_parse(response),
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=public_key,
            credential_current_sign_count=sign_count,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        if "sign count" in str(exc):
            raise ApprovalError(
                "the passkey's signature counter went back: this may be a cloned authenticator; "
                "the sign-in is refused, ask an administrator to check the approver's passkeys"
            ) from None
        raise ApprovalError(f"the passkey did not verify: {_why(exc)}; try again") from None
    return verified.new_sign_count


def _why(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160].replace("`", "'")
