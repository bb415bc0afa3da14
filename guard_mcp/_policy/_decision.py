"""Crossing the sandbox boundary: an ActionBundle in as JSON, a (Risk, Decision) out.

The module's answer is checked field by field before it becomes a Decision. An answer that names
another policy, lacks a field or carries a value of the wrong type is a PolicyError, which the
engine turns into a deny; nothing malformed can come out as an allow.
"""

from __future__ import annotations

import json
from typing import Any

from guard_mcp._errors import PolicyError
from guard_mcp._models import (
    ActionBundle,
    ActionSchema,
    BlastRadius,
    Category,
    Decision,
    Effect,
    Reversibility,
    Risk,
    Sensitivity,
    Tier,
    TraceEntry,
)

__all__ = [
    "encode_request",
    "explanation",
    "pack_schema",
    "parse_decision",
    "request_dict",
    "unpack_risk",
    "with_bundle_facts",
]

_TIERS = [Tier.LOW, Tier.MEDIUM, Tier.HIGH]
# The module's enum order (wasm_policy/src/risk.rs `unpack`).
_CATEGORY_CODES = {
    Category.READ: 0,
    Category.WRITE: 1,
    Category.COMMUNICATE: 2,
    Category.DESTRUCTIVE: 3,
    Category.FINANCIAL: 4,
    Category.PERMISSION: 5,
    Category.UNKNOWN: 6,
}
_REVERSIBILITY_CODES = {Reversibility.FULL: 0, Reversibility.PARTIAL: 1, Reversibility.NONE: 2}
_BLAST_CODES = {BlastRadius.SINGLE: 0, BlastRadius.MANY: 1, BlastRadius.ALL: 2}
_SENSITIVITY_CODES = {
    Sensitivity.PUBLIC: 0,
    Sensitivity.INTERNAL: 1,
    Sensitivity.CONFIDENTIAL: 2,
    Sensitivity.RESTRICTED: 3,
}


def request_dict(bundle: ActionBundle) -> dict[str, Any]:
    return {
        "action": bundle.action,
        "upstream": bundle.upstream,
        "tool": bundle.tool,
        "actor": bundle.actor.principal,
        "groups": list(bundle.actor.groups),
        "category": bundle.category.value,
        "reversibility": bundle.reversibility.value,
        "blast_radius": bundle.blast_radius.value,
        "sensitivity": bundle.sensitivity.value,
        "arguments": bundle.arguments,
    }


def encode_request(request: dict[str, Any]) -> bytes:
    try:
        return json.dumps(request, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"the request cannot be encoded for the policy module: {exc}") from None


def pack_schema(schema: ActionSchema) -> int:
    return (
        _CATEGORY_CODES[schema.category]
        | _REVERSIBILITY_CODES[schema.reversibility] << 8
        | _BLAST_CODES[schema.blast_radius] << 16
        | _SENSITIVITY_CODES[schema.sensitivity] << 24
    )


def unpack_risk(packed: int) -> Risk:
    score, tier = packed & 0xFF, (packed >> 8) & 0xFF
    if packed >> 48 or score > 100 or tier >= len(_TIERS):
        raise PolicyError("the policy module returned an invalid risk score")
    factors = {
        "category": (packed >> 16) & 0xFF,
        "reversibility": (packed >> 24) & 0xFF,
        "blast_radius": (packed >> 32) & 0xFF,
        "sensitivity": (packed >> 40) & 0xFF,
    }
    return Risk(score=score, tier=_TIERS[tier], factors=factors)


