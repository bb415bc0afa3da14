"""What the demo and `guard-mcp simulate` both need: reading a guard's answer, and minting a real
permit for the demo shop's refund tool (to show what the shop does with it, around the guard)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types

from guard_mcp._canonical import payload_hash
from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig
from guard_mcp._keys import KeyStore
from guard_mcp._models import ActionBundle, Actor, BlastRadius, Category, Reversibility, Sensitivity
from guard_mcp._permits import PermitIssuer
from guard_mcp._policy import PolicyEngine
from guard_mcp._results import DECISION_META

__all__ = ["decision_of", "reason_of", "refund_permit", "text_of", "until_refused"]


def decision_of(result: Any) -> dict[str, Any]:
    value = (getattr(result, "meta", None) or {}).get(DECISION_META)
    return value if isinstance(value, dict) else {}


def reason_of(result: Any) -> str:
    """The guard's reason code (or pending status); `ok` for a result the guard let through."""
    d = decision_of(result)
    return str(d.get("reason") or d.get("status") or ("ok" if not getattr(result, "is_error", True) else "?"))


def text_of(result: Any) -> str:
    return " ".join(c.text for c in getattr(result, "content", []) if isinstance(c, types.TextContent))


async def until_refused(call: Callable[[], Awaitable[types.CallToolResult]], most: int) -> list[types.CallToolResult]:
    """The salami attack: the same call again and again until the guard refuses one (at most `most`)."""
    results: list[types.CallToolResult] = []
    while len(results) < most and not (results and results[-1].is_error):
        results.append(await call())
    return results


def refund_permit(
    config: GuardConfig,
    keys: KeyStore,
    policy: PolicyEngine,
    clock: Clock,
    args: dict[str, Any],
    *,
    request_id: str,
    approver: str | None,
) -> str:
    """A real permit for a shop refund of `args`, for the decision the loaded policy makes."""
    bundle = ActionBundle(
        request_id=request_id,
        action="refund.create",
        upstream="shop",
        tool="refund",
        actor=Actor(principal=config.guard.principal),
        arguments=args,
        payload_hash=payload_hash(args),
        category=Category.FINANCIAL,
        reversibility=Reversibility.NONE,
        blast_radius=BlastRadius.SINGLE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        environment=config.guard.environment,
    )
    _, decision = policy.decide(bundle)
    issuer = PermitIssuer(keys, issuer=config.guard.permits.issuer, environment=config.guard.environment, clock=clock)
    return issuer.mint(bundle, decision.model_copy(update={"permit_ttl": 60}), approver=approver).token
