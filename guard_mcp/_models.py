"""The data contracts that travel through the pipeline (see ARCHITECTURE.md, "Contracts").

Frozen models: once a stage produced one, later stages cannot change what an earlier stage
decided; they build a new value instead.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActionBundle",
    "ActionSchema",
    "Actor",
    "BlastRadius",
    "Category",
    "Decision",
    "Effect",
    "Reversibility",
    "Risk",
    "Sensitivity",
    "Tier",
    "TraceEntry",
]


class Category(StrEnum):
    READ = "read"
    WRITE = "write"
    COMMUNICATE = "communicate"
    DESTRUCTIVE = "destructive"
    FINANCIAL = "financial"
    PERMISSION = "permission"
    UNKNOWN = "unknown"


class Reversibility(StrEnum):
    FULL = "full"
    PARTIAL = "partial"
    NONE = "none"


class BlastRadius(StrEnum):
    SINGLE = "single"
    MANY = "many"
    ALL = "all"


class Sensitivity(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


class Tier(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ActionTraits(_Frozen):
    """What the operator declares about a tool's calls in upstreams.yaml (never the upstream): the risk
    inputs and the rules on its arguments. Written once, here: `ActionSchema` is these with the action's
    name, and the config's `ToolConfig` (guard_mcp/_config.py) is these as a tool's entry in the YAML.
    """

    category: Category = Category.UNKNOWN
    reversibility: Reversibility = Reversibility.NONE
    blast_radius: BlastRadius = BlastRadius.ALL
    sensitivity: Sensitivity = Sensitivity.RESTRICTED
    resource: str | None = None
    # Per-argument JSON Schema fragments that narrow the upstream's own input schema,
    # e.g. {"amount": {"maximum": 10000}}.
    constraints: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Argument names whose values the audit log stores only as a digest.
    redact: tuple[str, ...] = ()
    # How an approval of this tool reads, in the operator's words: `Refund {amount|money} to customer
    # {customer_id}` (the grammar: `_headline.py`).
    headline: str | None = None


class ActionSchema(ActionTraits):
    """What a tool call *is*, as declared by the operator in upstreams.yaml (never by the upstream).

    A tool without a declared schema gets `ActionSchema.unknown(...)`: category `unknown`, the
    most pessimistic reversibility and reach, which never scores LOW.
    """

    action: str
    declared: bool = True

    @classmethod
    def unknown(cls, upstream: str, tool: str) -> ActionSchema:
        return cls(action=f"{upstream}.{tool}", declared=False)


class Actor(_Frozen):
    """Who is asking: the principal (a verified token's claim over HTTP with an identity provider, else the
    configured one) and its groups, plus what the client said about itself."""

    principal: str
    groups: tuple[str, ...] = ()
    client_name: str | None = None
    client_version: str | None = None
    session: str | None = None


class Risk(_Frozen):
    score: int
    tier: Tier
    factors: dict[str, int] = Field(default_factory=dict)


class ActionBundle(_Frozen):
    """Everything the policy sees about one tool call."""

    request_id: str
    action: str
    upstream: str
    tool: str
    actor: Actor
    arguments: dict[str, Any]
    payload_hash: str
    resource: str | None = None
    category: Category
    reversibility: Reversibility
    blast_radius: BlastRadius
    sensitivity: Sensitivity
    risk: Risk | None = None
    environment: str
    headline: str | None = None  # the tool's headline template (its action schema's), never the agent's


class TraceEntry(_Frozen):
    rule_id: str
    matched: bool
    why: str


class Decision(_Frozen):
    effect: Effect
    rule_id: str | None = None
    reason: str
    policy: str  # name@version
    policy_sha256: str | None = None
    approvers: str | None = None
    approval_ttl: int | None = None  # seconds
    permit_ttl: int = 300  # seconds
    step_up: bool = False
    authenticated: bool = False  # `approval: authenticated`: never approved in the agent's own client
    trace: tuple[TraceEntry, ...] = ()
