"""The approval record: one persisted question to a human, and the states it moves through.

PENDING is the only state a decision can leave from; APPROVED is the only state an execution can
start from, once (`consumed`), and only when the decision's record verifies (`verified`, see
`_proof`). Every other state is final and means "do not run".
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from guard_mcp._models import ActionBundle

__all__ = ["DEFAULT_GROUP", "Approval", "ApprovalState", "new_id", "valid_id"]

# Owner of approvals whose policy rule names no approver group.
DEFAULT_GROUP = "approvers"

_ID = re.compile(r"(apr|grt)_[a-z2-7]{26}")


def new_id(prefix: str) -> str:
    """`prefix_` + 128 random bits in lower-case base32: unguessable and easy to copy from a terminal."""
    return f"{prefix}_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def valid_id(value: str, prefix: str) -> bool:
    return bool(_ID.fullmatch(value)) and value.startswith(prefix + "_")


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Approval:
    id: str
    request_id: str
    bundle: ActionBundle
    payload_hash: str
    tool: str  # the namespaced name the client called, e.g. `shop__refund`
    action: str
    rule_id: str | None
    policy: str
    group: str  # the owner: the approver group that may decide it now
    step_up: bool
    created: float
    deadline: float
    state: ApprovalState
    approver: str | None
    reason: str | None
    decided_at: float | None
    consumed: bool
    session: str | None
    escalated: bool
    policy_reason: str = ""
    escalated_from: str | None = None  # the owner before escalation re-routed it
    factor: str | None = None  # what authenticated the approver: `totp`, `in-band`, `cli`
    verified: bool = False  # decided, and the decision's record (MAC) matches this row
    authenticated: bool = False  # its rule says `approval: authenticated`: never approved in the agent's client

    @property
    def principal(self) -> str:
        return self.bundle.actor.principal

    def remaining(self, now: float) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - now

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """A plain-JSON view for `--json` output and audit event data."""
        risk = self.bundle.risk
        out: dict[str, Any] = {
            "id": self.id,
            "request_id": self.request_id,
            "state": self.state.value,
            "tool": self.tool,
            "action": self.action,
            "principal": self.principal,
            "session": self.session,
            "arguments": self.bundle.arguments,
            "payload_hash": self.payload_hash,
            "risk": None if risk is None else {"score": risk.score, "tier": risk.tier.value},
            "policy": self.policy,
            "rule_id": self.rule_id,
            "policy_reason": self.policy_reason,
            "group": self.group,
            "escalated": self.escalated,
            "escalated_from": self.escalated_from,
            "step_up": self.step_up,
            "authenticated": self.authenticated,
            "created": self.created,
            "deadline": self.deadline,
            "approver": self.approver,
            "reason": self.reason,
            "decided_at": self.decided_at,
            "factor": self.factor,
            "verified": self.verified,
            "consumed": self.consumed,
        }
        if now is not None:
            out["remaining"] = round(self.remaining(now), 3)
        return out
