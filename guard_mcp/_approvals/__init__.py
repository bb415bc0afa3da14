"""Human approval, everything that does not touch the MCP session.

`_record` the Approval value and its states; `_db` the tables in the guard's database and the one
transaction helper; `_store` create/decide/consume/expire/escalate (`ApprovalStore.decide` is the one
entry point every decision channel uses); `_proof` the decision records that make a decided row an
authorisation; `_approvers` named approvers and their TOTP second factor; `_grants` session
pre-authorisation; `_prompt` what the human reads and how the form answer is parsed; `_wait`
waiting for a decision made in another process.
"""

from __future__ import annotations

from guard_mcp._approvals._approvers import Approver, Approvers
from guard_mcp._approvals._grants import Grant, Grants, GrantUse
from guard_mcp._approvals._prompt import (
    approval_message,
    countdown,
    elicitation_schema,
    escape_text,
    headline,
    parse_elicitation,
    show_codes,
)
from guard_mcp._approvals._proof import ApprovalUnverified, Channel
from guard_mcp._approvals._record import DEFAULT_GROUP, Approval, ApprovalState, valid_id
from guard_mcp._approvals._store import (
    ApprovalStore,
    InBandRefused,
    VerifiedFactor,
    decision_event_data,
    needs_step_up,
    unknown_approval,
)
from guard_mcp._approvals._wait import wait_for_decision

__all__ = [
    "DEFAULT_GROUP",
    "Approval",
    "ApprovalState",
    "ApprovalStore",
    "ApprovalUnverified",
    "Approver",
    "Approvers",
    "Channel",
    "Grant",
    "GrantUse",
    "Grants",
    "InBandRefused",
    "VerifiedFactor",
    "approval_message",
    "countdown",
    "decision_event_data",
    "elicitation_schema",
    "escape_text",
    "headline",
    "needs_step_up",
    "parse_elicitation",
    "show_codes",
    "unknown_approval",
    "valid_id",
    "wait_for_decision",
]
