"""guard-mcp: the execution boundary between an AI agent and the tools it calls.

Layout: one private module per pipeline stage (`_intercept` resolves and validates, `_policy`
scores and decides, `_pause` and `_approvals` ask a human, `_permits` mints, `_upstreams` forwards,
`_audit` records) composed by `_pipeline` and served by `_server`; contracts in `_models`, errors in
`_errors`, the closed sets of reason codes and event types in `_codes`, the one canonical JSON in
`_canonical`. The public surface is small: the verifier upstreams import (`guard_mcp.verify`), the
contracts and the errors. docs/architecture.md walks a call through the modules.

Layers (tests/test_layers.py holds them, with its list of known exceptions):

- the core (every module but `cli` and `demo`) never imports `guard_mcp.cli` or `guard_mcp.demo`:
  commands and the demo call the core, never the other way round;
- a package's private modules (`_audit._log`, `_approvals._db`, ...) are its own: everything outside
  the package goes through its facade (`guard_mcp._audit`, `guard_mcp._approvals`, ...).

The contracts are loaded on first use, so an upstream that imports only `guard_mcp.verify` does not
pay for pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from guard_mcp._models import (
        ActionBundle,
        ActionSchema,
        Actor,
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

# The public models and the types of their fields (tests/test_public_surface.py checks none is missing).
_MODELS = frozenset(
    {
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
    }
)

__all__ = [
    "ActionBundle",
    "ActionSchema",
    "Actor",
    "ApprovalError",
    "AuditError",
    "AuditIntegrityError",
    "BlastRadius",
    "Category",
    "ConfigError",
    "Decision",
    "Effect",
    "GuardError",
    "PermitError",
    "PolicyError",
    "PolicyRefused",
    "Reversibility",
    "Risk",
    "Sensitivity",
    "StateError",
    "Tier",
    "TraceEntry",
    "UpstreamError",
]


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        return getattr(importlib.import_module("guard_mcp._models"), name)
    raise AttributeError(f"module `guard_mcp` has no attribute `{name}`")
