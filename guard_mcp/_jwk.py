"""P-256 public keys as JWKs, and the strict base64url both ends of a permit agree on.

Shared by the key store (which publishes JWKs) and the verifier (which reads them), and kept
free of the rest of the guard so `guard_mcp.verify` stays importable on its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ENV_MEMBER", "b64url_decode", "b64url_encode", "jwk_from_public_key", "public_key_from_jwk"]

# A private JWK member that binds a key to the environment of the guard that published it, so a
# sandbox key listed in a shared JWKS never verifies a production permit.
ENV_MEMBER = "guard_env"

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_COORD_BYTES = 32


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """Decode unpadded base64url, or None when `text` is not its one canonical encoding.

    Canonical only: padding, other alphabets, whitespace and non-zero trailing bits are refused,
    so one value has one spelling and nothing can ride along unnoticed.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if b64url_encode(data) == text else None


def jwk_from_public_key(key: ec.EllipticCurvePublicKey, *, kid: str, environment: str | None) -> dict[str, str]:
    numbers = key.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(_COORD_BYTES, "big")),
        "y": b64url_encode(numbers.y.to_bytes(_COORD_BYTES, "big")),
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
    }
    if environment is not None:
        jwk[ENV_MEMBER] = environment
    return jwk


def public_key_from_jwk(jwk: Any) -> ec.EllipticCurvePublicKey | None:
    """The P-256 key a JWK describes, or None for anything else (other curves, other uses, bad points)."""
    if not isinstance(jwk, dict):
        return None
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        return None
    if jwk.get("alg", "ES256") != "ES256" or jwk.get("use", "sig") != "sig":
        return None
    if "d" in jwk:  # a private key has no business in a published key set
        return None
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        return None
    xb, yb = b64url_decode(x), b64url_decode(y)
    if xb is None or yb is None or len(xb) != _COORD_BYTES or len(yb) != _COORD_BYTES:
        return None
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(xb, "big"), int.from_bytes(yb, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError:  # not a point on the curve
        return None
