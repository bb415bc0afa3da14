"""Signed checkpoints of the chain's head, and the record of which public keys signed them.

A checkpoint is a compact JWS (ES256, header `kid`) over the canonical JSON payload
`{"hash", "kid", "seq", "ts", "typ": "guard-mcp/audit-checkpoint"}`, plus an HMAC of the same
payload with the deployment key. The signature lets anyone holding the public JWKS check the head
(so deleting the newest events shows); the MAC ties the checkpoint to this deployment.

Signers are recorded in the log itself (kid -> public JWK, MAC'd) because a rotated key drops out
of the key store's published set once its permits have expired, while its checkpoints stay.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._canonical import canonical_json

if TYPE_CHECKING:
    import jwt

    from guard_mcp._keys import SigningKey

__all__ = [
    "CHECKPOINT_TYP",
    "Checkpoint",
    "checkpoint_mac",
    "public_jwk",
    "public_key_from_jwk",
    "sign_checkpoint",
    "signer_mac",
    "verified_mac",
    "verify_checkpoint_signature",
]

CHECKPOINT_TYP = "guard-mcp/audit-checkpoint"


@functools.cache
def _jws() -> jwt.PyJWS:
    # PyJWT (and the X.509 half of cryptography it brings) loads at the first checkpoint signed or
    # checked: `guard-mcp audit tail` reads the log without it.
    import jwt

    return jwt.PyJWS()


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    ts: int
    kid: str
    jws: str
    mac: str

    def payload(self) -> dict[str, Any]:
        return {"hash": self.hash, "kid": self.kid, "seq": self.seq, "ts": self.ts, "typ": CHECKPOINT_TYP}

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts, "kid": self.kid, "jws": self.jws, "mac": self.mac}


def checkpoint_mac(key: bytes, payload: Mapping[str, Any]) -> str:
    return hmac.digest(key, b"checkpoint\x00" + canonical_json(dict(payload)), "sha256").hex()


def signer_mac(key: bytes, kid: str, jwk_json: str) -> str:
    return hmac.digest(key, b"signer\x00" + kid.encode() + b"\x00" + jwk_json.encode(), "sha256").hex()


def verified_mac(key: bytes, seq: int, hash_hex: str) -> str:
    """MAC of the "verified up to here" marker, so it cannot be moved forward to skip a tampered range."""
    return hmac.digest(key, f"verified\x00{seq}\x00{hash_hex}".encode(), "sha256").hex()


def sign_checkpoint(signer: SigningKey, hmac_key: bytes, *, seq: int, head_hash: str, ts: int) -> Checkpoint:
    payload = {"hash": head_hash, "kid": signer.kid, "seq": seq, "ts": ts, "typ": CHECKPOINT_TYP}
    token = _jws().encode(canonical_json(payload), signer.private_key, algorithm="ES256", headers={"kid": signer.kid})
    return Checkpoint(seq, head_hash, ts, signer.kid, token, checkpoint_mac(hmac_key, payload))


def verify_checkpoint_signature(cp: Checkpoint, public_key: ec.EllipticCurvePublicKey) -> str | None:
    """None when the JWS is valid and says what the row says; otherwise what is wrong."""
    import jwt

    try:
        header = jwt.get_unverified_header(cp.jws)
        body = _jws().decode_complete(cp.jws, public_key, algorithms=["ES256"])["payload"]
        claims = json.loads(body)
    except (jwt.PyJWTError, ValueError) as exc:
        return f"signature does not verify ({exc})"
    if header.get("kid") != cp.kid:
        return f"signed with kid `{header.get('kid')}`, recorded as `{cp.kid}`"
    if claims != cp.payload():
        return "signed head differs from the recorded head"
    return None


def public_jwk(kid: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    from jwt.algorithms import ECAlgorithm

    jwk = dict(ECAlgorithm.to_jwk(key, as_dict=True))
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    return jwk


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | None:
    import jwt
    from jwt.algorithms import ECAlgorithm

    try:
        key = ECAlgorithm.from_jwk(dict(jwk))
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None
