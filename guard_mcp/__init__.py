"""guard-mcp: the execution boundary between an AI agent and the tools it calls.

Layout: one private module per pipeline stage (`_intercept`, `_validate`, `_policy`, `_approvals`,
`_permits`, `_forward`, `_audit`) composed by `_pipeline` and served by `_server`; contracts in
`_models`, errors in `_errors`, the one canonical JSON in `_canonical`. The public surface is small:
the verifier upstreams import (`guard_mcp.verify`), the contracts, the errors, and `build_server`.
"""

from __future__ import annotations

from guard_mcp._errors import (
    ApprovalError,
    AuditError,
    AuditIntegrityError,
    ConfigError,
    GuardError,
    PermitError,
    PolicyError,
    PolicyRefused,
    StateError,
    UpstreamError,
)
from guard_mcp._models import ActionBundle, ActionSchema, Actor, Decision, Effect, Risk, Tier

__all__ = [
    "ActionBundle",
    "ActionSchema",
    "Actor",
    "ApprovalError",
    "AuditError",
    "AuditIntegrityError",
    "ConfigError",
    "Decision",
    "Effect",
    "GuardError",
    "PermitError",
    "PolicyError",
    "PolicyRefused",
    "Risk",
    "StateError",
    "Tier",
    "UpstreamError",
]
