"""Minting permits: a compact ES256 JWS bound to one allowed call (see ARCHITECTURE.md, "Permit").

Minting is on the path of every allowed call, so the key and the encoded header are cached per
kid and the signature is made with `cryptography` directly; the output is a standard compact JWS
(`typ` = `permit+jwt`) that `guard_mcp.verify` and PyJWT both accept.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from guard_mcp._clock import Clock
from guard_mcp._errors import PermitError
from guard_mcp._jwk import b64url_encode
from guard_mcp._keys import KeyStore
from guard_mcp._models import ActionBundle, Decision, Effect
from guard_mcp.verify import MAX_PERMIT_TTL, PERMIT_TYP

__all__ = ["MAX_PERMIT_TTL", "MintedPermit", "PermitIssuer"]

# MAX_PERMIT_TTL (guard_mcp.verify): the longest a permit may live, whatever a rule asks for.
# `guard-mcp keys rotate` keeps the old key published this long (plus a margin), so no permit
# outlives the key that verifies it; verifiers refuse a longer one.

_ECDSA = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class MintedPermit:
    token: str
    jti: str
    exp: int
    claims: dict[str, Any]


def _compact(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PermitIssuer:
    """Mints permits with the key store's current key, for one issuer and one environment."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        issuer: str,
        environment: str,
        clock: Clock,
        max_ttl: float = 300,
    ) -> None:
        self.keystore = keystore
        self.issuer = issuer
        self.environment = environment
        self.clock = clock
        self.max_ttl = max_ttl
        self._headers: dict[str, str] = {}

    def _header(self, kid: str) -> str:
        header = self._headers.get(kid)
        if header is None:
            header = self._headers[kid] = b64url_encode(_compact({"alg": "ES256", "kid": kid, "typ": PERMIT_TYP}))
        return header

    def _ttl(self, decision: Decision) -> int:
        # `guard.permits.ttl` is the longest any permit of this guard lives; a rule may ask for less
        # (a rule that leaves `permit_ttl` at zero takes the configured one).
        ttl = min(decision.permit_ttl or self.max_ttl, self.max_ttl)
        if ttl <= 0:
            raise PermitError(f"permit ttl `{ttl}` of rule `{decision.rule_id}` must be positive; fix the policy")
        # A shorter permit is always safe; a longer one would outlive a rotated key's publication.
        return int(min(ttl, MAX_PERMIT_TTL))

    def mint(self, bundle: ActionBundle, decision: Decision, *, approver: str | None = None) -> MintedPermit:
        """A permit for exactly this call. Refuses (PermitError) for a denial, for an approval
        without an approver, and for a bundle or key of another environment."""
        if decision.effect is Effect.DENY:
            raise PermitError(f"call `{bundle.request_id}` was denied (`{decision.reason}`); no permit is minted")
        if decision.effect is Effect.APPROVE and not approver:
            raise PermitError(
                f"call `{bundle.request_id}` needs an approval; mint its permit only with the approver's identity"
            )
        if bundle.environment != self.environment:
            raise PermitError(
                f"call `{bundle.request_id}` is for environment `{bundle.environment}`, this guard signs for "
                f"`{self.environment}`; check `guard.environment`"
            )
        key = self.keystore.current()
        if key.environment is not None and key.environment != self.environment:
            raise PermitError(
                f"signing key `{key.kid}` belongs to environment `{key.environment}`, not `{self.environment}`; "
                "run `guard-mcp keys rotate`"
            )
        now = int(self.clock.now())
        exp = now + self._ttl(decision)
        jti = secrets.token_urlsafe(12)
        claims: dict[str, Any] = {
            "jti": jti,
            "iss": self.issuer,
            "sub": bundle.actor.principal,
            "aud": bundle.upstream,
            "act": bundle.action,
            "tool": bundle.tool,
            "payload_hash": bundle.payload_hash,
            "policy": decision.policy,
        }
        if decision.rule_id is not None:
            claims["policy_rule"] = decision.rule_id
        if approver:
            claims["approver"] = approver
        claims.update(env=self.environment, iat=now, nbf=now, exp=exp)
        signing_input = f"{self._header(key.kid)}.{b64url_encode(_compact(claims))}"
        r, s = decode_dss_signature(key.private_key.sign(signing_input.encode("ascii"), _ECDSA))
        signature = b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return MintedPermit(token=f"{signing_input}.{signature}", jti=jti, exp=exp, claims=claims)
