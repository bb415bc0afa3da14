"""Every error guard-mcp raises, in one tree.

    GuardError
    ├── ConfigError            upstreams.yaml, `${VAR}` interpolation, CLI input
    │   └── PatternError       a schema's pattern that cannot be used or ran out of time (_patterns)
    ├── StateError             the state directory, key files, the database
    ├── PolicyError            policy source, compile, sign, evaluate
    │   └── PolicyRefused      a bundle that must not be loaded (unsigned, tampered, rolled back)
    ├── PermitError            minting permits, the guard's signing keys
    ├── AuditError             writing or reading the audit log
    │   └── AuditIntegrityError  the chain, a MAC, a checkpoint or the writer's head does not verify
    ├── ApprovalError          approvals: unknown id, already decided, bad second factor
    │   ├── ApprovalUnverified   a row no decision record backs (_approvals/_proof)
    │   └── RequestStateError    a `requestState` that does not open or is another call's (_request_state)
    ├── UpstreamError          an upstream that will not start, answer or stay up
    │   └── UpstreamAuthRequired  an OAuth upstream whose login is missing or was refused
    └── DeliveryError          a notification its receiver did not take (_notify/_targets; retried, then dropped)

Errors from dependencies (yaml, pydantic, jwt, wasmtime, sqlite3, mcp) are mapped into this tree
where they are caught, so callers never handle a dependency's exception types. Messages follow
one shape: one line, the offending input in backticks, what to do next.
"""

from __future__ import annotations

__all__ = [
    "ApprovalError",
    "AuditError",
    "AuditIntegrityError",
    "ConfigError",
    "GuardError",
    "PermitError",
    "PolicyError",
    "PolicyRefused",
    "StateError",
    "UpstreamAuthRequired",
    "UpstreamError",
]


class GuardError(Exception):
    """Base of every error guard-mcp raises on purpose."""


class ConfigError(GuardError):
    """The configuration or a command's input is wrong; nothing was started or changed."""


class StateError(GuardError):
    """The state directory, a key file or the database cannot be used."""


class PolicyError(GuardError):
    """A policy source, bundle or evaluation problem."""


class PolicyRefused(PolicyError):
    """A policy bundle failed verification and must not be served (fail closed)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermitError(GuardError):
    """A permit could not be minted, or a signing key is missing or unusable."""


class AuditError(GuardError):
    """The audit log could not be written or read."""


class AuditIntegrityError(AuditError):
    """The audit log does not verify: an event, a MAC or a checkpoint is wrong, or the database's head is
    not where this guard's writer left it (`problem` `head_mismatch`, `seq` the first that differs).
    Every later append raises it too. `audit verify` reports what it finds instead of raising."""

    def __init__(self, message: str, *, seq: int | None, problem: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.problem = problem


class ApprovalError(GuardError):
    """An approval cannot be found, has already been decided, or the approver is not allowed."""


class UpstreamError(GuardError):
    """An upstream server could not be started, reached, or kept running.

    `for_log` is the message as the audit keeps it: the same, or with the call's redacted values
    taken out of the upstream's own words before they were made one line."""

    def __init__(self, message: str, *, for_log: str | None = None) -> None:
        super().__init__(message)
        self.for_log = message if for_log is None else for_log


class UpstreamAuthRequired(UpstreamError):
    """An OAuth upstream cannot be called until someone logs in again (`guard-mcp login UPSTREAM`)."""

    reason = "upstream_auth_required"
