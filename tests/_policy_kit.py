"""Shared set-up for the policy tests: signers, signed bundles on disk, configs and requests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._config import GuardConfig, GuardSection
from guard_mcp._keys import generate_key_pair
from guard_mcp._models import ActionBundle, Actor, BlastRadius, Category, Reversibility, Sensitivity
from guard_mcp._policy import bundle_bytes, compile_policy, sign_bundle, signature_path

SHOP = """
policy: shop
version: {version}
rules:
  - id: reads
    match: {{category: read}}
    effect: allow
  - id: refund-small
    match: {{action: refund.create}}
    when: {{arg: amount, le: 100}}
    effect: allow
  - id: refund-medium
    match: {{action: refund.create}}
    when: {{arg: amount, le: 1000}}
    effect: approve
    approvers: support_leads
    approval_ttl: 2h
  - id: refund-large
    match: {{action: refund.create}}
    effect: deny
    reason: amount_exceeds_policy_limit
"""


@dataclass
class Signer:
    key: ec.EllipticCurvePrivateKey
    private_pem: Path
    public_pem: Path


def make_signer(directory: Path, name: str = "signer") -> Signer:
    key, private_pem, public_pem = generate_key_pair()
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    priv.write_bytes(private_pem)
    pub.write_bytes(public_pem)
    return Signer(key, priv, pub)


def write_bundle(path: Path, source: str, signer: Signer | None) -> bytes:
    data = bundle_bytes(compile_policy(source))
    path.write_bytes(data)
    if signer is not None:
        signature_path(path).write_text(sign_bundle(data, signer.key))
    return data


def shop_source(version: int = 1) -> str:
    return SHOP.format(version=version)


def config_for(bundle: Path | None, *keys: Path) -> GuardConfig:
    return GuardConfig(
        guard=GuardSection(policy=None if bundle is None else str(bundle), trusted_policy_keys=[str(k) for k in keys])
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def action(
    action: str = "refund.create",
    arguments: dict[str, Any] | None = None,
    *,
    category: Category = Category.FINANCIAL,
    reversibility: Reversibility = Reversibility.NONE,
    blast_radius: BlastRadius = BlastRadius.SINGLE,
    sensitivity: Sensitivity = Sensitivity.CONFIDENTIAL,
    upstream: str = "shop",
    tool: str = "refund",
    principal: str = "alice",
) -> ActionBundle:
    return ActionBundle(
        request_id="r-1",
        action=action,
        upstream=upstream,
        tool=tool,
        actor=Actor(principal=principal),
        arguments=arguments if arguments is not None else {},
        payload_hash="sha256:" + "0" * 64,
        category=category,
        reversibility=reversibility,
        blast_radius=blast_radius,
        sensitivity=sensitivity,
        environment="test",
    )
