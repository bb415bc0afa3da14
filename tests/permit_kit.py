"""Shared builders for the permit, key and verifier tests: a guard that mints, and a forger."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from guard_mcp._canonical import payload_hash
from guard_mcp._clock import FakeClock
from guard_mcp._jwk import b64url_encode
from guard_mcp._keys import KeyStore
from guard_mcp._models import ActionBundle, Actor, Decision, Effect
from guard_mcp._permits import MintedPermit, PermitIssuer
from guard_mcp.verify import PERMIT_TYP, PermitVerifier, ReplayStore

ISSUER = "guard-mcp"
ENV = "production"
REFUND = {"customer_id": "cus_42", "amount": 350, "reason": "damaged in transit"}


def bundle(
    arguments: dict[str, Any] | None = None,
    *,
    action: str = "refund.create",
    upstream: str = "shop",
    tool: str = "refund",
    environment: str = ENV,
    principal: str = "alice@example.com",
) -> ActionBundle:
    args = dict(REFUND if arguments is None else arguments)
    return ActionBundle(
        request_id="req-1",
        action=action,
        upstream=upstream,
        tool=tool,
        actor=Actor(principal=principal),
        arguments=args,
        payload_hash=payload_hash(args),
        category="financial",
        reversibility="none",
        blast_radius="single",
        sensitivity="confidential",
        environment=environment,
    )


def decision(effect: Effect = Effect.ALLOW, *, ttl: int = 300, rule: str | None = "small-refunds") -> Decision:
    return Decision(effect=effect, rule_id=rule, reason="rule_matched", policy="shop@3", permit_ttl=ttl)


@dataclass
class Guard:
    """One guard deployment: its key store, its issuer and the JWKS it publishes."""

    keys: KeyStore
    issuer: PermitIssuer
    clock: FakeClock
    environment: str

    @classmethod
    def create(cls, root: Path, clock: FakeClock, environment: str = ENV) -> Guard:
        keys = KeyStore(root, clock, environment=environment)
        keys.ensure()
        return cls(keys, PermitIssuer(keys, issuer=ISSUER, environment=environment, clock=clock), clock, environment)

    def mint(self, arguments: dict[str, Any] | None = None, **kw: Any) -> MintedPermit:
        ttl = kw.pop("ttl", 300)
        approver = kw.pop("approver", None)
        return self.issuer.mint(
            bundle(arguments, environment=self.environment, **kw), decision(ttl=ttl), approver=approver
        )

    def verifier(
        self, *, audience: str = "shop", replay_store: ReplayStore | None = None, leeway: float = 0, jwks: Any = None
    ) -> PermitVerifier:
        return PermitVerifier(
            self.keys.jwks() if jwks is None else jwks,
            issuer=ISSUER,
            audience=audience,
            environment=self.environment,
            replay_store=replay_store,
            leeway=leeway,
            clock=self.clock,
        )


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64url_encode(raw)


def sign_es256(header: dict[str, Any], claims: dict[str, Any] | bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """A compact JWS with any header and claims, signed by any P-256 key: the forger's tool."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def resign(guard: Guard, token: str, **changes: Any) -> str:
    """The permit `token` with `changes` to its claims, re-signed with the guard's own key (so only
    the changed claim can be what the verifier objects to)."""
    header_b64, claims_b64, _ = token.split(".")
    claims = json.loads(_unb64(claims_b64))
    header = json.loads(_unb64(header_b64))
    claims.update(changes)
    return sign_es256(header, claims, guard.keys.current().private_key)


def header_of(token: str) -> dict[str, Any]:
    return json.loads(_unb64(token.split(".")[0]))  # type: ignore[no-any-return]


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def permit_header(kid: str) -> dict[str, str]:
    return {"alg": "ES256", "kid": kid, "typ": PERMIT_TYP}
