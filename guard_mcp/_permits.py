"""Minting permits: a compact ES256 JWS bound to one allowed call (see ARCHITECTURE.md, "Permit").

Minting is in two steps: `prepare` checks the call and fixes every claim (the `jti` and `exp` that
`permit.issued` records), `sign` makes the JWS (PyJWT's JWS layer, `typ` = `permit+jwt`, the key
object the key store holds) over the claims serialised once, canonically (`_canonical`): the claims are all strings
and integers this module set, so the JWT layer's checks and second serialisation would add only
time. Nobody sees the token before the pipeline has the permit's record durable.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from guard_mcp._canonical import canonical_json
from guard_mcp._claims import PermitClaims
from guard_mcp._clock import Clock
from guard_mcp._errors import PermitError
from guard_mcp._keys import KeyStore, SigningKey
from guard_mcp._models import ActionBundle, Decision, Effect
from guard_mcp.verify import MAX_PERMIT_TTL, PERMIT_TYP

__all__ = ["MAX_PERMIT_TTL", "MintedPermit", "PermitIssuer", "UnsignedPermit"]

# MAX_PERMIT_TTL (guard_mcp.verify): the longest a permit may live, whatever a rule asks for.
# `guard-mcp keys rotate` keeps the old key published this long (plus a margin), so no permit
# outlives the key that verifies it; verifiers refuse a longer one.


@dataclass(frozen=True)
class MintedPermit:
    token: str
    jti: str
    exp: int
    claims: dict[str, Any]


@dataclass(frozen=True)
class UnsignedPermit:
    """A checked permit with every claim fixed, not yet signed."""

    jti: str
    exp: int
    claims: dict[str, Any]
    key: SigningKey

    def sign(self) -> MintedPermit:
        token = jwt.api_jws.encode(
            canonical_json(self.claims),
            self.key.private_key,
            algorithm="ES256",
            headers={"kid": self.key.kid, "typ": PERMIT_TYP},
        )
        return MintedPermit(token=token, jti=self.jti, exp=self.exp, claims=self.claims)


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

    def _ttl(self, decision: Decision) -> int:
        # `guard.permits.ttl` is the longest any permit of this guard lives; a rule may ask for less
        # (a rule that leaves `permit_ttl` at zero takes the configured one).
        ttl = min(decision.permit_ttl or self.max_ttl, self.max_ttl)
        if ttl <= 0:
            raise PermitError(f"permit ttl `{ttl}` of rule `{decision.rule_id}` must be positive; fix the policy")
        # A shorter permit is always safe; a longer one would outlive a rotated key's publication.
        return int(min(ttl, MAX_PERMIT_TTL))

    def mint(self, bundle: ActionBundle, decision: Decision, *, approver: str | None = None) -> MintedPermit:
        """A signed permit for exactly this call (`prepare`, then `sign`)."""
        return self.prepare(bundle, decision, approver=approver).sign()

    def prepare(self, bundle: ActionBundle, decision: Decision, *, approver: str | None = None) -> UnsignedPermit:
        """The permit for exactly this call, unsigned. Refuses (PermitError) for a denial, for an
        approval without an approver, and for a bundle or key of another environment."""
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
        claims: PermitClaims = {
            "jti": jti,
            "iss": self.issuer,
            "sub": bundle.actor.principal,
            "aud": bundle.upstream,
            "act": bundle.action,
            "tool": bundle.tool,
            "payload_hash": bundle.payload_hash,
            "policy": decision.policy,
            "env": self.environment,
            "iat": now,
            "nbf": now,
            "exp": exp,
        }
        if decision.rule_id is not None:
            claims["policy_rule"] = decision.rule_id
        if approver:
            claims["approver"] = approver
        return UnsignedPermit(jti=jti, exp=exp, claims=dict(claims), key=key)