def _get(doc: dict[str, Any], key: str, kinds: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise PolicyError(f"the policy module's answer has a malformed `{key}`")
    if not isinstance(value, kinds):
        raise PolicyError(f"the policy module's answer has a malformed `{key}`")
    return value


def parse_decision(raw: bytes, *, policy: str, sha256: str | None) -> tuple[Risk, Decision]:
    """Check the module's answer and build the contract types; PolicyError if anything is off."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PolicyError("the policy module's answer is not JSON") from None
    if not isinstance(doc, dict):
        raise PolicyError("the policy module's answer is not an object")
    if "error" in doc:
        raise PolicyError(f"the policy module could not decide: {doc['error']}")
    if doc.get("policy") != policy:
        raise PolicyError(f"the policy module answered for `{doc.get('policy')}`, not `{policy}`")
    risk_doc = _get(doc, "risk", dict)
    factors = _get(risk_doc, "factors", dict)
    score = _get(risk_doc, "score", int)
    if not 0 <= score <= 100 or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in factors.items()
    ):
        raise PolicyError("the policy module's answer has a malformed `risk`")
    try:
        tier = Tier(_get(risk_doc, "tier", str))
        effect = Effect(_get(doc, "effect", str))
    except ValueError:
        raise PolicyError("the policy module's answer has an unknown tier or effect") from None
    trace = []
    for entry in _get(doc, "trace", list):
        if not isinstance(entry, dict):
            raise PolicyError("the policy module's answer has a malformed `trace`")
        trace.append(
            TraceEntry.model_construct(
                rule_id=_get(entry, "rule", str), matched=_get(entry, "matched", bool), why=_get(entry, "why", str)
            )
        )
    permit_ttl = _get(doc, "permit_ttl", int)
    approval_ttl = _get(doc, "approval_ttl", int, optional=True)
    if permit_ttl <= 0 or (approval_ttl is not None and approval_ttl <= 0):
        raise PolicyError("the policy module's answer has a non-positive TTL")
    # Every field was checked above, type and range: built without a second validation (on every call).
    risk = Risk.model_construct(score=score, tier=tier, factors=factors)
    decision = Decision.model_construct(
        effect=effect,
        rule_id=_get(doc, "rule", str, optional=True),
        reason=_get(doc, "reason", str),
        policy=policy,
        policy_sha256=sha256,
        approvers=_get(doc, "approvers", str, optional=True),
        approval_ttl=approval_ttl,
        permit_ttl=permit_ttl,
        step_up=_get(doc, "step_up", bool),
        trace=tuple(trace),
    )
    return risk, decision


def explanation(decision: Decision) -> str:
    """One line saying what a decision is and what decided it (`policy explain`, the console's "explain")."""
    decided_by = f"rule {decision.rule_id}" if decision.rule_id else "no rule matched: the policy default"
    extras = []
    if decision.approvers:
        extras.append(f"approvers {decision.approvers}")
    if decision.approval_ttl:
        extras.append(f"approval expires after {decision.approval_ttl}s")
    if decision.step_up:
        extras.append("step-up required")
    if decision.effect is not Effect.DENY:
        extras.append(f"permit ttl {decision.permit_ttl}s")
    return f"{decision.effect.value} ({decision.reason}) by {decided_by}" + (f"; {', '.join(extras)}" if extras else "")


_AUTHENTICATED: dict[str, tuple[frozenset[str], bool]] = {}  # bundle sha256 -> (rule ids, default)


def _authenticated(data: bytes, sha256: str) -> tuple[frozenset[str], bool]:
    known = _AUTHENTICATED.get(sha256)
    if known is None:
        try:
            bundle = json.loads(data)
            rules = frozenset(str(r["id"]) for r in bundle["rules"] if r["then"].get("approval") == "authenticated")
            known = rules, bundle["default"].get("approval") == "authenticated"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(f"the bundle's outcomes cannot be read: {exc}") from None
        _AUTHENTICATED[sha256] = known
    return known


def with_bundle_facts(decision: Decision, data: bytes, sha256: str) -> Decision:
    """The decision with what the sandbox does not carry, read from the same signed bundle by rule id:
    whether its rule (or the default) says `approval: authenticated`."""
    if decision.effect is not Effect.APPROVE:
        return decision
    rules, default = _authenticated(data, sha256)
    by_default = decision.rule_id is None and default and not decision.reason.startswith("tier_default_")
    if decision.rule_id in rules or by_default:
        return decision.model_copy(update={"authenticated": True})
    return decision
