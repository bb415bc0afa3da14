"""The closed sets of codes the guard writes: `Reason`, the reason code of every call it refuses (in
the tool result's `_meta` and in the audit event that records why the call stopped), and
`EventType`, the type of every audit event.

A code that is not a member is refused where it would be written (`deny_result`, `EventIn`), so a
new one starts here, with its line in the docs (`docs/reasons.md`, `docs/audit.md`):
tests/test_reasons.py checks both ways. Members equal their strings, so call sites may keep writing
the strings.

A policy's own reason codes (`amount_exceeds_policy_limit`, whatever its author wrote, or the
defaults `policy_deny` and `no_rule_matched`) are not here: they are the policy's words, passed
through with its label.
"""

from __future__ import annotations

from enum import StrEnum, unique

__all__ = ["EventType", "Reason", "event_type", "reason_code"]


@unique
class Reason(StrEnum):
    """Why the guard refused a call (and, audit only, why it refused a tool or a call or a question ended)."""

    # the tool, before its arguments are looked at
    UNKNOWN_TOOL = "unknown_tool"
    TOOL_WITHHELD = "tool_withheld"
    TOOL_REFUSED = "tool_refused"
    # the arguments
    SCHEMA_VIOLATION = "schema_violation"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    # the policy engine itself (a policy's decision carries the policy's reason)
    POLICY_UNAVAILABLE = "policy_unavailable"
    POLICY_ENGINE_ERROR = "policy_engine_error"
    # usage limits
    LIMIT_EXCEEDED = "limit_exceeded"
    LIMIT_UNMEASURABLE = "limit_unmeasurable"
    LIMIT_UNAVAILABLE = "limit_unavailable"
    # approvals
    PENDING_APPROVAL = "pending_approval"  # not a denial: the call waits for a human
    APPROVAL_UNAVAILABLE = "approval_unavailable"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVAL_CANCELLED = "approval_cancelled"
    APPROVAL_ALREADY_USED = "approval_already_used"
    APPROVAL_UNVERIFIED = "approval_unverified"
    STEP_UP_REQUIRED = "step_up_required"
    AUTHENTICATED_APPROVAL_REQUIRED = "authenticated_approval_required"
    REQUEST_STATE_INVALID = "request_state_invalid"
    REQUEST_STATE_EXPIRED = "request_state_expired"
    REQUEST_STATE_MISMATCH = "request_state_mismatch"
    REQUEST_STATE_REPLAYED = "request_state_replayed"
    STORE_UNAVAILABLE = "store_unavailable"
    # the upstream
    UPSTREAM_AUTH_REQUIRED = "upstream_auth_required"
    UPSTREAM_ERROR = "upstream_error"
    RESULT_TOO_LARGE = "result_too_large"
    # the guard
    AUDIT_UNAVAILABLE = "audit_unavailable"
    INTERNAL_ERROR = "internal_error"
    # recorded in the audit only: why a tool is not served, how a permitted call or an open question
    # ended without an answer
    HIDDEN_TEXT = "hidden_text"
    CANCELLED = "cancelled"
    CLIENT_DISCONNECTED = "client_disconnected"
    GUARD_STOPPED = "guard_stopped"


@unique
class EventType(StrEnum):
    """The type of an audit event (docs/audit.md, "The events")."""

    GUARD_START = "guard.start"
    GUARD_STOP = "guard.stop"
    POLICY_LOADED = "policy.loaded"
    POLICY_REFUSED = "policy.refused"
    POLICY_ACCEPTED = "policy.accepted"
    POLICY_SHADOW_DISAGREED = "policy.shadow_disagreed"
    UPSTREAM_READY = "upstream.ready"
    UPSTREAM_DOWN = "upstream.down"
    UPSTREAM_ELICITATION = "upstream.elicitation"
    TOOL_PIN_CHANGED = "tool.pin_changed"
    TOOL_PIN_ACCEPTED = "tool.pin_accepted"
    TOOL_REFUSED = "tool.refused"
    CALL_RECEIVED = "call.received"
    CALL_INVALID = "call.invalid"
    CALL_DECIDED = "call.decided"
    CALL_DENIED = "call.denied"
    CALL_RESULT = "call.result"
    CALL_ERROR = "call.error"
    CALL_UNRESOLVED = "call.unresolved"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_PENDING = "approval.pending"
    APPROVAL_DECIDED = "approval.decided"
    APPROVAL_EXPIRED = "approval.expired"
    APPROVAL_CANCELLED = "approval.cancelled"
    APPROVAL_ESCALATED = "approval.escalated"
    APPROVAL_CONSUMED = "approval.consumed"
    APPROVAL_PREAUTHORIZED = "approval.preauthorized"
    PERMIT_ISSUED = "permit.issued"
    KEY_ROTATED = "key.rotated"
    OPERATOR_DECIDED = "operator.decided"
    OPERATOR_REFUSED = "operator.refused"
    OPERATOR_GRANTED = "operator.granted"
    OPERATOR_REVOKED = "operator.revoked"
    OPERATOR_APPROVER_ADDED = "operator.approver_added"
    OPERATOR_APPROVER_REMOVED = "operator.approver_removed"
    OPERATOR_APPROVER_GROUPS = "operator.approver_groups"
    OPERATOR_ENROLMENT_LINK = "operator.enrolment_link"
    CONSOLE_SIGNED_IN = "console.signed_in"
    CONSOLE_SIGNIN_REFUSED = "console.signin_refused"
    CONSOLE_SIGNED_OUT = "console.signed_out"
    CONSOLE_PASSKEY_ENROLLED = "console.passkey_enrolled"
    CONSOLE_DECIDED = "console.decided"
    CONSOLE_REFUSED = "console.refused"
    CONSOLE_GRANTED = "console.granted"
    CONSOLE_REVOKED = "console.revoked"
    AUDIT_BROKEN = "audit.broken"
    HTTP_UNAUTHORIZED = "http.unauthorized"


_REASONS: dict[str, str] = {r.value: r.value for r in Reason}
_EVENT_TYPES: dict[str, str] = {t.value: t.value for t in EventType}  # also for members: StrEnum hashes as its value


def _member_name(code: str) -> str:
    return code.upper().replace(".", "_")


def reason_code(value: str) -> str:
    """`value`, a `Reason` or its string, as a plain string; ValueError for any other string."""
    plain = _REASONS.get(value)
    if plain is None:
        raise ValueError(
            f'`{value}` is not a guard reason code: add `{_member_name(value)} = "{value}"` to '
            f"`Reason` in guard_mcp/_codes.py and a row for `{value}` to the table in docs/reasons.md"
        )
    return plain


def event_type(value: str) -> str:
    """`value`, an `EventType` or its string, as a plain string; ValueError for any other string."""
    plain = _EVENT_TYPES.get(value)
    if plain is None:
        raise ValueError(
            f'`{value}` is not an audit event type: add `{_member_name(value)} = "{value}"` to '
            f"`EventType` in guard_mcp/_codes.py and a row for `{value}` to the table under "
            '"The events" in docs/audit.md'
        )
    return plain
